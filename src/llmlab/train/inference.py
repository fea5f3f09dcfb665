"""Load a run directory's newest good checkpoint: for `llmlab eval` and for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.config import RunConfig, load_run_config
from llmlab.errors import CheckpointError
from llmlab.train import checkpoint
from llmlab.train.checkpoint import Entry
from llmlab.train.distributed import resolve_device
from llmlab.train.setup import build_model


def load_run_model(run_dir: str | Path, device: torch.device) -> tuple[RunConfig, Entry, nn.Module]:
    """(resolved config, checkpoint entry, model with its weights on `device`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.toml): train it first")
    cfg = load_run_config(run_dir / "config.toml")
    found = checkpoint.load_latest(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir} has no usable checkpoint: train it first")
    entry, state = found
    model = build_model(cfg.model, cfg.train.seed, device)
    model.load_state_dict(state["model"])
    return cfg, entry, model


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode on `device`, the run's tokenizer)."""
    from llmlab.data.tokenizers import get_tokenizer

    cfg, _, model = load_run_model(run_dir, resolve_device(device))
    return model.eval(), get_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_file or None)
