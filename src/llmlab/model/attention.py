"""Rotary positions and causal self-attention with n_kv_heads: MHA, GQA and MQA in one module.

Shape legend: B batch, T query tokens, S key tokens (T in training, the cache length when
decoding), H query heads, Hkv key/value heads, G = H // Hkv query heads per kv head, hd head width,
D model width.

Grouped-query attention (Ainslie et al. 2023): H query heads share Hkv key/value heads; query head i
reads kv head i // G (`repeat_interleave` semantics, never `tile`). Hkv == H is multi-head attention
(Vaswani et al. 2017), Hkv == 1 multi-query attention (Shazeer 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.config import ModelConfig
from llmlab.model.kv_cache import KVCache

# ---------------------------------------------------------------------------------------------
# RoPE (Su et al. 2021, "RoFormer"): rotate pairs of channels by a position-dependent angle.


def rope_cache(max_seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_seq_len, hd // 2), fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd) with cos/sin (T, hd // 2), in fp32. Channel i is paired with i + hd/2
    ("rotate half", GPT-NeoX / Llama layout): the same rotation as RoFormer's adjacent pairs up to a
    fixed permutation of channels, with two contiguous halves instead of a strided stack (faster)."""
    a, b = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).type_as(x)


# ---------------------------------------------------------------------------------------------
# Attention kernels: the SDPA fast path and the plain math reference they are tested against.


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """Reference: expand kv heads to query heads, softmax(q k^T / sqrt(hd) + mask) v.

    q (B, H, T, hd); k, v (B, Hkv, S, hd); mask (T, S) bool (True = attend) or None = causal.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, hd): head i reads kv head i // groups
    v = v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is None:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).type_as(q)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """PyTorch SDPA (flash / memory-efficient / cuDNN / math kernels) with native GQA (`enable_gqa`);
    masked GQA on a GPU goes through `folded_gqa_attention`."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)
    if q.shape[1] != k.shape[1] and q.device.type in FOLD_DEVICES:
        return folded_gqa_attention(q, k, v, mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=True)


FOLD_DEVICES = ("cuda",)
"""Where masked GQA attention is folded. On CUDA, flash attention takes no mask and the
memory-efficient kernel no `enable_gqa`, so masked GQA (cached decode) would fall back to the math
kernel, which expands K and V to every query head. On CPU the fused kernel takes both (measured: no
gain from folding there)."""


def folded_gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                         dropout_p: float = 0.0) -> torch.Tensor:
    """Masked GQA as multi-head attention over Hkv heads: the G query heads that share kv head j
    (heads j*G .. j*G + G-1, `repeat_interleave` semantics) are stacked along the query axis, and
    the mask row of each query is repeated with it. Every (query, key) score is the same as in
    `math_attention`; only the kernel differs: one that takes a mask but not GQA now applies, and K
    and V are never expanded. q (B, H, T, hd); k, v (B, Hkv, S, hd); mask (T, S) -> (B, H, T, hd)."""
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    q_folded = q.reshape(B, Hkv, G * T, hd)  # row g*T + t of kv head j = query head j*G + g at t
    y = F.scaled_dot_product_attention(q_folded, k, v, attn_mask=mask.repeat(G, 1), dropout_p=dropout_p)
    return y.reshape(B, H, T, hd)  # (B, Hkv, G*T, hd) -> (B, H, T, hd)


# ---------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        # K and V share one matmul: (D, 2 * Hkv * hd). Smaller than q_proj under GQA.
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.use_sdpa = True  # False: the math reference (tests compare the two)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                kv_len: int | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D). With a KV cache, input_pos (T,) is given, and attention reads
        the first kv_len cache slots (None: all S) through mask (T, kv_len or S); mask None with
        the cache means kv_len == T, a prefill from position 0: plain causal attention."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        kv = self.kv_proj(x).view(B, T, 2, self.n_kv_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, Hkv, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, S, hd)
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]  # (B, Hkv, kv_len, hd), views
        if self.use_sdpa:
            y = sdpa_attention(q, k, v, mask, self.dropout if self.training else 0.0)
        else:
            y = math_attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H * hd)
        return self.o_proj(y)

    def init_weights(self, std: float, out_std: float) -> None:
        for lin, s in ((self.q_proj, std), (self.kv_proj, std), (self.o_proj, out_std)):
            nn.init.normal_(lin.weight, std=s)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


def attention_params(cfg: ModelConfig) -> int:
    """q (D, H hd) + kv (D, 2 Hkv hd) + o (H hd, D), plus biases."""
    q, kv = cfg.n_heads * cfg.head_dim, 2 * cfg.n_kv_heads * cfg.head_dim
    return cfg.d_model * (q + kv) + q * cfg.d_model + cfg.bias * (q + kv + cfg.d_model)
