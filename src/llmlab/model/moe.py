"""Mixture-of-experts feed-forward: router -> dispatch -> stacked experts -> weighted combine.

A token's MLP is replaced by top_k of n_experts smaller MLPs picked by a learned router (Shazeer et
al. 2017; Switch Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024), plus optional
always-on shared experts (DeepSeekMoE, Dai et al. 2024). Three interchangeable dispatch strategies
compute the same function when nothing is dropped (tests/model/test_moe.py checks it):

- `loop`: a Python loop over experts with boolean selections; the readable reference, eager only.
- `grouped`: dropless. Assignments are sorted by expert and each projection is one grouped GEMM
  with cumulative offsets; A = K*N rows whatever the routing (static shapes). Two kernels compute
  it (`MoEConfig.grouped_kernel`): `torch._grouped_mm` (CPU, sm90+ GPUs; eager fp32 or bf16,
  compiled bf16 only: the op's meta kernel accepts only bf16) and llmlab's Triton kernel
  (`llmlab.model.grouped_gemm`: GPUs below sm90, where torch's op syncs with the host; any dtype,
  compiled or not). Autocast does not cover either op, so under autocast we cast to the autocast
  dtype ourselves (as torchtitan does).
- `capacity`: Switch/GShard fixed buffers (E, C, D) and `bmm`. An expert takes at most
  C = ceil(capacity_factor * top_k * N / E) assignments; the overflow is dropped (MoE output zero for
  that slot, so the residual stream carries the token) and counted. Compiles in any dtype.
  Drop priority is causal: assignments rank by position t first, then batch row b, then choice k
  (all of a token's choices before any later token's, across the batch). An assignment at
  position t is kept iff fewer than C assignments at positions <= t reached its expert before it,
  so, at a fixed sequence length, changing tokens at positions >= t never changes what is kept (or
  which buffer slot it takes) at positions < t: the future's tokens cannot change the past. C
  itself grows with N = B*T, so a shorter sequence, or a cached decode step (N = B), drops
  differently than the full forward: with a capacity factor, cached generation is not the training
  forward's function (no factor: dropless, identical). (GShard's "first choices
  before second choices" over the flattened batch, Lepikhin et al. 2020 sec. 2.2, lets a later
  token's first choice evict an earlier token's second choice; Switch uses top-1, where the two
  agree.) When an expert overflows, the latest positions of the batch lose it.

All three share the router, the expert MLP formula (`MoE.experts`, given a per-layout `linear`)
and the combine; nothing in `forward` calls `.item()` and the grouped and capacity paths have no
data-dependent shapes, so the layer compiles with fullgraph=True. Auxiliary losses and routing
statistics are returned as tensors (no global collector).

Shape legend:
    B batch, T sequence, D d_model, E n_experts, K top_k, F d_ff_expert
    N = B*T tokens
    A = K*N routed assignments (token, slot), slot-major: assignment a = k*N + n
    C capacity per expert (capacity dispatch)
    R rows handed to the experts: A (grouped, sorted by expert) or E*C (capacity buffer slots)
    M the rows of one expert (loop)
    _ a dimension that is D or F depending on the call (x_R_, w_E__: shared by the projections)
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.config import MoEConfig, check_grouped_alignment
from llmlab.errors import ConfigError
from llmlab.model.mlp import MLP, mlp_params

Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(x_R_in, w_E_in_out, b_E_out or None) -> x @ w[e] + b[e], e = the expert of each row."""
GroupedMM = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_R_in, w_E_in_out, offsets_E) -> x_r @ w[e(r)], rows sorted by expert (torch._grouped_mm's contract)."""


class Routing(NamedTuple):
    """The router's decision for N tokens, shared by every dispatch strategy."""

    logits_NE: torch.Tensor
    """fp32 router logits."""
    lse_N: torch.Tensor
    """logsumexp of the logits: the softmax normaliser, reused by the z-loss and the entropy."""
    probs_NE: torch.Tensor
    """softmax(logits)."""
    experts_A: torch.Tensor
    """Chosen expert of each assignment (int64)."""
    weights_A: torch.Tensor
    """Combine weight of each assignment (fp32): its top-k probability, renormalised or not."""
    counts_E: torch.Tensor
    """Assignments per expert (int64), before any capacity drop."""


class Plan(NamedTuple):
    """How the static-shape dispatches (grouped, capacity) lay out expert rows."""

    token_R: torch.Tensor
    """The token (0..N-1) each row reads and writes back to."""
    weight_R: torch.Tensor
    """The row's combine weight (fp32); 0 for the empty slots of a capacity buffer."""
    linear: Linear
    """Applies each row's expert weights to all R rows at once."""


class MoE(nn.Module):
    """Drop-in replacement for the dense MLP: forward(x_BTD) -> (y_BTD, stats)."""

    def __init__(self, d_model: int, cfg: MoEConfig, mlp: str, bias: bool) -> None:
        super().__init__()
        E, D, d_ff = cfg.n_experts, d_model, cfg.d_ff_expert
        if d_ff <= 0:
            raise ConfigError("model.moe.d_ff_expert must be set (ModelConfig derives it from d_ff / top_k)")
        check_grouped_alignment(D, cfg)
        self.cfg = cfg
        # The router runs in fp32 (Switch sec. 2.4, "selective precision": a bf16 softmax makes
        # routing unstable).
        self.router = nn.Linear(D, E, bias=False)
        self.w_up_EDF = nn.Parameter(torch.empty(E, D, d_ff))
        self.w_gate_EDF = nn.Parameter(torch.empty(E, D, d_ff)) if mlp == "swiglu" else None
        self.w_down_EFD = nn.Parameter(torch.empty(E, d_ff, D))
        self.b_up_EF = nn.Parameter(torch.zeros(E, d_ff)) if bias else None
        self.b_gate_EF = nn.Parameter(torch.zeros(E, d_ff)) if bias and mlp == "swiglu" else None
        self.b_down_ED = nn.Parameter(torch.zeros(E, D)) if bias else None
        # DeepSeekMoE's n_shared always-on experts, fused into one MLP n_shared times as wide.
        n_shared = cfg.n_shared_experts
        self.shared = MLP(D, n_shared * d_ff, mlp, bias) if n_shared > 0 else None
        self.init_weights(0.02, 0.02)
        self._pick_grouped_kernel()

    def _apply(self, fn: Callable, recurse: bool = True) -> "MoE":
        """Moving the layer (.to, .cuda, to_empty) picks the grouped GEMM for its new device again:
        a fixed fact of the device, resolved here, in eager code, never inside a compiled region."""
        out = super()._apply(fn, recurse)
        self._pick_grouped_kernel()
        return out

    def _pick_grouped_kernel(self) -> None:
        self.grouped_kernel = grouped_kernel(self.cfg, self.w_up_EDF.device) if self.cfg.dispatch == "grouped" else None
        self.grouped_mm = triton_grouped_mm() if self.grouped_kernel == "triton" else torch_grouped_mm

    @torch.no_grad()
    def init_weights(self, std: float, out_std: float) -> None:
        """Normal(0, std) for the router and the input projections, out_std for the down projections
        (GPT-2 scaled residual init), zero biases."""
        for w in (self.router.weight, self.w_up_EDF, self.w_gate_EDF):
            if w is not None:
                nn.init.normal_(w, std=std)
        nn.init.normal_(self.w_down_EFD, std=out_std)
        for b in (self.b_up_EF, self.b_gate_EF, self.b_down_ED):
            if b is not None:
                nn.init.zeros_(b)
        if self.shared is not None:
            self.shared.init_weights(std, out_std)

    # -- forward: router -> dispatch -> experts -> combine ---------------------------------------

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        route = self.route(x_ND)
        if self.cfg.dispatch == "loop":
            y_RD, token_R, weight_R = self.loop_experts(x_ND, route)
        else:
            token_R, weight_R, linear = self.plan(route, (B, T), compute_dtype(x_ND))
            y_RD = self.experts(x_ND.index_select(0, token_R), linear)
        y_ND = combine(y_RD, token_R, weight_R, B * T)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        return y_ND.view(B, T, D), self.stats(route)

    def route(self, x_ND: torch.Tensor) -> Routing:
        """fp32 softmax router, top-k, optional renormalisation over the k (Mixtral)."""
        N, K, E = x_ND.shape[0], self.cfg.top_k, self.cfg.n_experts
        with torch.autocast(x_ND.device.type, enabled=False):
            logits_NE = F.linear(x_ND.float(), self.router.weight.float())
        # softmax as exp(logits - lse): the same values, much faster on CPU than softmax over E = 8.
        lse_N = torch.logsumexp(logits_NE, dim=-1)
        probs_NE = torch.exp(logits_NE - lse_N[:, None])
        weights_NK, experts_NK = probs_NE.topk(K, dim=-1)
        if self.cfg.renormalize:
            weights_NK = weights_NK / weights_NK.sum(dim=-1, keepdim=True)
        experts_A = experts_NK.t().reshape(K * N)  # slot-major: all first choices, then second ...
        counts_E = torch.zeros(E, dtype=torch.int64, device=x_ND.device)
        counts_E.scatter_add_(0, experts_A, torch.ones_like(experts_A))
        return Routing(logits_NE, lse_N, probs_NE, experts_A, weights_NK.t().reshape(K * N), counts_E)

    def stats(self, route: Routing) -> dict[str, torch.Tensor]:
        """Auxiliary losses and routing statistics, all tensors. Only aux_loss carries gradient."""
        E, A = self.cfg.n_experts, route.experts_A.shape[0]
        load_E = route.counts_E.float() / A  # f_i: fraction of assignments routed to expert i
        # Switch load balancing (Fedus et al. 2021, eq. 4, over top-k assignments): E * sum_i f_i P_i
        # with P_i the mean router probability; 1 when uniform. The gradient flows through P only.
        balance_loss = E * (load_E * route.probs_NE.mean(dim=0)).sum()
        # Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): keeps the logits small, the softmax stable.
        z_loss = route.lse_N.square().mean()
        with torch.no_grad():  # entropy H = lse - sum_i p_i logit_i, since log p_i = logit_i - lse
            entropy = (route.lse_N - (route.probs_NE * route.logits_NE).sum(dim=-1)).mean()
        kept = route.counts_E.clamp(max=self.capacity(route.lse_N.shape[0])).sum()
        return {
            "aux_loss": self.cfg.aux_loss_coef * balance_loss + self.cfg.z_loss_coef * z_loss,
            "balance_loss": balance_loss.detach(),
            "z_loss": z_loss.detach(),
            "load": load_E,
            "dropped_frac": 1.0 - kept.float() / A,
            "max_load": load_E.max() * E,
            "router_entropy": entropy,
        }

    def capacity(self, n_tokens: int) -> int:
        return expert_capacity(self.cfg, n_tokens)

    # -- experts: one MLP formula for every layout ------------------------------------------------

    def experts(self, x_R_: torch.Tensor, linear: Linear) -> torch.Tensor:
        """The expert MLP (SwiGLU or GELU) on rows x_RD; `linear` applies each row's own expert."""
        h_RF = linear(x_R_, self.w_up_EDF, self.b_up_EF)
        if self.w_gate_EDF is not None:
            h_RF = F.silu(linear(x_R_, self.w_gate_EDF, self.b_gate_EF)) * h_RF
        else:
            h_RF = F.gelu(h_RF, approximate="tanh")
        return linear(h_RF, self.w_down_EFD, self.b_down_ED)

    # -- dispatch --------------------------------------------------------------------------------

    def loop_experts(self, x_ND: torch.Tensor, route: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference dispatch: for each expert, select its assignments and run its MLP. Eager only
        (the selections have data-dependent shapes). Returns (y_RD, token_R, weight_R), R = A."""
        N, ys, tokens, weights = x_ND.shape[0], [], [], []
        for e in range(self.cfg.n_experts):
            (a_M,) = torch.nonzero(route.experts_A == e, as_tuple=True)  # this expert's assignments
            ys.append(self.experts(x_ND[a_M % N], functools.partial(_expert_linear, e=e)))
            tokens.append(a_M % N)
            weights.append(route.weights_A[a_M])
        return torch.cat(ys), torch.cat(tokens), torch.cat(weights)

    def plan(self, route: Routing, batch: tuple[int, int], dtype: torch.dtype) -> Plan:
        """Row layout of the grouped or capacity dispatch for a (B, T) batch: index arithmetic only,
        no float work."""
        n_tokens = batch[0] * batch[1]
        if self.cfg.dispatch == "grouped":
            if torch.compiler.is_compiling():
                check_grouped_compilable(self.grouped_kernel, dtype, "train")
            return plan_grouped(route, n_tokens, dtype, self.grouped_mm)
        return plan_capacity(route, batch, self.capacity(n_tokens))


def expert_capacity(cfg: MoEConfig, n_tokens: int) -> int:
    """Assignments one expert can take. Switch: ceil(cf * top_k * N / E) for `capacity` dispatch,
    capped at N (a token's k experts are distinct, so no expert gets more than N); N otherwise
    (dropless)."""
    cf = cfg.capacity_factor
    if cfg.dispatch != "capacity" or cf is None:
        return n_tokens
    return min(n_tokens, math.ceil(cf * cfg.top_k * n_tokens / cfg.n_experts))


def plan_grouped(route: Routing, n_tokens: int, dtype: torch.dtype, grouped_mm: GroupedMM | None = None) -> Plan:
    """Dropless: rows = all A assignments sorted by expert; one grouped GEMM per projection, whose
    offsets (cumulative rows per expert) change with the routing while every shape stays fixed.
    grouped_mm: torch._grouped_mm (default) or llmlab's Triton kernel, the same function."""
    order_A, experts_sorted_A = sort_by_expert(route.experts_A)
    offsets_E = torch.cumsum(route.counts_E, dim=0, dtype=torch.int32)
    grouped_mm = grouped_mm or torch_grouped_mm

    def linear(x_R_: torch.Tensor, w_E__: torch.Tensor, b_E_: torch.Tensor | None) -> torch.Tensor:
        out = grouped_mm(x_R_.to(dtype), w_E__.to(dtype), offsets_E)
        return out if b_E_ is None else out + b_E_.to(dtype)[experts_sorted_A]

    return Plan(order_A % n_tokens, route.weights_A[order_A], linear)


def plan_capacity(route: Routing, batch: tuple[int, int], capacity: int) -> Plan:
    """Switch/GShard: rows = E*C buffer slots, slot (e, c) holding the c-th assignment to expert e
    in causal priority order (position, then batch row, then choice). Assignments past C get no
    slot (dropped); empty slots get weight 0."""
    E, C, A = route.counts_E.shape[0], capacity, route.experts_A.shape[0]
    n_tokens = batch[0] * batch[1]
    order_A = causal_order(route.experts_A, batch)
    starts_E = torch.cumsum(route.counts_E, dim=0) - route.counts_E
    c_C = torch.arange(C, device=order_A.device)
    a_EC = order_A[(starts_E[:, None] + c_C).clamp(max=A - 1)]  # arbitrary in empty slots
    filled_EC = c_C < route.counts_E[:, None]
    weight_R = (route.weights_A[a_EC] * filled_EC).reshape(E * C)

    def linear(x_R_: torch.Tensor, w_E__: torch.Tensor, b_E_: torch.Tensor | None) -> torch.Tensor:
        x_EC_ = x_R_.view(E, C, -1)
        if b_E_ is None:
            return torch.bmm(x_EC_, w_E__).view(E * C, -1)
        return torch.baddbmm(b_E_[:, None, :], x_EC_, w_E__).view(E * C, -1)

    return Plan((a_EC % n_tokens).reshape(E * C), weight_R, linear)


def torch_grouped_mm(x_R_: torch.Tensor, w_E__: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    return torch._grouped_mm(x_R_, w_E__, offs=offsets_E)


def grouped_kernel(cfg: MoEConfig, device: torch.device | str) -> str:
    """The GEMM `grouped` dispatch runs on `device`: cfg.grouped_kernel, or for "auto" Triton on CUDA
    GPUs below sm90 (torch._grouped_mm has no kernel there: it copies the offsets to the host and
    loops over experts, pytorch/pytorch#186620) and torch._grouped_mm everywhere else."""
    if cfg.grouped_kernel != "auto":
        return cfg.grouped_kernel
    device = torch.device(device)
    below_sm90 = device.type == "cuda" and torch.cuda.get_device_capability(device) < (9, 0)
    return "triton" if below_sm90 else "torch"


def triton_grouped_mm() -> GroupedMM:
    """llmlab's Triton grouped GEMM (llmlab.model.grouped_gemm), or a ConfigError without triton."""
    try:  # imported on use: triton is a GPU dependency, needed only where this kernel runs
        from llmlab.model.grouped_gemm import grouped_mm
    except ImportError as e:
        raise ConfigError(f"model.moe.grouped_kernel = 'triton' needs the triton package ({e}): pip install "
                          "triton, or set model.moe.grouped_kernel = 'torch'") from None
    return grouped_mm


def sort_by_expert(experts_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order_A, experts_sorted_A): assignments grouped by expert (dropless dispatch: the order
    within an expert does not matter)."""
    experts_sorted_A, order_A = torch.sort(experts_A, stable=True)
    return order_A, experts_sorted_A


def causal_order(experts_A: torch.Tensor, batch: tuple[int, int]) -> torch.Tensor:
    """Assignments grouped by expert, each expert's in causal priority order: by position t, then
    batch row b, then choice k. Assignment a = k*N + b*T + t (slot-major); p = (t*B + b)*K + k
    is its priority. A stable sort of the experts listed in priority order does it."""
    (B, T), A = batch, experts_A.shape[0]
    a_P = torch.arange(A, device=experts_A.device).view(A // (B * T), B, T).permute(2, 1, 0).reshape(A)
    _, p_sorted = torch.sort(experts_A[a_P], stable=True)
    return a_P[p_sorted]


def combine(y_RD: torch.Tensor, token_R: torch.Tensor, weight_R: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """y_n = sum_k w_nk * expert_nk(x_n): each row adds its weighted output to its token's row,
    one scatter-add straight from the dispatch layout (no unsort, no (N, K, D) intermediate)."""
    return _WeightedScatterAdd.apply(y_RD, token_R, weight_R, n_tokens)


class _WeightedScatterAdd(torch.autograd.Function):
    """out[token_R[r]] += weight_R[r] * y_RD[r], with a hand-written backward that gathers the
    output gradient once and uses it for both gradients (autograd's own, through a broadcast mul,
    makes two more (R, D) passes and a temporary: 40 % of this step's eager CPU time). Same values."""

    @staticmethod
    def forward(ctx, y_RD: torch.Tensor, token_R: torch.Tensor, weight_R: torch.Tensor,
                n_tokens: int) -> torch.Tensor:
        ctx.save_for_backward(y_RD, token_R, weight_R)
        y_weighted_RD = y_RD * weight_R[:, None].to(y_RD.dtype)
        return y_RD.new_zeros(n_tokens, y_RD.shape[1]).index_add_(0, token_R, y_weighted_RD)

    @staticmethod
    def backward(ctx, grad_ND: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y_RD, token_R, weight_R = ctx.saved_tensors
        grad_RD = grad_ND.index_select(0, token_R)
        grad_weight_R = torch.linalg.vecdot(grad_RD, y_RD).to(weight_R.dtype)
        return grad_RD.mul_(weight_R[:, None].to(grad_RD.dtype)), None, grad_weight_R, None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert GEMMs run in: the autocast dtype when autocast is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _expert_linear(x_M_: torch.Tensor, w_E__: torch.Tensor, b_E_: torch.Tensor | None, e: int) -> torch.Tensor:
    out = x_M_ @ w_E__[e]
    return out if b_E_ is None else out + b_E_[e]


def moe_params(d_model: int, cfg: MoEConfig, mlp: str, bias: bool) -> tuple[int, int]:
    """(total, active per token) parameters of one MoE layer, by hand: router + experts + shared."""
    router = d_model * cfg.n_experts
    expert = mlp_params(d_model, cfg.d_ff_expert, mlp, bias)
    n_shared = cfg.n_shared_experts
    shared = mlp_params(d_model, n_shared * cfg.d_ff_expert, mlp, bias) if n_shared else 0
    return router + cfg.n_experts * expert + shared, router + cfg.top_k * expert + shared


# -- what torch.compile can trace (the advice around it: llmlab.model.moe_advice) ---------------------

COMPILE_FIXES = {
    "train": ("set train.compile = false", "train in bf16 (autocast on a GPU)"),
    "decode": ("decode without compile (drop --compile)", "decode in bf16 (--dtype bf16)"),
}
"""What to do instead, per use: (not compiling, compiling in bf16)."""


def check_grouped_compilable(kernel: str | None, dtype: torch.dtype | None, use: str) -> None:
    """Traced with the layer (MoE.plan under torch.compile), and by llmlab.model.moe_advice before
    any work: torch._grouped_mm's meta kernel takes bf16 only."""
    if kernel == "torch" and dtype != torch.bfloat16:
        eager, bf16 = COMPILE_FIXES[use]
        name = str(dtype or torch.float32).removeprefix("torch.")
        raise ConfigError(f"model.moe.dispatch = 'grouped' compiles only in bf16 (torch._grouped_mm), not {name}: "
                          f"{eager}, {bf16}, or use dispatch = 'capacity' (compiles in any dtype)")
