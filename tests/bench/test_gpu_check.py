"""benchmarks/gpu_check.sh --dry-run: every part of the GPU proof runs on a CPU (issue 10)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llmlab.bench.gpu_check import gpu_slug, plan
from llmlab.errors import ConfigError


def test_gpu_check_dry_run_passes_on_cpu(tmp_path: Path) -> None:
    proc = subprocess.run(["benchmarks/gpu_check.sh", "--dry-run", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu-dry-run-cpu.json").read_text())
    assert result["dry_run"] and result["ok"]
    assert result["tests"]["returncode"] == 0  # pytest -m gpu ran (and skipped: no CUDA here)
    assert all(r["ok"] for r in result["compile_check"])
    assert [r["variant"] for r in result["train"]] == ["base", "gqa+moe"]
    assert all(r["tokens_per_s"] > 0 for r in result["train"] + result["moe_dispatch"])
    assert all(r["same_tokens"] and r["compiled_tokens_per_s"] > 0 for r in result["decode"])
    assert set(result["seconds"]) == {"tests", "compile_check", "train", "decode", "moe_dispatch"}


def test_gpu_check_refuses_to_run_for_real_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA device; use --dry-run"):
        plan(dry_run=False)
    assert gpu_slug(dry_run=True) == "dry-run-cpu"
