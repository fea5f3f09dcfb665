"""Tiny models shared by the inference tests."""

from __future__ import annotations

import torch

from llmlab.config import ModelConfig, MoEConfig
from llmlab.model import GPT


def tiny(variant: str) -> ModelConfig:
    """dense (MHA), gqa, or moe (GQA + 4 experts, capacity dispatch: dropless, compiles in fp32)."""
    kw = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, d_ff=64,
              max_seq_len=48)
    if variant != "dense":
        kw["n_kv_heads"] = 2
    if variant == "moe":
        kw["moe"] = MoEConfig(n_experts=4, top_k=2, d_ff_expert=32, dispatch="capacity")
    return ModelConfig(**kw)


def build(variant: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(tiny(variant)).eval()
    with torch.no_grad():  # sharpen the random model so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model
