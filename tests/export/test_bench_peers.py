"""The benchmarks' Hugging Face peers are our own weights (`to_transformers`), checked before any
timing: a peer that computes something else stops the benchmark instead of producing a ratio."""

from __future__ import annotations

import argparse

import pytest
import torch

from llmlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from llmlab.export.hf import PeerMismatch
from llmlab.model import GPT

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64)


def test_bench_infer_peer_gives_our_greedy_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.bench import infer
    from llmlab.export import hf

    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY)).eval()
    prompt = torch.randint(0, 300, (2, 16))
    peer = infer.hf_peer(model, prompt)
    assert type(peer).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(peer(prompt).logits, model(prompt).logits, atol=1e-4, rtol=0)
    # Random weights of the right shapes (what the peer used to be) are refused before any timing.
    other = GPT(ModelConfig(**TINY))
    real = hf.to_transformers
    monkeypatch.setattr(infer, "to_transformers", lambda m: real(other))
    with pytest.raises(PeerMismatch, match="logits differ"):
        infer.hf_peer(model, prompt)


def test_bench_train_peer_starts_from_our_initial_weights() -> None:
    from llmlab.bench.train import _batch, _hf_model
    from llmlab.train.setup import build_model

    cfg = RunConfig(model=ModelConfig(**TINY, moe={"n_experts": 4, "top_k": 2, "d_ff_expert": 48}),
                    data=DataConfig(), train=TrainConfig(seq_len=32, micro_batch_size=2, max_steps=1))
    peer, name = _hf_model(cfg, torch.device("cpu"))
    assert name == "HF MixtralForCausalLM"
    x, _ = _batch(cfg, torch.device("cpu"))
    ours = build_model(cfg.model, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(peer(x).logits, ours(x).logits, atol=1e-4, rtol=0)


def test_bench_moe_peers_hold_our_layer_weights() -> None:
    from llmlab.bench.moe import hf_mixtral_layers, make_layers

    args = argparse.Namespace(d_model=64, d_ff_expert=32, n_experts=4, top_k=2, mlp="swiglu", capacity_factor=1.0)
    layers = make_layers(args, ["capacity"])  # drops tokens: the check runs against a dropless copy
    peers = hf_mixtral_layers(args, layers)
    assert sorted(peers) == ["hf mixtral eager", "hf mixtral grouped_mm"]
    torch.testing.assert_close(peers["hf mixtral eager"].gate.weight, layers["capacity"].router.weight)


def test_bench_train_refuses_a_peer_that_would_skip_dropout() -> None:
    """The weights check runs in eval mode; dropout is training-only work the Llama peer lacks."""
    from llmlab.bench.train import _peer_step
    from llmlab.export.hf import ExportError

    cfg = RunConfig(model=ModelConfig(**TINY, dropout=0.1), data=DataConfig(),
                    train=TrainConfig(seq_len=32, micro_batch_size=2, max_steps=1))
    with pytest.raises(ExportError, match="trains without dropout"):
        _peer_step(cfg, torch.device("cpu"), None)


def test_hf_generate_timing_is_equal_work() -> None:
    """The HF rows of `bench infer`: our greedy tokens, every new token counted once, the first one
    stamped by the streamer, and the head on the last position only (no cache too)."""
    from llmlab.bench import infer
    from llmlab.infer import generate

    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY)).eval()
    prompt = torch.randint(0, 300, (2, 8))
    peer = infer.hf_peer(model, prompt)
    kept = []  # a hook, not a wrapper: generate() reads forward's signature to pass logits_to_keep
    peer.register_forward_pre_hook(lambda module, args, kwargs: kept.append(kwargs.get("logits_to_keep")),
                                   with_kwargs=True)
    for use_cache in (True, False):
        ids, times = infer.hf_generate_timed(peer, prompt, 6, use_cache)
        assert torch.equal(ids, generate(model, prompt, 6))
        assert times.decode_tokens == 5 * 2 and times.prefill_s > 0 and times.decode_s > 0
    assert kept and set(kept) == {1}


def test_hf_static_compiled_run_checks_tokens_and_leaves_the_peer_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF at its best (static cache, forward compiled fullgraph): same greedy tokens as its eager
    generate and ours, its first call reported as compile_s, the peer itself left eager; a copy
    that decodes other tokens than the eager peer is refused before any timing. Dynamo traces HF's
    forward for real (fullgraph); the eager backend stands in for inductor to keep the test short."""
    from llmlab.bench import infer
    from llmlab.infer import generate

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager", fullgraph=kw["fullgraph"]))
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY)).eval()
    prompt = torch.randint(0, 300, (1, 8))
    peer = infer.hf_peer(model, prompt)
    run = infer.hf_static_compiled_run(peer, prompt, 6)
    assert "forward" not in vars(peer)  # the compiled forward lives on a copy
    ids, first = run()
    assert torch.equal(ids, generate(model, prompt, 6)) and first.compile_s > 0
    ids, again = run()
    assert torch.equal(ids, generate(model, prompt, 6)) and again.compile_s is None and again.decode_tokens == 5

    run = infer.hf_static_compiled_run(peer, prompt, 6, check_tokens=6)
    with torch.no_grad():
        for p in peer.parameters():  # the eager reference now decodes other tokens than the copy
            p.copy_(torch.randn_like(p))
    with pytest.raises(infer.PeerTokensDiffer, match="differs from its eager generate at new token 0"):
        run()
