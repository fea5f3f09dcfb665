"""The dense feed-forward block: SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer") or GELU (GPT-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """swiglu: down(silu(gate(x)) * up(x)); gelu: down(gelu(up(x))). Shapes: x (..., D) -> (..., D)."""

    def __init__(self, d_model: int, d_ff: int, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if kind == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))

    def init_weights(self, std: float, out_std: float) -> None:
        """Normal(0, std) inputs; the residual output projection gets out_std (GPT-2 scaled init)."""
        for lin in (self.up, self.gate):
            if lin is not None:
                nn.init.normal_(lin.weight, std=std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        nn.init.normal_(self.down.weight, std=out_std)
        if self.down.bias is not None:
            nn.init.zeros_(self.down.bias)


def mlp_params(d_model: int, d_ff: int, kind: str, bias: bool) -> int:
    """Parameters of one MLP, by hand: matrices + biases."""
    n_in = 2 if kind == "swiglu" else 1
    return n_in * d_model * d_ff + d_ff * d_model + (bias * (n_in * d_ff + d_model))
