"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
import torch


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
