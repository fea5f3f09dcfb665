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

from llmlab.config import ModelConfig
from llmlab.model.attention import attention_params
from llmlab.model.mlp import mlp_params
from llmlab.model.moe import moe_params


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
    from llmlab.errors import ConfigError

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
