"""The spike detector: an injected spike is flagged, a smooth noisy-decreasing curve is not."""

from __future__ import annotations

import json
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


def test_a_real_tiny_run_has_no_spikes_until_one_is_injected(make_config, tmp_path):
    from llmlab.config import load_run_config
    from llmlab.train import train
    from llmlab.campaign.stability import run_stability

    train(load_run_config(make_config(train={"max_steps": 60})), tmp_path / "run")
    clean = run_stability(tmp_path / "run")
    assert (clean["loss"]["count"], clean["grad_norm"]["count"]) == (0, 0)
    path = tmp_path / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        if row.get("step") == 45 and "loss" in row:
            row["loss_steps"][-1] += 1.0  # the per-step record is what the rule reads
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_stability(tmp_path / "run")["loss"]["steps"] == [45]


def test_every_step_is_recorded_and_a_spike_right_after_warmup_is_caught(make_config, tmp_path):
    """Rows every 10 steps carry all 10 updates' loss and grad norm; a spike planted at the first
    step after warm-up (step 6 of a 5-step warm-up) is flagged, in the loss and the grad norm."""
    from llmlab.config import load_run_config
    from llmlab.train import train
    from llmlab.campaign.stability import run_stability, series

    cfg = load_run_config(make_config(train={"max_steps": 30, "log_interval": 10}))
    train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r and "event" not in r]
    assert [r["step"] for r in train_rows] == [10, 20, 30]
    assert all(len(r["loss_steps"]) == len(r["grad_norm_steps"]) == 10 for r in train_rows)
    assert all(r["loss_steps"][-1] == r["loss"] and r["grad_norm_steps"][-1] == r["grad_norm"] for r in train_rows)
    steps, losses = series(rows, "loss")
    assert steps == list(range(1, 31)) and all(math.isfinite(x) for x in losses)
    assert run_stability(tmp_path / "run")["loss"]["count"] == 0
    first = cfg.train.warmup + 1
    assert first == 6
    # above the loss training started from (ln 257 = 5.55): the steep warm-up descent (~0.25 nats a
    # step) makes the level lag, so a smaller jump this early is within the rule's noise
    train_rows[0]["loss_steps"][first - 1] += 1.5
    train_rows[0]["grad_norm_steps"][first - 1] *= 5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = run_stability(tmp_path / "run")
    assert found["loss"]["steps"] == [first] and found["grad_norm"]["steps"] == [first]
