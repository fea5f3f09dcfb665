"""Device and precision choices shared by train, infer, bench and campaign (torch-level, so not
in `llmlab.config`, which stays free of torch)."""

from __future__ import annotations

import warnings

import torch

from llmlab.config import PRECISIONS
from llmlab.errors import ConfigError


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {pref!r} requested but CUDA is not available (use auto or cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def torch_dtype(name: str) -> torch.dtype:
    """fp32 / bf16 -> the torch dtype."""
    if name not in PRECISIONS:
        raise ConfigError(f"dtype must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return getattr(torch, PRECISIONS[name])


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The one dtype rule. auto: bf16 on CUDA (half the bytes read per token), fp32 on CPU, where
    bf16 matmuls are hundreds of times slower than fp32 on most chips (DESIGN.md section 5)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return torch_dtype(name)


def autocast_dtype(name: str, device: torch.device | str) -> torch.dtype | None:
    """resolve_dtype for mixed precision: the dtype autocast runs the matmuls in, None for plain
    fp32 (master weights stay fp32 either way)."""
    dtype = resolve_dtype(name, device)
    if dtype == torch.float32:
        return None
    if torch.device(device).type == "cpu":
        warnings.warn(f"dtype {name} on CPU is usually far slower than fp32", stacklevel=2)
    return dtype
