"""Seed statistics against hand computations (t quantiles written out as numbers)."""

from __future__ import annotations

import math

import pytest

import numpy as np

from llmlab.campaign.stats import (NO_DIFFERENCE, ONE_SEED, OutlierRule, adjusted_verdict, bootstrap_difference,
                                   holm, outlying_seeds, paired_difference, pooled_std, resolvable_difference,
                                   summarize)
from llmlab.errors import LLMLabError
from llmlab.runs import WindowLosses

T_975_2 = 4.302653  # t_{0.975, 2}: two-sided 95 %, 3 paired seeds (tables, e.g. NIST e-Handbook 1.3.6.7.2)
T_975_4 = 2.776445  # t_{0.975, 4}
BASELINE = {0: 2.10, 1: 2.15, 2: 2.12}


def hand_interval(d: list[float], t: float) -> tuple[float, float, float]:
    """mean ± t · s / √n, with s the sample std (n − 1 in the denominator)."""
    n = len(d)
    mean = sum(d) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, mean - t * s / math.sqrt(n), mean + t * s / math.sqrt(n)


def test_better_interval_and_verdict_equal_the_hand_computation():
    variant = {0: 2.00, 1: 2.10, 2: 2.05}  # differences -0.10, -0.05, -0.07
    mean, low, high = hand_interval([-0.10, -0.05, -0.07], T_975_2)
    # by hand: mean -0.073333, s 0.025166, s/√3 0.014530, half-width 4.302653 × 0.014530 = 0.062517
    assert (mean, low, high) == pytest.approx((-0.073333, -0.135850, -0.010817), abs=1e-6)
    d = paired_difference(variant, BASELINE)
    assert (d.n, d.mean, d.low, d.high) == pytest.approx((3, mean, low, high), abs=1e-6)
    assert d.std == pytest.approx(0.0251661, abs=1e-7)
    assert d.half_width == pytest.approx(0.062517, abs=1e-6)
    assert d.verdict == "better"
    assert d.text().endswith("(95 %, 3 seeds): better")


def test_worse_when_the_interval_is_above_zero():
    d = paired_difference(BASELINE, {0: 2.00, 1: 2.10, 2: 2.05})
    assert (d.low, d.high) == pytest.approx((0.010817, 0.135850), abs=1e-6)
    assert d.verdict == "worse"
    assert paired_difference(BASELINE, {0: 2.00, 1: 2.10, 2: 2.05}, lower_is_better=False).verdict == "better"


def test_no_detectable_difference_when_the_interval_straddles_zero():
    variant = {0: 2.00, 1: 2.20, 2: 2.10}  # differences -0.10, +0.05, -0.02: the mean is negative...
    mean, low, high = hand_interval([-0.10, 0.05, -0.02], T_975_2)
    # by hand: mean -0.023333, s 0.075056, s/√3 0.043333, half-width 0.186448
    assert (mean, low, high) == pytest.approx((-0.023333, -0.209782, 0.163115), abs=1e-6)
    d = paired_difference(variant, BASELINE)
    assert (d.mean, d.low, d.high) == pytest.approx((mean, low, high), abs=1e-6)
    assert d.verdict == NO_DIFFERENCE == "no difference detectable at this budget"  # ...but not resolved
    assert 0.05 < d.p_value < 1


def test_one_seed_has_no_interval():
    d = paired_difference({3: 2.0}, {3: 2.5})
    assert d.mean == pytest.approx(-0.5) and d.low is None and d.high is None and d.std is None
    assert d.verdict == ONE_SEED == "one seed: no interval"
    assert summarize([2.0]).std is None and summarize([2.0]).text() == "2.000 (1 seed)"


def test_equal_differences_give_a_zero_width_interval():
    d = paired_difference({0: 1.9, 1: 2.0}, {0: 2.0, 1: 2.1})
    assert d.low == pytest.approx(-0.1) and d.high == pytest.approx(-0.1) and d.verdict == "better"


def test_unpaired_seeds_are_refused():
    with pytest.raises(LLMLabError, match=r"unpaired seeds: variant has \[0, 1\], baseline has \[0, 1, 2\]"):
        paired_difference({0: 2.0, 1: 2.1}, BASELINE)
    with pytest.raises(LLMLabError, match="confidence"):
        paired_difference(BASELINE, BASELINE, confidence=95)


def test_summary_and_resolvable_difference_by_hand():
    s = summarize([2.00, 2.10, 2.05])
    assert (s.n, s.mean, s.std) == pytest.approx((3, 2.05, 0.05))  # deviations -0.05, 0.05, 0
    assert s.text() == "2.050 ± 0.050 (3 seeds)"
    # t_{0.975, 4} × 0.01 × √(2/3) = 2.776445 × 0.01 × 0.816497 = 0.022670
    assert resolvable_difference(0.01, 3) == pytest.approx(T_975_4 * 0.01 * math.sqrt(2 / 3), abs=1e-7)
    assert resolvable_difference(0.01, 1) is None
    # pooled over variants of 3 seeds each: √((0.05² + 0.03²) / 2)
    assert pooled_std([s, summarize([1.0, 1.03, 1.06])]) == pytest.approx(math.sqrt((0.05**2 + 0.03**2) / 2))
    assert pooled_std([summarize([1.0])]) is None


def test_holm_on_a_known_vector_equals_the_hand_computation():
    # sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]  # None: not in the family
    assert holm([0.5, 0.9, 0.7]) == [1.0, 1.0, 1.0]  # capped at 1
    assert holm([]) == [] and holm([0.2]) == [0.2]  # a family of one is not corrected
    with pytest.raises(LLMLabError, match="p-value"):
        holm([1.5])


def test_a_raw_p_below_alpha_can_fail_holm():
    """The CPU study's GQA comparison: p = 0.037, second smallest of four, needs 0.05 / 3 = 0.0167."""
    d = paired_difference({0: 2.00, 1: 2.10, 2: 2.05}, BASELINE)  # "better", p ~ 0.04
    assert d.verdict == "better" and 0.0167 < d.p_value < 0.05
    adjusted = holm([0.001, d.p_value, 0.3, 0.6])
    assert adjusted[1] == pytest.approx(3 * d.p_value)
    assert adjusted_verdict(d, adjusted[1]) == NO_DIFFERENCE
    assert adjusted_verdict(d, d.p_value) == "better"  # a family of one: the t interval's verdict
    worse = paired_difference(BASELINE, {0: 2.00, 1: 2.10, 2: 2.05})
    assert adjusted_verdict(worse, 0.01) == "worse"


def windows(rng: np.random.Generator, n: int, shift: float = 0.0, noise: float = 0.0) -> WindowLosses:
    tokens = rng.integers(100, 129, size=n)
    return WindowLosses(list((2.0 + shift + noise * rng.standard_normal(n)) * tokens), [int(t) for t in tokens])


def test_bootstrap_is_deterministic_for_a_seed_and_paired():
    rng = np.random.default_rng(1)
    base = windows(rng, 300, noise=0.3)
    variant = WindowLosses([x - 0.05 * t + 3.0 * rng.standard_normal() for x, t in zip(base.loss_sum, base.tokens)],
                           base.tokens)
    a = bootstrap_difference({0: variant}, {0: base}, n_resamples=500, seed=7)
    assert a == bootstrap_difference({0: variant}, {0: base}, n_resamples=500, seed=7)  # same seed, same interval
    assert a != bootstrap_difference({0: variant}, {0: base}, n_resamples=500, seed=8)
    assert a.low < a.mean < a.high and (a.n_windows, a.n_resamples) == (300, 500)
    # paired: a shift of exactly 0.1 nats on every window leaves no evaluation noise at all,
    # however noisy the windows themselves are
    shifted = WindowLosses([x + 0.1 * t for x, t in zip(base.loss_sum, base.tokens)], base.tokens)
    b = bootstrap_difference({0: shifted, 1: shifted}, {0: base, 1: base}, n_resamples=200)
    assert (b.mean, b.low, b.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


def test_bootstrap_width_matches_the_normal_theory():
    """Per-window differences with sd s per token, W windows of ~equal size: the 95 % interval of the
    token-weighted mean is about ±1.96 s/√W."""
    rng = np.random.default_rng(0)
    w = 2000
    base = WindowLosses([2.0 * 128] * w, [128] * w)
    variant = WindowLosses([(2.0 + 0.5 * e) * 128 for e in rng.standard_normal(w)], [128] * w)
    b = bootstrap_difference({0: variant}, {0: base}, n_resamples=2000)
    assert (b.high - b.low) / 2 == pytest.approx(1.96 * 0.5 / math.sqrt(w), rel=0.1)


def test_bootstrap_refuses_different_windows():
    rng = np.random.default_rng(0)
    with pytest.raises(LLMLabError, match="different evaluation windows"):
        bootstrap_difference({0: windows(rng, 10)}, {0: windows(rng, 11)})
    with pytest.raises(LLMLabError, match="unpaired seeds"):
        bootstrap_difference({0: windows(rng, 10)}, {1: windows(rng, 10)})


def test_outlier_rule_names_a_seed_far_from_the_other_two():
    # the CPU study's kv-only ablation: seed 2 ended ~0.2 nats above seeds 0 and 1
    flagged = outlying_seeds({0: 1.745, 1: 1.736, 2: 1.945})
    assert list(flagged) == [2] and flagged[2] > 10
    assert outlying_seeds({0: 1.700, 1: 1.701, 2: 1.740}) == {}  # 0.04 nats: within 3.5 x the 1 % floor
    assert outlying_seeds({0: 1.70, 1: 1.72, 2: 1.74}) == {}  # an even spread: nothing odd
    assert outlying_seeds({0: 1.7, 1: 2.5}) == {}  # two seeds: neither is the odd one
    assert OutlierRule().describe().startswith("|x − median| > 3.5 × max(1.4826 MAD, 0.01 |median|)")
