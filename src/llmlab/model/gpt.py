"""The GPT: embeddings -> n_layers pre-norm blocks (attention, MLP or MoE) -> final norm -> logits.

Shape legend: B batch, T tokens this call, S KV-cache length, D model width, V vocabulary.

Read top to bottom in forward-pass order: `Block` (norm -> attention -> residual; norm -> MLP/MoE ->
residual), then `GPT` (embed, blocks, head) and its KV-cache lifecycle (`setup_kv_cache` /
`clear_kv_cache`, as in gpt-fast and litgpt).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from llmlab.config import ModelConfig
from llmlab.model.attention import CausalSelfAttention, rope_cache
from llmlab.model.kv_cache import KVCache
from llmlab.model.mlp import MLP
from llmlab.model.moe import MoE
from llmlab.model.norm import make_norm


class GPTOutput(NamedTuple):
    logits: torch.Tensor
    """(B, T, vocab_size): padded vocabulary rows are sliced off."""
    aux_loss: torch.Tensor
    """Scalar: the weighted MoE auxiliary losses summed over layers (0 for a dense model)."""
    moe_stats: dict[str, torch.Tensor]
    """Routing statistics stacked over MoE layers, e.g. load (L_moe, E); empty for a dense model."""


class Block(nn.Module):
    """Pre-norm residual block (GPT-2 / Llama): x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.is_moe = cfg.is_moe_layer(layer)
        if self.is_moe:
            self.ffn: nn.Module = MoE(cfg.d_model, cfg.moe, cfg.mlp, cfg.bias)
        else:
            self.ffn = MLP(cfg.d_model, cfg.d_ff, cfg.mlp, cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                input_pos: torch.Tensor | None, mask: torch.Tensor | None, kv_len: int | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, input_pos, mask, kv_len))
        if self.is_moe:
            y, stats = self.ffn(self.ffn_norm(x))
        else:
            y, stats = self.ffn(self.ffn_norm(x)), None
        return x + self.dropout(y), stats


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # One draw from the global RNG seeds the whole initialisation, so the weights depend on the
        # seed alone, not on how many numbers the modules' default inits happen to consume (vocab
        # padding, for one, must not change them).
        init_seed = int(torch.randint(0, 2**62, ()).item())
        with torch.random.fork_rng(devices=[]):
            self._build(cfg)
            self.init_weights(seed=init_seed)

    def _build(self, cfg: ModelConfig) -> None:
        V, D = cfg.padded_vocab_size, cfg.d_model
        self.tok_emb = nn.Embedding(V, D)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, D) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, D, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(D, V, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # Press & Wolf 2017
        if cfg.pos == "rope":
            cos, sin = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    # -- initialisation ---------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Normal(0, 0.02); residual output projections get 0.02 / sqrt(2 n_layers) (GPT-2, Radford
        et al. 2019), so the residual stream's variance does not grow with depth."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self._init_weights(std)

    def _init_weights(self, std: float) -> None:
        out_std = std / math.sqrt(2 * self.config.n_layers)
        V = self.config.vocab_size
        # Padded vocabulary rows are zero and draw no random numbers: padding changes nothing.
        self.tok_emb.weight.zero_()
        self.tok_emb.weight[:V].normal_(std=std)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=std)
        for block in self.blocks:
            block.attn.init_weights(std, out_std)
            block.ffn.init_weights(std, out_std)
            for norm in (block.attn_norm, block.ffn_norm):
                norm.reset_parameters()
        self.norm.reset_parameters()
        if not self.config.tie_embeddings:
            self.lm_head.weight.zero_()
            self.lm_head.weight[:V].normal_(std=std)

    # -- forward ----------------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                logits_to_keep: int = 0, kv_len: int | None = None) -> GPTOutput:
        """idx (B, T) token ids. input_pos (T,) = their positions; required with a KV cache
        (prefill: arange(T); decode: the current position), else positions are 0..T-1.
        logits_to_keep = n > 0: the final norm and output head run on the last n positions only
        (logits (B, n, V)); generation needs only the last one, and the head is the largest matmul
        at a small width (HF's argument of the same name). 0 = every position.
        kv_len (with a KV cache): attend over the first kv_len cache slots only; every position in
        input_pos must be below it. A prompt prefilled from position 0 passes T (input_pos is then
        0..T-1 in order): its keys are the prompt's, so attention is plain causal over (T, T), with
        no mask (SDPA's is_causal kernels), instead of masked over (T, S). None = the whole cache,
        one shape at every position (what a compiled decode step needs); litgpt's
        `input_pos_maxp1` does the same."""
        B, T = idx.shape
        if kv_len is not None and (self.kv_cache is None or input_pos is None
                                   or not T <= kv_len <= self.kv_cache.max_seq_len):
            raise ValueError(f"kv_len ({kv_len}) needs a KV cache, input_pos, and T ({T}) <= kv_len <= the "
                             f"cache length")
        pos = input_pos if input_pos is not None else torch.arange(T, device=idx.device)
        x = self.tok_emb(idx)  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        x = self.drop(x)
        rope = (self.rope_cos[pos], self.rope_sin[pos]) if self.config.pos == "rope" else None
        mask = None
        if self.kv_cache is not None and input_pos is not None and kv_len != T:
            mask = self.kv_cache.mask(input_pos)  # (T, S): query at p sees keys 0..p; shared by all layers
            if kv_len is not None:
                mask = mask[:, :kv_len]  # (T, kv_len): attention reads only these slots
        aux_loss = x.new_zeros((), dtype=torch.float32)
        stats: list[dict[str, torch.Tensor]] = []
        for block in self.blocks:
            x, block_stats = block(x, rope, input_pos, mask, kv_len)
            if block_stats is not None:
                aux_loss = aux_loss + block_stats["aux_loss"]
                stats.append(block_stats)
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]  # (B, n, D)
        logits = self.lm_head(self.norm(x))  # (B, T or n, V padded)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # drop the padding rows' logits
        moe_stats = {k: torch.stack([s[k] for s in stats]) for k in stats[0]} if stats else {}
        return GPTOutput(logits, aux_loss, moe_stats)

    # -- KV cache lifecycle -----------------------------------------------------------------

    def setup_kv_cache(self, batch_size: int, max_seq_len: int | None = None,
                       dtype: torch.dtype | None = None) -> None:
        """Allocate per-layer static caches (B, Hkv, S, hd). Replaces any existing cache."""
        cfg = self.config
        S = max_seq_len or cfg.max_seq_len
        if S > cfg.max_seq_len:
            raise ValueError(f"KV cache length ({S}) must not exceed model.max_seq_len ({cfg.max_seq_len})")
        ref = self.lm_head.weight
        dtype = dtype or ref.dtype
        self.install_kv_caches([KVCache(batch_size, cfg.n_kv_heads, S, cfg.head_dim, dtype, ref.device)
                                for _ in self.blocks])

    def install_kv_caches(self, caches: list[KVCache]) -> None:
        """Attach existing caches, one per layer, zeroed. A compiled decode step keeps its own, so
        that every generation reuses the same buffers (a CUDA graph replays fixed addresses)."""
        if len(caches) != len(self.blocks):
            raise ValueError(f"{len(caches)} KV caches for {len(self.blocks)} layers")
        for block, cache in zip(self.blocks, caches):
            cache.reset()
            block.attn.kv_cache = cache

    def clear_kv_cache(self) -> None:
        """Free the caches; forward then runs without one (training never touches the cache)."""
        for block in self.blocks:
            block.attn.kv_cache = None

    @property
    def kv_cache(self) -> KVCache | None:
        """The first layer's cache (None when none is set up): its shape describes all layers'."""
        return self.blocks[0].attn.kv_cache

    def set_attention_impl(self, impl: str) -> None:
        """'sdpa' (fast path) or 'math' (the plain reference), for tests and debugging."""
        if impl not in ("sdpa", "math"):
            raise ValueError(f"attention impl must be 'sdpa' or 'math', got {impl!r}")
        for block in self.blocks:
            block.attn.use_sdpa = impl == "sdpa"
