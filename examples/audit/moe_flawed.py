"""A mixture-of-experts feed-forward written the readable way (Mixtral's reference loop): a Python
loop over experts, each selecting its tokens with `nonzero`. Flawed on purpose for `llmlab audit`:
every `# HAZARD:` line breaks the graph (the number of selected tokens depends on the data).
moe_fixed.py dispatches with static shapes. Shapes: N tokens, C width, E experts, k top-k.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tinylm import MLP, Config, FeedForwardLM, example_batch


class MoE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.top_k = cfg.top_k
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, hidden=2 * cfg.n_embd) for _ in range(cfg.n_experts))

    def forward(self, x):
        B, T, C = x.shape
        x_flat = x.view(-1, C)  # (N, C)
        probs = F.softmax(self.router(x_flat), dim=-1)  # (N, E)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x_flat)
        for i, expert in enumerate(self.experts):  # HAZARD: expert-loop
            token_idx, slot = (chosen == i).nonzero(as_tuple=True)  # HAZARD: data-dependent-shape
            y = expert(x_flat[token_idx]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y)
        return out.view(B, T, C)


def build():
    cfg = Config()
    return FeedForwardLM(cfg, MoE), example_batch(cfg)
