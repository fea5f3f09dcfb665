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

from llmlab.config import ModelConfig
from llmlab.model.attention import attention_params
from llmlab.model.mlp import mlp_params


def norm_params(cfg: ModelConfig) -> int:
    """RMSNorm has a weight; LayerNorm a weight and (with bias) a bias."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def ffn_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active) parameters of layer `layer`'s feed-forward (dense MLP or MoE)."""
    if cfg.is_moe_layer(layer):
        from llmlab.model.moe import moe_params

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
