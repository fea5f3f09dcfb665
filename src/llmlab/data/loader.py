"""Batches from prepared token files: memmapped, fixed (B, T), deterministic and resumable.

A window is seq_len + 1 consecutive tokens: window i gives x = tokens[i*T : i*T+T] and
y = tokens[i*T+1 : i*T+T+1]. Windows do not overlap and cross document boundaries (documents are
separated by the end-of-text id, which the model learns to predict).

Training: each epoch visits a seeded permutation of all full windows, cut into updates of
`windows_per_update` (= tokens_per_update / seq_len) consecutive entries; the windows left over
after the last full update are dropped (drop_last). Within an update, micro-step a gives rank r
the entries a * B * W + r * B onwards (B = batch_size, W = world_size): disjoint slices. The
permutation, the epoch length and the dropped tail depend on the seed, seq_len and the update size
only, so the windows each update sees are the same for any micro-batch size and process count
that divide it. State = (epoch, windows of the epoch already served), so a resumed loader yields
exactly the batches the uninterrupted one would have, also with another batch_size.

Evaluation: windows in file order (non-overlapping, or one every `stride` tokens), always (B, T)
for torch.compile. Positions without a target (the tail of the last window, rows that fill the
last batch, targets an earlier window already scored) have y = IGNORE_INDEX (-100, the default
ignore_index of F.cross_entropy), and x = 0 where there is no token; sum the loss with
reduction="sum" and divide by (y != IGNORE_INDEX).sum(). With max_windows=None every token after
the first is predicted exactly once, so the summed loss over the test split gives exact
per-token, per-word and per-byte figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.data.corpus import check_split
from llmlab.data.meta import read_meta, split_info
from llmlab.data.tokenfile import open_tokens
from llmlab.errors import DataError

IGNORE_INDEX = -100
"""Targets that carry no loss (F.cross_entropy's default ignore_index); the one definition."""


def open_split(data_dir: str | Path, split: str, vocab_size: int | None = None) -> np.ndarray:
    """The split's tokens (memmap), after checking header, size, ids and vocabulary against meta.json."""
    check_split(split)
    meta = read_meta(data_dir)
    info = split_info(meta, split, data_dir)
    path = Path(data_dir) / info["file"]
    data_vocab = int(meta["tokenizer"]["vocab_size"])
    if vocab_size is not None and vocab_size != data_vocab:
        raise DataError(
            f"{path}: tokenized with {meta['tokenizer']['name']} (vocabulary {data_vocab:,}) but the model has"
            f" vocab_size {vocab_size:,}: set model.vocab_size = {data_vocab} or prepare the data with the model's"
            " tokenizer"
        )
    tokens = open_tokens(path, data_vocab)
    if len(tokens) != info["tokens"]:
        raise DataError(
            f"{path}: holds {len(tokens):,} tokens but meta.json says {info['tokens']:,}; re-run llmlab prepare --force"
        )
    return tokens


def _gather(tokens: np.ndarray, windows: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (B,) -> x, y (B, T) int64."""
    index = windows[:, None] * seq_len + np.arange(seq_len + 1)  # (B, T+1)
    buf = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))  # (B, T+1)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class TrainLoader:
    """Endless (B, T) training batches: x, y = y shifted by one; see the module docstring."""

    def __init__(
        self,
        data_dir: str | Path,
        seq_len: int,
        batch_size: int,
        *,
        windows_per_update: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        vocab_size: int | None = None,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be positive")
        if not 0 <= rank < world_size:
            raise DataError(f"rank ({rank}) must be in [0, world_size ({world_size}))")
        self.tokens = open_split(data_dir, "train", vocab_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_windows = max(0, (len(self.tokens) - 1) // seq_len)
        self.windows_per_step = batch_size * world_size  # one micro-step, all ranks
        self.windows_per_update = windows_per_update or self.windows_per_step
        if self.windows_per_update % self.windows_per_step:
            raise DataError(
                f"windows_per_update ({self.windows_per_update}) must be a multiple of batch_size ({batch_size})"
                f" x world_size ({world_size}) = {self.windows_per_step}"
            )
        self.updates_per_epoch = self.n_windows // self.windows_per_update
        self.steps_per_epoch = self.updates_per_epoch * (self.windows_per_update // self.windows_per_step)
        if self.updates_per_epoch == 0:
            raise DataError(
                f"{data_dir}: the train split has {self.n_windows} windows of {seq_len + 1} tokens, fewer than one"
                f" update ({self.windows_per_update} windows): use a smaller seq_len or tokens_per_update"
            )
        self._epoch, self._position = 0, 0  # position: micro-steps of this epoch already served
        self._order: np.ndarray | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the next batch (0-based)."""
        return self._epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of window indices visited in `epoch` (all ranks)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None:
            self._order = self.epoch_order(self._epoch)
        start = self._position * self.windows_per_step + self.rank * self.batch_size
        windows = self._order[start : start + self.batch_size]
        self._advance()
        return _gather(self.tokens, windows, self.seq_len)

    def _advance(self) -> None:
        self._position += 1
        if self._position == self.steps_per_epoch:
            self._epoch, self._position, self._order = self._epoch + 1, 0, None

    def state_dict(self) -> dict[str, Any]:
        """(epoch, windows of it served) of the next batch, plus the settings a resume must share.
        Counted in windows, not micro-steps, so that a resume may change batch_size."""
        return {
            "epoch": self._epoch,
            "served": self._position * self.windows_per_step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "windows_per_update": self.windows_per_update,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "seq_len", "windows_per_update", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"loader state was saved with {key} = {state[key]}, this loader has {getattr(self, key)}:"
                    " the data order would not resume exactly"
                )
        if "epoch" not in state or not ("served" in state or "position" in state):
            raise DataError(f"loader state needs 'epoch' and 'served', got keys {sorted(state)}")
        epoch, served = int(state["epoch"]), _served(state, self.world_size)
        if epoch < 0 or not 0 <= served < self.steps_per_epoch * self.windows_per_step:
            raise DataError(f"loader state (epoch {epoch}, {served} windows served) is out of range")
        if served % self.windows_per_step:
            raise DataError(
                f"loader state was saved {served} windows into epoch {epoch}, not a whole number of micro-steps of"
                f" {self.batch_size} x {self.world_size} windows: resume with the micro_batch_size it was saved with"
            )
        self._epoch, self._position, self._order = epoch, served // self.windows_per_step, None


def _served(state: dict[str, Any], world_size: int) -> int:
    """Windows of the epoch already served; states written before llmlab counted in windows have
    (position, batch_size) in micro-steps instead."""
    if "served" in state:
        return int(state["served"])
    return int(state["position"]) * int(state["batch_size"]) * int(state.get("world_size", world_size))


def eval_batches(
    data_dir: str | Path,
    split: str,
    seq_len: int,
    batch_size: int,
    *,
    max_windows: int | None = None,
    vocab_size: int | None = None,
    stride: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (B, T) batches of the split's windows in order, over its first max_windows x seq_len
    targets (None = all; the last window may be partial); unused positions have y = IGNORE_INDEX
    (see the module docstring).

    stride (None = seq_len: non-overlapping windows): windows start every `stride` tokens and each
    one after the first scores only its last `stride` targets -- the others were scored by earlier
    windows, with less context -- so every target is still scored exactly once (the sliding-window
    evaluation of GPT-2's WikiText perplexities)."""
    stride = seq_len if stride is None else stride
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be positive")
    if not 1 <= stride <= seq_len:
        raise DataError(f"the evaluation stride ({stride}) must be between 1 and seq_len ({seq_len})")
    tokens = open_split(data_dir, split, vocab_size)
    if len(tokens) < 2:
        raise DataError(f"{data_dir}: the {split} split has fewer than 2 tokens")
    if max_windows is not None:
        tokens = tokens[: max_windows * seq_len + 1]
    starts = window_starts(len(tokens) - 1, seq_len, stride)
    for first in range(0, len(starts), batch_size):
        yield _eval_batch(tokens, starts[first : first + batch_size], seq_len, batch_size, stride)


def window_starts(n_targets: int, seq_len: int, stride: int) -> range:
    """Starts of the evaluation windows: every `stride` tokens until a window reaches the last
    target (window k predicts tokens k*stride+1 .. k*stride+seq_len)."""
    more = max(0, -(-(n_targets - seq_len) // stride))  # ceil: windows after the first
    return range(0, (more + 1) * stride, stride)


def _eval_batch(
    tokens: np.ndarray, starts: range, seq_len: int, batch_size: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows at `starts` in a (batch_size, seq_len) batch; the rest is padding."""
    x = np.zeros((batch_size, seq_len), dtype=np.int64)
    y = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int64)
    for r, start in enumerate(starts):
        window = tokens[start : start + seq_len + 1]
        n = len(window) - 1
        x[r, :n], y[r, :n] = window[:-1], window[1:]
        if start > 0:
            y[r, : seq_len - stride] = IGNORE_INDEX  # already scored, with less context
    return torch.from_numpy(x), torch.from_numpy(y)


__all__ = ["TrainLoader", "eval_batches", "window_starts", "open_split", "read_meta", "IGNORE_INDEX"]
