"""Training stability from a run's metrics rows: loss spikes after warm-up, gradient-norm spikes.

The rule (also in docs/methodology.md, "Training stability: spikes"): a logged value x_s at a step
s > warmup is *spiking* when it jumps above the level of the rows just before it by more than
`threshold` robust standard deviations of the recent noise:

    x_s - median(last `ref` values) > threshold * max(sigma, rel_floor * |that median|)
    sigma = 1.4826 * MAD(first differences over the last `window` values) / sqrt(2)

The level is the median of the last few values, so it follows a falling curve closely and one
outlier does not move it. The noise is measured on successive differences, which remove the
trend (a steep early descent would otherwise read as noise): for Gaussian noise of std sigma the
differences have std sigma * sqrt(2), and 1.4826 * MAD estimates a standard deviation while
ignoring earlier spikes (Rousseeuw & Croux 1993). The relative floor keeps a nearly flat curve's
tiny jitter from turning into spikes. A loss that falls, however noisily, is not flagged; a jump
well above the recent noise is. Consecutive spiking rows are one spike, reported at its first
step; non-finite values are spikes.

The series is every update's value (metrics rows carry `loss_steps`, `grad_norm_steps`), so the
rule runs from the first step after warm-up, with the warm-up steps as its history; rows written
before per-step values were kept give one sampled value each.

Defaults: window 50, ref 5, threshold 7, floor 1 %, at least 5 earlier values. Gaussian noise reaches 5.5 robust std at most
over 50,000 synthetic rows, and a jump of 10 noise std scores 9 to 14; tests/campaign/test_stability.py
pins an injected spike flagged, and smooth synthetic and real runs clean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.config import load_run_config
from llmlab.errors import LLMLabError
from llmlab.runs import CONFIG_FILE, read_metrics

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD -> std for Gaussian noise


@dataclass(frozen=True)
class SpikeRule:
    window: int = 50
    """Trailing logged rows the noise (MAD of successive differences) is measured over."""
    ref: int = 5
    """Trailing logged rows whose median is the level a spike jumps from."""
    threshold: float = 7.0
    """How many robust standard deviations above the level make a spike."""
    rel_floor: float = 0.01
    """The robust std is at least this fraction of the level."""
    min_window: int = 5
    """No verdict on a step with fewer previous values than this. Per-step records give every
    warm-up step as history, so with a warm-up of at least 5 updates the rule holds from the
    first step after it (sampled rows, one in 10, used to leave the first ~110 steps unchecked)."""

    def __post_init__(self) -> None:
        if not 1 <= self.ref <= self.window or not 3 <= self.min_window <= self.window:
            raise LLMLabError(f"spike rule: need 1 <= ref ({self.ref}) <= window ({self.window}) and "
                              f"3 <= min_window ({self.min_window}) <= window")
        if self.threshold <= 0 or self.rel_floor < 0:
            raise LLMLabError(f"spike rule: threshold ({self.threshold}) > 0 and rel_floor ({self.rel_floor}) >= 0")

    def describe(self) -> str:
        return (f"x_s - median(prev {self.ref}) > {self.threshold:g} x max({MAD_TO_STD} MAD(diff of prev "
                f"{self.window}) / sqrt 2, {self.rel_floor:g} |median|), at every step from the first after warm-up"
                f" (given {self.min_window} earlier steps)")


@dataclass(frozen=True)
class Spikes:
    metric: str
    steps: list[int] = field(default_factory=list)
    """The first step of each spike."""
    rule: str = ""

    @property
    def count(self) -> int:
        return len(self.steps)


def detect_spikes(steps: Sequence[int], values: Sequence[float], warmup: int,
                  rule: SpikeRule = SpikeRule(), metric: str = "value") -> Spikes:
    """Spikes of a logged series (see the module docstring). Non-finite values are spikes."""
    if len(steps) != len(values):
        raise LLMLabError(f"{len(steps)} steps for {len(values)} values")
    x = np.asarray(values, dtype=np.float64)
    first_steps: list[int] = []
    previous = False
    for i, step in enumerate(steps):
        flagged = step > warmup and _spiking(x, i, rule)
        if flagged and not previous:
            first_steps.append(int(step))
        previous = flagged
    return Spikes(metric, first_steps, rule.describe())


def _spiking(x: np.ndarray, i: int, rule: SpikeRule) -> bool:
    if not np.isfinite(x[i]):
        return True
    trail = x[max(0, i - rule.window):i]
    trail = trail[np.isfinite(trail)]
    if len(trail) < rule.min_window:
        return False
    level = float(np.median(trail[-rule.ref:]))
    diffs = np.diff(trail)
    sigma = MAD_TO_STD * float(np.median(np.abs(diffs - np.median(diffs)))) / np.sqrt(2)
    return bool(x[i] - level > rule.threshold * max(sigma, rule.rel_floor * abs(level)))


def series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` at every recorded step, in step order. A training row that carries
    `<key>_steps` (every update since the previous row, metrics.StepSeries) gives all of them, the
    last at the row's step; an older row gives its own sampled value only."""
    picked: dict[int, float] = {}
    for r in rows:
        if "event" in r or "step" not in r:
            continue
        per_step = r.get(f"{key}_steps")
        if per_step is not None:
            first = r["step"] - len(per_step) + 1
            picked.update({first + i: float(v) for i, v in enumerate(per_step)})
        elif key in r:
            picked[r["step"]] = float(r[key])
    ordered = sorted(picked.items())
    return [s for s, _ in ordered], [v for _, v in ordered]


def run_spikes(rows: Iterable[dict[str, Any]], warmup: int, rule: SpikeRule = SpikeRule()) -> dict[str, Any]:
    """Loss and gradient-norm spikes of one run's metrics rows, as JSON-ready dicts:
    {"loss": {"metric", "count", "steps", "rule"}, "grad_norm": {...}}."""
    rows = list(rows)
    out = {}
    for key in ("loss", "grad_norm"):
        steps, values = series(rows, key)
        spikes = detect_spikes(steps, values, warmup, rule, key)
        out[key] = {**asdict(spikes), "count": spikes.count}
    return out


def run_stability(run_dir: str | Path, rule: SpikeRule = SpikeRule()) -> dict[str, Any]:
    """`run_spikes` of a run directory: its metrics.jsonl, with the warm-up of its config.toml."""
    warmup = load_run_config(Path(run_dir) / CONFIG_FILE).train.warmup
    return run_spikes(read_metrics(run_dir), warmup, rule)


__all__ = ["SpikeRule", "Spikes", "detect_spikes", "series", "run_spikes", "run_stability"]
