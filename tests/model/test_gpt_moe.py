"""The MoE model end to end: cached decode, accounting, statistics, compile (model level)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.testing import assert_close

from llmlab.config import ModelConfig, MoEConfig
from llmlab.infer import generate
from llmlab.model import GPT
from llmlab.model.accounting import count


def moe_cfg(dispatch: str = "capacity", **moe_kw) -> ModelConfig:
    moe = MoEConfig(n_experts=4, top_k=2, d_ff_expert=48, dispatch=dispatch, **moe_kw)
    return ModelConfig(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
                       d_ff=96, max_seq_len=64, moe=moe)


def build(cfg: ModelConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg).eval()


@pytest.mark.parametrize("dispatch", ["loop", "grouped", "capacity"])
def test_moe_cached_decode_equals_full_forward(dispatch: str) -> None:
    model = build(moe_cfg(dispatch))  # dropless: capacity_factor None
    idx = torch.randint(0, 97, (2, 20))
    full = model(idx).logits
    model.setup_kv_cache(2, 32)
    steps = [model(idx[:, :8], input_pos=torch.arange(8)).logits]
    steps += [model(idx[:, p : p + 1], input_pos=torch.tensor([p])).logits for p in range(8, 20)]
    model.clear_kv_cache()
    assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_moe_greedy_generation_same_with_and_without_cache() -> None:
    model = build(moe_cfg("grouped"))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    idx = torch.randint(0, 97, (2, 6))
    assert torch.equal(generate(model, idx, 16, use_kv_cache=True), generate(model, idx, 16, use_kv_cache=False))


@pytest.mark.parametrize("every,shared", [(1, 0), (2, 0), (1, 1), (3, 2)])
def test_moe_accounting_equals_numel(every: int, shared: int) -> None:
    cfg = moe_cfg(every_n_layers=every, n_shared_experts=shared)
    model = build(cfg)
    c = count(cfg)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    D, F, E, K = 64, 48, 4, 2
    expert = 3 * D * F  # SwiGLU, no bias
    unused = (E - K) * expert
    assert c["total"] - c["active"] == n_moe * unused
    dense_layers = cfg.n_layers - n_moe
    assert sum(isinstance(b.ffn, torch.nn.Module) and not b.is_moe for b in model.blocks) == dense_layers


def test_moe_stats_are_stacked_per_moe_layer() -> None:
    cfg = moe_cfg(every_n_layers=1)
    out = build(cfg)(torch.randint(0, 97, (2, 16)))
    stats = out.moe_stats
    assert stats["load"].shape == (3, 4)
    assert_close(stats["load"].sum(-1), torch.ones(3))
    assert stats["dropped_frac"].shape == (3,)
    assert out.aux_loss.ndim == 0 and out.aux_loss.item() > 0
    assert_close(out.aux_loss, stats["aux_loss"].sum())


@pytest.mark.parametrize("autocast", [False, True])
def test_moe_capacity_model_compiles_fullgraph_forward_backward(autocast: bool) -> None:
    """fp32, and bf16 autocast as GPU training runs it."""
    torch._dynamo.reset()
    model = build(moe_cfg("capacity", capacity_factor=1.25))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    idx = torch.randint(0, 97, (2, 16))
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = compiled(idx)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx.flatten()) + out.aux_loss
        loss.backward()
    assert counter.frame_count == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capacity_dispatch_is_causal(seed: int) -> None:
    """Under `capacity` with capacity_factor 1.0 (tokens are dropped), changing only the tokens at
    positions >= t leaves every logit at positions < t unchanged: a later token never takes an
    expert slot from an earlier one."""
    cfg = moe_cfg("capacity", capacity_factor=1.0)
    cfg.n_layers = 2
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 97, (4, 32), generator=gen)
    with torch.no_grad():
        out = model(idx)
        assert (out.moe_stats["dropped_frac"] > 0).all()  # the capacity binds in both layers
        for t in (1, 8, 16, 31):
            changed = idx.clone()
            changed[:, t:] = torch.randint(0, 97, changed[:, t:].shape, generator=gen)
            assert_close(model(changed).logits[:, :t], out.logits[:, :t], atol=1e-6, rtol=1e-6,
                         msg=lambda m: f"t={t}: {m}")
