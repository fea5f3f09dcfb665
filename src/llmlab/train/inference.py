"""Load a run directory's newest good checkpoint for inference: the model and the run's tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmlab.config import load_run_config
from llmlab.errors import CheckpointError
from llmlab.model import GPT
from llmlab.train import checkpoint
from llmlab.train.distributed import resolve_device


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[GPT, Any]:
    """(model in eval mode on `device`, tokenizer). Raises CheckpointError when there is nothing to load."""
    from llmlab.data.tokenizers import get_tokenizer

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.toml): train it first")
    cfg = load_run_config(run_dir / "config.toml")
    found = checkpoint.load_latest(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir} has no usable checkpoint: train it first")
    model = GPT(cfg.model)
    model.load_state_dict(found[1]["model"])
    tokenizer = get_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_file or None)
    return model.to(resolve_device(device)).eval(), tokenizer
