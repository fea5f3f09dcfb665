"""A mixture-of-experts model instrumented the way students often do it: a load-balancing
statistic read with `.item()`, printed, appended to a global list, a Python call counter, a NaN
check with `if`. Flawed on purpose for `llmlab audit`: each `# HAZARD:` line costs a graph break
or a recompilation. stats_fixed.py returns the same statistics as tensors.
Dispatch is dense (every expert runs on every token, weighted by its gate): no dispatch hazard
here, only the instrumentation. Shapes: N tokens, C width, E experts.
"""

import torch
from torch.nn import functional as F

from tinylm import Config, FeedForwardLM, GatedExperts, example_batch

BALANCE_HISTORY = []  # filled during training, plotted afterwards


class SoftMoE(GatedExperts):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.calls = 0
        self.verbose = True

    def forward(self, x):
        logits = self.router(x)  # (B, T, E)
        if torch.isnan(logits).any():  # HAZARD: tensor-branch
            raise ValueError("NaN in router logits")
        gates = F.softmax(logits, dim=-1)
        load = F.one_hot(gates.argmax(-1), self.n_experts).float().flatten(0, 1).mean(0)  # (E,)
        importance = gates.flatten(0, 1).mean(0)  # (E,)
        balance = self.n_experts * (load * importance).sum()  # Switch load-balancing statistic
        self.last_balance = balance.item()  # HAZARD: item
        BALANCE_HISTORY.append(self.last_balance)  # HAZARD: global-state
        self.calls += 1  # HAZARD: global-state
        if self.verbose:
            print(f"call {self.calls}: balance {self.last_balance:.3f}")  # HAZARD: print-log
        self.last_load = load.detach().cpu().numpy()  # HAZARD: host-copy
        return self.mix(x, gates)


def build():
    cfg = Config()
    return FeedForwardLM(cfg, SoftMoE), example_batch(cfg)
