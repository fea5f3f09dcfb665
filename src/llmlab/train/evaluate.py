"""Evaluation on a split: `evaluate_split` (used during training) and `evaluate_run` (`llmlab eval`:
the latest good checkpoint of a run directory, on val or test), and the figures that compare with
the literature whatever the tokenizer: bits per byte, and word-level perplexity on WikiText.

Windows (`llmlab.data.loader.eval_batches`): by default the split is cut into non-overlapping
seq_len windows, so a token at offset j of its window is predicted from j tokens of context. With
a stride s < seq_len (`train.eval_stride`, `llmlab eval --stride`), windows start every s tokens
and each one after the first scores only its last s targets: every token but the first window's is
predicted from at least seq_len - s previous tokens, the sliding-window evaluation used for the
WikiText perplexities of GPT-2 and later papers. Either way every token of the split but the first
is predicted exactly once, so the summed loss gives exact per-token, per-byte and per-word figures.

End-of-text tokens (one after each document) are scored like any other token -- the model must
predict where a document ends -- and windows run across document boundaries; they add loss but no
bytes or words to the denominators (docs/methodology.md, "Evaluation").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.config import RunConfig
from llmlab.data.corpus import WIKITEXT
from llmlab.data.loader import eval_batches
from llmlab.device import autocast_dtype, resolve_device
from llmlab.errors import CheckpointError, ConfigError
from llmlab.infer.load import load_run_model
from llmlab.runs import resolve_run_dir
from llmlab.train.distributed import DistInfo
from llmlab.train.setup import compile_fn, prepare_data
from llmlab.train.step import EvalFn, bind_eval_loss, eval_context, evaluate_windows

SPLITS = ("val", "test")


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
    # WikiText's word count is the literature's denominator (Merity et al. 2016: whitespace words +
    # line ends); elsewhere (pydocs, folders, code) words are not the unit: no word perplexity.
    if words and dataset in WIKITEXT:
        out["word_ppl"] = _exp(total_nll / words)
    return out


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def evaluate_split(eval_fn: EvalFn, model: nn.Module,
                   cfg: RunConfig, data_dir: Path, meta: dict[str, Any], split: str,
                   max_windows: int | None, device: torch.device, stride: int | None = None,
                   keep_windows: bool = False) -> dict[str, Any]:
    """Loss, perplexity, bits per byte, word perplexity (WikiText), tokens scored and the stride
    (None = train.eval_stride, whose 0 means seq_len: non-overlapping windows). keep_windows adds
    "windows": the per-window losses (step.WindowLosses) a bootstrap over test windows needs."""
    tc = cfg.train
    stride = stride or tc.eval_stride or tc.seq_len
    batches = eval_batches(data_dir, split, tc.seq_len, tc.micro_batch_size, max_windows=max_windows,
                           vocab_size=cfg.model.vocab_size, stride=stride)
    with eval_context(model):
        windows = evaluate_windows(eval_fn, batches, device)
    figures: dict[str, Any] = split_figures(windows.mean, meta["splits"].get(split, {}), meta.get("dataset", ""))
    figures["tokens"] = windows.n_tokens
    figures["stride"] = stride
    if keep_windows:
        figures["windows"] = windows
    return figures


def evaluate_run(run_dir: str | Path, split: str = "val", device: str = "auto",
                 max_windows: int | None = None, stride: int | None = None) -> dict[str, Any]:
    """Evaluate the newest checkpoint that verifies. val uses train.eval_windows fixed windows
    unless max_windows is given; test is the whole split. stride: see `eval_batches` (None =
    the run's train.eval_stride). A variant folder stands for its seed-0 run."""
    run_dir = resolve_run_dir(run_dir)
    if split not in SPLITS:
        raise CheckpointError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    cfg, entry, model = load_run_model(run_dir, info.device)
    if stride is not None and not 1 <= stride <= cfg.train.seq_len:
        raise ConfigError(f"--stride ({stride}) must be between 1 and the run's seq_len ({cfg.train.seq_len})")
    data_dir, meta = prepare_data(cfg.data, info)
    amp = autocast_dtype(cfg.train.dtype, info.device)
    windows = max_windows if max_windows is not None else (cfg.train.eval_windows if split == "val" else None)
    fn = compile_fn(bind_eval_loss(model, amp), cfg.train)
    figures = evaluate_split(fn, model, cfg, data_dir, meta, split, windows, info.device, stride)
    return {"run_dir": str(run_dir), "split": split, "step": entry.step, **figures}
