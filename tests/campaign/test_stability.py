"""The spike detector: an injected spike is flagged, a smooth noisy-decreasing curve is not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmlab.campaign.stability import SpikeRule, detect_spikes, run_spikes
from llmlab.errors import LLMLabError


def noisy_curve(seed: int, n: int = 1000) -> tuple[list[int], list[float]]:
    """A language-model-like loss: exponential decay to 2 nats, Gaussian noise of 0.03."""
    rng = np.random.default_rng(seed)
    steps = list(range(1, n + 1))
    return steps, [2.0 + 3.0 * math.exp(-s / 250) + rng.normal(0, 0.03) for s in steps]


@pytest.mark.parametrize("seed", range(5))
def test_nothing_flagged_on_a_smooth_noisy_decreasing_curve(seed):
    steps, loss = noisy_curve(seed)
    spikes = detect_spikes(steps, loss, warmup=50)
    assert spikes.count == 0 and spikes.steps == []


def test_an_injected_spike_is_flagged_once_at_its_first_step():
    steps, loss = noisy_curve(0)
    for s in range(600, 606):  # the demo MoE run's kind of spike: +0.7 nats for a few steps
        loss[s - 1] += 0.7
    loss[799] += 0.3  # ten noise std: also a spike
    spikes = detect_spikes(steps, loss, warmup=50, metric="loss")
    assert (spikes.count, spikes.steps) == (2, [600, 800])
    assert "median" in spikes.rule


def test_spikes_during_warmup_are_not_counted_and_nan_is_a_spike():
    steps, loss = noisy_curve(1, n=200)
    loss[29] += 2.0  # step 30 <= warmup 50
    loss[149] = float("nan")
    assert detect_spikes(steps, loss, warmup=50).steps == [150]


def test_run_spikes_reads_loss_and_grad_norm_from_metrics_rows():
    steps, loss = noisy_curve(2, n=300)
    rng = np.random.default_rng(3)
    grad = [0.5 * math.exp(rng.normal(0, 0.1)) for _ in steps]
    grad[249] = 4.0
    rows = [{"event": "start", "step": 0}]
    rows += [{"step": s, "loss": l, "grad_norm": g} for s, l, g in zip(steps, loss, grad)]
    rows += [{"step": 300, "val_loss": 9.0}]  # an eval row is not a training row
    out = run_spikes(rows, warmup=20)
    assert out["loss"]["count"] == 0
    assert out["grad_norm"]["count"] == 1 and out["grad_norm"]["steps"] == [250]


def test_bad_rule_is_an_error():
    with pytest.raises(LLMLabError, match="min_window"):
        SpikeRule(window=5, min_window=10)
    with pytest.raises(LLMLabError, match="ref"):
        SpikeRule(ref=60)
