"""Pieces the audit examples share (a user's own helper module, imported from the same folder):
the config, a GELU MLP and a tiny language-model shell that any feed-forward plugs into.

Shapes: B batch, T tokens, C model width, V vocabulary.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Config:
    vocab_size: int = 256
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_experts: int = 4
    top_k: int = 2


class MLP(nn.Module):
    def __init__(self, cfg: Config, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 4 * cfg.n_embd
        self.fc = nn.Linear(cfg.n_embd, hidden)
        self.proj = nn.Linear(hidden, cfg.n_embd)

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(ln_1(x), ...), then x + mlp(ln_2(x)); the attention class varies."""

    def __init__(self, cfg: Config, attention):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn, self.mlp = attention(cfg), MLP(cfg)

    def forward(self, x, *attn_args):
        x = x + self.attn(self.ln_1(x), *attn_args)
        return x + self.mlp(self.ln_2(x))


class GPTParts(nn.Module):
    """nanoGPT's modules: token and position embeddings, blocks, final norm, output head."""

    def __init__(self, cfg: Config, attention):
        super().__init__()
        self.config = cfg
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)


class GatedExperts(nn.Module):
    """A router and n_experts MLPs; mix() runs every expert on every token, weighted by its gate
    (dense dispatch: static shapes)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_experts = cfg.n_experts
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, hidden=cfg.n_embd) for _ in range(cfg.n_experts))

    def mix(self, x, gates):
        out = torch.stack([expert(x) for expert in self.experts], dim=-1)  # (B, T, C, E)
        return (out * gates[..., None, :]).sum(-1)


class FeedForwardLM(nn.Module):
    """Embeddings -> n_layer residual feed-forward blocks -> logits (no attention: the MoE and
    statistics examples are about the feed-forward)."""

    def __init__(self, cfg: Config, make_ffn):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.n_embd) for _ in range(cfg.n_layer))
        self.ffns = nn.ModuleList(make_ffn(cfg) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx):
        x = self.wte(idx)  # (B, T, C)
        for norm, ffn in zip(self.norms, self.ffns):
            x = x + ffn(norm(x))
        return self.lm_head(x)  # (B, T, V)


def example_batch(cfg: Config, batch: int = 2, tokens: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, cfg.vocab_size, (batch, tokens))
