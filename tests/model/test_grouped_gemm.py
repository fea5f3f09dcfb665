"""The Triton grouped GEMM (the dropless MoE path below sm90): it equals a per-expert matmul and the
loop reference, forward and backward, drops nothing, and is the kernel `auto` picks on a GPU below
sm90 (faked here). On a CPU Triton's interpreter runs it; on a GPU the same tests run the real
kernels, and the `gpu` tests add: no host sync, compiled fullgraph, captured in a CUDA graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from llmlab.config import MoEConfig
from llmlab.errors import ConfigError
from llmlab.model import moe as moe_module
from llmlab.model.moe import grouped_kernel
from llmlab.model.moe_advice import check_compilable, dispatch_advice

pytest.importorskip("triton", reason="the Triton kernel needs the triton package (a dev dependency)")
from llmlab.model import grouped_gemm  # noqa: E402
from llmlab.model.grouped_gemm import BLOCK_M, grouped_mm, tile_table  # noqa: E402

from test_moe import fake_gpu, make_moe, output_and_grads, random_input  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU, tests/conftest.py sets TRITON_INTERPRET=1


def per_expert(x_RK: torch.Tensor, w_EKN: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The reference: each expert's rows times its own weight, one plain matmul each."""
    return torch.cat([rows @ w_EKN[e] for e, rows in enumerate(x_RK.split(counts))])


COUNTS = {  # rows per expert: empty experts, one row, several tiles, a partial last tile
    "uneven": [70, 0, 5, 130],
    "one expert takes all": [0, 0, 3 * BLOCK_M + 1, 0],
    "single rows": [1, 1, 1, 1],
}


@pytest.mark.parametrize("case", COUNTS)
def test_grouped_mm_equals_per_expert_matmul_forward_and_backward(case: str) -> None:
    counts = COUNTS[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sum(counts), 40, generator=gen).to(DEVICE).requires_grad_()  # K, N not block multiples
    w = torch.randn(len(counts), 40, 72, generator=gen).to(DEVICE).requires_grad_()
    offsets = torch.cumsum(torch.tensor(counts), 0).int().to(DEVICE)
    y, want = grouped_mm(x, w, offsets), per_expert(x, w, counts)
    assert_close(y, want, atol=1e-4, rtol=1e-5)
    g = torch.randn(y.shape, generator=gen).to(DEVICE)
    assert_close(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(want, (x, w), g), atol=1e-4, rtol=1e-5)


def test_tile_table_covers_every_row_once() -> None:
    """The fixed grid's tiles cover each expert's rows exactly once, never across experts."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        counts = torch.randint(0, 3 * BLOCK_M, (5,), generator=gen)
        offsets = torch.cumsum(counts, 0).int()
        expert_T, start_T, end_T = tile_table(offsets, int(counts.sum()))
        assert len(expert_T) == -(-int(counts.sum()) // BLOCK_M) + 5  # the grid depends on shapes only
        owner = torch.full((int(counts.sum()),), -1)
        for e, s, t in zip(expert_T.tolist(), start_T.tolist(), end_T.tolist()):
            assert t - s <= BLOCK_M
            if s < t:
                assert (owner[s:t] == -1).all()
                owner[s:t] = e
        assert torch.equal(owner, torch.repeat_interleave(torch.arange(5), counts))


@pytest.mark.parametrize("mlp,bias,n_shared", [("swiglu", False, 0), ("gelu", True, 1)])
def test_moe_on_the_triton_kernel_equals_the_loop_reference(mlp: str, bias: bool, n_shared: int) -> None:
    loop = make_moe("loop", mlp, bias, n_shared).to(DEVICE)
    triton = triton_moe(mlp, bias, n_shared)
    assert triton.grouped_mm is grouped_mm
    x = random_input(n_tokens=40).to(DEVICE)
    got, want = output_and_grads(triton, triton, x), output_and_grads(loop, loop, x)
    assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    assert got[1].keys() == want[1].keys()
    for name in got[1]:
        assert_close(got[1][name], want[1][name], atol=1e-5, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")
    assert triton(x)[1]["dropped_frac"].item() == 0.0  # dropless


def triton_moe(*args: object, **kw: object) -> moe_module.MoE:
    layer = make_moe("grouped", *args, **kw)
    layer.cfg.grouped_kernel = "triton"
    return layer.to(DEVICE)  # moving it picks the kernel again


def test_auto_picks_triton_below_sm90_and_torch_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MoEConfig(dispatch="grouped")
    assert grouped_kernel(cfg, "cpu") == "torch"
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert grouped_kernel(cfg, "cuda") == "triton"
    advice = dispatch_advice(cfg, "cuda")
    assert "sm80" in advice and "Triton" in advice and "dropless" in advice and "186620" in advice
    check_compilable(cfg, compile=True, dtype=torch.float32, device="cuda")  # Triton compiles in fp32 too
    forced = MoEConfig(dispatch="grouped", grouped_kernel="torch")
    assert "very slow" in dispatch_advice(forced, "cuda")
    with pytest.raises(ConfigError, match="compiles only in bf16"):
        check_compilable(forced, compile=True, dtype=torch.float32, device="cuda")
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    assert grouped_kernel(cfg, "cuda") == "torch"
    assert grouped_kernel(MoEConfig(dispatch="grouped", grouped_kernel="triton"), "cuda") == "triton"


def test_triton_kernel_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MoEConfig(dispatch="grouped", grouped_kernel="triton")
    with pytest.raises(ConfigError, match="compiles on a CUDA GPU only"):
        check_compilable(cfg, compile=True, dtype=torch.bfloat16, device="cpu")
    monkeypatch.setattr(grouped_gemm, "INTERPRET", False)
    layer = make_moe("grouped")
    layer.cfg.grouped_kernel = "triton"
    layer._pick_grouped_kernel()
    with pytest.raises(ConfigError, match="runs on a CUDA GPU"):
        layer(random_input())  # a CPU tensor, no interpreter
    with pytest.raises(ConfigError, match="only applies to dispatch = 'grouped'"):
        MoEConfig(dispatch="capacity", grouped_kernel="triton")
    monkeypatch.setattr(moe_module, "triton_grouped_mm", lambda: (_ for _ in ()).throw(ConfigError("x")))
    with pytest.raises(ConfigError):  # no triton package: the layer says so when it is built
        moe_module.MoE(16, MoEConfig(dispatch="grouped", grouped_kernel="triton", d_ff_expert=8), "swiglu", False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_moe_on_cuda_never_syncs_compiles_and_graph_captures(dtype: torch.dtype) -> None:
    """The point of the kernel: no device-to-host sync (CUDA's sync debug mode raises on one) in the
    forward and backward, fullgraph compile equal to eager, and a CUDA graph that replays it."""
    import torch._dynamo

    layer = triton_moe().to(dtype)
    x = random_input(n_tokens=256).to("cuda", dtype)
    want = layer(x)[0]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, stats = layer(x)
        y.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    assert_close(compiled(x)[0], want, **({} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}))
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    layer(static_x)  # warm-up on the side stream is not needed for this eager op
    with torch.cuda.graph(graph):
        static_y = layer(static_x)[0]
    static_x.copy_(random_input(n_tokens=256).to("cuda", dtype).flip(0))
    graph.replay()
    assert_close(static_y, layer(static_x)[0])


HOST_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
                 "aten._unique2.default", "aten.unique_dim.default", "aten.is_nonzero.default", "aten.equal.default"}
"""Ops that read a tensor's values on the host (on a GPU: a device-to-host sync)."""


def test_the_triton_moe_path_dispatches_no_op_that_reads_values_on_the_host() -> None:
    """Forward and backward of the MoE on the Triton kernel, every aten op recorded (the kernel's
    tile table included): none reads a value on the host, so none would sync a GPU. (On CUDA,
    `test_triton_moe_on_cuda_never_syncs_compiles_and_graph_captures` checks it with CUDA's own
    sync detector.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    layer = triton_moe()
    x = random_input(n_tokens=40).to(DEVICE).requires_grad_()
    with Record() as record:
        y, stats = layer(x)
        (y.sum() + stats["aux_loss"]).backward()
        tile_table(torch.tensor([3, 0, 37], dtype=torch.int32, device=DEVICE).cumsum(0, dtype=torch.int32), 40)
    assert "llmlab.grouped_mm.default" in record.ops and "aten.searchsorted.Tensor" in record.ops
    assert not record.ops & HOST_SYNC_OPS


def test_audit_of_the_moe_on_the_triton_path_finds_no_host_sync() -> None:
    """`llmlab audit` of llmlab's MoE on the Triton kernel (examples/audit/llmlab_models.py:
    build_moe_triton): the eager pass runs the kernel, and the static reading of every line it ran
    finds no hazard. (Its compiled checks need a GPU: under Triton's interpreter torch.compile
    cannot trace the kernels. `test_audit_of_the_triton_moe_on_cuda_is_ready` runs them there.)"""
    from llmlab.audit.pipeline import audit

    report = audit(f"{EXAMPLES}:build_moe_triton", device=DEVICE, steps=2)
    static = [f for f in report.findings if f.source == "static"]
    assert static == [], [f.to_dict() for f in static]
    if DEVICE == "cuda":
        assert report.exit_code == 0, [f.to_dict() for f in report.findings]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audit" / "llmlab_models.py"
