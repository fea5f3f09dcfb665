"""Building blocks shared by `llmlab train`, `llmlab eval` and the training benchmarks: data, the
model, the one training-step builder (`build_trainable`), compilation, RNG state. (The per-split
figures are in llmlab.train.evaluate.)"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from llmlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from llmlab.data.loader import read_meta
from llmlab.data.prepare import ensure_prepared
from llmlab.model import GPT
from llmlab.train import distributed
from llmlab.train.distributed import DistInfo, barrier
from llmlab.train.optim import build_optimizer
from llmlab.train.step import LossHead


def prepare_data(data_cfg: DataConfig, info: DistInfo) -> tuple[Path, dict[str, Any]]:
    """Prepare the token files once (rank 0 first, the others wait) and read their meta. (The
    loader checks that the model's vocab_size equals the tokenizer's, naming both.)"""
    if info.is_main:
        ensure_prepared(data_cfg, progress=True)
    barrier()
    data_dir = Path(data_cfg.resolved_dir)
    return data_dir, read_meta(data_dir)


def build_model(model_cfg: ModelConfig, seed: int, device: torch.device) -> nn.Module:
    """The GPT in fp32 master weights (autocast does the low-precision matmuls), seeded: the
    initial weights depend on the seed alone, on every rank."""
    torch.manual_seed(seed)
    model = GPT(model_cfg)
    return model.to(device)


def compile_fn(fn: Callable, cfg: TrainConfig, fullgraph: bool = True) -> Callable:
    """torch.compile with the run's backend; the identity when compile is off. fullgraph=True turns
    a graph break into an error instead of a silent slowdown (DESIGN.md section 6)."""
    if not cfg.compile:
        return fn
    return torch.compile(fn, backend=cfg.compile_backend, fullgraph=fullgraph, dynamic=False)


@dataclass
class Trainable:
    """What one training step updates: the model, the module a step calls (its loss head, wrapped
    for DDP / FSDP and compiled as asked) and the optimizer over the model's parameters."""

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer


def build_trainable(cfg: RunConfig, device: torch.device, amp: torch.dtype | None, *, seed: int,
                    compile: bool, info: DistInfo | None = None) -> Trainable:
    """The one training-step builder: `llmlab train` (info: its ranks) and every training benchmark
    (`bench train`, `gpu_check`, `plan --measure-cpu`) time and train the same model, loss head,
    compilation and AdamW. DDP's optimizer splits graphs at gradient-bucket boundaries (overlapping
    all-reduce with backward), so fullgraph is for single-process and FSDP runs only."""
    model = build_model(cfg.model, seed, device)
    module: nn.Module = LossHead(model, amp, device.type)
    if info is not None:
        module = distributed.wrap_for_training(module, model, info, cfg.train.parallelism)
    if compile:
        module = torch.compile(module, backend=cfg.train.compile_backend,
                               fullgraph=not distributed.is_ddp(module), dynamic=False)
    return Trainable(model, module, build_optimizer(model, cfg.train, device))


# ---------------------------------------------------------------------------------------------
# RNG state (every generator the run may touch)


def rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # as plain lists: checkpoints load with weights_only=True, which refuses numpy arrays
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x: Any) -> Any:
    """random.setstate wants the tuples that a round trip through pickling may turn into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
