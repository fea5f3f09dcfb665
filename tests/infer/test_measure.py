"""The measuring API the campaign and the benchmarks share (llmlab.infer.measure)."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.infer.measure import measure_decode, random_prompt
from llmlab.model import GPT


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                           d_ff=64, max_seq_len=40))


def test_measure_decode_reports_prefill_decode_and_agreement_per_case() -> None:
    out = measure_decode(model(), batch_size=2, context=24, new_tokens=8, cases=("kv_cache", "no_cache"),
                         repeats=2)
    assert set(out) == {"kv_cache", "no_cache"}
    for figures in out.values():
        assert figures["prefill_s"] > 0 and figures["decode_s"] > 0
        assert figures["decode_tokens_per_s"] == pytest.approx(2 * 7 / figures["decode_s"])
        assert figures["tokens_per_s"] == pytest.approx(2 * 8 / (figures["prefill_s"] + figures["decode_s"]))
        assert figures["repeats"] == 2 and "compile_s" not in figures
        assert figures["same_tokens_as_kv_cache"] is True
    json.dumps(out)  # plain data: the campaign writes it as is


def test_random_prompt_is_reproducible() -> None:
    a = random_prompt(97, 2, 5, "cpu", seed=1)
    assert a.shape == (2, 5) and torch.equal(a, random_prompt(97, 2, 5, "cpu", seed=1))
    assert not torch.equal(a, random_prompt(97, 2, 5, "cpu", seed=2))


@pytest.mark.parametrize("kwargs,message", [
    (dict(context=41, new_tokens=8), r"context \(41\) <= model.max_seq_len \(40\)"),
    (dict(context=8, new_tokens=8), r"new_tokens \(8\) < context \(8\)"),
    (dict(context=20, new_tokens=0), r"1 <= new_tokens \(0\)"),
    (dict(context=20, new_tokens=4, cases=("cached",)), "unknown decode case 'cached'"),
    (dict(context=20, new_tokens=4, repeats=0), r"repeats \(0\) must be >= 1"),
])
def test_bad_measurement_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    kwargs = {"batch_size": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        measure_decode(model(), **kwargs)


def test_the_compiled_case_runs_the_compile_mode_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmlab.infer.measure as measure

    seen = []
    real = measure.generate_timed

    def spy(*args, **kwargs):
        seen.append(kwargs["compile"])
        return real(*args, **{**kwargs, "compile": False})  # the mode reaches generate; no compile here

    monkeypatch.setattr(measure, "generate_timed", spy)
    measure_decode(model(), batch_size=1, context=12, new_tokens=4, cases=("kv_cache", "compiled"), repeats=1,
                   compile_mode="max-autotune")
    assert set(seen) == {False, "max-autotune"}
    with pytest.raises(ConfigError, match="compile must be"):
        measure_decode(model(), batch_size=1, context=12, new_tokens=4, compile_mode="fast")
