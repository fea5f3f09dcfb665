"""moe_flawed.py fixed for torch.compile: capacity dispatch with static shapes (Switch
Transformer, Fedus et al. 2021; GShard, Lepikhin et al. 2020).

Each expert gets a buffer of C = ceil(capacity_factor * k * N / E) slots; a token's slot in its
expert is a cumulative count of earlier assignments (a tensor), so dispatch and combine are
einsums over fixed (N, k, E, C) one-hot tensors and the experts run as one batched matmul over
stacked weights (E, C, D) @ (E, D, H). Assignments beyond C are dropped (the token passes through
the residual): with capacity_factor = E / k nothing is ever dropped, as here.
Shapes: N tokens, C slots, D width, H hidden, E experts, k top-k.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from tinylm import Config, FeedForwardLM, example_batch


class MoE(nn.Module):
    def __init__(self, cfg: Config, capacity_factor: float | None = None):
        super().__init__()
        E, D, H = cfg.n_experts, cfg.n_embd, 2 * cfg.n_embd
        self.top_k, self.n_experts = cfg.top_k, E
        self.capacity_factor = capacity_factor or E / cfg.top_k  # dropless
        self.router = nn.Linear(D, E, bias=False)
        self.w_in_EDH = nn.Parameter(torch.randn(E, D, H) * D**-0.5)
        self.w_out_EHD = nn.Parameter(torch.randn(E, H, D) * H**-0.5)

    def forward(self, x):
        B, T, D = x.shape
        x_ND = x.reshape(-1, D)
        N, E = x_ND.shape[0], self.n_experts
        C = math.ceil(self.capacity_factor * self.top_k * N / E)  # a Python int from shapes, not values
        probs_NE = F.softmax(self.router(x_ND), dim=-1)
        weight_Nk, expert_Nk = torch.topk(probs_NE, self.top_k, dim=-1)
        weight_Nk = weight_Nk / weight_Nk.sum(dim=-1, keepdim=True)
        onehot_NkE = F.one_hot(expert_Nk, E).to(x.dtype)
        # slot of each assignment in its expert: assignments counted in (choice, token) order
        slot_kNE = onehot_NkE.transpose(0, 1).reshape(-1, E).cumsum(0).view(self.top_k, N, E) - 1
        slot_NkE = slot_kNE.transpose(0, 1) * onehot_NkE
        keep_NkE = onehot_NkE * (slot_NkE < C)
        dispatch_NkEC = F.one_hot(slot_NkE.long().clamp(max=C - 1), C).to(x.dtype) * keep_NkE[..., None]
        x_ECD = torch.einsum("nkec,nd->ecd", dispatch_NkEC, x_ND)
        y_ECD = torch.bmm(F.gelu(torch.bmm(x_ECD, self.w_in_EDH)), self.w_out_EHD)
        out_ND = torch.einsum("nkec,ecd,nk->nd", dispatch_NkEC, y_ECD, weight_Nk)
        return out_ND.view(B, T, D)


def build():
    cfg = Config()
    return FeedForwardLM(cfg, MoE), example_batch(cfg)
