"""Loading a model for inference: a trained run's weights and tokenizer, or a config's random
weights (`llmlab generate`, `eval`, `export`, the campaign's decode sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmlab.checkpoint import Entry, load_latest
from llmlab.config import RunConfig, load_model_config, load_run_config
from llmlab.data.tokenizers import get_tokenizer  # a run knows its tokenizer
from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import CheckpointError, ConfigError
from llmlab.model import GPT
from llmlab.runs import CONFIG_FILE, resolve_run_dir


def load_run_model(run_dir: str | Path, device: torch.device) -> tuple[RunConfig, Entry, GPT]:
    """(resolved config, checkpoint entry, GPT with the newest good weights on `device`). A
    campaign's variant folder stands for its seed-0 run (`runs.resolve_run_dir`)."""
    run_dir = resolve_run_dir(run_dir)
    cfg = load_run_config(run_dir / CONFIG_FILE)
    found = load_latest(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir} has no usable checkpoint: train it first")
    entry, state = found
    model = GPT(cfg.model)
    model.load_state_dict(state["model"])  # every weight comes from the checkpoint: no seed needed
    return cfg, entry, model.to(device)


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[GPT, Any]:
    """(GPT in eval mode on `device`, the run's tokenizer). `device` may be "auto"."""
    cfg, _, model = load_run_model(run_dir, resolve_device(device))
    return model.eval(), get_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_file or None)


def load_run_or_config(source: str, overrides: list[str], device: str, seed: int, dtype: str = "fp32"
                ) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer or None). A directory = a training run; a file = a config."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{source}: no such run directory or config file")
    if path.is_dir():
        if overrides:
            raise ConfigError(f"--set applies to a config file; {source} is a run directory, whose model is "
                              "the one it trained: drop --set")
        model, tokenizer = load_for_inference(path, device=device)
    else:
        torch.manual_seed(seed)
        model, tokenizer = GPT(load_model_config(path, overrides)).to(device), None
    return model.to(resolve_dtype(dtype, device)).eval(), tokenizer
