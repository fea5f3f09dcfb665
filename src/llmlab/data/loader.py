"""Batches from prepared token files: memmapped, fixed (B, T), deterministic and resumable.

A window is seq_len + 1 consecutive tokens: window i gives x = tokens[i*T : i*T+T] and
y = tokens[i*T+1 : i*T+T+1]. Windows do not overlap and cross document boundaries (documents are
separated by the end-of-text id, which the model learns to predict).

Training: each epoch visits a seeded permutation of all full windows; a global batch is
batch_size * world_size consecutive entries of it, rank r taking the r-th slice (disjoint, and the
same global order for any world_size at equal global batch); leftover windows are dropped
(drop_last). State = (epoch, position), so a resumed loader yields exactly the batches the
uninterrupted one would have.

Evaluation: windows in file order, always (B, T) for torch.compile. Positions without a target
(the tail of the last window, rows that fill the last batch) have y = IGNORE_INDEX (-100, the
default ignore_index of F.cross_entropy) and x = 0; sum the loss with reduction="sum" and divide by
(y != IGNORE_INDEX).sum(). With max_windows=None every token after the first is predicted exactly
once, so the summed loss over the test split gives exact per-token, per-word and per-byte figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.data.meta import read_meta, split_info
from llmlab.data.sources import check_split
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
        self.steps_per_epoch = self.n_windows // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{data_dir}: the train split has {self.n_windows} windows of {seq_len + 1} tokens, fewer than one"
                f" global batch ({batch_size} x {world_size} processes): use a smaller seq_len or batch"
            )
        self._epoch, self._position = 0, 0
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
        global_batch = self.batch_size * self.world_size
        start = self._position * global_batch + self.rank * self.batch_size
        windows = self._order[start : start + self.batch_size]
        self._advance()
        return _gather(self.tokens, windows, self.seq_len)

    def _advance(self) -> None:
        self._position += 1
        if self._position == self.steps_per_epoch:
            self._epoch, self._position, self._order = self._epoch + 1, 0, None

    def state_dict(self) -> dict[str, Any]:
        """(epoch, position) of the next batch, plus the settings a resume must share."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "seq_len", "batch_size", "world_size", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"loader state was saved with {key} = {state[key]}, this loader has {getattr(self, key)}:"
                    " the data order would not resume exactly"
                )
        if "epoch" not in state or "position" not in state:
            raise DataError(f"loader state needs 'epoch' and 'position', got keys {sorted(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise DataError(f"loader state (epoch {epoch}, position {position}) is out of range")
        self._epoch, self._position, self._order = epoch, position, None


def eval_batches(
    data_dir: str | Path,
    split: str,
    seq_len: int,
    batch_size: int,
    *,
    max_windows: int | None = None,
    vocab_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (B, T) batches of the split's windows in order, the first max_windows (None = all,
    the last one partial); unused positions have y = IGNORE_INDEX (see the module docstring)."""
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be positive")
    tokens = open_split(data_dir, split, vocab_size)
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise DataError(f"{data_dir}: the {split} split has fewer than 2 tokens")
    n_windows = -(-n_targets // seq_len)  # ceil: the last window may be partial
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    for first in range(0, n_windows, batch_size):
        yield _eval_batch(tokens, first, min(batch_size, n_windows - first), seq_len, batch_size)


def _eval_batch(
    tokens: np.ndarray, first: int, rows: int, seq_len: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows first .. first+rows-1 in a (batch_size, seq_len) batch; the rest is padding."""
    x = np.zeros((batch_size, seq_len), dtype=np.int64)
    y = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int64)
    for r in range(rows):
        start = (first + r) * seq_len
        window = tokens[start : start + seq_len + 1]
        n = len(window) - 1
        x[r, :n], y[r, :n] = window[:-1], window[1:]
    return torch.from_numpy(x), torch.from_numpy(y)


__all__ = ["TrainLoader", "eval_batches", "open_split", "read_meta", "IGNORE_INDEX"]
