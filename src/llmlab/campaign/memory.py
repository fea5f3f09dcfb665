"""What GQA buys in memory: per variant, KV bytes per token and, under a memory budget, the longest
context at batch 1 and the largest batch at the campaign's seq_len that fit (weights + buffers + KV
cache + decode activations, from `llmlab.model.accounting.inference_memory`).

The budget defaults to the device's memory: a CUDA device's total memory, or on a CPU the
machine's RAM (MemTotal in /proc/meminfo). Figures are for decoding in the dtype the campaign
measures in: bf16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmlab.config import ModelConfig
from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import ConfigError
from llmlab.model.accounting import inference_memory, max_fit

GIB = 1 << 30


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of a CUDA device, or the machine's RAM for a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        raise ConfigError("cannot read this machine's memory (no /proc/meminfo): pass --memory-gb")
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise ConfigError("/proc/meminfo has no MemTotal line: pass --memory-gb")


def memory_budget(memory_gb: float | None, device: torch.device) -> tuple[int, str]:
    """(budget in bytes, where it comes from) from --memory-gb (GiB) or the device."""
    if memory_gb is None:
        return device_memory_bytes(device), f"{device.type} memory"
    if memory_gb <= 0:
        raise ConfigError(f"--memory-gb must be > 0; got {memory_gb}")
    return int(memory_gb * GIB), "--memory-gb"


def memory_row(name: str, cfg: ModelConfig, seq_len: int, budget: int, dtype_bytes: int) -> dict[str, Any]:
    """One variant's figures: KV bytes per token, memory at batch 1 x seq_len, what fits."""
    at_seq_len = inference_memory(cfg, 1, seq_len, dtype_bytes)
    return {
        "variant": name,
        "kv_bytes_per_token": at_seq_len["kv_cache"] // seq_len,
        "weights_bytes": at_seq_len["weights"],
        "bytes_batch1_seq_len": at_seq_len["total"],
        "max_context_batch1": max_fit(cfg, budget, batch=1, dtype_bytes=dtype_bytes),
        "max_seq_len": cfg.max_seq_len,
        "max_batch_at_seq_len": max_fit(cfg, budget, context=seq_len, dtype_bytes=dtype_bytes),
        "seq_len": seq_len,
    }


def memory_table(variants: list[tuple[str, ModelConfig, bool]], seq_len: int, budget: int, dtype_bytes: int
                 ) -> list[dict[str, Any]]:
    """memory_row for each (name, model config, ablation), with the ratios to the first variant."""
    rows = [memory_row(name, cfg, seq_len, budget, dtype_bytes) | {"ablation": ablation}
            for name, cfg, ablation in variants]
    ref = rows[0]
    for row in rows:
        for key in ("max_context_batch1", "max_batch_at_seq_len"):
            row[f"{key}_vs_first"] = row[key] / ref[key] if ref[key] else None
    return rows


MEMORY_COLUMNS = [  # (key, header, format) for print_table and the report
    ("variant", "variant", ""),
    ("kv_bytes_per_token", "KV B/token", ",d"),
    ("weights_bytes", "weights B", ",d"),
    ("max_context_batch1", "max context (batch 1)", ",d"),
    ("max_context_batch1_vs_first", "vs first", ".2f"),
    ("max_batch_at_seq_len", "max batch (at seq_len)", ",d"),
    ("max_batch_at_seq_len_vs_first", "vs first", ".2f"),
]


def describe_budget(budget: int, source: str, dtype_bytes: int, seq_len: int) -> str:
    dtype = {2: "bf16", 4: "fp32"}.get(dtype_bytes, f"{dtype_bytes}-byte")
    return (f"memory budget {budget / GIB:,.1f} GiB ({source}), {dtype} decode, batch at seq_len {seq_len}; "
            "weights + buffers + KV cache + decode activations (context not capped at max_seq_len)")


def campaign_memory(variants: list[tuple[str, ModelConfig, bool]], seq_len: int, device_pref: str,
                    memory_gb: float | None) -> tuple[list[dict[str, Any]], str]:
    """(memory_table rows, a one-line description) for the device a campaign would run on:
    bf16 decode on CUDA, fp32 on a CPU, as the campaign measures."""
    device = resolve_device(device_pref)
    budget, source = memory_budget(memory_gb, device)
    dtype_bytes = resolve_dtype("auto", device).itemsize
    return memory_table(variants, seq_len, budget, dtype_bytes), describe_budget(budget, source, dtype_bytes, seq_len)
