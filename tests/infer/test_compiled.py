"""Compiled decoding (issue 10): the same greedy tokens as eager, one compilation for all positions."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from llmlab.infer import generate
from llmlab.infer.generate import generate_timed

from inferkit import build


@pytest.mark.parametrize("variant", ["dense", "gqa", "moe"])
def test_compiled_decode_gives_eager_tokens_with_one_compilation(variant: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    model = build(variant)
    idx = torch.randint(0, 97, (2, 7))
    compiled, times = generate_timed(model, idx, 30, compile=True)
    assert torch.equal(compiled, generate(model, idx, 30))
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all 29 decode positions
    assert times.compile_s is not None and times.compile_s > 0
    # a second call at the same (batch, cache length) reuses the compiled step: no compilation
    again, times = generate_timed(model, idx, 30, compile=True)
    assert torch.equal(again, compiled)
    assert counters["stats"]["unique_graphs"] == 1 and times.compile_s is None
