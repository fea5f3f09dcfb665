"""Inference memory accounting (weights + buffers + KV cache + decode activations) and the largest
batch / context that fit a budget: hand arithmetic, GQA's factor, and a measured decode step."""

from __future__ import annotations

import pytest
import torch

from llmlab.config import load_model_config
from llmlab.model import GPT
from llmlab.model.accounting import inference_memory, max_fit

BYTE_VOCAB = ["model.vocab_size=257", "model.pad_vocab_multiple=1"]  # the demo's vocabulary


def tiny(kv_heads: int = 4):
    return load_model_config("configs/models/tiny.toml", BYTE_VOCAB + [f"model.n_kv_heads={kv_heads}"])


def test_tiny_fp32_equals_hand_arithmetic() -> None:
    # tiny: D 128, 4 layers, 4 heads / 4 kv heads of 32, SwiGLU 384, vocab 257, max_seq_len 256, tied.
    # params per layer: attention 128 x (128 + 2 x 128) + 128 x 128 = 65,536; SwiGLU 3 x 128 x 384
    # = 147,456; two RMSNorms 256 -> 213,248; x 4 = 852,992; final norm 128; embedding 257 x 128 =
    # 32,896 -> 886,016 parameters x 4 bytes = 3,544,064.
    # batch 2, context 64, fp32:
    #   buffers: RoPE cos + sin 256 x 32 x 4 = 32,768; key positions 8 x 64 = 512 -> 33,280
    #   KV: 2 x 4 layers x 4 kv heads x 32 x 4 B = 4,096 B/token; x 2 x 64 = 524,288
    #   activations per sequence: (4 x 128 + 3 x 384 + 2 x (4 + 2 x 4) x 32) x 4 = 2,432 x 4 = 9,728
    #     + fp32 scores and logits (4 x 64 + 257) x 4 = 2,052 -> 11,780; x 2 = 23,560
    #   total 3,544,064 + 33,280 + 524,288 + 23,560 = 4,125,192
    assert inference_memory(tiny(), 2, 64, dtype_bytes=4) == {
        "weights": 3_544_064, "buffers": 33_280, "kv_cache": 524_288, "activations": 23_560, "total": 4_125_192}


def test_gqa_125m_bf16_equals_hand_arithmetic() -> None:
    # gqa-125m: D 768, 12 layers, 20 heads / 4 kv heads of 64, SwiGLU 2048, vocab 50,257 padded to
    # 50,304, max_seq_len 1024. Attention 768 x (1280 + 512) + 1280 x 768 = 2,359,296; SwiGLU
    # 3 x 768 x 2048 = 4,718,592; norms 1,536 -> 7,079,424 per layer; x 12 + 768 = 84,953,856;
    # + embedding 50,304 x 768 = 38,633,472 -> 123,587,328 x 2 bytes = 247,174,656.
    # batch 1, context 1024, bf16:
    #   buffers: RoPE 1024 x 64 x 2 = 131,072; key positions 8 x 1024 = 8,192 -> 139,264
    #   KV: 2 x 12 x 4 x 64 x 2 = 12,288 B/token x 1024 = 12,582,912
    #   activations: (4 x 768 + 3 x 2048 + 2 x (20 + 8) x 64) x 2 = 12,800 x 2 = 25,600
    #     + (20 x 1024 + 50,304) x 4 = 283,136 -> 308,736
    #   total 247,174,656 + 139,264 + 12,582,912 + 308,736 = 260,205,568
    cfg = load_model_config("configs/models/gqa-125m.toml")
    assert inference_memory(cfg, 1, 1024, dtype_bytes=2) == {
        "weights": 247_174_656, "buffers": 139_264, "kv_cache": 12_582_912, "activations": 308_736,
        "total": 260_205_568}


def test_max_fit_is_the_boundary() -> None:
    cfg, budget = tiny(), 8 << 20
    b = max_fit(cfg, budget, context=128, dtype_bytes=4)
    assert inference_memory(cfg, b, 128, 4)["total"] <= budget < inference_memory(cfg, b + 1, 128, 4)["total"]
    s = max_fit(cfg, budget, batch=1, dtype_bytes=4)
    assert inference_memory(cfg, 1, s, 4)["total"] <= budget < inference_memory(cfg, 1, s + 1, 4)["total"]
    assert max_fit(cfg, 1 << 20, context=128, dtype_bytes=4) == 0  # the weights alone are 3.5 MB
    with pytest.raises(ValueError, match="exactly one"):
        max_fit(cfg, budget, context=128, batch=1)


@pytest.mark.parametrize("base, gqa, ratio", [
    ("base-125m", "gqa-125m", 3),  # 12 kv heads -> 4
    ("tiny", "tiny-gqa", 2),       # 4 -> 2
])
def test_gqa_fits_about_h_over_hkv_times_more(base: str, gqa: str, ratio: int) -> None:
    """When the budget is dominated by the KV cache (here 80 GB), GQA's largest batch and longest
    context are about n_kv_heads_base / n_kv_heads times the baseline's."""
    vocab = BYTE_VOCAB if base == "tiny" else []  # the demo's vocabulary: logits do not dominate
    a, b = (load_model_config(f"configs/models/{name}.toml", vocab) for name in (base, gqa))
    assert a.n_kv_heads == ratio * b.n_kv_heads
    budget = 80 * 10**9
    for kwargs in ({"context": a.max_seq_len}, {"batch": 1}):
        fa, fb = max_fit(a, budget, **kwargs), max_fit(b, budget, **kwargs)
        assert fb / fa == pytest.approx(ratio, rel=0.06), kwargs


def measured_decode_peak(model: GPT, batch: int, context: int) -> int:
    """Peak bytes the CPU allocator held during one decode step at the last cache position, as the
    profiler's memory timeline sees them: the tensors the step touches (weights, buffers, caches)
    plus everything it allocates."""
    timeline = pytest.importorskip("torch.profiler._memory_profiler")
    from torch.profiler import ProfilerActivity, profile

    model.setup_kv_cache(batch, context)
    token, pos = torch.zeros(batch, 1, dtype=torch.long), torch.tensor([context - 1])
    with torch.no_grad():
        model(token, input_pos=pos)  # warm-up: lazy initialisations are not the step's memory
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            model(token, input_pos=pos)
    _, sizes = timeline.MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    model.clear_kv_cache()
    return max(sum(s) for s in sizes)


@pytest.mark.parametrize("config, overrides", [
    ("tiny", []), ("tiny", ["model.n_kv_heads=2"]),
    ("tiny-moe", ["model.moe.dispatch=grouped"]), ("tiny-moe", ["model.moe.dispatch=capacity"]),
])
def test_largest_batch_decodes_within_the_budget_on_cpu(config: str, overrides: list[str]) -> None:
    """Allocate the computed largest batch for the demo's sizes under a stated 12 MiB budget and
    decode one step: the measured peak (weights + buffers + caches + the step's tensors) stays within
    the arithmetic and the budget, and one more row does not fit the arithmetic."""
    cfg = load_model_config(f"configs/models/{config}.toml", BYTE_VOCAB + overrides)
    budget, context = 12 << 20, 128
    batch = max_fit(cfg, budget, context=context, dtype_bytes=4)
    expected = inference_memory(cfg, batch, context, dtype_bytes=4)
    torch.manual_seed(0)
    peak = measured_decode_peak(GPT(cfg).eval(), batch, context)
    assert expected["weights"] + expected["kv_cache"] <= peak <= expected["total"] <= budget
    assert inference_memory(cfg, batch + 1, context, dtype_bytes=4)["total"] > budget


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", ["base-125m", "gqa-125m"])
def test_largest_batch_decodes_within_the_budget_on_gpu(config: str) -> None:
    """The 125M sizes in bf16 under a 3 GiB budget: torch.cuda's peak over one decode step at the
    computed largest batch stays within the arithmetic. cuBLAS's workspace (a fixed per-process
    allocation, made by a warm-up step before the measurement) is not part of the model's figure."""
    cfg, budget = load_model_config(f"configs/models/{config}.toml"), 3 << 30
    context = cfg.max_seq_len
    batch = max_fit(cfg, budget, context=context, dtype_bytes=2)
    torch.cuda.empty_cache()
    model = GPT(cfg).to(torch.bfloat16).cuda().eval()  # converted on the CPU: no fp32 copy on the GPU
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    decode_peak = lambda b: decode_step_peak(model, b, context)  # noqa: E731
    decode_peak(1)  # warm-up: cuBLAS workspace and kernels
    peak = resident + decode_peak(batch)
    expected = inference_memory(cfg, batch, context, dtype_bytes=2)
    assert expected["weights"] + expected["kv_cache"] <= peak <= expected["total"] <= budget
    assert inference_memory(cfg, batch + 1, context, dtype_bytes=2)["total"] > budget


def decode_step_peak(model: GPT, batch: int, context: int) -> int:
    """CUDA bytes allocated at the peak of one decode step at the last position, above what was
    allocated before its KV cache was set up."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.setup_kv_cache(batch, context)
    token, pos = torch.zeros(batch, 1, dtype=torch.long, device="cuda"), torch.tensor([context - 1], device="cuda")
    with torch.no_grad():
        model(token, input_pos=pos)
    torch.cuda.synchronize()
    model.clear_kv_cache()
    return torch.cuda.max_memory_allocated() - before
