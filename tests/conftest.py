"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels (the MoE grouped GEMM below sm90) run in Triton's interpreter.
    # triton.language is built for the interpreter or not when triton is first imported (torch._dynamo
    # imports it), so this is set before any test module loads; on a GPU it stays unset.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: the models here are tiny and the machine small and
    shared, and OpenMP threads waiting for a busy core make tiny matmuls ~8x slower (measured: the
    export tests took 12 s with one thread, 107 s with two). Subprocesses get OMP_NUM_THREADS=1
    (tests/train/trainkit.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
