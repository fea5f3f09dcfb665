"""A dropless grouped GEMM in Triton, for MoE experts on GPUs where `torch._grouped_mm` is slow.

`grouped_mm(x_RK, w_EKN, offsets_E)` computes y_r = x_r @ w_e for rows sorted by expert, expert e
owning rows offsets[e-1] .. offsets[e] - 1 (torch._grouped_mm's convention, offsets int32 and
cumulative, offsets[-1] == R). Why it exists: torch._grouped_mm has its CUDA kernel on sm90+ only
(and inductor's Triton template for it is gated to sm90+ too); below, on the user's A100 (sm80), it
loops over the experts on the host after copying the offsets there (pytorch/pytorch#186620). That
device-to-host sync costs a stall per projection and cannot be captured in a CUDA graph. Here every
launch has a fixed grid computed from shapes alone, and which tile belongs to which expert is read
from a small table built on the device, so there is no sync and the op compiles and graph-captures:
the same dropless, top-k-work experiment as on an H100.

The tiling follows MegaBlocks (Gale et al. 2023, "MegaBlocks: Efficient Sparse Training with
Mixture-of-Experts"): each expert's rows are cut into BLOCK_M tiles; the grid has the most tiles any
routing can need, ceil(R / BLOCK_M) + E (each expert adds at most one partial tile), and a tile past
the routing's own count does nothing. Extra work: the partial tiles' masked rows, at most E *
(BLOCK_M - 1) rows a projection: at most 504 against 32,768 real rows (1.5 %) at the 125M MoE's
training shapes (8 experts, top-2, 16 x 1024 tokens a micro-batch).

Backward: dX = grouped_mm(dY, w^T) (the same kernel, transposed strides); dW_e = X_e^T dY_e (a second
kernel whose programs each own one (expert, K tile, N tile) of dW and loop over that expert's rows).
Both ops are `torch.library.triton_op`s, so torch.compile traces into them and CUDA graphs capture
them. Accumulation is fp32 (tl.dot); fp32 inputs use IEEE products (no TF32), as torch does by
default, so the op matches the reference in fp32.

On a CPU the kernels run only under Triton's interpreter (TRITON_INTERPRET=1, slow: for tests).

Shape legend: R rows (assignments sorted by expert), K input width, N output width, E experts,
T tiles of the grid.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from llmlab.errors import ConfigError

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's interpreter (numpy, on the CPU): read once, as triton itself reads it when a kernel is defined."""

BLOCK_M = 64
"""Rows per tile. Fixed: the tile table depends on it. 64 keeps the padding of partial tiles small."""
BLOCK_N = 64
BLOCK_K = 32
NUM_WARPS = 4
NUM_STAGES = 3


def tile_table(offsets_E: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expert_T, row_start_T, row_end_T) int32 for the fixed grid of T = ceil(R / BLOCK_M) + E tiles:
    tile t covers rows row_start .. row_end - 1 of expert_T[t]; unused tiles get row_start = row_end.
    Torch ops on the device only (searchsorted, cumsum): no shape depends on the routing."""
    E = offsets_E.shape[0]
    ends_E = offsets_E.long()
    starts_E = ends_E - torch.diff(ends_E, prepend=ends_E.new_zeros(1))
    tiles_E = (ends_E - starts_E + BLOCK_M - 1) // BLOCK_M
    tile_end_E = torch.cumsum(tiles_E, dim=0)
    T = triton.cdiv(n_rows, BLOCK_M) + E
    t_T = torch.arange(T, device=offsets_E.device)
    expert_T = torch.searchsorted(tile_end_E, t_T, right=True).clamp(max=E - 1)  # tiles past the end: E - 1
    used_T = t_T < tile_end_E[-1]
    first_T = tile_end_E[expert_T] - tiles_E[expert_T]  # the expert's first tile
    row_start_T = starts_E[expert_T] + (t_T - first_T) * BLOCK_M
    row_end_T = torch.where(used_T, torch.minimum(row_start_T + BLOCK_M, ends_E[expert_T]), row_start_T)
    return expert_T.int(), row_start_T.int(), row_end_T.int()


@triton.jit
def _grouped_mm_kernel(x_ptr, w_ptr, y_ptr, expert_ptr, row_start_ptr, row_end_ptr, N, K,
                       stride_xr, stride_xk, stride_we, stride_wk, stride_wn, stride_yr, stride_yn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PRECISION: tl.constexpr):
    """One (tile, N block) of y = x @ w[expert]: program (t, n)."""
    t, pid_n = tl.program_id(0), tl.program_id(1)
    start, end = tl.load(row_start_ptr + t), tl.load(row_end_ptr + t)
    if start < end:
        e = tl.load(expert_ptr + t).to(tl.int64)
        rows = start + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        row_ok, col_ok = rows < end, cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + ks) < K
            a = tl.load(x_ptr + rows[:, None] * stride_xr + (k0 + ks)[None, :] * stride_xk,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + e * stride_we + (k0 + ks)[:, None] * stride_wk + cols[None, :] * stride_wn,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.dot(a, b, input_precision=PRECISION)
        tl.store(y_ptr + rows[:, None] * stride_yr + cols[None, :] * stride_yn,
                 acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grouped_wgrad_kernel(x_ptr, dy_ptr, dw_ptr, offsets_ptr, K, N,
                          stride_xr, stride_xk, stride_dyr, stride_dyn, stride_we, stride_wk, stride_wn,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          PRECISION: tl.constexpr):
    """One (K block, N block) of dw[e] = x_e^T @ dy_e: program (e, k, n) loops over expert e's rows."""
    e, pid_k, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    end = tl.load(offsets_ptr + e)
    start = tl.load(offsets_ptr + e - 1, mask=e > 0, other=0)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok, col_ok = ks < K, cols < N
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        a = tl.load(x_ptr + rows[None, :] * stride_xr + ks[:, None] * stride_xk,
                    mask=k_ok[:, None] & row_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_M): x^T
        b = tl.load(dy_ptr + rows[:, None] * stride_dyr + cols[None, :] * stride_dyn,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    tl.store(dw_ptr + e.to(tl.int64) * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
             acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & col_ok[None, :])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs


def grouped_mm(x_RK: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """y_RN = x_r @ w_EKN[e(r)], rows sorted by expert, offsets_E the cumulative row ends (int32):
    torch._grouped_mm's contract for 2-D x and 3-D w. Differentiable in x and w."""
    if x_RK.device.type != "cuda" and not INTERPRET:
        raise ConfigError("model.moe.grouped_kernel = 'triton' runs on a CUDA GPU (on a CPU only under Triton's "
                          "interpreter, TRITON_INTERPRET=1, slowly: for tests); use grouped_kernel = 'auto'")
    return _grouped_mm(x_RK, w_EKN, offsets_E)


@triton_op("llmlab::grouped_mm", mutates_args=())
def _grouped_mm(x_RK: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    R, K = x_RK.shape
    E, _, N = w_EKN.shape
    y_RN = x_RK.new_empty(R, N)
    expert_T, row_start_T, row_end_T = tile_table(offsets_E, R)
    grid = (expert_T.shape[0], triton.cdiv(N, BLOCK_N))
    wrap_triton(_grouped_mm_kernel)[grid](
        x_RK, w_EKN, y_RN, expert_T, row_start_T, row_end_T, N, K,
        x_RK.stride(0), x_RK.stride(1), w_EKN.stride(0), w_EKN.stride(1), w_EKN.stride(2),
        y_RN.stride(0), y_RN.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=_precision(x_RK.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y_RN


@triton_op("llmlab::grouped_mm_wgrad", mutates_args=())
def _grouped_mm_wgrad(x_RK: torch.Tensor, dy_RN: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """dw_EKN[e] = x_e^T @ dy_e over expert e's rows (zero for an expert with none)."""
    R, K = x_RK.shape
    N, E = dy_RN.shape[1], offsets_E.shape[0]
    dw_EKN = x_RK.new_empty(E, K, N)
    grid = (E, triton.cdiv(K, BLOCK_K), triton.cdiv(N, BLOCK_N))
    wrap_triton(_grouped_wgrad_kernel)[grid](
        x_RK, dy_RN, dw_EKN, offsets_E, K, N,
        x_RK.stride(0), x_RK.stride(1), dy_RN.stride(0), dy_RN.stride(1),
        dw_EKN.stride(0), dw_EKN.stride(1), dw_EKN.stride(2),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=_precision(x_RK.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return dw_EKN


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    x_RK, w_EKN, offsets_E = inputs
    ctx.save_for_backward(x_RK, w_EKN, offsets_E)


def _backward(ctx, dy_RN: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x_RK, w_EKN, offsets_E = ctx.saved_tensors
    dx_RK = _grouped_mm(dy_RN, w_EKN.transpose(1, 2), offsets_E) if ctx.needs_input_grad[0] else None
    dw_EKN = _grouped_mm_wgrad(x_RK, dy_RN, offsets_E) if ctx.needs_input_grad[1] else None
    return dx_RK, dw_EKN, None


_grouped_mm.register_autograd(_backward, setup_context=_setup_context)
