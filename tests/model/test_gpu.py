"""GPU checks for the A100 user (`pytest -m gpu`); skipped on machines without CUDA."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.bench.compile_check import compile_check
from llmlab.config import load_model_config
from llmlab.infer import generate
from llmlab.model import GPT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("config", ["tiny-gqa", "tiny-moe"])
def test_cached_decode_matches_full_forward_in_bf16(config: str) -> None:
    torch.manual_seed(0)
    model = GPT(load_model_config(f"configs/models/{config}.toml")).cuda().to(torch.bfloat16).eval()
    idx = torch.randint(0, 1000, (2, 48), device="cuda")
    with torch.no_grad():
        full = model(idx).logits.float()
        model.setup_kv_cache(2, 64)
        steps = [model(idx[:, :16], input_pos=torch.arange(16, device="cuda")).logits]
        steps += [model(idx[:, p : p + 1], input_pos=torch.tensor([p], device="cuda")).logits for p in range(16, 48)]
        model.clear_kv_cache()
    assert_close(torch.cat(steps, 1).float(), full, atol=0.1, rtol=0.05)  # bf16 rounding


def test_generate_with_and_without_cache_on_cuda() -> None:
    torch.manual_seed(0)
    model = GPT(load_model_config("configs/models/tiny.toml")).cuda().eval()
    idx = torch.randint(0, 1000, (1, 8), device="cuda")
    assert torch.equal(generate(model, idx, 16), generate(model, idx, 16, use_kv_cache=False))


@pytest.mark.parametrize("config", ["tiny-gqa", "tiny-moe"])
def test_compile_check_bf16_on_cuda(config: str) -> None:
    overrides = ["model.moe.dispatch=grouped"] if config == "tiny-moe" else []
    cfg = load_model_config(f"configs/models/{config}.toml", overrides)
    out = compile_check(cfg, device="cuda", dtype="bf16", steps=3, decode_steps=16)
    assert out["ok"], out["rows"]
