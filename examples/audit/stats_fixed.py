"""stats_flawed.py fixed for torch.compile: the statistics leave forward as tensors.

No `.item()`, `print`, list or counter inside forward: each layer returns its load-balancing
statistic and load as tensors next to its output, the model stacks them, and the training loop
converts them to numbers after the step, once per log interval (`stats["balance"].tolist()`).
A NaN check is `torch.nan_to_num` in forward, or `torch.isfinite(loss)` once per step outside.
Shapes: B batch, T tokens, C width, E experts, L layers.
"""

import torch
from torch.nn import functional as F

from tinylm import Config, FeedForwardLM, GatedExperts, example_batch


class SoftMoE(GatedExperts):
    def forward(self, x):
        gates = F.softmax(self.router(x), dim=-1)  # (B, T, E)
        load = F.one_hot(gates.argmax(-1), self.n_experts).float().flatten(0, 1).mean(0)  # (E,)
        importance = gates.flatten(0, 1).mean(0)  # (E,)
        balance = self.n_experts * (load * importance).sum()  # Switch load-balancing statistic
        return self.mix(x, gates), {"balance": balance, "load": load.detach()}


class StatsLM(FeedForwardLM):
    """The flawed example's model (same modules, same state dict); forward also collects statistics."""

    def forward(self, idx):
        """-> logits (B, T, V) and statistics stacked over layers: balance (L,), load (L, E)."""
        x = self.wte(idx)
        stats = []
        for norm, moe in zip(self.norms, self.ffns):
            y, s = moe(norm(x))
            x = x + y
            stats.append(s)
        return self.lm_head(x), {k: torch.stack([s[k] for s in stats]) for k in stats[0]}


def build():
    cfg = Config()
    return StatsLM(cfg, SoftMoE), example_batch(cfg)
