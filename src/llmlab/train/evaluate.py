"""Evaluation on a split: `evaluate_split` (used during training) and `evaluate_run` (`llmlab eval`:
the latest good checkpoint of a run directory, on val or test), and the figures that compare with
the literature whatever the tokenizer: bits per byte, and word-level perplexity on WikiText.

Windows: by default the split is cut into non-overlapping seq_len windows (`eval_batches`), so a
token at offset j of its window is predicted from j tokens of context. With a stride s < seq_len
(`train.eval_stride`, `llmlab eval --stride`), windows start every s tokens and each one after the
first scores only its last s targets (`strided_batches`): every token but the first window's is
predicted from at least seq_len - s previous tokens, the sliding-window evaluation used for the
WikiText perplexities of GPT-2 and later papers. Either way every token of the split but the first
is predicted exactly once, so the summed loss gives exact per-token, per-byte and per-word figures.

End-of-text tokens (one after each document) are scored like any other token -- the model must
predict where a document ends -- and windows run across document boundaries; they add loss but no
bytes or words to the denominators (docs/methodology.md, "Evaluation").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmlab.config import RunConfig
from llmlab.data.loader import IGNORE_INDEX
from llmlab.errors import CheckpointError, ConfigError
from llmlab.device import resolve_device
from llmlab.runs import load_run_model
from llmlab.train.distributed import DistInfo
from llmlab.train.setup import autocast_dtype, compile_fn, prepare_data
from llmlab.train.step import Batch, EvalFn, bind_eval_loss, eval_context, evaluate

SPLITS = ("val", "test")
WORD_LEVEL_DATASETS = ("wikitext-103", "wikitext-2")
"""Corpora whose word count is the literature's denominator (Merity et al. 2016: whitespace words +
line ends); elsewhere (pydocs, folders, code) words are not the unit and no word perplexity is given."""


def split_figures(loss: float, split_meta: dict[str, Any], dataset: str) -> dict[str, float]:
    """Loss (nats per token), perplexity, bits per byte and (WikiText only) word perplexity.

    A full pass predicts every token of the split but the first: total NLL = loss x (tokens - 1)
    (end-of-text ids included), bits per byte = total NLL / (bytes x ln 2), word perplexity =
    exp(total NLL / words). Counts are the whole split's (meta.json), so the figures are exact on a
    full pass (test) and an estimate from the first windows on validation."""
    out = {"loss": loss, "ppl": _exp(loss)}
    tokens, n_bytes, words = (split_meta.get(k) for k in ("tokens", "bytes", "words"))
    if not tokens or tokens < 2:
        return out
    total_nll = loss * (tokens - 1)
    if n_bytes:
        out["bits_per_byte"] = total_nll / (n_bytes * math.log(2))
    if words and dataset in WORD_LEVEL_DATASETS:
        out["word_ppl"] = _exp(total_nll / words)
    return out


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def window_starts(n_targets: int, seq_len: int, stride: int) -> range:
    """Starts of the sliding windows: every `stride` tokens until a window reaches the last target
    (window k predicts tokens k*stride+1 .. k*stride+seq_len)."""
    more = max(0, -(-(n_targets - seq_len) // stride))  # ceil: windows after the first
    return range(0, (more + 1) * stride, stride)


def strided_batches(tokens: np.ndarray, seq_len: int, batch_size: int, stride: int) -> Iterator[Batch]:
    """Fixed (batch_size, seq_len) batches of sliding windows. A window after the first scores only
    its last `stride` targets (the others were scored by earlier windows with less context): their
    y is IGNORE_INDEX, as are the padding positions of the last window and of unused rows."""
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"the evaluation stride ({stride}) must be between 1 and seq_len ({seq_len})")
    starts = window_starts(len(tokens) - 1, seq_len, stride)
    for first in range(0, len(starts), batch_size):
        x = np.zeros((batch_size, seq_len), dtype=np.int64)
        y = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int64)
        for r, start in enumerate(starts[first:first + batch_size]):
            window = tokens[start:start + seq_len + 1]
            n = len(window) - 1
            x[r, :n], y[r, :n] = window[:-1], window[1:]
            if start > 0:
                y[r, :seq_len - stride] = IGNORE_INDEX  # already scored, with less context
        yield torch.from_numpy(x), torch.from_numpy(y)


def split_batches(cfg: RunConfig, data_dir: Path, split: str, max_windows: int | None,
                  stride: int) -> Iterator[Batch]:
    """The evaluation batches of a split: non-overlapping windows when stride = seq_len, else
    sliding windows over the same tokens (the first max_windows x seq_len targets, when given)."""
    from llmlab.data.loader import eval_batches, open_split

    tc = cfg.train
    if stride == tc.seq_len:
        return eval_batches(data_dir, split, tc.seq_len, tc.micro_batch_size, max_windows=max_windows,
                            vocab_size=cfg.model.vocab_size)
    tokens = open_split(data_dir, split, cfg.model.vocab_size)
    if max_windows is not None:
        tokens = tokens[:max_windows * tc.seq_len + 1]
    return strided_batches(tokens, tc.seq_len, tc.micro_batch_size, stride)


def evaluate_split(eval_fn: EvalFn, model: nn.Module,
                   cfg: RunConfig, data_dir: Path, meta: dict[str, Any], split: str,
                   max_windows: int | None, device: torch.device, stride: int | None = None) -> dict[str, float]:
    """Loss, perplexity, bits per byte, word perplexity (WikiText), tokens scored and the stride
    (None = train.eval_stride, whose 0 means seq_len: non-overlapping windows)."""
    stride = stride or cfg.train.eval_stride or cfg.train.seq_len
    with eval_context(model):
        loss, tokens = evaluate(eval_fn, split_batches(cfg, data_dir, split, max_windows, stride), device)
    figures = split_figures(loss, meta["splits"].get(split, {}), meta.get("dataset", ""))
    figures["tokens"] = tokens
    figures["stride"] = stride
    return figures


def evaluate_run(run_dir: str | Path, split: str = "val", device: str = "auto",
                 max_windows: int | None = None, stride: int | None = None) -> dict[str, Any]:
    """Evaluate the newest checkpoint that verifies. val uses train.eval_windows fixed windows
    unless max_windows is given; test is the whole split. stride: see `strided_batches` (None =
    the run's train.eval_stride)."""
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise CheckpointError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    cfg, entry, model = load_run_model(run_dir, info.device)
    if stride is not None and not 1 <= stride <= cfg.train.seq_len:
        raise ConfigError(f"--stride ({stride}) must be between 1 and the run's seq_len ({cfg.train.seq_len})")
    data_dir, meta = prepare_data(cfg.data, info)
    amp = autocast_dtype(cfg.train, info.device)
    windows = max_windows if max_windows is not None else (cfg.train.eval_windows if split == "val" else None)
    fn = compile_fn(bind_eval_loss(model, amp), cfg.train)
    figures = evaluate_split(fn, model, cfg, data_dir, meta, split, windows, info.device, stride)
    return {"run_dir": str(run_dir), "split": split, "step": entry.step, **figures}
