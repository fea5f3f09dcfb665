"""nanogpt_flawed.py fixed for torch.compile: a static KV cache written at tensor positions.

- the cache is preallocated once, (B, nh, block_size, hs), and position p is written with
  index_copy_ at input_pos (a tensor): every decode step has the same shapes, so it compiles once;
- attention runs over the whole buffer with row input_pos of a causal mask (keys past p masked);
- generation prefills the prompt once, then feeds one token (B, 1) per step.
Shapes: B batch, T tokens, S cache length, C width, nh heads, hs head size.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tinylm import Config, GPTParts, example_batch


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)

    def setup_cache(self, batch, max_len):
        shape = (batch, self.n_head, max_len, self.c_proj.in_features // self.n_head)
        self.cache_k, self.cache_v = torch.zeros(shape), torch.zeros(shape)  # (B, nh, S, hs)

    def forward(self, x, input_pos=None, mask=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if input_pos is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k = self.cache_k.index_copy_(2, input_pos, k)  # (B, nh, S, hs): same shape at every position
            v = self.cache_v.index_copy_(2, input_pos, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPT(GPTParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg, CausalSelfAttention)
        causal = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", causal, persistent=False)  # (S, S)

    def setup_cache(self, batch):
        for block in self.h:
            block.attn.setup_cache(batch, self.config.block_size)

    def forward(self, idx, input_pos=None):
        """idx (B, T); input_pos (T,) their positions when the cache is used (a tensor, never an int)."""
        b, t = idx.size()
        pos = input_pos if input_pos is not None else torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        mask = None if input_pos is None else self.causal_mask[input_pos][:, None]  # (T, 1, S)... per query row
        if mask is not None:
            mask = mask.transpose(0, 1)  # (1, T, S): broadcast over batch and heads
        for block in self.h:
            x = block(x, input_pos, mask)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, step=None):
        """Prefill once, then one token per step; `step` may be torch.compile(decode_step)."""
        step = step or decode_step
        B, T = idx.shape
        self.setup_cache(B)
        logits = self(idx, input_pos=torch.arange(T))[:, -1]
        out = idx
        for pos in range(T, T + max_new_tokens):
            token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            out = torch.cat((out, token), dim=1)
            logits = step(self, token, torch.tensor([pos]))
        return out


def decode_step(model, token, position):
    """token (B, 1), position (1,) tensor -> logits (B, V)."""
    return model(token, input_pos=position)[:, -1]


def build():
    cfg = Config()
    model, idx = GPT(cfg), example_batch(cfg)
    model.setup_cache(idx.shape[0])
    return model, idx, decode_step
