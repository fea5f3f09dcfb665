"""The GPU proof (`benchmarks/gpu_check.sh`) on a CPU: it runs from a bare copy of the tree with a
python that has llmlab installed elsewhere, imports the copy's llmlab, and returns what it measured
whatever happens: a part that raises leaves the others' results, a spent budget skips later parts."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmlab import gpu_check
from llmlab.config import ModelConfig, MoEConfig
from llmlab.errors import ConfigError
from llmlab.gpu_check import PARTS, executed_flops_per_token, main, plan, run_parts
from llmlab.model.accounting import count
from llmlab.train.metrics import peak_flops

REPO = Path(__file__).resolve().parents[1]


def bare_copy(dest: Path) -> Path:
    """The working tree's files (tracked, and untracked but not ignored) without .git or .venv: what
    the GPU machine receives."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    copy = bare_copy(tmp_path_factory.mktemp("copy"))
    out = tmp_path_factory.mktemp("out") / "results"  # does not exist yet: the script creates it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    proc = subprocess.run([str(copy / "benchmarks/gpu_check.sh"), "--dry-run", "--out-dir", str(out)],
                          env={**env, "PYTHON": sys.executable}, cwd=REPO / "docs",  # any cwd
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return copy, json.loads((out / "gpu-dry-run-cpu.json").read_text())


def test_dry_run_imports_the_copy_s_llmlab_and_every_part_passes(dry_run: tuple[Path, dict]) -> None:
    copy, record = dry_run
    assert sys.modules["llmlab"].__file__.startswith(str(REPO))  # this python's llmlab is elsewhere
    assert record["llmlab"]["path"] == str((copy / "src/llmlab").resolve())
    assert len(record["llmlab"]["src_sha256"]) == 64
    assert record["dry_run"] and record["ok"]
    assert {name: part["status"] for name, part in record["parts"].items()} == dict.fromkeys(PARTS, "ok")


def test_dry_run_record_holds_each_part_s_figures(dry_run: tuple[Path, dict]) -> None:
    _, record = dry_run
    parts = {name: part["rows"] for name, part in record["parts"].items()}
    assert parts["tests"][0]["returncode"] == 0  # pytest -m gpu ran (and skipped: no CUDA here)
    assert [r["variant"] for r in parts["train"]] == ["base", "gqa", "gqa+moe"]
    assert all(r["tokens_per_s"] > 0 and r["nonfinite_steps"] == 0 for r in parts["train"])
    assert all(r["within_tolerance"] and r["cudagraph_skips"] == 0 for r in parts["decode"])
    base = next(r for r in parts["decode"] if r["variant"] == "base")  # HF's compiled static cache, same weights
    assert base["hf_static_tokens_per_s"] > 0 and base["vs_hf_static"] > 0, base
    assert {r["shape"] for r in parts["sdpa"]} >= {"train GQA", "decode GQA (masked)", "prefill GQA"}
    assert all(r["kernels"] for r in parts["sdpa"])  # the profiler saw an SDPA kernel for each shape
    assert [r["grouped_kernel"] for r in parts["moe_dispatch"]] == ["torch", "triton", "auto"]
    assert all(r["ok"] for r in parts["compile_check"])
    assert len(record["targets"]) == 5 and all("met" in t for t in record["targets"])


def test_a_part_that_raises_leaves_the_others_results(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    record = {"parts": {}}

    def fails(emit) -> None:
        emit({"measured": 1})
        raise RuntimeError("the GPU caught fire")

    fns = {"first": lambda emit: emit({"x": 1}), "second": fails, "third": lambda emit: emit({"x": 3})}
    run_parts(record, fns, budget_s=1000, out=out)
    written = json.loads(out.read_text())["parts"]
    assert written["first"] == {"status": "ok", "rows": [{"x": 1}], "seconds": written["first"]["seconds"]}
    assert written["second"]["status"] == "failed" and written["second"]["rows"] == [{"measured": 1}]
    assert "RuntimeError: the GPU caught fire" in written["second"]["error"]
    assert written["third"]["status"] == "ok" and written["third"]["rows"] == [{"x": 3}]


def test_a_spent_budget_skips_later_parts_and_parts_rerun_into_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["--dry-run", "--out-dir", str(tmp_path), "--budget-s", "0.01", "--parts", "train,sdpa"]) == 1
    record = json.loads((tmp_path / "gpu-dry-run-cpu.json").read_text())
    assert record["parts"]["train"]["status"] == "ok"  # the first part always starts
    assert record["parts"]["sdpa"]["status"] == "skipped" and "budget of 0.01 s" in record["parts"]["sdpa"]["reason"]
    assert record["parts"]["decode"]["status"] == "pending"  # not asked for
    rows = record["parts"]["train"]["rows"]
    main(["--dry-run", "--out-dir", str(tmp_path), "--parts", "sdpa"])  # rerun one part, same code
    again = json.loads((tmp_path / "gpu-dry-run-cpu.json").read_text())
    assert again["parts"]["sdpa"]["status"] == "ok" and again["parts"]["train"]["rows"] == rows


def test_a_record_of_other_code_is_not_extended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    stale = {"dry_run": True, "llmlab": {"src_sha256": "0" * 64}, "parts": {"train": {"status": "ok", "rows": [1]}}}
    (tmp_path / "gpu-dry-run-cpu.json").write_text(json.dumps(stale))
    main(["--dry-run", "--out-dir", str(tmp_path), "--parts", "sdpa"])
    record = json.loads((tmp_path / "gpu-dry-run-cpu.json").read_text())
    assert record["parts"]["train"]["status"] == "pending"  # the other code's figures are gone


def test_run_parts_reads_the_clock_before_each_part(tmp_path: Path) -> None:
    record = {"parts": {}}
    fns = {"slow": lambda emit: time.sleep(0.2), "later": lambda emit: emit({"never": True})}
    run_parts(record, fns, budget_s=0.1, out=tmp_path / "gpu.json")
    assert record["parts"]["slow"]["status"] == "ok" and record["parts"]["later"]["status"] == "skipped"


def test_bad_arguments_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA device; use --dry-run"):
        plan(dry_run=False)
    with pytest.raises(ConfigError, match="unknown --parts bench"):
        gpu_check.parse_args(["--parts", "train,bench"])


def test_capacity_work_is_counted_in_executed_flops() -> None:
    """MFU counts the model's FLOPs; HFU adds the expert slots capacity dispatch computes on top:
    at factor 1.25 the routed experts do 1.25x their top-k work."""
    moe = MoEConfig(n_experts=8, top_k=2, d_ff_expert=64, dispatch="capacity", capacity_factor=1.25)
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64, moe=moe)
    model_flops = count(cfg, seq_len=64)["flops_per_token"]
    routed = 2 * 3 * 64 * 64  # top_k experts of a SwiGLU 64 -> 64 MLP, per token and layer
    assert executed_flops_per_token(cfg, 64, tokens=1024) == pytest.approx(model_flops + 6 * 2 * routed * 0.25)
    dropless = dataclasses.replace(cfg, moe=MoEConfig(n_experts=8, top_k=2, d_ff_expert=64))
    assert executed_flops_per_token(dropless, 64, tokens=1024) == count(dropless, seq_len=64)["flops_per_token"]


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H100 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                       ("NVIDIA A100-PCIE-40GB", 312e12), ("NVIDIA H200 NVL", 835e12)])
def test_mfu_peak_is_the_card_s_own(name: str, peak: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PCIe or NVL card gets its own bf16 peak, not the SXM part's (longest name match)."""
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == peak
