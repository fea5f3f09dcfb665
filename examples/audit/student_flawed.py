"""A GQA + MoE language model written the way a student writes one — flawed on purpose.

nanoGPT-style `forward(idx, targets=None)` returning (logits, loss); a grouped-query attention
whose KV cache is a tuple attribute grown with `torch.cat` through local variables; a position
counter kept as a Python int; a mixture of experts that loops over experts, selects each one's
rows with `torch.where(...)[0]`, skips an empty expert, counts load with `bincount` into a buffer
and keeps a `.item()` statistic; a NaN check with `if` on the loss, which prints.
`llmlab audit examples/audit/student_flawed.py` reports each `# HAZARD:` line; student_fixed.py is
the same model (same state dict) fixed. Shapes: B batch, T tokens, C width, N tokens, E experts.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tinylm import Config, GatedExperts, GQAParts, StackParts, example_batch


class GQAttention(GQAParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.cache = None  # (k, v) of the positions seen so far

    def forward(self, x, use_cache=False):
        q, k, v = self.project(x)
        if use_cache:
            if self.cache is not None:
                past_k, past_v = self.cache
                k = torch.cat([past_k, k], dim=2)  # HAZARD: cat-cache
                v = torch.cat([past_v, v], dim=2)  # HAZARD: cat-cache
            self.cache = (k, v)
        return self.attend(q, k, v, is_causal=x.shape[1] > 1)


class MoE(GatedExperts):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.top_k = cfg.top_k
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_experts, dtype=torch.long), persistent=False)
        self.max_load = 0.0

    def forward(self, x):
        B, T, C = x.shape
        x_flat = x.view(-1, C)  # (N, C)
        weights, chosen = self.route(x_flat, self.top_k)  # (N, k) each
        self.tokens_per_expert += torch.bincount(chosen.flatten(), minlength=self.n_experts)  # HAZARD: data-dependent-shape
        self.max_load = (self.tokens_per_expert.max() / self.tokens_per_expert.float().mean()).item()  # HAZARD: item
        out = torch.zeros_like(x_flat)
        for e in range(self.n_experts):  # HAZARD: expert-loop
            rows = torch.where((chosen == e).any(dim=-1))[0]  # HAZARD: data-dependent-shape
            if rows.numel() == 0:  # HAZARD: tensor-branch
                continue
            gate = (weights[rows] * (chosen[rows] == e)).sum(dim=-1, keepdim=True)  # (n_e, 1)
            out[rows] += gate * self.experts[e](x_flat[rows])
        return out.view(B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn, self.moe = GQAttention(cfg), MoE(cfg)

    def forward(self, x, use_cache=False):
        x = x + self.attn(self.ln_1(x), use_cache)
        return x + self.moe(self.ln_2(x))


class StudentGPT(StackParts):
    def __init__(self, cfg: Config):
        super().__init__(cfg, Block)
        self.pos = 0  # the next position to decode

    def forward(self, idx, targets=None, use_cache=False):
        B, T = idx.shape
        start = self.pos if use_cache else 0
        x = self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device))
        for block in self.blocks:
            x = block(x, use_cache)
        if use_cache:
            self.pos += T  # HAZARD: int-position
        x = self.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            if torch.isnan(loss):  # HAZARD: tensor-branch
                print("NaN loss, skipping this batch?")  # HAZARD: print-log
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference: the last position only (nanoGPT)
            loss = None
        return logits, loss

    def reset_cache(self):
        """A new sequence: empty caches, position 0."""
        self.pos = 0
        for block in self.blocks:
            block.attn.cache = None


def decode_step(model, token, position):
    """One token (B, 1) through the cache; the model counts positions itself."""
    logits, _ = model(token, use_cache=True)
    return logits[:, -1]


def build():
    cfg = Config()
    return StudentGPT(cfg), example_batch(cfg), decode_step
