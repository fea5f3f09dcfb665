"""Evaluation on a split: `evaluate_split` (used during training) and `evaluate_run` (`llmlab eval`:
the latest good checkpoint of a run directory, on val or test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.config import RunConfig
from llmlab.errors import CheckpointError
from llmlab.device import resolve_device
from llmlab.runs import load_run_model
from llmlab.train.distributed import DistInfo
from llmlab.train.setup import autocast_dtype, compile_fn, prepare_data, split_figures
from llmlab.train.step import EvalFn, bind_eval_loss, eval_context, evaluate

SPLITS = ("val", "test")


def evaluate_split(eval_fn: EvalFn, model: nn.Module,
                   cfg: RunConfig, data_dir: Path, meta: dict[str, Any], split: str,
                   max_windows: int | None, device: torch.device) -> dict[str, float]:
    """Loss, perplexity, bits per byte, word perplexity (when known) and tokens evaluated."""
    from llmlab.data.loader import eval_batches

    tc = cfg.train
    batches = eval_batches(data_dir, split, tc.seq_len, tc.micro_batch_size, max_windows=max_windows,
                           vocab_size=cfg.model.vocab_size)
    with eval_context(model):
        loss, tokens = evaluate(eval_fn, batches, device)
    figures = split_figures(loss, meta["splits"].get(split, {}))
    figures["tokens"] = tokens
    return figures


def evaluate_run(run_dir: str | Path, split: str = "val", device: str = "auto",
                 max_windows: int | None = None) -> dict[str, Any]:
    """Evaluate the newest checkpoint that verifies. val uses train.eval_windows fixed windows
    unless max_windows is given; test is the whole split."""
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise CheckpointError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    cfg, entry, model = load_run_model(run_dir, info.device)
    data_dir, meta = prepare_data(cfg.data, info)
    amp = autocast_dtype(cfg.train, info.device)
    windows = max_windows if max_windows is not None else (cfg.train.eval_windows if split == "val" else None)
    fn = compile_fn(bind_eval_loss(model, amp), cfg.train)
    figures = evaluate_split(fn, model, cfg, data_dir, meta, split, windows, info.device)
    return {"run_dir": str(run_dir), "split": split, "step": entry.step, **figures}
