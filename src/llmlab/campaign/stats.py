"""Statistics over seeds: mean ± std per variant, and paired differences with a t interval.

A campaign runs every variant at every seed, and seed s drives both the initialisation and the
data order, so runs with the same seed are paired across variants (DESIGN.md section 9). The
difference "variant − baseline" is taken per seed, and its 95 % confidence interval comes from
the t distribution with n − 1 degrees of freedom (the paired t-test, Student 1908), computed by
`scipy.stats.ttest_rel` -- no hand-written distribution.

Verdict, for a metric where lower is better (a loss): the whole interval below 0 -> "better",
the whole interval above 0 -> "worse", otherwise "no difference detectable at this budget".
With one seed there is no interval ("one seed: no interval"). The rule is in docs/methodology.md.

    >>> d = paired_difference({0: 2.00, 1: 2.10, 2: 2.05}, {0: 2.10, 1: 2.15, 2: 2.12})
    >>> d.verdict
    'better'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmlab.errors import LLMLabError

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no difference detectable at this budget"
ONE_SEED = "one seed: no interval"


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof = 1) of one variant's metric over seeds."""

    n: int
    mean: float
    std: float | None
    """None for a single seed (a sample std needs two values)."""

    def text(self, fmt: str = ".3f") -> str:
        """'1.234 ± 0.010 (3 seeds)', or '1.234 (1 seed)'."""
        if self.std is None:
            return f"{self.mean:{fmt}} (1 seed)"
        return f"{self.mean:{fmt}} ± {self.std:{fmt}} ({self.n} seeds)"


@dataclass(frozen=True)
class PairedDifference:
    """variant − baseline, paired by seed, with its confidence interval and verdict."""

    n: int
    """Number of paired seeds."""
    mean: float
    """Mean of the per-seed differences (negative = the variant's metric is lower)."""
    std: float | None
    """Sample std of the per-seed differences (None for one seed)."""
    low: float | None
    high: float | None
    """Bounds of the confidence interval of the mean difference (None for one seed)."""
    confidence: float
    p_value: float | None
    """Two-sided paired t-test p-value (None for one seed or when every difference is equal)."""
    verdict: str

    @property
    def half_width(self) -> float | None:
        """Half the interval's width: the smallest difference this comparison resolves."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def text(self, fmt: str = "+.3f") -> str:
        """'-0.012 [-0.020, -0.004] (95 %, 3 seeds): better'."""
        if self.low is None or self.high is None:
            return f"{self.mean:{fmt}} ({ONE_SEED})"
        return (f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}] "
                f"({self.confidence * 100:g} %, {self.n} seeds): {self.verdict}")


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sample std of one variant's metric over its seeds."""
    import numpy as np

    if len(values) == 0:
        raise LLMLabError("no values to summarize (a variant with no finished seed)")
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else None
    return Summary(len(a), float(a.mean()), std)


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95,
                      lower_is_better: bool = True) -> PairedDifference:
    """variant − baseline over the seeds both have run; the interval is the paired t interval.

    Both mappings are {seed: metric}. Seeds present in one and not the other are an error (a
    comparison over different seeds would not be paired): pass the common seeds explicitly."""
    import numpy as np
    from scipy import stats

    _check_confidence(confidence)
    seeds = sorted(variant)
    if set(variant) != set(baseline):
        raise LLMLabError(f"unpaired seeds: variant has {sorted(variant)}, baseline has {sorted(baseline)}")
    if not seeds:
        raise LLMLabError("no paired seeds to compare")
    v = np.array([variant[s] for s in seeds], dtype=np.float64)
    b = np.array([baseline[s] for s in seeds], dtype=np.float64)
    d = v - b
    mean = float(d.mean())
    if len(d) == 1:
        return PairedDifference(1, mean, None, None, None, confidence, None, ONE_SEED)
    std = float(d.std(ddof=1))
    if std == 0.0:  # every seed moved by exactly the same amount: the t statistic is undefined
        low = high = mean
        p_value = None
    else:
        test = stats.ttest_rel(v, b)
        interval = test.confidence_interval(confidence_level=confidence)
        low, high, p_value = float(interval.low), float(interval.high), float(test.pvalue)
    return PairedDifference(len(d), mean, std, low, high, confidence, p_value,
                            _verdict(low, high, lower_is_better))


def _verdict(low: float, high: float, lower_is_better: bool) -> str:
    if high < 0:
        return BETTER if lower_is_better else WORSE
    if low > 0:
        return WORSE if lower_is_better else BETTER
    return NO_DIFFERENCE


def resolvable_difference(seed_std: float, n_seeds: int, confidence: float = 0.95) -> float | None:
    """The smallest difference between two variants' means that n_seeds seeds can resolve, when
    each variant's metric has standard deviation `seed_std` over seeds: the half-width of the
    pooled two-sample t interval, t_{(1+c)/2, 2n-2} · s · √(2/n). Pairing by seed usually does
    better (it removes the noise the variants share); this is the figure for the findings text
    ("differences below X cannot be told from seed noise"). None for one seed."""
    from scipy import stats

    _check_confidence(confidence)
    if n_seeds < 2:
        return None
    if seed_std < 0:
        raise LLMLabError(f"seed_std must be >= 0, got {seed_std}")
    t = float(stats.t.ppf((1 + confidence) / 2, 2 * n_seeds - 2))
    return t * seed_std * math.sqrt(2 / n_seeds)


def pooled_std(summaries: Sequence[Summary]) -> float | None:
    """The seed std pooled over variants (root of the df-weighted mean variance); None when no
    variant has two seeds."""
    with_std = [s for s in summaries if s.std is not None]
    dof = sum(s.n - 1 for s in with_std)
    if not dof:
        return None
    return math.sqrt(sum((s.n - 1) * s.std**2 for s in with_std) / dof)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise LLMLabError(f"confidence must be in (0, 1), got {confidence}")


__all__ = ["Summary", "PairedDifference", "summarize", "paired_difference",
           "resolvable_difference", "pooled_std", "BETTER", "WORSE", "NO_DIFFERENCE", "ONE_SEED"]
