"""The learning-rate schedule is a pure function of the step."""

import math

import pytest

from llmlab.config import TrainConfig
from llmlab.train.schedule import lr_at


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-3, "min_lr": 1e-4, "warmup": 10, "max_steps": 100, **kw})


def test_warmup_is_linear_from_lr_over_warmup():
    c = cfg()
    assert lr_at(0, c, 100) == pytest.approx(1e-4)
    assert lr_at(4, c, 100) == pytest.approx(5e-4)
    assert lr_at(9, c, 100) == pytest.approx(1e-3)


def test_cosine_goes_from_lr_to_min_lr_monotonically():
    c = cfg(schedule="cosine")
    lrs = [lr_at(s, c, 100) for s in range(10, 100)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    mid = lr_at(10 + 89 // 2, c, 100)
    assert mid == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 44 / 89)))


def test_wsd_is_flat_then_decays_linearly_to_min_lr():
    c = cfg(schedule="wsd", decay_frac=0.2)
    assert [lr_at(s, c, 100) for s in (10, 50, 79)] == [1e-3] * 3
    decay = [lr_at(s, c, 100) for s in range(80, 100)]
    assert decay[-1] == pytest.approx(1e-4)
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)


def test_constant_after_warmup():
    c = cfg(schedule="constant")
    assert {lr_at(s, c, 100) for s in range(10, 100)} == {1e-3}


def test_no_warmup_starts_at_lr():
    assert lr_at(0, cfg(warmup=0), 100) == pytest.approx(1e-3)
