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
from typing import Any

import numpy as np

from llmlab.errors import LLMLabError
from llmlab.runs import WindowLosses

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
        from scipy import stats  # on use: scipy.stats costs ~0.7 s of start-up (`llmlab plan`, `report`)

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
    _check_confidence(confidence)
    if n_seeds < 2:
        return None
    if seed_std < 0:
        raise LLMLabError(f"seed_std must be >= 0, got {seed_std}")
    from scipy import stats  # on use, as above

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


# ---------------------------------------------------------------------------------------------
# A family of hypotheses: Holm's step-down correction


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"), in the input order; None (a comparison with no test) stays None and is not
    counted in the family. With the m p-values sorted p_(1) <= ... <= p_(m):

        adj_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j))

    Rejecting where adj < alpha controls the family-wise error rate at alpha under any
    dependence between the tests (the comparisons share the baseline's runs)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        if not 0.0 <= p <= 1.0:
            raise LLMLabError(f"p-value must be in [0, 1], got {p}")
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjusted_verdict(d: PairedDifference, p_adjusted: float | None, alpha: float = 0.05,
                     lower_is_better: bool = True) -> str:
    """The verdict of a comparison judged inside its family: better / worse when the adjusted p
    is below alpha (the sign from the mean difference), otherwise no difference detectable. For
    a paired t-test, raw p < alpha is the same as the (1 - alpha) interval excluding 0, so with a
    family of one this is `paired_difference`'s verdict."""
    if d.low is None:
        return ONE_SEED
    if p_adjusted is None:  # every seed moved by the same amount: no test, the interval is a point
        return d.verdict
    if p_adjusted >= alpha:
        return NO_DIFFERENCE
    return _verdict(d.mean, d.mean, lower_is_better)  # significant: the sign of the mean decides


# ---------------------------------------------------------------------------------------------
# Evaluation noise: a paired bootstrap over evaluation windows


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile interval of the seed-mean difference when the evaluation windows are redrawn."""

    mean: float
    """The difference on the windows as evaluated (the token-weighted loss difference, seed mean)."""
    low: float
    high: float
    confidence: float
    n_windows: int
    n_resamples: int


def bootstrap_difference(variant: Mapping[int, WindowLosses], baseline: Mapping[int, WindowLosses],
                         n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> BootstrapInterval:
    """Evaluation noise of variant − baseline: how much the test-loss difference would move if the
    test set were another draw of windows like these, with the trained weights held fixed.

    Each resample draws n windows with replacement -- the same windows for both variants and for
    every seed (all runs score the same windows), which is what makes it paired (Efron &
    Tibshirani 1993, ch. 13; Koehn 2004 for paired bootstrap over test items). Per seed the
    difference is sum(loss_v - loss_b)[idx] / sum(tokens)[idx]; the statistic is its mean over
    seeds, and the interval its percentiles over resamples. This says nothing about seed noise
    (another initialisation or data order): that is the t interval's job. Windows cut across
    articles, so neighbouring windows are correlated and this interval is, if anything, narrow.
    Deterministic for a given `seed` (numpy's PCG64)."""
    _check_confidence(confidence)
    if set(variant) != set(baseline) or not variant:
        raise LLMLabError(f"unpaired seeds: variant has {sorted(variant)}, baseline has {sorted(baseline)}")
    diffs, tokens = _window_differences(variant, baseline)  # (S, W), (W,)
    rng = np.random.default_rng(seed)
    stats_r = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // diffs.shape[1])  # resamples per chunk: bounded memory for large test sets
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, diffs.shape[1], size=(min(chunk, n_resamples - start), diffs.shape[1]))  # (R, W)
        stats_r[start:start + len(idx)] = (diffs[:, idx].sum(-1) / tokens[idx].sum(-1)).mean(0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats_r, [tail, 100 - tail])
    mean = float((diffs.sum(-1) / tokens.sum()).mean())
    return BootstrapInterval(mean, float(low), float(high), confidence, diffs.shape[1], n_resamples)


def _window_differences(variant: Mapping[int, WindowLosses], baseline: Mapping[int, WindowLosses]) -> tuple[Any, Any]:
    """Per-seed, per-window loss differences (S, W) and the windows' target counts (W,); every
    run must have scored the same windows (same count, same targets per window)."""
    tokens = np.asarray(baseline[min(baseline)].tokens, dtype=np.float64)
    rows = []
    for s in sorted(variant):
        v, b = variant[s], baseline[s]
        if not (len(v.tokens) == len(b.tokens) == len(tokens)) or np.any(np.asarray(v.tokens) != tokens) \
                or np.any(np.asarray(b.tokens) != tokens):
            raise LLMLabError(f"seed {s}: the runs scored different evaluation windows; a paired bootstrap "
                              "needs the same test windows (same data, seq_len and stride)")
        rows.append(np.asarray(v.loss_sum, dtype=np.float64) - np.asarray(b.loss_sum, dtype=np.float64))
    if not len(tokens) or tokens.sum() == 0:
        raise LLMLabError("no evaluation windows to resample")
    return np.stack(rows), tokens


# ---------------------------------------------------------------------------------------------
# Runs far from their arm's other seeds


@dataclass(frozen=True)
class OutlierRule:
    """A seed whose final loss sits far from its arm's median: the modified z-score of Iglewicz &
    Hoaglin (1993), with a floor on the scale so that near-identical seeds do not flag noise.

        |x_s - median(arm)| > threshold · max(1.4826 · MAD(arm), rel_floor · |median(arm)|)

    The median and MAD (median absolute deviation) are the arm's own, outlier included: robust
    statistics, one bad seed of three moves neither (a mean and sd would, and hide it). 1.4826
    turns a MAD into a standard deviation for Gaussian noise; 3.5 is Iglewicz & Hoaglin's cut.
    With three seeds the MAD is the smaller of the two other distances, so a lone far seed scores
    high and two far seeds on either side do not: the rule names a seed that disagrees with the
    other two, and needs at least `min_seeds` (with two, neither can be called the odd one)."""

    threshold: float = 3.5
    rel_floor: float = 0.01
    """The scale is at least this fraction of the median: 1 % of a loss of 2 nats is 0.02 nats."""
    min_seeds: int = 3

    def describe(self) -> str:
        return (f"|x − median| > {self.threshold:g} × max(1.4826 MAD, {self.rel_floor:g} |median|) over the arm's "
                f"seeds (modified z-score, Iglewicz & Hoaglin 1993; needs ≥ {self.min_seeds} seeds)")


def outlying_seeds(values: Mapping[int, float], rule: OutlierRule = OutlierRule()) -> dict[int, float]:
    """{seed: robust z} of the seeds that OutlierRule flags (empty below rule.min_seeds seeds)."""
    if len(values) < rule.min_seeds:
        return {}
    x = np.asarray(list(values.values()), dtype=np.float64)
    median = float(np.median(x))
    scale = max(1.4826 * float(np.median(np.abs(x - median))), rule.rel_floor * abs(median))
    if scale == 0.0:
        return {}
    z = {seed: (v - median) / scale for seed, v in values.items()}
    return {seed: float(score) for seed, score in z.items() if abs(score) > rule.threshold}


__all__ = ["Summary", "PairedDifference", "summarize", "paired_difference", "resolvable_difference", "pooled_std",
           "holm", "adjusted_verdict", "BootstrapInterval", "bootstrap_difference",
           "OutlierRule", "outlying_seeds", "BETTER", "WORSE", "NO_DIFFERENCE", "ONE_SEED"]
