"""Which MoE dispatch runs where: the one-line advice printed at the start of `llmlab train` and by
`llmlab plan` (which kernel, where it is slow), and the refusal, before any work, of a dispatch that
torch.compile cannot trace on this device and dtype. Kept apart from the layer (model/moe.py):
train, infer, bench and the CLI ask these questions of a config, not of a module.
"""

from __future__ import annotations

import torch

from llmlab.config import MoEConfig, RunConfig
from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import ConfigError
from llmlab.model.moe import COMPILE_FIXES, check_grouped_compilable, grouped_kernel


def check_compilable(cfg: MoEConfig | None, *, compile: bool, dtype: torch.dtype | None, use: str = "train",
                     device: torch.device | str = "cpu") -> None:
    """A ConfigError, before any work, for a MoE that torch.compile cannot trace: `loop` (data-dependent
    shapes) at all, `grouped` on torch._grouped_mm in another dtype than bf16 (its meta kernel takes
    bf16 only; the Triton kernel compiles in any dtype). `dtype`: the compute dtype (the autocast
    dtype, else None or fp32). `use`: "train" or "decode", for the fix the message proposes.
    `device`: where it runs (it picks the grouped kernel)."""
    if cfg is None or not compile:
        return
    if cfg.dispatch == "loop":
        raise ConfigError(f"model.moe.dispatch = 'loop' is eager only (data-dependent shapes): {COMPILE_FIXES[use][0]}, "
                          "or use dispatch = 'grouped' or 'capacity'")
    if cfg.dispatch == "grouped":
        kernel = grouped_kernel(cfg, device)
        if kernel == "triton" and torch.device(device).type != "cuda":
            raise ConfigError("model.moe.grouped_kernel = 'triton' compiles on a CUDA GPU only: "
                              f"{COMPILE_FIXES[use][0]}, or use grouped_kernel = 'auto'")
        check_grouped_compilable(kernel, dtype, use)


def dispatch_advice(cfg: MoEConfig | None, device: torch.device | str, *, compile: bool = False,
                    dtype: torch.dtype | None = None) -> str | None:
    """One line for the start of `llmlab train` and for `llmlab plan`: which MoE dispatch will run
    on `device` (the configured one: nothing switches silently) and where it is slow or will not
    compile. None for a dense model. `compile` / `dtype`: the run's train.compile and compute dtype
    (autocast dtype, else fp32), when known."""
    if cfg is None:
        return None
    device = torch.device(device)
    if cfg.dispatch == "grouped":
        return _grouped_advice(cfg, device, compile, dtype)
    if cfg.dispatch == "capacity" and cfg.capacity_factor is None:
        return (f"MoE dispatch 'capacity' without capacity_factor: dropless, but each expert computes all "
                f"N token slots, {cfg.n_experts / cfg.top_k:.1f}x the top-k expert work; use 'grouped' "
                "(dropless, top-k work, on every device), or set a capacity_factor")
    if cfg.dispatch == "capacity":
        cf = cfg.capacity_factor
        return (f"MoE dispatch 'capacity' (factor {cf:g}): fixed (E, C, d) buffers + bmm, {cf:g}x the top-k "
                f"expert work, compiles in any dtype; assignments beyond C = ceil({cf:g} * top_k * tokens / "
                "n_experts) per expert and micro-batch are dropped (latest positions first) and counted per "
                "layer in moe_dropped_frac")
    return ("MoE dispatch 'loop': the per-expert reference, eager only (data-dependent shapes) and slow; "
            "train with 'grouped' or 'capacity'")


def _grouped_advice(cfg: MoEConfig, device: torch.device, compile: bool, dtype: torch.dtype | None) -> str:
    kernel = grouped_kernel(cfg, device)
    dtype_name = str(dtype or torch.float32).removeprefix("torch.")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"
        if kernel == "triton":
            return (f"MoE dispatch 'grouped' on {where}: dropless, top-k work, llmlab's Triton grouped GEMM "
                    "(no host sync, compiles and CUDA-graphs in any dtype; torch._grouped_mm's own kernel is sm90+ "
                    "only: below it the op syncs with the host and loops over experts, pytorch/pytorch#186620)")
        if (major, minor) < (9, 0):
            return (f"MoE dispatch 'grouped' with grouped_kernel = 'torch' on {where}: torch._grouped_mm has its "
                    "fast kernel on sm90+ only; below it falls back to a per-expert loop with a device-to-host "
                    "sync, very slow (pytorch/pytorch#186620): use model.moe.grouped_kernel = 'auto' (Triton)")
        advice = f"MoE dispatch 'grouped' on {where}: dropless, torch._grouped_mm's sm90+ kernel"
    else:
        advice = f"MoE dispatch 'grouped' on {device.type}: dropless, one matmul per expert ({kernel} kernel)"
    if compile and kernel == "torch" and dtype != torch.bfloat16:
        advice += (f"; torch.compile of it needs bf16 (torch._grouped_mm), this run is {dtype_name}: "
                   "set train.compile = false, or --set model.moe.dispatch=capacity (dropless without a "
                   "capacity_factor, but E x N slots of work)")
    return advice


def advice_by_variant(configs: dict[str, RunConfig]) -> dict[str, str]:
    """`dispatch_advice`'s line for each MoE variant of a campaign, on its training device and dtype."""
    out: dict[str, str] = {}
    for name, cfg in configs.items():
        device = resolve_device(cfg.train.device)
        message = dispatch_advice(cfg.model.moe, device, compile=cfg.train.compile,
                                  dtype=resolve_dtype(cfg.train.dtype, device))
        if message:
            out[name] = message
    return out
