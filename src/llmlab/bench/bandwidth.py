"""The machine's read bandwidth, measured in the same run as the figures it bounds.

Decoding at small batch reads every weight (and the KV cache) once per step and does little
arithmetic on it, so bytes read per step / seconds per step, divided by what the memory system can
deliver, says how far a decode loop is from the hardware (the roofline argument, Williams et al.
2009). What "the memory system can deliver" depends on where the bytes live: a small model's
weights fit the CPU's last-level cache, so we measure both a buffer the size of the weights and one
far larger than that cache (DRAM).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmlab.timing import median, time_fn

MIN_LARGE_BYTES = 256 * 2**20


def last_level_cache_bytes(device: torch.device | str = "cpu") -> int | None:
    """L2 on a CUDA device; on Linux CPUs the largest cache sysfs lists (usually L3). None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def large_buffer_bytes(device: torch.device | str = "cpu") -> int:
    """8x the last-level cache, at least 256 MiB: what a model far too big for the cache reads."""
    llc = last_level_cache_bytes(device) or 0
    return max(8 * llc, MIN_LARGE_BYTES)


@torch.no_grad()
def read_bandwidth(nbytes: int, device: torch.device | str = "cpu", repeats: int = 20) -> float:
    """Bytes per second of a full read of an fp32 buffer of nbytes (a sum: one add per 4 bytes
    read, far below the arithmetic rate, so the read is the bound). Median of repeats, after a
    warm-up read that also brings a cache-sized buffer into the cache, as decode steps would."""
    buf = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    seconds = median(time_fn(lambda: buf.sum(), device, repeats=repeats, warmup=2))
    return buf.numel() * 4 / seconds


def measure_bandwidths(weight_bytes: int, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """{"weights_sized": {...}, "larger_than_cache": {...}}, each {"bytes", "gb_s"}."""
    out = {}
    for name, nbytes in (("weights_sized", weight_bytes), ("larger_than_cache", large_buffer_bytes(device))):
        out[name] = {"bytes": nbytes, "gb_s": read_bandwidth(nbytes, device) / 1e9}
    return out
