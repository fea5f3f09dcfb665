"""The MoE layer: the three dispatches compute the same function when nothing is dropped, drops
match a hand count, the losses match their formulas, statistics are consistent, parameter counts
match the hand formula, the layer compiles with no graph break, and the Switch balance loss keeps
every expert in use where training without it does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.testing import assert_close

from llmlab.config import MoEConfig, load_model_config
from llmlab.errors import ConfigError
from llmlab.model.mlp import mlp_params
from llmlab.model.moe import MoE, combine, moe_params
from llmlab.model.moe_advice import check_compilable, dispatch_advice

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
BF16 = {"atol": 2e-2, "rtol": 2e-2}  # a few bf16 roundings (eps 2^-8) of O(1) values


def make_moe(dispatch: str, mlp: str = "swiglu", bias: bool = False, n_shared: int = 0,
             renormalize: bool = True, capacity_factor: float | None = None, d_model: int = 16,
             n_experts: int = 4, top_k: int = 2, **coefs: float) -> MoE:
    """A small MoE whose weights depend only on the seed (not on the dispatch), with a std large
    enough that outputs and gradients are O(1)."""
    cfg = MoEConfig(n_experts=n_experts, top_k=top_k, d_ff_expert=8, n_shared_experts=n_shared,
                    renormalize=renormalize, capacity_factor=capacity_factor, dispatch=dispatch, **coefs)
    torch.manual_seed(0)
    moe = MoE(d_model, cfg, mlp, bias)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(std=0.3)
    return moe


def fixed_routing_moe(dispatch: str, first: list[int], second: list[int], **kw) -> tuple[MoE, torch.Tensor]:
    """A 4-expert top-2 MoE and 1 x N x 8 input whose routing is set by hand: router = identity on
    the first 4 input dims, and token n has 4 at dim first[n], 2 at dim second[n], 0 at the other
    two (so its logits are [.., 4, .., 2, ..]); dims 4-7 are random and only feed the experts."""
    moe = make_moe(dispatch, d_model=8, **kw)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :4] = torch.eye(4)
    N = len(first)
    x = torch.zeros(1, N, 8)
    x[0, torch.arange(N), torch.tensor(first)] = 4.0
    x[0, torch.arange(N), torch.tensor(second)] = 2.0
    x[0, :, 4:] = torch.randn(N, 4, generator=torch.Generator().manual_seed(1))
    return moe, x


def reference_moe(moe: MoE, x_BTD: torch.Tensor, kept_NK: torch.Tensor | None = None) -> torch.Tensor:
    """Per token and slot in plain Python: y_n = sum_k kept_nk * w_nk * expert_{e_nk}(x_n) (+ shared).
    Independent of every dispatch and of `combine`; only the router is shared."""
    B, T, D = x_BTD.shape
    x_ND = x_BTD.reshape(B * T, D)
    route = moe.route(x_ND)
    K = moe.cfg.top_k
    experts_NK = route.experts_A.view(K, -1).t()
    weights_NK = route.weights_A.view(K, -1).t()
    rows = []
    for n in range(B * T):
        y_D = torch.zeros(D, dtype=x_ND.dtype)
        for k in range(K):
            if kept_NK is None or kept_NK[n, k]:
                y_D = y_D + weights_NK[n, k].to(x_ND.dtype) * one_expert(moe, int(experts_NK[n, k]), x_ND[n])
        rows.append(y_D)
    y_ND = torch.stack(rows)
    if moe.shared is not None:
        y_ND = y_ND + moe.shared(x_ND)
    return y_ND.view(B, T, D)


def one_expert(moe: MoE, e: int, x_D: torch.Tensor) -> torch.Tensor:
    def lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return x @ w[e] + (b[e] if b is not None else 0)

    h = lin(x_D, moe.w_up_EDF, moe.b_up_EF)
    if moe.w_gate_EDF is not None:
        h = F.silu(lin(x_D, moe.w_gate_EDF, moe.b_gate_EF)) * h
    else:
        h = F.gelu(h, approximate="tanh")
    return lin(h, moe.w_down_EFD, moe.b_down_ED)


def output_and_grads(fn, moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """y = fn(x) (the MoE, compiled or not, or a reference) and the gradients of a loss that uses
    every output and the auxiliary loss, w.r.t. the input and every parameter."""
    moe.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = fn(x)
    y, aux = out if isinstance(out, tuple) else (out, moe.stats(moe.route(x.reshape(-1, x.shape[-1]))))
    loss = (y.float() * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum() + aux["aux_loss"]
    loss.backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in moe.named_parameters() if p.grad is not None})
    return y.detach(), grads


def assert_same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict], **tol: float) -> None:
    assert_close(a[0], b[0], **tol, msg=lambda m: f"output: {m}")
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert_close(a[1][name], b[1][name], **tol, msg=lambda m: f"grad of {name}: {m}")


def assert_bf16_near(got: tuple[torch.Tensor, dict], fp32: tuple[torch.Tensor, dict]) -> None:
    """A bf16 run against the same layer in fp32: the output elementwise to 2 % of its largest
    value, each gradient (a sum over tokens of rounded products) within 4 % relative error in norm:
    a few times bf16's 2^-8 = 0.4 %."""
    assert_close(got[0].float(), fp32[0], atol=0.02 * fp32[0].abs().max().item(), rtol=0.02)
    for name, grad in got[1].items():
        error = (grad.float() - fp32[1][name]).norm() / fp32[1][name].norm()
        assert error < 0.04, f"grad of {name}: relative error {error:.3f}"


def random_input(n_tokens: int = 12, d_model: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, n_tokens // 2, d_model, generator=torch.Generator().manual_seed(3)).to(dtype)


# -- the dispatches agree when nothing is dropped -------------------------------------------------

VARIANTS = [  # (mlp, bias, n_shared, renormalize)
    ("swiglu", False, 0, True),
    ("gelu", True, 1, False),
    ("swiglu", True, 2, True),
]


@pytest.mark.parametrize("mlp,bias,n_shared,renormalize", VARIANTS)
def test_loop_equals_per_token_reference(mlp: str, bias: bool, n_shared: int, renormalize: bool) -> None:
    moe = make_moe("loop", mlp, bias, n_shared, renormalize)
    x = random_input()
    assert_same(output_and_grads(moe, moe, x), output_and_grads(lambda x: reference_moe(moe, x), moe, x))


@pytest.mark.parametrize("mlp,bias,n_shared,renormalize", VARIANTS)
@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
def test_dispatches_equal_loop_fp32(dispatch: str, mlp: str, bias: bool, n_shared: int, renormalize: bool) -> None:
    """capacity without a capacity factor is dropless (C = N), so all three must agree to fp32."""
    x = random_input()
    loop = make_moe("loop", mlp, bias, n_shared, renormalize)
    fast = make_moe(dispatch, mlp, bias, n_shared, renormalize)
    assert_same(output_and_grads(fast, fast, x), output_and_grads(loop, loop, x))


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
def test_dispatches_equal_loop_with_idle_experts(dispatch: str) -> None:
    """Experts 2 and 3 get no token: empty groups / buffers must give zero, not garbage, gradients."""
    first, second = [0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]
    loop, x = fixed_routing_moe("loop", first, second)
    fast, _ = fixed_routing_moe(dispatch, first, second)
    y_grads = output_and_grads(fast, fast, x)
    assert_same(y_grads, output_and_grads(loop, loop, x))
    assert y_grads[1]["w_up_EDF"][2:].abs().max() == 0


@pytest.mark.parametrize("dispatch", ["loop", "grouped", "capacity"])
def test_dispatches_in_bf16_stay_within_bf16_error(dispatch: str) -> None:
    x = random_input(dtype=torch.bfloat16)
    fp32 = make_moe("loop", "swiglu", True, 1)
    bf16 = make_moe(dispatch, "swiglu", True, 1).to(torch.bfloat16)
    assert_bf16_near(output_and_grads(bf16, bf16, x), output_and_grads(fp32, fp32, x.float()))
    loop = make_moe("loop", "swiglu", True, 1).to(torch.bfloat16)
    assert_close(bf16(x)[0], loop(x)[0], **BF16)  # and close to each other


def test_grouped_under_autocast_runs_in_bf16() -> None:
    """autocast does not cover torch._grouped_mm; the layer casts to the autocast dtype itself."""
    moe, x = make_moe("grouped"), random_input()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, stats = moe(x)
    assert y.dtype == torch.bfloat16 and stats["aux_loss"].dtype == torch.float32  # fp32 router
    assert_close(y.float(), moe(x)[0], **BF16)


def test_combine_gradients() -> None:
    """The hand-written backward of the weighted scatter-add, against finite differences."""
    y = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(12, dtype=torch.float64, requires_grad=True)
    token = torch.tensor([0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda y, w: combine(y, token, w, 6), (y, w))


# -- capacity: drops ------------------------------------------------------------------------------

# Hand-made routing of 8 tokens (4 experts, top-2). With capacity_factor 0.5, C = ceil(0.5*2*8/4) = 2.
# Causal priority: position t, then batch row b, then choice k. As one row of 8 (B = 1), each
# expert serves its assignments in token order, a token's first choice before its second:
#   expert 0: 0a 1a 2a 4b 6b -> keeps 0a 1a; drops 2a 4b 6b      (a = first choice, b = second)
#   expert 1: 0b 1b 3a 4a    -> keeps 0b 1b; drops 3a 4a
#   expert 2: 2b 3b 5a 7b    -> keeps 2b 3b; drops 5a 7b
#   expert 3: 5b 6a 7a       -> keeps 5b 6a; drops 7a               8 of 16 dropped
# As two rows of 4 (B = 2: tokens 0-3 and 4-7), position 0 of both rows comes first (0, 4, 1, 5, ...):
#   expert 0: 0a 4b 1a 2a 6b -> keeps 0a 4b;    expert 1: 0b 4a 1b 3a -> keeps 0b 4a
#   expert 2: 5a 2b 3b 7b    -> keeps 5a 2b;    expert 3: 5b 6a 7a    -> keeps 5b 6a   (8 dropped)
FIRST = [0, 0, 0, 1, 1, 2, 3, 3]
SECOND = [1, 1, 2, 2, 0, 3, 0, 2]
KEPT = {  # batch rows: (kept first choices, kept second choices), by token
    1: ([1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 0, 1, 0, 0]),
    2: ([1, 0, 0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1, 0, 0]),
}


@pytest.mark.parametrize("rows", [1, 2])
def test_dropped_fraction_equals_hand_count(rows: int) -> None:
    moe, x = fixed_routing_moe("capacity", FIRST, SECOND, capacity_factor=0.5)
    x = x.view(rows, 8 // rows, 8)
    assert moe.capacity(8) == 2
    kept_NK = torch.tensor(KEPT[rows]).t().bool()
    y, stats = moe(x)
    assert stats["dropped_frac"].item() == 8 / 16
    assert_close(stats["load"], torch.tensor([5, 4, 4, 3]) / 16)  # load counts before drops
    # which assignments were dropped: output and gradients equal the reference without them
    assert_same(output_and_grads(moe, moe, x), output_and_grads(lambda x: reference_moe(moe, x, kept_NK), moe, x))


def test_capacity_with_room_drops_nothing() -> None:
    moe, x = fixed_routing_moe("capacity", FIRST, SECOND, capacity_factor=2.0)  # C = 8 = N
    loop, _ = fixed_routing_moe("loop", FIRST, SECOND)
    assert moe(x)[1]["dropped_frac"].item() == 0
    assert_same(output_and_grads(moe, moe, x), output_and_grads(loop, loop, x))


# -- losses and statistics ------------------------------------------------------------------------


def test_balance_loss_is_one_for_uniform_routing_and_larger_when_skewed() -> None:
    # Uniform: token n prefers n % 4, then (n + 1) % 4: every expert gets 1/4 of the assignments
    # and, by symmetry, 1/4 of the mean router probability: E * sum_i (1/4)(1/4) = 1.
    first = [n % 4 for n in range(8)]
    uniform, x = fixed_routing_moe("grouped", first, [(n + 1) % 4 for n in range(8)], z_loss_coef=0.0)
    stats = uniform(x)[1]
    assert_close(stats["balance_loss"], torch.tensor(1.0))
    assert_close(stats["aux_loss"], torch.tensor(uniform.cfg.aux_loss_coef))  # the minimum = coef
    assert_close(stats["max_load"], torch.tensor(1.0))
    # Skewed: every token prefers expert 0 then 1: f = (1/2, 1/2, 0, 0), P = softmax([4, 2, 0, 0]).
    skewed, x = fixed_routing_moe("grouped", [0] * 8, [1] * 8, z_loss_coef=0.0)
    p = torch.softmax(torch.tensor([4.0, 2.0, 0.0, 0.0]), dim=0)
    stats = skewed(x)[1]
    assert_close(stats["balance_loss"], 4 * (0.5 * p[0] + 0.5 * p[1]))
    assert stats["balance_loss"] > 1.9 and stats["max_load"].item() == 2.0


def test_z_loss_formula() -> None:
    moe, x = make_moe("grouped", aux_loss_coef=0.0, z_loss_coef=1e-3), random_input()
    logits = x.reshape(-1, 16) @ moe.router.weight.t()
    z = torch.logsumexp(logits, dim=-1).square().mean()
    stats = moe(x)[1]
    assert_close(stats["z_loss"], z)
    assert_close(stats["aux_loss"], 1e-3 * z)
    stats["aux_loss"].backward()
    assert moe.router.weight.grad.abs().max() > 0


@pytest.mark.parametrize("dispatch", ["grouped", "capacity", "loop"])
def test_statistics(dispatch: str) -> None:
    moe, x = make_moe(dispatch), random_input()
    stats = moe(x)[1]
    assert set(stats) == {"aux_loss", "balance_loss", "z_loss", "load", "dropped_frac", "max_load", "router_entropy"}
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    assert [k for k, v in stats.items() if v.requires_grad] == ["aux_loss"]  # statistics are detached
    assert stats["load"].shape == (4,)
    assert_close(stats["load"].sum(), torch.tensor(1.0))
    assert_close(stats["max_load"], stats["load"].max() * 4)
    assert stats["dropped_frac"].item() == 0  # dropless
    logits = x.reshape(-1, 16) @ moe.router.weight.t()
    assert_close(stats["router_entropy"], torch.distributions.Categorical(logits=logits).entropy().mean())


# -- parameters and configuration ---------------------------------------------------------------


@pytest.mark.parametrize("mlp,bias,n_shared", [("swiglu", False, 0), ("gelu", True, 0), ("swiglu", True, 2)])
def test_parameter_counts_match_hand_formula(mlp: str, bias: bool, n_shared: int) -> None:
    moe = make_moe("grouped", mlp, bias, n_shared, n_experts=8, top_k=2)
    total, active = moe_params(16, moe.cfg, mlp, bias)
    assert total == sum(p.numel() for p in moe.parameters())
    expert = mlp_params(16, 8, mlp, bias)
    shared = sum(p.numel() for p in moe.shared.parameters()) if n_shared else 0
    assert active == moe.router.weight.numel() + 2 * expert + shared


def test_moe_configs_match_dense_active_parameters() -> None:
    """gqa-moe-125m: active non-embedding parameters within 1 % of base-125m, total several times
    larger; the same for tiny-moe against tiny."""
    from llmlab.model.accounting import count

    for moe_name, dense_name in (("gqa-moe-125m", "base-125m"), ("tiny-moe", "tiny")):
        moe = count(load_model_config(CONFIGS / f"{moe_name}.toml"))
        dense = count(load_model_config(CONFIGS / f"{dense_name}.toml"))
        assert abs(moe["active_non_embedding"] / dense["active_non_embedding"] - 1) < 0.01, moe_name
        assert moe["non_embedding"] > 1.5 * dense["non_embedding"], moe_name
    big = count(load_model_config(CONFIGS / "gqa-moe-125m.toml"))
    assert big["total"] > 2 * count(load_model_config(CONFIGS / "base-125m.toml"))["total"]


def test_demo_moe_does_only_top_k_expert_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny-moe (the demo's MoE) is dropless and hands the experts exactly top_k rows a token:
    no E x N capacity buffer (which would be 2x the expert work at 4 experts, top-2)."""
    cfg = load_model_config(CONFIGS / "tiny-moe.toml")
    moe = MoE(cfg.d_model, cfg.moe, cfg.mlp, cfg.bias)
    rows = []
    experts = MoE.experts
    monkeypatch.setattr(MoE, "experts", lambda self, x, linear: rows.append(x.shape[0]) or experts(self, x, linear))
    x = torch.randn(2, 64, cfg.d_model)
    stats = moe(x)[1]
    assert rows == [cfg.moe.top_k * 128] and stats["dropped_frac"].item() == 0


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="d_ff_expert"):
        MoE(16, MoEConfig(d_ff_expert=0), "swiglu", False)
    with pytest.raises(ConfigError, match="multiples of 8"):
        MoE(16, MoEConfig(d_ff_expert=12, dispatch="grouped"), "swiglu", False)
    MoE(16, MoEConfig(n_experts=4, d_ff_expert=12, dispatch="capacity"), "swiglu", False)  # fine


# -- dispatch advice ---------------------------------------------------------------------------


def fake_gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_dispatch_advice_warns_grouped_below_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below sm90, `grouped` runs on the Triton kernel (dropless, no warning); forcing
    torch._grouped_mm there is warned as the slow host-synced fallback it is."""
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    advice = dispatch_advice(MoEConfig(dispatch="grouped"), "cuda")
    assert "sm80" in advice and "Triton" in advice and "dropless" in advice and "slow" not in advice
    advice = dispatch_advice(MoEConfig(dispatch="grouped", grouped_kernel="torch"), "cuda")
    assert "sm80" in advice and "186620" in advice and "very slow" in advice and "grouped_kernel = 'auto'" in advice
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    advice = dispatch_advice(MoEConfig(dispatch="grouped"), "cuda")
    assert "sm90" in advice and "slow" not in advice and "dropless" in advice
    # capacity states what it drops, on any GPU
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    advice = dispatch_advice(MoEConfig(dispatch="capacity", capacity_factor=1.25), "cuda")
    assert "factor 1.25" in advice and "dropped" in advice and "slow" not in advice


def test_dispatch_advice_on_cpu_and_for_each_dispatch() -> None:
    assert dispatch_advice(None, "cpu") is None  # a dense model
    assert "dropless" in dispatch_advice(MoEConfig(dispatch="grouped"), "cpu")
    fp32_compiled = dispatch_advice(MoEConfig(dispatch="grouped"), "cpu", compile=True, dtype=torch.float32)
    assert "needs bf16" in fp32_compiled and "float32" in fp32_compiled
    assert "needs bf16" not in dispatch_advice(MoEConfig(dispatch="grouped"), "cpu", compile=True, dtype=torch.bfloat16)
    assert "4.0x the top-k" in dispatch_advice(MoEConfig(n_experts=8, top_k=2, dispatch="capacity"), "cpu")
    assert "eager only" in dispatch_advice(MoEConfig(dispatch="loop"), "cpu")


# -- torch.compile ----------------------------------------------------------------------------------

# capacity in bf16 too: GPU training runs in bf16 autocast.
COMPILABLE = [("capacity", torch.float32), ("capacity", torch.bfloat16), ("grouped", torch.bfloat16)]


def check_compiles(dispatch: str, dtype: torch.dtype, backend: str) -> None:
    """fullgraph=True forward + backward, equal to eager (in bf16: near the fp32 layer, as compiled
    code rounds at other places than eager), and one graph for inputs that route differently (no
    recompilation: the shapes do not depend on the routing)."""
    torch._dynamo.reset()
    cf = 1.0 if dispatch == "capacity" else None
    reference = make_moe(dispatch, "swiglu", True, 1, capacity_factor=cf)
    moe = make_moe(dispatch, "swiglu", True, 1, capacity_factor=cf).to(dtype)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(moe, fullgraph=True, backend=counter)  # a graph break raises
    for seed in (3, 4):
        x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(seed))
        got, want = output_and_grads(compiled, moe, x.to(dtype)), output_and_grads(reference, reference, x)
        if dtype == torch.bfloat16:
            assert_bf16_near(got, want)
        else:
            assert_same(got, want, atol=1e-5, rtol=1e-4)
    assert counter.frame_count == 1


@pytest.mark.parametrize("dispatch,dtype", COMPILABLE)
def test_compiles_fullgraph(dispatch: str, dtype: torch.dtype) -> None:
    """aot_eager traces forward and backward like inductor, without code generation (fast)."""
    check_compiles(dispatch, dtype, "aot_eager")


@pytest.mark.slow
def test_compiles_fullgraph_inductor() -> None:
    """Code generation too, for the path a CPU trains with (~40 s with a cold inductor cache)."""
    check_compiles("capacity", torch.float32, "inductor")


def test_check_compilable_refuses_what_cannot_compile() -> None:
    check_compilable(MoEConfig(dispatch="grouped"), compile=True, dtype=torch.bfloat16)
    check_compilable(MoEConfig(dispatch="capacity"), compile=True, dtype=None)  # fp32
    check_compilable(MoEConfig(dispatch="loop"), compile=False, dtype=None)
    with pytest.raises(ConfigError, match="compiles only in bf16 .*not float32.*'capacity'"):
        check_compilable(MoEConfig(dispatch="grouped"), compile=True, dtype=None)
    with pytest.raises(ConfigError, match="'loop' is eager only"):
        check_compilable(MoEConfig(dispatch="loop"), compile=True, dtype=torch.bfloat16)


def test_grouped_fp32_compile_says_use_bf16_or_capacity() -> None:
    torch._dynamo.reset()
    moe = make_moe("grouped")
    with pytest.raises(Exception, match="compiles only in bf16"):
        torch.compile(moe, fullgraph=True, backend="aot_eager")(random_input())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grouped_cuda_bf16_compiled_equals_loop() -> None:
    """The CUDA grouped GEMM kernel (not the CPU fallback), compiled with inductor, under autocast."""
    torch._dynamo.reset()
    loop, grouped = make_moe("loop", d_model=64).cuda(), make_moe("grouped", d_model=64).cuda()
    x = torch.randn(4, 64, 64, device="cuda")
    compiled = torch.compile(grouped, fullgraph=True)
    fp32 = output_and_grads(loop, loop, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = output_and_grads(compiled, grouped, x)
    assert_bf16_near(got, fp32)


# -- training with and without the balance loss -----------------------------------------------------


class TinyMoELM(nn.Module):
    """embedding -> x + MoE(x) -> head: the smallest language model with a router to train."""

    def __init__(self, cfg: MoEConfig, vocab: int = 32, d_model: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.moe = MoE(d_model, cfg, "swiglu", bias=False)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.emb(idx)
        y, stats = self.moe(x)
        return self.head(x + y), stats


def train_from_collapsed_router(aux_loss_coef: float, steps: int = 150) -> dict[str, torch.Tensor]:
    """150 AdamW steps on one fixed batch of random tokens, from a router that sends every token to
    experts 0 and 1 (a collapse, as the rich-get-richer dynamic of a router produces)."""
    torch.manual_seed(0)
    model = TinyMoELM(MoEConfig(n_experts=4, top_k=2, d_ff_expert=16, aux_loss_coef=aux_loss_coef))
    with torch.no_grad():
        model.emb.weight += 1.0  # a direction every token shares ...
        model.moe.router.weight.zero_()
        model.moe.router.weight[0], model.moe.router.weight[1] = 0.5, 0.25  # ... that experts 0, 1 read
    idx = torch.randint(0, 32, (8, 33), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        logits, stats = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()) + stats["aux_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return stats


def test_balance_loss_keeps_every_expert_in_use() -> None:
    without = train_from_collapsed_router(aux_loss_coef=0.0)
    with_balance = train_from_collapsed_router(aux_loss_coef=MoEConfig().aux_loss_coef)  # default 1e-2
    assert (without["load"] == 0).any() and without["max_load"].item() == 2.0  # still collapsed
    assert (with_balance["load"] > 0).all(), with_balance["load"]  # every expert in use
    assert with_balance["max_load"] < without["max_load"]
    assert math.isfinite(with_balance["router_entropy"].item())
