"""Loader: corrupt files fail before any batch; each window once per epoch; exact resume, also
across an epoch boundary; disjoint ranks; fixed-shape evaluation covering every target once, with
or without a stride."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import counting_dir, make_token_dir

from llmlab.data.loader import IGNORE_INDEX, TrainLoader, eval_batches
from llmlab.data.tokenfile import HEADER_SIZE
from llmlab.errors import DataError

T, B = 10, 4  # 1,000 train tokens -> 99 windows -> 24 batches per epoch, 3 windows dropped


@pytest.fixture
def data(tmp_path):
    return counting_dir(tmp_path / "data", n_train=1000)


def _windows(x: torch.Tensor) -> list[int]:
    return (x[:, 0] // T).tolist()  # token id = position, so the first id names the window


def test_batches_are_shifted_windows(data):
    loader = TrainLoader(data, T, B, seed=1)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(T))  # contiguous runs of the file


def test_every_window_once_per_epoch_and_a_new_order_each_epoch(data):
    loader = TrainLoader(data, T, B, seed=0)
    assert (loader.n_windows, loader.steps_per_epoch) == (99, 24)
    epochs = []
    for epoch in range(3):
        assert loader.epoch == epoch
        seen = [w for _ in range(loader.steps_per_epoch) for w in _windows(loader.next_batch()[0])]
        assert len(seen) == len(set(seen)) == 96 and set(seen) <= set(range(99))
        epochs.append(seen)
    assert loader.epoch == 3
    assert epochs[0] != epochs[1] != epochs[2]
    fresh = TrainLoader(data, T, B, seed=0)
    assert [w for _ in range(24) for w in _windows(fresh.next_batch()[0])] == epochs[0]  # seeded
    other_seed = TrainLoader(data, T, B, seed=1)
    assert _windows(other_seed.next_batch()[0]) != epochs[0][:B]


def test_resume_from_any_state_is_exact(data):
    loader = TrainLoader(data, T, B, seed=3)
    states, batches = [], []
    for _ in range(60):  # 2.5 epochs
        states.append(loader.state_dict())
        batches.append(loader.next_batch())
    for k in (0, 1, 23, 24, 25, 47, 48, 59):  # around both epoch boundaries
        resumed = TrainLoader(data, T, B, seed=3)
        resumed.load_state_dict(states[k])
        assert resumed.epoch == k // 24
        for x, y in batches[k:]:
            rx, ry = resumed.next_batch()
            assert torch.equal(rx, x) and torch.equal(ry, y)


def test_ranks_take_disjoint_slices_of_the_same_global_order(data):
    world = 3
    ranks = [TrainLoader(data, T, 2, seed=5, rank=r, world_size=world) for r in range(world)]
    single = TrainLoader(data, T, 2 * world, seed=5)
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == 16
    seen: list[set[int]] = [set() for _ in range(world)]
    for _ in range(16):
        per_rank = [_windows(loader.next_batch()[0]) for loader in ranks]
        assert sum(per_rank, []) == _windows(single.next_batch()[0])  # rank r = r-th slice of the global batch
        for r, ws in enumerate(per_rank):
            seen[r].update(ws)
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(len(s) for s in seen) == 96


def test_mismatched_state_is_refused(data):
    state = TrainLoader(data, T, B).state_dict()
    with pytest.raises(DataError, match="seq_len = 10, this loader has 12"):
        TrainLoader(data, 12, B).load_state_dict(state)
    with pytest.raises(DataError, match="out of range"):
        TrainLoader(data, T, B).load_state_dict({**state, "served": 24 * B})


U = 12  # windows per update: 99 windows -> 8 updates an epoch, 3 windows dropped, for any micro-batch


def _updates(ranks: list[TrainLoader], n: int) -> list[list[int]]:
    """The windows each of the next n updates sees (all micro-steps, all ranks), sorted."""
    steps = U // ranks[0].windows_per_step
    return [sorted(w for _ in range(steps) for loader in ranks for w in _windows(loader.next_batch()[0]))
            for _ in range(n)]


@pytest.mark.parametrize("batch_size, world", [(2, 1), (6, 1), (12, 1), (3, 2), (1, 3)])
def test_micro_batch_size_leaves_the_windows_of_every_update_unchanged(data, batch_size, world):
    # Before, an epoch was 99 // (batch_size x processes) micro-steps: 49 (98 windows) at batch 2
    # against 24 (96) at batch 4, so from the second epoch on the updates saw other windows.
    reference = _updates([TrainLoader(data, T, 4, windows_per_update=U, seed=7)], 20)  # 2.5 epochs
    ranks = [TrainLoader(data, T, batch_size, windows_per_update=U, seed=7, rank=r, world_size=world)
             for r in range(world)]
    assert ranks[0].steps_per_epoch * batch_size * world == 96
    assert _updates(ranks, 20) == reference
    first, second = sum(reference[:8], []), sum(reference[8:16], [])
    assert len(set(first)) == len(set(second)) == 96 and first != second  # a new permutation each epoch


def test_resume_with_another_micro_batch_size_continues_the_same_updates(data):
    loader = TrainLoader(data, T, 4, windows_per_update=U, seed=2)
    states, updates = [], []
    for _ in range(12):  # across the first epoch boundary (8 updates)
        states.append(loader.state_dict())
        updates += _updates([loader], 1)
    for k in (0, 7, 8, 11):
        resumed = TrainLoader(data, T, 2, windows_per_update=U, seed=2)
        resumed.load_state_dict(states[k])
        assert _updates([resumed], 12 - k) == updates[k:]
    mid_update = TrainLoader(data, T, 4, windows_per_update=U, seed=2)
    mid_update.next_batch()  # 4 windows into an update: not a whole micro-step of 6
    with pytest.raises(DataError, match="micro_batch_size it was saved with"):
        TrainLoader(data, T, 6, windows_per_update=U, seed=2).load_state_dict(mid_update.state_dict())
    with pytest.raises(DataError, match="windows_per_update = 12, this loader has 24"):
        TrainLoader(data, T, 4, windows_per_update=24, seed=2).load_state_dict(states[1])
    with pytest.raises(DataError, match=r"windows_per_update \(10\) must be a multiple of batch_size \(4\)"):
        TrainLoader(data, T, 4, windows_per_update=10)


def test_a_state_saved_in_micro_steps_still_loads(data):
    """Checkpoints written before the state counted windows: (position, batch_size, world_size)."""
    legacy = {"epoch": 1, "position": 3, "seed": 0, "seq_len": T, "batch_size": B, "world_size": 1, "n_windows": 99}
    loader = TrainLoader(data, T, B, seed=0)
    loader.load_state_dict(legacy)
    assert loader.epoch == 1 and loader.state_dict()["served"] == 3 * B


def _corrupt(data, how):
    path = data / "train.bin"
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[-7:]
    elif how == "magic":
        raw[0] ^= 0xFF
    elif how == "version":
        raw[8] = 9
    elif how == "itemsize":
        raw[12] = 4
    elif how == "out_of_range":  # id 65,535 in a file of a 65,535-word vocabulary
        raw[HEADER_SIZE + 2 * 500 : HEADER_SIZE + 2 * 501] = (65_535).to_bytes(2, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how, message", [
    ("truncated", "truncated or corrupt"),
    ("magic", "not an llmlab token file"),
    ("version", "token file version 9"),
    ("itemsize", "corrupt header"),
    ("out_of_range", "token id 65535 is outside the vocabulary of 65,535"),
])
def test_corrupt_files_fail_before_any_batch(data, how, message):
    _corrupt(data, how)
    with pytest.raises(DataError, match=message) as e:
        TrainLoader(data, T, B)
    assert "train.bin" in str(e.value)


def test_vocab_mismatch_names_the_file(data):
    with pytest.raises(DataError, match=r"train\.bin: .*vocabulary 65,535.* vocab_size 50,257"):
        TrainLoader(data, T, B, vocab_size=50_257)
    with pytest.raises(DataError, match=r"val\.bin"):
        next(eval_batches(data, "val", T, B, vocab_size=50_257))
    TrainLoader(data, T, B, vocab_size=65_535)  # the right one passes


def test_count_mismatch_with_meta_and_missing_folder(tmp_path, data):
    make_token_dir(tmp_path / "other", {"train": np.arange(50)}, 65_535)
    (data / "train.bin").write_bytes((tmp_path / "other" / "train.bin").read_bytes())
    with pytest.raises(DataError, match="meta.json says 1,000"):
        TrainLoader(data, T, B)
    with pytest.raises(DataError, match="llmlab prepare"):
        TrainLoader(tmp_path / "nowhere", T, B)
    with pytest.raises(DataError, match="fewer than one update"):
        TrainLoader(tmp_path / "other", T, 8)


@pytest.mark.parametrize("stride", [None, T, 3, 1])
@pytest.mark.parametrize("n_tokens", [1000, 1001, 1005, 41, 7])
def test_test_pass_predicts_every_token_once_in_fixed_shapes(tmp_path, n_tokens, stride):
    data = counting_dir(tmp_path / "d", n_train=1000, n_eval=n_tokens)
    targets = []
    for x, y in eval_batches(data, "test", T, B, stride=stride):
        assert x.shape == y.shape == (B, T)
        keep = y != IGNORE_INDEX
        assert torch.equal(y[keep], x[keep] + 1)  # x, y shifted where there is a target
        targets.append(y[keep])
    assert torch.equal(torch.cat(targets), torch.arange(1, n_tokens))


def test_validation_uses_the_first_windows(data):
    batches = list(eval_batches(data, "val", T, B, max_windows=6))
    assert len(batches) == 2
    x, y = batches[1]
    assert _windows(x)[:2] == [4, 5] and (y[2:] == IGNORE_INDEX).all()  # padding rows
    assert _windows(batches[0][0]) == [0, 1, 2, 3]


def test_strided_windows_score_only_their_last_stride_targets(data):
    x, y = next(eval_batches(data, "val", T, B, stride=3))
    assert x[:, 0].tolist() == [0, 3, 6, 9]  # a window every 3 tokens
    assert torch.equal(y[0], x[0] + 1)  # the first window scores all its targets
    assert (y[1:, :T - 3] == IGNORE_INDEX).all() and torch.equal(y[1:, T - 3:], x[1:, T - 3:] + 1)
    with pytest.raises(DataError, match=r"stride \(11\) must be between 1 and seq_len \(10\)"):
        next(eval_batches(data, "val", T, B, stride=11))
