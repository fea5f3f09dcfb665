"""Training stability from a run's metrics rows: loss spikes after warm-up, gradient-norm spikes.

The rule (also in docs/methodology.md, "Spikes"): a logged value x_s at step s > warmup is
*spiking* when it exceeds the median of the previous `window` logged values by more than
`threshold` robust standard deviations:

    x_s - median(W) > threshold * max(1.4826 * MAD(W), rel_floor * |median(W)|)

where W holds the `window` rows before s (at least `min_window` of them) and MAD is the median
absolute deviation from the median; 1.4826 · MAD estimates the standard deviation of Gaussian
noise (Rousseeuw & Croux 1993) while ignoring earlier spikes, and the relative floor keeps a
nearly constant curve from turning its tiny jitter into spikes. A loss that falls, however
noisily, sits below its trailing median and is never flagged; a jump well above the recent
noise is. Consecutive spiking rows are one spike, reported at its first step.

Defaults (window 50, threshold 6, floor 1 %) flag the MoE spike of `make demo` (3.4 -> 4.1 nats)
and nothing on a smooth run; `tests/train/test_stability.py` pins both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmlab.errors import LLMLabError

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD -> std for Gaussian noise


@dataclass(frozen=True)
class SpikeRule:
    window: int = 50
    """Trailing logged rows the median and MAD are taken over."""
    threshold: float = 6.0
    """How many robust standard deviations above the trailing median make a spike."""
    rel_floor: float = 0.01
    """The robust std is at least this fraction of the trailing median."""
    min_window: int = 10
    """No verdict on a row with fewer previous rows than this."""

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_window <= self.window:
            raise LLMLabError(f"spike rule: need 1 <= min_window ({self.min_window}) <= window ({self.window})")
        if self.threshold <= 0 or self.rel_floor < 0:
            raise LLMLabError(f"spike rule: threshold ({self.threshold}) > 0 and rel_floor ({self.rel_floor}) >= 0")

    def describe(self) -> str:
        return (f"x_s - median(prev {self.window}) > {self.threshold:g} x max(1.4826 MAD, "
                f"{self.rel_floor:g} |median|), after warm-up")


@dataclass(frozen=True)
class Spikes:
    metric: str
    count: int
    steps: list[int] = field(default_factory=list)
    """The first step of each spike."""
    rule: str = ""


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
    return Spikes(metric, len(first_steps), first_steps, rule.describe())


def _spiking(x: np.ndarray, i: int, rule: SpikeRule) -> bool:
    if not np.isfinite(x[i]):
        return True
    trail = x[max(0, i - rule.window):i]
    trail = trail[np.isfinite(trail)]
    if len(trail) < rule.min_window:
        return False
    median = float(np.median(trail))
    scale = max(MAD_TO_STD * float(np.median(np.abs(trail - median))), rule.rel_floor * abs(median))
    return bool(x[i] - median > rule.threshold * scale)


def series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the training rows (no events) that carry `key`, in step order."""
    picked = sorted((r["step"], float(r[key])) for r in rows if key in r and "event" not in r and "step" in r)
    return [s for s, _ in picked], [v for _, v in picked]


def run_spikes(rows: Iterable[dict[str, Any]], warmup: int, rule: SpikeRule = SpikeRule()) -> dict[str, Any]:
    """Loss and gradient-norm spikes of one run's metrics rows, as JSON-ready dicts:
    {"loss": {"metric", "count", "steps", "rule"}, "grad_norm": {...}}."""
    rows = list(rows)
    out = {}
    for key in ("loss", "grad_norm"):
        steps, values = series(rows, key)
        out[key] = asdict(detect_spikes(steps, values, warmup, rule, key))
    return out


__all__ = ["SpikeRule", "Spikes", "detect_spikes", "series", "run_spikes"]
