"""The one clock, shared by the benchmarks, `llmlab generate` and the campaign: a device sync before
each clock read (`clock`), warm-up apart, medians, and interleaved cases."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterator

import torch


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so that a clock read after it measures the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str, process: bool = False) -> float:
    """A clock read after the device's queued work: wall seconds (perf_counter), or with
    process=True this process's CPU seconds (`bench moe --clock cpu`: immune to other processes)."""
    sync(device)
    return time.process_time() if process else time.perf_counter()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def time_fn(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1
            ) -> list[float]:
    """Seconds per call, `repeats` times, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock(device)
        fn()
        times.append(clock(device) - t0)
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


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block at n intra-op CPU threads (None: leave the count alone), then put the
    caller's count back: the count is process-wide, and a library call must not leave it changed."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
