"""Pieces the audit examples share (a user's own helper module, imported from the same folder):
the config, a GELU MLP and a tiny language-model shell that any feed-forward plugs into.

Shapes: B batch, T tokens, S key/value positions, C model width, V vocabulary, nh query heads,
nkv key/value heads, hs head size, N tokens, E experts, k top-k.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Config:
    vocab_size: int = 256
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention (student_*.py): 2 query heads per key/value head
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


class StackParts(nn.Module):
    """Token and position embeddings, n_layer blocks of the given class, final norm, output head."""

    def __init__(self, cfg: Config, block):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layer))
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

    def route(self, x_flat, top_k):
        """x_flat (N, C) -> gate weights (N, k), renormalised over the k chosen, and experts (N, k)."""
        weights, chosen = torch.topk(F.softmax(self.router(x_flat), dim=-1), top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), chosen


class GQAParts(nn.Module):
    """Grouped-query attention's projections (Ainslie et al. 2023, GQA): n_kv_head key/value heads,
    each shared by n_head / n_kv_head query heads. Where keys and values are kept is the subclass's."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = cfg.n_head, cfg.n_kv_head, cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.kv_proj = nn.Linear(cfg.n_embd, 2 * cfg.n_kv_head * self.head_size, bias=False)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def project(self, x):
        """x (B, T, C) -> q (B, nh, T, hs), k and v (B, nkv, T, hs)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k, v = self.kv_proj(x).view(B, T, 2, self.n_kv_head, self.head_size).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q, k, v, **sdpa):
        """q (B, nh, T, hs), k and v (B, nkv, S, hs) -> (B, T, C); key/value head i // group serves query head i."""
        group = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, **sdpa)  # (B, nh, T, hs)
        B, _, T, _ = q.shape
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


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
