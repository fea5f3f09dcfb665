"""GPU checks for the A100 user (`pytest -m gpu`); skipped on machines without CUDA."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.audit.compile_check import compile_check
from llmlab.config import load_model_config
from llmlab.gpu_check import compiled_decode_error, planted_mask_bug, teacher_forced_logits
from llmlab.infer import generate
from llmlab.model import GPT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("config", ["tiny-gqa", "tiny-moe"])
def test_bf16_decode_matches_fp32_of_the_same_weights_closer_than_a_mask_bug(config: str) -> None:
    """bf16 on the GPU against fp32 of the same weights: the rounding error must stay well below
    what a mask one slot too wide changes, so that this test would catch such a bug."""
    torch.manual_seed(0)
    overrides = ["model.moe.dispatch=capacity"] if config == "tiny-moe" else []
    model = GPT(load_model_config(f"configs/models/{config}.toml", overrides)).cuda().eval()
    idx = torch.randint(0, 1000, (2, 64), device="cuda")
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # trained-like logit scale, so differences are not all near zero
        fp32 = teacher_forced_logits(model, idx, 16, compiled=False)
        with planted_mask_bug():  # every cache slot visible, unwritten ones too
            wrong = teacher_forced_logits(model, idx, 16, compiled=False)
        bf16 = teacher_forced_logits(model.to(torch.bfloat16), idx, 16, compiled=False)
    # A random model attends almost uniformly, so a mask bug moves logits by ~0.4 here while bf16
    # rounds them by ~0.1 (measured on CPU): a tolerance of half the bug's effect, with no relative
    # term (rtol 0.02 of logits ~30 would exceed the bug's effect), fails on the bug, passes bf16.
    bug = (wrong - fp32).abs().max().item()
    assert_close(bf16, fp32, atol=bug / 2, rtol=0.0)


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


@pytest.mark.parametrize("config", ["tiny", "tiny-gqa", "tiny-moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_matches_eager_and_never_falls_back(config: str, dtype: torch.dtype) -> None:
    """generate(compile=True) on CUDA replays the decode step as a CUDA graph. fp32: the eager
    tokens exactly. bf16: inductor keeps fp32 intermediates where eager rounds, so a near-tie may
    flip a token with no bug; instead the compiled step's logits, teacher-forced along the same
    tokens, must be within half of what a wrong mask changes on this model (`compiled_decode_error`;
    tests/model/test_gpu_tolerance.py shows on CPU that a planted mask bug fails it). No silent
    fallback either: inductor skips CUDA graphs (e.g. for a mutated input it does not treat as
    static) with only a log line, so its counter must stay at zero. fp32 MoE compiles on the Triton
    grouped GEMM (torch._grouped_mm compiles in bf16 only)."""
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    overrides = ["model.moe.grouped_kernel=triton"] if config == "tiny-moe" and dtype == torch.float32 else []
    model = GPT(load_model_config(f"configs/models/{config}.toml", overrides)).cuda().to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # trained-like logit scale
    idx = torch.randint(0, 1000, (2, 8), device="cuda")
    eager = generate(model, idx, 32)
    compiled = generate(model, idx, 32, compile=True)
    assert torch.equal(generate(model, idx, 32, compile=True), compiled)  # the cached graph, replayed
    if dtype == torch.float32:
        assert torch.equal(compiled, eager)
    else:
        check = compiled_decode_error(model, eager, idx.shape[1])
        assert check["within_tolerance"], check
    assert counters["inductor"]["cudagraph_skips"] == 0, "decode ran without CUDA graphs"


@pytest.mark.parametrize("config", ["tiny-gqa", "tiny-moe"])
def test_compile_check_bf16_on_cuda(config: str) -> None:
    overrides = ["model.moe.dispatch=grouped"] if config == "tiny-moe" else []
    cfg = load_model_config(f"configs/models/{config}.toml", overrides)
    out = compile_check(cfg, device="cuda", dtype="bf16", steps=3, decode_steps=16)
    assert out["ok"], out["rows"]
