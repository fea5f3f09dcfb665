"""Generation does equal work with and without the KV cache, and validates its sampling arguments."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError
from llmlab.infer import generate
from llmlab.infer.generate import generate_timed

from inferkit import build


def test_logits_to_keep_returns_the_last_positions_of_the_full_forward() -> None:
    model = build("gqa")
    idx = torch.randint(0, 97, (2, 12))
    full = model(idx).logits
    for n in (1, 3, 12):
        assert_close(model(idx, logits_to_keep=n).logits, full[:, -n:])
    assert model(idx, logits_to_keep=0).logits.shape == full.shape  # 0 = every position


@pytest.mark.parametrize("variant", ["dense", "gqa", "moe"])
def test_cached_and_uncached_greedy_tokens_are_identical(variant: str) -> None:
    model = build(variant)
    idx = torch.randint(0, 97, (3, 9))
    cached = generate(model, idx, 24, use_kv_cache=True)
    uncached = generate(model, idx, 24, use_kv_cache=False)
    assert cached.shape == (3, 33)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :9], idx)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_the_output_head_runs_on_one_position_per_step(use_kv_cache: bool) -> None:
    """Equal work: neither path computes logits it throws away (issue 8), whatever the prefix length."""
    model = build("gqa")
    shapes: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    try:
        generate(model, torch.randint(0, 97, (2, 10)), 6, use_kv_cache=use_kv_cache)
    finally:
        hook.remove()
    assert shapes == [(2, 1, 32)] * 6  # one head call per new token, on one position each


def test_generate_timed_reports_prefill_and_decode_apart() -> None:
    model = build("dense")
    idx = torch.randint(0, 97, (2, 8))
    for use_kv_cache in (True, False):
        out, times = generate_timed(model, idx, 5, use_kv_cache=use_kv_cache)
        assert out.shape == (2, 13)
        assert times.prefill_s > 0 and times.decode_s > 0
        assert times.decode_tokens == 2 * 4  # the first new token belongs to prefill
        assert times.compile_s is None
        assert times.decode_tokens_per_s == pytest.approx(8 / times.decode_s)


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    model = build("dense")
    idx = torch.randint(0, 97, (1, 5))
    a = generate(model, idx, 10, temperature=1.0, seed=3)
    assert torch.equal(a, generate(model, idx, 10, temperature=1.0, seed=3))
    assert torch.equal(generate(model, idx, 10, temperature=5.0, top_k=1, seed=3), generate(model, idx, 10))


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=1.0, top_k=0), "top_k must be an integer >= 1"),
    (dict(temperature=1.0, top_k=-3), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k must be an integer >= 1"),
    (dict(use_kv_cache=False, compile=True), "compile=True compiles the cached decode step"),
])
def test_bad_sampling_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate(build("dense"), torch.randint(0, 97, (1, 4)), 3, **kwargs)
