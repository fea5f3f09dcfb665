"""A nanoGPT-style model extended with a KV cache the way it is often written — flawed on purpose.

`llmlab audit examples/audit/nanogpt_flawed.py` finds what each `# HAZARD:` line does to
torch.compile; nanogpt_fixed.py is the same model fixed. Shapes: B batch, T tokens, C width,
nh heads, hs head size.
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
        self.n_head, self.block_size = cfg.n_head, cfg.block_size
        self.cache_k = self.cache_v = None

    def forward(self, x, use_cache=False):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if use_cache:
            if self.cache_k is not None:
                k = torch.cat([self.cache_k, k], dim=2)  # HAZARD: cat-cache
                v = torch.cat([self.cache_v, v], dim=2)  # HAZARD: cat-cache
            # crop the cache to the context window
            self.cache_k, self.cache_v = k[:, :, -self.block_size:], v[:, :, -self.block_size:]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPT(GPTParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg, CausalSelfAttention)

    def forward(self, idx, targets=None, use_cache=False, start_pos=0):
        b, t = idx.size()
        pos = torch.arange(start_pos, start_pos + t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x, use_cache)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            # crop the context to block_size, as nanoGPT does
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            idx_next = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            idx = torch.cat((idx, idx_next), dim=1)  # HAZARD: growing-input
        return idx


def decode_step(model, token, position):
    logits, _ = model(token, use_cache=True, start_pos=int(position))  # HAZARD: int-position
    return logits[:, -1]


def build():
    cfg = Config()
    return GPT(cfg), example_batch(cfg), decode_step
