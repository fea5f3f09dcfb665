"""micro_batch_size only splits an update into micro-steps: at equal tokens_per_update, two runs
see the same windows in the same updates, across epoch boundaries, and a run may resume with
another micro_batch_size. Other data-order settings are still refused on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainkit import train_rows, write_config

from llmlab.config import DataConfig, load_run_config
from llmlab.errors import CheckpointError
from llmlab.runs import read_metrics
from llmlab.train import train

# 34 windows of 32 tokens: 2 updates of 16 windows an epoch, 2 dropped. Per-micro-step epochs
# (the old rule) were 32 windows at micro-batch 8 and 34 at micro-batch 2: step 3 differed.
TRAIN = {"tokens_per_update": 512, "schedule": "constant", "warmup": 0, "eval_windows": 1, "log_interval": 1}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmlab.data.prepare import ensure_prepared

    root = tmp_path_factory.mktemp("tiny")
    for split, n_bytes in (("train", 1_100), ("val", 200), ("test", 200)):
        (root / "text" / split).mkdir(parents=True)
        (root / "text" / split / "doc.txt").write_text("".join(chr(97 + (i * 7) % 26) for i in range(n_bytes - 1)))
    return ensure_prepared(DataConfig(dataset=str(root / "text"), tokenizer="byte", dir=str(root / "tokens")),
                           progress=False)


def run(tmp_path: Path, data: Path, name: str, run_dir: str | None = None, **train_settings) -> Path:
    config = write_config(tmp_path / f"{name}.toml", data, train={**TRAIN, **train_settings})
    out = tmp_path / (run_dir or name)
    train(load_run_config(config), out)
    return out


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in train_rows(run_dir)]


def test_micro_batch_size_does_not_change_the_updates(tiny_data, tmp_path):
    big = run(tmp_path, tiny_data, "b8", micro_batch_size=8, max_steps=5)  # 2.5 epochs
    small = run(tmp_path, tiny_data, "b2", micro_batch_size=2, max_steps=5)
    assert len(losses(big)) == 5
    # Same windows, summed in another order: equal to float rounding, far from another batch's loss.
    torch.testing.assert_close(losses(small), losses(big), rtol=1e-5, atol=0)


def test_resume_with_another_micro_batch_size(tiny_data, tmp_path):
    reference = run(tmp_path, tiny_data, "ref", micro_batch_size=8, max_steps=5)
    run(tmp_path, tiny_data, "first", run_dir="resumed", micro_batch_size=8, max_steps=3)
    resumed = run(tmp_path, tiny_data, "second", run_dir="resumed", micro_batch_size=4, max_steps=5)
    event = next(r for r in read_metrics(resumed) if r.get("event") == "resume")
    assert event["changes"]["train.micro_batch_size"] == [8, 4]
    torch.testing.assert_close(losses(resumed), losses(reference), rtol=1e-5, atol=0)
    with pytest.raises(CheckpointError, match="train.tokens_per_update: checkpoint 512, now 256"):
        run(tmp_path, tiny_data, "third", run_dir="resumed", micro_batch_size=4, max_steps=6, tokens_per_update=256)


def test_identity_of_an_earlier_checkpoint_is_checked_on_what_it_recorded(tmp_path):
    from llmlab.train.record import check_resumable

    now = {"model.d_model": 64, "train.seq_len": 32, "train.tokens_per_update": 512, "train.seed": 0, "world_size": 1}
    earlier = {"model.d_model": 64, "train.seq_len": 32, "train.micro_batch_size": 8, "train.seed": 0, "world_size": 1}
    check_resumable(earlier, now, tmp_path)  # micro_batch_size retired, tokens_per_update not recorded then
    with pytest.raises(CheckpointError, match=r"train.seq_len: checkpoint 32, now 64"):
        check_resumable(earlier, {**now, "train.seq_len": 64}, tmp_path)
    with pytest.raises(CheckpointError, match=r"model.d_model: checkpoint 64, now None"):
        check_resumable(earlier, {k: v for k, v in now.items() if k != "model.d_model"}, tmp_path)
