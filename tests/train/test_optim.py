"""AdamW groups and the tokens-per-update recipe."""

import pytest
import torch

from llmlab.config import ModelConfig, TrainConfig
from llmlab.errors import ConfigError
from llmlab.model import GPT
from llmlab.train.optim import build_optimizer


def test_weight_decay_only_on_matrices():
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16, bias=True,
                            norm="layernorm"))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1, max_steps=1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert len(no_decay["params"]) > 0


def test_grad_accum_is_exact_or_names_the_numbers():
    tc = TrainConfig(seq_len=32, micro_batch_size=4, tokens_per_update=512, max_steps=1)
    assert tc.grad_accum(1) == 4 and tc.grad_accum(2) == 2 and tc.grad_accum(4) == 1
    with pytest.raises(ConfigError, match=r"tokens_per_update \(512\).*micro_batch_size \(4\).*seq_len \(32\).*world_size \(3\)"):
        tc.grad_accum(3)
