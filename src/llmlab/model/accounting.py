"""Parameter, FLOP and KV-cache accounting from a config alone (no weights are allocated).

Conventions (stated, because papers differ):
- `embedding` = token embedding (padded rows included) + learned position table + the output head
  when it is not tied. `non_embedding` = everything else (Kaplan et al. 2020 count it for scaling).
- `active` = parameters one token goes through: all experts replaced by the router, top_k routed
  experts and the shared experts (Fedus et al. 2021; DeepSeekMoE). Equal to `total` when dense.
- `flops_per_token` = forward + backward = 6 x (active non-embedding + the output head matmul)
  + the attention term 12 x n_layers x n_heads x head_dim x seq_len (PaLM, Chowdhery et al. 2022,
  appendix B; the causal mask is not discounted, as in PaLM and nanoGPT).
- `kv_cache_bytes_per_token` = 2 (K and V) x n_layers x n_kv_heads x head_dim x bytes per element.
"""

from __future__ import annotations

import dataclasses
import math

from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.model.attention import attention_params
from llmlab.model.mlp import mlp_params
from llmlab.model.moe import expert_capacity, moe_params


def norm_params(cfg: ModelConfig) -> int:
    """RMSNorm has a weight; LayerNorm a weight and (with bias) a bias."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def ffn_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active) parameters of layer `layer`'s feed-forward (dense MLP or MoE)."""
    if cfg.is_moe_layer(layer):
        return moe_params(cfg.d_model, cfg.moe, cfg.mlp, cfg.bias)
    n = mlp_params(cfg.d_model, cfg.d_ff, cfg.mlp, cfg.bias)
    return n, n


def embedding_params(cfg: ModelConfig) -> int:
    V, D = cfg.padded_vocab_size, cfg.d_model
    n = V * D
    if cfg.pos == "learned":
        n += cfg.max_seq_len * D
    if not cfg.tie_embeddings:
        n += V * D
    return n


def count(cfg: ModelConfig, seq_len: int | None = None, kv_bytes_per_element: int = 2) -> dict[str, int]:
    """All the figures `llmlab params` prints. seq_len (default max_seq_len) sets the attention FLOPs;
    kv_bytes_per_element 2 = a bf16 cache (4 for fp32)."""
    T = seq_len or cfg.max_seq_len
    attn = attention_params(cfg)
    total = active = 0
    for layer in range(cfg.n_layers):
        ffn_total, ffn_active = ffn_params(cfg, layer)
        total += attn + 2 * norm_params(cfg) + ffn_total
        active += attn + 2 * norm_params(cfg) + ffn_active
    total += norm_params(cfg)  # final norm
    active += norm_params(cfg)
    emb = embedding_params(cfg)
    head_matmul = cfg.d_model * cfg.vocab_size
    attn_flops = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T
    return {
        "total": total + emb,
        "embedding": emb,
        "non_embedding": total,
        "active": active + emb,
        "active_non_embedding": active,
        "kv_cache_bytes_per_token": 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * kv_bytes_per_element,
        "flops_per_token": 6 * (active + head_matmul) + attn_flops,
    }


# ---------------------------------------------------------------------------------------------
# Iso-parameter solver: resize one free dimension of a variant to match a target count.

FREE_DIMS = ("n_heads", "d_ff", "n_layers", "moe.d_ff_expert")


def _with(cfg: ModelConfig, free: str, value: int) -> ModelConfig:
    if free == "moe.d_ff_expert":
        return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, d_ff_expert=value))
    return dataclasses.replace(cfg, **{free: value})


def _candidates(cfg: ModelConfig, free: str, multiple_of: int) -> range:
    if free == "n_heads":  # at a fixed head_dim, keeping n_heads divisible by n_kv_heads
        return range(cfg.n_kv_heads, 8 * cfg.n_heads + 1, cfg.n_kv_heads)
    if free == "n_layers":
        return range(1, 4 * cfg.n_layers + 1)
    return range(multiple_of, 16 * cfg.d_model + 1, multiple_of)  # d_ff or moe.d_ff_expert


def solve_iso_params(cfg: ModelConfig, target: int, free: str, key: str = "active_non_embedding",
                     tolerance: float = 0.01, multiple_of: int = 8) -> tuple[ModelConfig, dict[str, int]]:
    """The config, with `free` resized, whose `key` count is closest to `target` (DESIGN.md 3).

    Widths move in steps of `multiple_of` (alignment for fast matmuls). Raises ConfigError when
    even the best value is more than `tolerance` away, naming the figures."""
    if free not in FREE_DIMS:
        raise ConfigError(f"free dimension must be one of {', '.join(FREE_DIMS)}; got {free!r}")
    if free == "moe.d_ff_expert" and cfg.moe is None:
        raise ConfigError("free dimension moe.d_ff_expert needs a [model.moe] table")
    best: tuple[float, ModelConfig, dict[str, int]] | None = None
    for value in _candidates(cfg, free, multiple_of):
        try:
            candidate = _with(cfg, free, value)
        except ConfigError:
            continue  # e.g. grouped MoE alignment
        c = count(candidate)
        err = abs(c[key] / target - 1)
        if best is None or err < best[0]:
            best = (err, candidate, c)
    if best is None or best[0] > tolerance:
        got = f"{best[2][key]:,} ({best[0]:.1%} off)" if best else "no valid value"
        raise ConfigError(f"no {free} brings {key} within {tolerance:.0%} of {target:,}: best {got}")
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# Inference memory: what must sit in memory to decode `batch` sequences at `context` tokens.
#
# weights      every parameter (padded vocabulary rows included, tied head counted once)
# buffers      RoPE cos/sin tables (max_seq_len x head_dim/2 each, in the weights' dtype) and the
#              cache's slot positions (int64), which each step builds for its mask row
# kv_cache     batch x context x kv_cache_bytes_per_token: 2 (K, V) x n_layers x n_kv_heads x
#              head_dim x bytes (Ainslie et al. 2023: this is the term GQA divides by H / Hkv)
# activations  a bound on one decode step's transient tensors per sequence (no_grad: a layer's
#              tensors are freed before the next): the residual, norm, attention and FFN outputs
#              (4 D), the FFN hidden tensors (gate, up, product: 3 x width), q/k/v and their
#              rotated copies (2 (H + 2 Hkv) hd), all in the weights' dtype; plus fp32 attention
#              scores over the cache (H x context, the math path's; SDPA kernels need less) and
#              fp32 logits over the padded vocabulary. Prefill is assumed chunked to decode-sized
#              pieces: a one-shot prefill of `context` tokens needs more.


def ffn_width_per_token(cfg: ModelConfig, batch: int = 1) -> int:
    """Widest FFN hidden width one token occupies in a decode step of `batch` tokens, over the
    layers. MoE: the top_k experts it is routed to, except `capacity` dispatch, which computes
    every (E, C) slot, C = expert_capacity(N = batch): E x C / N slots per token (E at batch 1,
    about cf x k at a large batch)."""
    widest = cfg.d_ff if any(not cfg.is_moe_layer(i) for i in range(cfg.n_layers)) else 0
    if cfg.moe is None:
        return widest
    moe = cfg.moe
    if moe.dispatch == "capacity":
        slots = math.ceil(moe.n_experts * expert_capacity(moe, batch) / batch)
    else:
        slots = moe.top_k
    return max(widest, (slots + moe.n_shared_experts) * moe.d_ff_expert)


def decode_activation_bytes(cfg: ModelConfig, context: int, dtype_bytes: int, batch: int = 1) -> int:
    """Bound on one decode step's transient bytes for one sequence of a `batch` (see the table
    above; only capacity-dispatch MoE depends on the batch)."""
    D, hd = cfg.d_model, cfg.head_dim
    in_dtype = 4 * D + 3 * ffn_width_per_token(cfg, batch) + 2 * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    fp32 = cfg.n_heads * context + cfg.padded_vocab_size
    return in_dtype * dtype_bytes + 4 * fp32


def inference_memory(cfg: ModelConfig, batch: int, context: int, dtype_bytes: int = 2) -> dict[str, int]:
    """Bytes to decode `batch` sequences with a KV cache of `context` positions (dtype_bytes: 2 for
    bf16, 4 for fp32): weights + buffers + kv_cache + activations = total."""
    counted = count(cfg, kv_bytes_per_element=dtype_bytes)
    rope = cfg.max_seq_len * cfg.head_dim * dtype_bytes if cfg.pos == "rope" else 0  # cos + sin
    out = {
        "weights": counted["total"] * dtype_bytes,
        "buffers": rope + 8 * context,
        "kv_cache": batch * context * counted["kv_cache_bytes_per_token"],
        "activations": batch * decode_activation_bytes(cfg, context, dtype_bytes, batch),
    }
    out["total"] = sum(out.values())
    return out


def max_fit(cfg: ModelConfig, budget_bytes: int, *, context: int | None = None, batch: int | None = None,
            dtype_bytes: int = 2) -> int:
    """The largest batch (at `context`) or the longest context (at `batch`) whose inference_memory
    fits budget_bytes; 0 when not even 1 fits. Memory grows monotonically in both, so a doubling
    then bisection search finds the boundary exactly. The context is not capped at max_seq_len:
    past it the figure says what memory alone would allow."""
    if (context is None) == (batch is None):
        raise ValueError("give exactly one of context (to find the batch) or batch (to find the context)")

    def fits(n: int) -> bool:
        b, s = (n, context) if batch is None else (batch, n)
        return inference_memory(cfg, b, s, dtype_bytes)["total"] <= budget_bytes

    if not fits(1):
        return 0
    hi = 2
    while fits(hi):
        hi *= 2
    lo = hi // 2  # fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
