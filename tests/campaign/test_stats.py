"""Seed statistics against hand computations (t quantiles written out as numbers)."""

from __future__ import annotations

import math

import pytest

from llmlab.campaign.stats import (NO_DIFFERENCE, ONE_SEED, paired_difference, pooled_std,
                                   resolvable_difference, summarize)
from llmlab.errors import LLMLabError

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
