"""student_flawed.py fixed for torch.compile: the same modules (same state dict), static shapes.

- attention: a static KV cache, (B, nkv, block_size, hs) preallocated once, position p written
  with index_copy_ at input_pos (a tensor), attention over the whole buffer through a mask row:
  every decode position runs the same graph;
- positions: input_pos is an argument (a tensor), never a Python counter on the module;
- MoE: no per-expert selection, so no empty expert to skip: every expert runs on every token and
  the gates are zero where it was not chosen (dense dispatch: static shapes, E/k times the expert
  FLOPs; moe_fixed.py's capacity dispatch runs each expert on its own C slots only);
- statistics: tokens per expert counted with one_hot(...).sum (a fixed (E,) tensor, where
  bincount's size depends on the data) and returned; the training loop logs them (and the max/mean
  load) after the step, and checks `torch.isfinite(loss)` there, where a Python `if` is free.
Shapes: B batch, T tokens, S cache length, C width, N tokens, E experts, L layers.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tinylm import Config, GatedExperts, GQAParts, StackParts, example_batch


class GQAttention(GQAParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)

    def setup_cache(self, batch, max_len):
        shape = (batch, self.n_kv_head, max_len, self.head_size)
        self.cache_k, self.cache_v = torch.zeros(shape), torch.zeros(shape)  # (B, nkv, S, hs)

    def forward(self, x, input_pos=None, mask=None):
        q, k, v = self.project(x)
        if input_pos is None:
            return self.attend(q, k, v, is_causal=True)
        k = self.cache_k.index_copy_(2, input_pos, k)  # (B, nkv, S, hs): the same shape at every position
        v = self.cache_v.index_copy_(2, input_pos, v)
        return self.attend(q, k, v, attn_mask=mask)


class MoE(GatedExperts):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.top_k = cfg.top_k

    def forward(self, x):
        """x (B, T, C) -> output (B, T, C) and tokens per expert (E,)."""
        weights, chosen = self.route(x.flatten(0, 1), self.top_k)  # (N, k) each
        gates = torch.zeros(chosen.shape[0], self.n_experts, dtype=x.dtype, device=x.device).scatter(1, chosen, weights)  # (N, E)
        tokens_per_expert = F.one_hot(chosen, self.n_experts).sum(dim=(0, 1))  # (E,)
        return self.mix(x, gates.view(*x.shape[:2], -1)), tokens_per_expert


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn, self.moe = GQAttention(cfg), MoE(cfg)

    def forward(self, x, input_pos=None, mask=None):
        x = x + self.attn(self.ln_1(x), input_pos, mask)
        y, tokens_per_expert = self.moe(self.ln_2(x))
        return x + y, tokens_per_expert


class StudentGPT(StackParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg, Block)
        self.register_buffer("slots", torch.arange(cfg.block_size), persistent=False)  # (S,) cache positions

    def setup_cache(self, batch):
        for block in self.blocks:
            block.attn.setup_cache(batch, self.slots.shape[0])

    def forward(self, idx, targets=None, input_pos=None):
        """idx (B, T); input_pos (T,) their positions when decoding through the cache (a tensor).
        -> logits, loss (None without targets), tokens per expert (L, E)."""
        B, T = idx.shape
        pos = input_pos if input_pos is not None else torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        mask = None if input_pos is None else self.slots[None, :] <= input_pos[:, None]  # (T, S)
        load = []
        for block in self.blocks:
            x, tokens_per_expert = block(x, input_pos, mask)
            load.append(tokens_per_expert)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None, torch.stack(load)  # inference: the last position only
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss, torch.stack(load)


def decode_step(model, token, position):
    """token (B, 1), position (1,) tensor -> logits (B, V)."""
    logits, _, _ = model(token, input_pos=position)
    return logits[:, -1]


def build():
    cfg = Config()
    model, idx = StudentGPT(cfg), example_batch(cfg)
    model.setup_cache(idx.shape[0])
    return model, idx, decode_step
