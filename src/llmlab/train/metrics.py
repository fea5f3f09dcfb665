"""Run metrics: `metrics.jsonl` rows, optional TensorBoard, a progress display, MFU.

Rows (one JSON object a line, DESIGN.md section 2): training rows carry `step` and `loss` (that
step's), and `loss_steps` / `grad_norm_steps`: every update's value since the previous row; MoE
routing statistics (`moe_*`) are means over the updates since the previous row;
evaluation rows `step` and `val_loss`; events (`start`, `resume`, `stop`, `diverged`) carry `event`.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from llmlab.files import write_bytes_atomic
from llmlab.runs import METRICS_FILE, read_metrics

WALL_CLOCK_FIELDS = ("time", "tokens_per_s", "mfu", "mem_mb", "first_step_s")
"""Fields of a metrics row that depend on the moment and the process, not on the run: a run
killed and resumed logs the same rows as an uninterrupted one but for these (and its events)."""

# Dense bf16 tensor-core peak FLOP/s by GPU name (vendor data sheets, without sparsity). MFU is
# model FLOPs per second over this peak (PaLM, Chowdhery et al. 2022, appendix B). Longest match wins.
PEAK_BF16_FLOPS = {
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "A6000": 155e12,
    "L4": 121e12,
    "L40S": 362e12,
    "L40": 181e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "H800": 989e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device, None when unknown (or on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_BF16_FLOPS if key in name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: active-parameter FLOPs actually done / what the chips could do."""
    if not peak or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory (CUDA) or the process's peak resident set (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def routing_stats(stats: dict[str, torch.Tensor]) -> dict[str, Any]:
    """MoE statistics (tensors stacked over MoE layers) as JSON lists, `moe_` prefixed."""
    return {f"moe_{name}": _rounded(t.detach().float().cpu().tolist()) for name, t in stats.items()}


def _rounded(x: Any) -> Any:
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return round(x, 6) if isinstance(x, float) and math.isfinite(x) else x


# ---------------------------------------------------------------------------------------------


class StepSeries:
    """What the updates since the last log row did, so that a row reports all of them and samples
    nothing: every update's loss and gradient norm ("loss_steps", "grad_norm_steps": the steps
    after the previous row up to this one), and the MoE routing statistics summed on the device
    and averaged over the interval at the row (one transfer per row, none per update). The loss
    and grad norm are already on the host: train_step's one sync per update (its finite check)
    fetched them, so keeping them adds no device sync. The buffer travels in the checkpoint, so
    a resumed run writes the same rows as an uninterrupted one."""

    KEYS = ("loss", "grad_norm")

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {key: [] for key in self.KEYS}
        self.routing: dict[str, torch.Tensor] = {}
        self.routing_n = 0

    def append(self, loss: float, grad_norm: float, routing: dict[str, torch.Tensor] | None = None) -> None:
        self.values["loss"].append(loss)
        self.values["grad_norm"].append(grad_norm)
        if routing:
            for name, value in routing.items():
                self.routing[name] = self.routing[name] + value if name in self.routing else value.detach().clone()
            self.routing_n += 1

    def take(self) -> dict[str, list[float]]:
        """{"loss_steps": [...], "grad_norm_steps": [...]} for the log row; the buffer is emptied."""
        out = {f"{key}_steps": values for key, values in self.values.items()}
        self.values = {key: [] for key in self.KEYS}
        return out

    def take_routing(self) -> dict[str, torch.Tensor]:
        """The interval's mean of each routing statistic (tensors, still on the device); emptied."""
        out = {name: total / self.routing_n for name, total in self.routing.items()}
        self.routing, self.routing_n = {}, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**{key: list(values) for key, values in self.values.items()},
                "routing": {name: t.cpu() for name, t in self.routing.items()}, "routing_n": self.routing_n}

    def load_state_dict(self, state: dict[str, Any] | None, device: torch.device | None = None) -> None:
        """Restore a checkpoint's buffer (None: a checkpoint from before per-step rows, nothing pending)."""
        state = state or {}
        self.values = {key: list(state.get(key, [])) for key in self.KEYS}
        self.routing = {name: t.to(device) if device is not None else t for name, t in state.get("routing", {}).items()}
        self.routing_n = state.get("routing_n", 0)


class MetricsWriter:
    """Appends rows to run_dir/metrics.jsonl (flushed each row) and, when installed, TensorBoard.
    `rows` counts the file's rows, so that a checkpoint can record where its part of the log ends."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.rows = len(read_metrics(run_dir))
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = _tensorboard(run_dir) if tensorboard else None

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows += 1
        if self._tb is not None and "step" in row:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(Path(run_dir) / "tb"))


def truncate_after(run_dir: Path, step: int, rows: int | None = None) -> None:
    """Drop what a resumed run is about to replay, and a line cut by a kill, so that metrics.jsonl
    reads as one run. `rows`: how many rows the log held when the checkpoint of `step` was saved
    (None: a checkpoint of an earlier version, or none): those are kept, and of the later ones
    only the events up to `step` (a resume, a stop), which say what happened. A row logged after
    the checkpoint at its own step -- the final evaluation, done after the last checkpoint --
    is dropped too, so a run killed before result.json does not log that evaluation twice."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    logged = read_metrics(run_dir)
    if rows is None:
        keep = [row for row in logged if row.get("step", 0) <= step]
    else:
        keep = logged[:rows] + [row for row in logged[rows:] if "event" in row and row.get("step", 0) <= step]
    write_bytes_atomic(path, "".join(json.dumps(row) + "\n" for row in keep).encode())


# ---------------------------------------------------------------------------------------------


class Progress:
    """A tqdm bar on a terminal; otherwise one plain line per log step (logs, CI, nohup)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total_steps, stream
        self.enabled = enabled
        self._bar = None
        if enabled and stream.isatty():
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=stream, dynamic_ncols=True)
        self._t0, self._step0 = time.perf_counter(), start_step

    def update(self, step: int, tokens: int, loss: float, tokens_per_s: float | None, log_line: bool) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(self._summary(tokens, loss, tokens_per_s), refresh=False)  # tqdm shows the ETA
        elif self.enabled and log_line:
            line = f"step {step}/{self.total} | {self._summary(tokens, loss, tokens_per_s)} | ETA {self._eta(step)}"
            print(line, file=self.stream, flush=True)

    @staticmethod
    def _summary(tokens: int, loss: float, tokens_per_s: float | None) -> str:
        tok_s = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s else "- tok/s"
        return f"loss {loss:.4f} | {tokens:,} tokens | {tok_s}"

    def _eta(self, step: int) -> str:
        done = step - self._step0
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self._t0) / done * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Throughput:
    """Training tokens/s. The first step of each process (torch.compile, CUDA warm-up) is timed
    apart as `first_step_s` and excluded from every rate."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.first_step_s: float | None = None
        self.total_s = 0.0
        self.total_steps = 0
        self._interval_s = 0.0
        self._interval_steps = 0
        self._last = time.perf_counter()

    def restart_clock(self) -> None:
        """Call after work that is not training (evaluation, checkpointing)."""
        self._last = time.perf_counter()

    def step_done(self) -> None:
        """Call once the step's results are on the host (after a device sync)."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self.first_step_s is None:
            self.first_step_s = elapsed
            return
        self._interval_s += elapsed
        self._interval_steps += 1
        self.total_s += elapsed
        self.total_steps += 1

    def interval_rate(self) -> float | None:
        """tokens/s since the previous call (None while only the warm-up step has run)."""
        if self._interval_steps == 0:
            return None
        rate = self._interval_steps * self.tokens_per_step / self._interval_s
        self._interval_s, self._interval_steps = 0.0, 0
        return rate

    def overall_rate(self) -> float | None:
        return self.total_steps * self.tokens_per_step / self.total_s if self.total_steps else None
