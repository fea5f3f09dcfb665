"""Shared benchmark plumbing: honest timing (warm-up apart, sync before each clock read, medians)
and the output contract (a human table, then exactly one JSON line)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Callable

import torch

from llmlab.infer.run import sync


def time_fn(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1
            ) -> list[float]:
    """Seconds per call, `repeats` times, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_round_robin(cases: dict[str, Callable[[], Any]], device: torch.device | str = "cpu",
                     repeats: int = 3) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Time several cases interleaved (a, b, c, a, b, c, ...), so that noise from a shared machine
    falls on all of them alike. Returns (seconds per repeat, warm-up seconds) per case; the warm-up
    call is untimed in the results and includes any compilation."""
    warmup_s = {name: time_fn(fn, device, repeats=1, warmup=0)[0] for name, fn in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name] += time_fn(fn, device, repeats=1, warmup=0)
    return times, warmup_s


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the figures were measured on: they mean nothing without it."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec). Missing values print as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([
            "-" if row.get(k) is None else (format(row[k], fmt) if fmt else str(row[k])) for k, _, fmt in columns
        ])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def emit_json(payload: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(payload, sort_keys=False))
