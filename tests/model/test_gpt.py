"""Invariants of the dense model core on tiny CPU models (fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from llmlab.config import ModelConfig
from llmlab.infer import generate
from llmlab.model import GPT
from llmlab.model.accounting import count
from llmlab.model import attention
from llmlab.model.attention import apply_rope, folded_gqa_attention, math_attention, rope_cache, sdpa_attention


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, head_dim=16, d_ff=96, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


KV_HEADS = [4, 2, 1]  # MHA, GQA (group 2), MQA
SWITCHES = [
    dict(),
    dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_embeddings=False),
    dict(norm="layernorm", pos="rope", mlp="swiglu", bias=True),
    dict(n_heads=8, n_kv_heads=2, head_dim=8),  # GQA group 4, attention width != d_model
]


@pytest.mark.parametrize("n_kv_heads", KV_HEADS)
@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_cached_decode_equals_full_forward(n_kv_heads: int, pos: str) -> None:
    model = build(tiny(n_kv_heads=n_kv_heads, pos=pos))
    idx = torch.randint(0, 97, (2, 24))
    full = model(idx).logits  # (B, 24, V)
    prompt = 10
    model.setup_kv_cache(batch_size=2, max_seq_len=32)
    got = [model(idx[:, :prompt], input_pos=torch.arange(prompt)).logits]
    for pos_i in range(prompt, 24):
        got.append(model(idx[:, pos_i : pos_i + 1], input_pos=torch.tensor([pos_i])).logits)
    model.clear_kv_cache()
    assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", KV_HEADS)
def test_prefill_over_its_own_slots_equals_the_whole_cache(n_kv_heads: int) -> None:
    """kv_len=T (a prompt from position 0) reads T slots instead of S: the same logits and the same
    cache as attending over the whole (masked) cache, then decoding goes on identically."""
    model = build(tiny(n_kv_heads=n_kv_heads))
    idx = torch.randint(0, 97, (2, 12))
    runs = []
    for kv_len in (None, 10):
        model.setup_kv_cache(2, 32)
        logits = [model(idx[:, :10], input_pos=torch.arange(10), kv_len=kv_len).logits]
        logits.append(model(idx[:, 10:11], input_pos=torch.tensor([10])).logits)
        runs.append((torch.cat(logits, 1), model.kv_cache.k.clone()))
    assert_close(runs[1][0], runs[0][0], atol=1e-6, rtol=1e-6)
    assert_close(runs[1][1], runs[0][1], atol=0, rtol=0)
    for bad in (9, 33):  # fewer slots than tokens; more than the cache holds
        with pytest.raises(ValueError, match="kv_len"):
            model(idx[:, :10], input_pos=torch.arange(10), kv_len=bad)
    model.clear_kv_cache()
    with pytest.raises(ValueError, match="needs a KV cache"):
        model(idx, kv_len=12)


@pytest.mark.parametrize("n_kv_heads", KV_HEADS)
def test_greedy_generation_same_with_and_without_cache(n_kv_heads: int) -> None:
    model = build(tiny(n_kv_heads=n_kv_heads, n_layers=3), seed=1)
    with torch.no_grad():  # sharpen the random model so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    idx = torch.randint(0, 97, (3, 7))
    a = generate(model, idx, max_new_tokens=20, use_kv_cache=True)
    b = generate(model, idx, max_new_tokens=20, use_kv_cache=False)
    assert a.shape == (3, 27)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :7], idx)
    assert model.kv_cache is None  # cleared after the call


def test_sampling_is_seeded_and_matches_across_cache() -> None:
    model = build(tiny(n_kv_heads=2))
    idx = torch.randint(0, 97, (2, 5))
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=20, seed=7)
    a = generate(model, idx, use_kv_cache=True, **kw)
    b = generate(model, idx, use_kv_cache=True, **kw)
    c = generate(model, idx, use_kv_cache=False, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = generate(model, idx, use_kv_cache=True, **{**kw, "seed": 8})
    assert not torch.equal(a, d)


def test_top_k_1_is_greedy() -> None:
    model = build(tiny())
    idx = torch.randint(0, 97, (1, 5))
    greedy = generate(model, idx, max_new_tokens=8)
    topk1 = generate(model, idx, max_new_tokens=8, temperature=1.0, top_k=1, seed=3)
    assert torch.equal(greedy, topk1)


def test_prompt_longer_than_context_is_refused() -> None:
    model = build(tiny(max_seq_len=16))
    with pytest.raises(ValueError, match=r"exceeds the model's context \(model.max_seq_len = 16\)"):
        generate(model, torch.zeros(1, 12, dtype=torch.long), max_new_tokens=5)


def test_gqa_with_all_kv_heads_is_mha() -> None:
    """n_kv_heads == n_heads through the GQA code is plain multi-head attention: compare against
    an independent MHA computed head by head."""
    torch.manual_seed(0)
    B, H, T, hd = 2, 4, 9, 8
    q, k, v = (torch.randn(B, H, T, hd) for _ in range(3))
    ref = torch.empty_like(q)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for h in range(H):
        s = (q[:, h] @ k[:, h].transpose(-1, -2)) / hd**0.5
        ref[:, h] = s.masked_fill(~causal, float("-inf")).softmax(-1) @ v[:, h]
    assert_close(sdpa_attention(q, k, v, None), ref, atol=1e-5, rtol=1e-5)
    assert_close(math_attention(q, k, v, None), ref, atol=1e-5, rtol=1e-5)


def test_gqa_uses_repeat_interleave_grouping() -> None:
    """Query head i reads kv head i // G: heads 0,1 -> kv 0; heads 2,3 -> kv 1 (not tiled 0,1,0,1)."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 8)
    k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out = math_attention(q, k, v, None)
    for h in range(4):
        expect = math_attention(q[:, h : h + 1], k[:, h // 2 : h // 2 + 1], v[:, h // 2 : h // 2 + 1], None)
        assert_close(out[:, h : h + 1], expect)
    assert_close(sdpa_attention(q, k, v, None), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", KV_HEADS)
def test_sdpa_equals_math_reference(n_kv_heads: int) -> None:
    model = build(tiny(n_kv_heads=n_kv_heads))
    idx = torch.randint(0, 97, (2, 20))
    fast = model(idx).logits
    model.set_attention_impl("math")
    ref = model(idx).logits
    assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    # and with the cache's explicit mask
    model.setup_kv_cache(2, 32)
    ref_cached = model(idx, input_pos=torch.arange(20)).logits
    model.set_attention_impl("sdpa")
    fast_cached = model(idx, input_pos=torch.arange(20)).logits
    assert_close(fast_cached, ref_cached, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", KV_HEADS)
def test_kv_cache_holds_kv_heads_and_shrinks_bytes(n_kv_heads: int) -> None:
    cfg = tiny(n_kv_heads=n_kv_heads)
    model = build(cfg)
    model.setup_kv_cache(batch_size=3, max_seq_len=40)
    cache = model.kv_cache
    assert cache.k.shape == (3, n_kv_heads, 40, 16) and cache.v.shape == cache.k.shape
    cache_bytes = sum(b.attn.kv_cache.k.nbytes + b.attn.kv_cache.v.nbytes for b in model.blocks)
    per_token = count(cfg, kv_bytes_per_element=4)["kv_cache_bytes_per_token"]
    assert cache_bytes == per_token * 3 * 40
    mha_per_token = count(tiny(n_kv_heads=4), kv_bytes_per_element=4)["kv_cache_bytes_per_token"]
    assert mha_per_token / per_token == 4 / n_kv_heads
    assert not any(".kv_cache." in k for k in model.state_dict())  # never saved with the weights


def test_rope_is_a_rotation_that_encodes_relative_position() -> None:
    cos, sin = rope_cache(32, 16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    rq = lambda p: apply_rope(q, cos[p : p + 1], sin[p : p + 1])  # noqa: E731
    rk = lambda p: apply_rope(k, cos[p : p + 1], sin[p : p + 1])  # noqa: E731
    assert_close(rq(5).norm(), q.norm())
    # <R(m) q, R(n) k> depends only on m - n (Su et al. 2021, eq. 16)
    assert_close((rq(7) * rk(3)).sum(), (rq(12) * rk(8)).sum(), atol=1e-5, rtol=1e-5)


def test_vocab_padding_does_not_change_results() -> None:
    plain, padded = build(tiny(), seed=3), build(tiny(pad_vocab_multiple=64), seed=3)
    assert padded.tok_emb.weight.shape[0] == 128
    # Same seed, same weights: padding draws no extra random numbers.
    assert_close(padded.tok_emb.weight[:97], plain.tok_emb.weight)
    assert_close(padded.blocks[1].ffn.down.weight, plain.blocks[1].ffn.down.weight)
    idx = torch.randint(0, 97, (2, 10))
    out = padded(idx).logits
    assert out.shape == (2, 10, 97)
    assert_close(out, plain(idx).logits)


def test_residual_projections_get_scaled_init() -> None:
    model = build(tiny(n_layers=8, d_model=256, n_heads=4, head_dim=64, d_ff=1024))
    std_in = model.blocks[0].attn.q_proj.weight.std().item()
    std_out = model.blocks[0].attn.o_proj.weight.std().item()
    assert abs(std_in - 0.02) < 0.002
    assert abs(std_out - 0.02 / 4.0) < 0.0005  # 0.02 / sqrt(2 * 8)


# -- parameter accounting ----------------------------------------------------------------------


def hand_count(c: ModelConfig) -> int:
    """Every parameter of the dense model, written out by hand."""
    D, q, kv, F = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.d_ff
    attn = D * q + 2 * D * kv + q * D + (q + 2 * kv + D if c.bias else 0)
    mlp = (3 if c.mlp == "swiglu" else 2) * D * F + ((2 if c.mlp == "swiglu" else 1) * F + D if c.bias else 0)
    norm = 2 * D if (c.norm == "layernorm" and c.bias) else D
    emb = c.padded_vocab_size * D * (1 if c.tie_embeddings else 2) + (c.max_seq_len * D if c.pos == "learned" else 0)
    return emb + c.n_layers * (attn + mlp + 2 * norm) + norm


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_param_counts_equal_hand_formula_and_numel(switches: dict, n_kv_heads: int | None) -> None:
    kw = dict(switches)
    if n_kv_heads is not None:
        kw["n_kv_heads"] = n_kv_heads
    cfg = tiny(pad_vocab_multiple=8, **kw)
    numel = sum(p.numel() for p in build(cfg).parameters())
    c = count(cfg)
    assert c["total"] == numel == hand_count(cfg)
    assert c["active"] == c["total"]
    assert c["embedding"] + c["non_embedding"] == c["total"]


def test_gpt2_small_has_124_439_808_parameters() -> None:
    from llmlab.config import load_model_config

    cfg = load_model_config("configs/models/gpt2-small.toml")
    assert count(cfg)["total"] == 124_439_808
    assert hand_count(cfg) == 124_439_808


def test_gqa_125m_matches_base_active_non_embedding_within_1_percent() -> None:
    from llmlab.config import load_model_config

    base = count(load_model_config("configs/models/base-125m.toml"))
    gqa_cfg = load_model_config("configs/models/gqa-125m.toml")
    gqa = count(gqa_cfg)
    assert gqa_cfg.n_kv_heads < gqa_cfg.n_heads
    assert abs(gqa["active_non_embedding"] / base["active_non_embedding"] - 1) < 0.01
    assert gqa["kv_cache_bytes_per_token"] * 3 == base["kv_cache_bytes_per_token"]


def test_flops_per_token_formula() -> None:
    cfg = tiny()
    c = count(cfg, seq_len=32)
    expect = 6 * (c["active_non_embedding"] + 64 * 97) + 12 * 2 * 4 * 16 * 32
    assert c["flops_per_token"] == expect


def test_dropout_is_active_in_training_only() -> None:
    model = build(tiny(dropout=0.5))
    idx = torch.randint(0, 97, (1, 8))
    assert torch.equal(model(idx).logits, model(idx).logits)
    model.train()
    assert not torch.equal(model(idx).logits, model(idx).logits)


def test_dense_model_returns_zero_aux_loss_and_no_stats() -> None:
    out = build(tiny())(torch.randint(0, 97, (1, 4)))
    assert out.aux_loss.item() == 0.0 and out.moe_stats == {}


def test_config_is_not_mutated_by_model() -> None:
    cfg = tiny()
    before = dataclasses.asdict(cfg)
    build(cfg)
    assert dataclasses.asdict(cfg) == before


# -- masked GQA folded into multi-head attention (the fused-kernel path of a GPU) ----------------

FOLD_CASES = {  # (B, T new tokens, S cache slots, first position): decode, prefill into a longer cache
    "decode": (1, 1, 24, 17),
    "decode batch 3": (3, 1, 24, 9),
    "prefill into a longer cache": (2, 7, 24, 0),
    "chunk mid-cache": (2, 5, 24, 11),
}


@pytest.mark.parametrize("case", FOLD_CASES)
@pytest.mark.parametrize("n_heads,n_kv_heads", [(8, 2), (6, 1), (4, 4)])
def test_folded_gqa_attention_equals_math_reference(case: str, n_heads: int, n_kv_heads: int) -> None:
    B, T, S, start = FOLD_CASES[case]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, n_heads, T, 16, generator=gen)
    k, v = (torch.randn(B, n_kv_heads, S, 16, generator=gen) for _ in range(2))
    input_pos = torch.arange(start, start + T)
    mask = torch.arange(S)[None, :] <= input_pos[:, None]  # the cache's mask row (KVCache.mask)
    assert_close(folded_gqa_attention(q, k, v, mask), math_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_model_decodes_the_same_with_masked_gqa_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole model with folding switched on for the CPU (it is on for CUDA): cached prefill and
    decode equal the math reference, batch 2; a wrong grouping (tile instead of repeat_interleave)
    would fail this, since each query head's kv head is checked through the reference."""
    model = build(tiny(n_kv_heads=2))
    idx = torch.randint(0, 97, (2, 12))

    def cached_logits() -> torch.Tensor:
        model.setup_kv_cache(2, 32)
        out = [model(idx[:, :8], input_pos=torch.arange(8)).logits]
        out += [model(idx[:, p : p + 1], input_pos=torch.tensor([p])).logits for p in range(8, 12)]
        model.clear_kv_cache()
        return torch.cat(out, 1)

    model.set_attention_impl("math")
    ref = cached_logits()
    model.set_attention_impl("sdpa")
    monkeypatch.setattr(attention, "FOLD_DEVICES", ("cpu", "cuda"))
    calls = []
    monkeypatch.setattr(attention, "folded_gqa_attention",
                        lambda *a: calls.append(1) or folded_gqa_attention(*a))
    assert_close(cached_logits(), ref, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2 * 5  # 2 layers x (one masked prefill + 4 decode steps)
