"""Fixtures for the training tests: the embedded pydocs corpus with the byte tokenizer (vocab 257,
prepared once per session, offline), tiny run configs (~90K parameters, seq_len 32, CPU, fp32),
and a helper that runs `python -m llmlab ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from llmlab.config import DataConfig, deep_merge, dump_toml

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


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the machine is small and shared, and OpenMP threads that wait for a busy
    core make tiny matmuls 10x slower. (Subprocesses get OMP_NUM_THREADS=1.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pydocs tokenized with the byte tokenizer (~2.1M train tokens), once per session."""
    from llmlab.data.prepare import ensure_prepared

    out = tmp_path_factory.mktemp("data") / "pydocs-byte"
    return ensure_prepared(DataConfig(dataset="pydocs", tokenizer="byte", dir=str(out)), progress=False)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated corpus (train/, val/, test/ folders of .txt) with the byte tokenizer: the same
    bytes on every machine and Python version, unlike pydocs (the standard library's docstrings),
    so a golden loss file can pin it."""
    import random

    from llmlab.data.prepare import ensure_prepared

    root = tmp_path_factory.mktemp("synthetic")
    rng = random.Random(1234)
    words = ["the", "model", "token", "layer", "expert", "cache", "head", "loss", "step", "data", "of", "a", "and"]
    for split, n_docs in (("train", 120), ("val", 8), ("test", 8)):
        (root / "text" / split).mkdir(parents=True)
        for i in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(300)) + ".\n"
            (root / "text" / split / f"{i:04d}.txt").write_text(text)
    cfg = DataConfig(dataset=str(root / "text"), tokenizer="byte", dir=str(root / "tokens"))
    return ensure_prepared(cfg, progress=False)


@pytest.fixture
def make_config(tmp_path: Path, byte_data: Path) -> Callable[..., Path]:
    """make_config(variant="dense", name="run.toml", model={...}, train={...}, data=None) -> a run
    TOML path; `data` = a prepared folder from another fixture (default: pydocs, byte)."""

    def make(variant: str = "dense", name: str = "run.toml", model: dict | None = None,
             train: dict | None = None, data: Path | None = None) -> Path:
        config = {
            "model": deep_merge(deep_merge(TINY_MODEL, VARIANTS[variant]), model or {}),
            "data": _data_table(data or byte_data),
            "train": {**TINY_TRAIN, **(train or {})},
        }
        path = tmp_path / name
        path.write_text(dump_toml(config))
        return path

    return make


@pytest.fixture
def llmlab_cmd() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m llmlab ARGS` (one thread: deterministic and light on a shared machine)."""

    def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmlab", *args], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env(), **kwargs)

    return run


def _data_table(prepared: Path) -> dict[str, str]:
    from llmlab.data.loader import read_meta

    meta = read_meta(prepared)
    dataset = "pydocs" if meta["dataset"] == "pydocs" else str(Path(prepared).parent / "text")
    return {"dataset": dataset, "tokenizer": "byte", "dir": str(prepared)}


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The training rows of metrics.jsonl (those with a loss)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r and "event" not in r]


@pytest.fixture
def rows_of() -> Callable[[Path], list[dict[str, Any]]]:
    return train_rows
