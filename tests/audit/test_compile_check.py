"""`llmlab compile-check` passes on a clean model and fails (exit 1) on one with a graph break."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.audit.compile_check import main
from llmlab.model import gpt

ARGS = ["configs/models/tiny-gqa.toml", "--set", "model.vocab_size=128", "--set", "model.n_layers=1",
        "--backend", "aot_eager", "--steps", "3", "--decode-steps", "8", "--seq-len", "16"]


def test_compile_check_passes(capsys: pytest.CaptureFixture) -> None:
    assert main(ARGS) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] and [r["value"] for r in out["rows"]] == [0, 1, 1]


def test_compile_check_catches_a_graph_break(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    original = gpt.Block.forward

    def leaky(self, x, *args):  # a host sync + Python branch on a tensor value: a graph break
        if x.sum().item() > 1e30:
            x = x * 2
        return original(self, x, *args)

    monkeypatch.setattr(gpt.Block, "forward", leaky)
    assert main(ARGS) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not out["ok"]
    assert out["rows"][0]["value"] >= 1  # explain counted the break
    torch._dynamo.reset()


def test_an_uncompilable_moe_dispatch_is_a_one_line_error() -> None:
    """grouped MoE in fp32 cannot compile (torch._grouped_mm traces in bf16 only): a config error
    naming the fix, before any tracing, not a failed check with a dynamo trace in its detail."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "llmlab", "compile-check", "configs/models/tiny-moe.toml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "dispatch = 'capacity'" in proc.stderr
