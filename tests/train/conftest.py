"""Fixtures for the training tests: the embedded pydocs corpus and a generated one, both with the
byte tokenizer (vocab 257), prepared once per session, offline; tiny run configs; a thread cap."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from trainkit import subprocess_env, train_rows, write_config

from llmlab.config import DataConfig


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
        return write_config(tmp_path / name, data or byte_data, variant, model, train)

    return make


@pytest.fixture
def llmlab_cmd() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m llmlab ARGS` in a subprocess."""

    def run(*args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmlab", *args], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env(), **kwargs)

    return run


@pytest.fixture
def rows_of() -> Callable[[Path], list[dict[str, Any]]]:
    return train_rows
