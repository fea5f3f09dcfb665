"""Fixtures for the export tests: run directories of tiny models (d=64, 2 layers), either trained
for a few steps by `llmlab.train.train` on a generated corpus (byte tokenizer), or written from a
checkpoint of random weights (any config or tokenizer: GPT-2, refused architectures)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from llmlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, build_dataclass, dump_toml, to_dict

TINY_MODEL = {"vocab_size": 257, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "head_dim": 16,
              "d_ff": 128, "max_seq_len": 64}
TINY_TRAIN = {"seq_len": 32, "micro_batch_size": 4, "max_steps": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup": 1,
              "dtype": "fp32", "device": "cpu", "eval_interval": 0, "eval_windows": 2, "ckpt_interval": 0,
              "log_interval": 1, "seed": 0}


@pytest.fixture(scope="session")
def byte_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated corpus, byte-tokenized: the same bytes on every machine."""
    from llmlab.data.prepare import ensure_prepared

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(7)
    words = ["the", "model", "token", "expert", "cache", "head", "loss", "of", "a", "and", "export"]
    for split, n_docs in (("train", 40), ("val", 4), ("test", 4)):
        (root / "text" / split).mkdir(parents=True)
        for i in range(n_docs):
            (root / "text" / split / f"{i:03d}.txt").write_text(" ".join(rng.choice(words) for _ in range(200)))
    cfg = DataConfig(dataset=str(root / "text"), tokenizer="byte", dir=str(root / "tokens"))
    return ensure_prepared(cfg, progress=False)


def _run_config(model: dict[str, Any], data: DataConfig) -> RunConfig:
    return RunConfig(model=build_dataclass(ModelConfig, {**TINY_MODEL, **model}, "model"),
                     data=data, train=TrainConfig(**TINY_TRAIN))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, byte_corpus: Path) -> Callable[..., Path]:
    """trained_run(name, **model overrides) -> a run directory trained for 4 steps (once per name)."""
    from llmlab.train import train

    root, done = tmp_path_factory.mktemp("runs"), {}
    data = DataConfig(dataset=str(byte_corpus.parent / "text"), tokenizer="byte", dir=str(byte_corpus))

    def make(name: str, **model: Any) -> Path:
        if name not in done:
            outcome = train(_run_config(model, data), root / name)
            assert outcome.exit_code == 0
            done[name] = root / name
        return done[name]

    return make


@pytest.fixture
def checkpoint_run(tmp_path: Path) -> Callable[..., Path]:
    """checkpoint_run(tokenizer="byte", **model overrides) -> a run directory holding one checkpoint
    of random weights, norm gains included (all 1 at init, they would hide a mix-up of norms)."""
    from llmlab.model import GPT
    from llmlab import checkpoint

    def make(tokenizer: str = "byte", **model: Any) -> Path:
        cfg = _run_config(model, DataConfig(dataset="pydocs", tokenizer=tokenizer))
        torch.manual_seed(0)
        gpt = GPT(cfg.model)
        with torch.no_grad():
            for name, p in gpt.named_parameters():
                if "norm" in name:
                    p.normal_(1.0, 0.2)
        run_dir = tmp_path / f"run-{tokenizer}-{len(list(tmp_path.iterdir()))}"
        run_dir.mkdir()
        (run_dir / "config.toml").write_text(dump_toml(to_dict(cfg)))
        checkpoint.save(run_dir, 1, {"model": gpt.state_dict()}, keep=1)
        return run_dir

    return make
