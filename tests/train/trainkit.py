"""Helpers for the training tests (plain functions; the fixtures are in conftest.py): tiny run
configs (~90K parameters, seq_len 32, CPU, fp32), metrics rows, subprocess environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmlab.config import deep_merge, dump_toml
from llmlab.runs import read_metrics

TINY_MODEL = {
    "vocab_size": 257, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "head_dim": 16,
    "d_ff": 128, "max_seq_len": 64, "norm": "rmsnorm", "pos": "rope", "mlp": "swiglu",
}
VARIANTS = {
    "dense": {},
    "gqa": {"n_heads": 6, "n_kv_heads": 2},
    "moe": {"n_heads": 6, "n_kv_heads": 2,
            "moe": {"n_experts": 4, "top_k": 2, "d_ff_expert": 64, "dispatch": "capacity", "capacity_factor": 1.5}},
}
TINY_TRAIN = {
    "seq_len": 32, "micro_batch_size": 8, "tokens_per_update": 512, "max_steps": 30,
    "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "dtype": "fp32", "device": "cpu",
    "eval_interval": 0, "eval_windows": 8, "ckpt_interval": 0, "log_interval": 1, "seed": 0,
}


def write_config(path: Path, prepared: Path, variant: str = "dense", model: dict | None = None,
                 train: dict | None = None) -> Path:
    """A run TOML for a tiny `variant` on the prepared byte-tokenized folder `prepared`."""
    config = {
        "model": deep_merge(deep_merge(TINY_MODEL, VARIANTS[variant]), model or {}),
        "data": _data_table(prepared),
        "train": {**TINY_TRAIN, **(train or {})},
    }
    path.write_text(dump_toml(config))
    return path


def _data_table(prepared: Path) -> dict[str, str]:
    from llmlab.data.loader import read_meta

    meta = read_meta(prepared)
    dataset = "pydocs" if meta["dataset"] == "pydocs" else str(Path(prepared).parent / "text")
    return {"dataset": dataset, "tokenizer": "byte", "dir": str(prepared)}


def subprocess_env() -> dict[str, str]:
    """One thread per process: deterministic, and light on a small shared machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The training rows of metrics.jsonl (those with a loss)."""
    return [r for r in read_metrics(run_dir) if "loss" in r and "event" not in r]
