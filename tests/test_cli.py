"""The CLI: figures as JSON, and every user error as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmlab", *args], capture_output=True, text=True, timeout=300)


def test_params_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "configs/models/gpt2-small.toml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 124_439_808
    assert set(out) == {"total", "embedding", "non_embedding", "active", "active_non_embedding",
                        "kv_cache_bytes_per_token", "flops_per_token"}


def test_params_with_override(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "configs/models/base-125m.toml", "--set", "model.n_kv_heads=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_cache_bytes_per_token"] == 2 * 12 * 4 * 64 * 2


def test_generate_json_with_and_without_cache(capsys: pytest.CaptureFixture) -> None:
    ids = {}
    for flag in ([], ["--no-kv-cache"]):
        argv = ["generate", "configs/models/tiny.toml", "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--json"]
        assert main(argv + flag) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["ids"][0][:3] == [1, 2, 3] and len(out["ids"][0]) == 8
        assert out["tokens_per_s"] > 0
        ids[bool(flag)] = out["ids"]
    assert ids[True] == ids[False]


@pytest.mark.parametrize("args,message", [
    (["params", "configs/models/missing.toml"], "config file not found"),
    (["params", "configs/models/tiny.toml", "--set", "model.n_kv_heads=3"], "must be divisible by model.n_kv_heads (3)"),
    (["params", "configs/models/tiny.toml", "--set", "model.n_head=3"], "unknown key model.n_head"),
    (["generate", "configs/models/tiny.toml", "--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["generate", "configs/models/tiny.toml", "--prompt-ids", "99999999"], "outside the vocabulary"),
    (["generate", "configs/models/tiny.toml", "--prompt-ids", "1", "--max-new-tokens", "1000"], "exceeds the model's context"),
    (["generate", "configs/models/tiny.toml", "--prompt", "hi"], "--prompt needs a tokenizer"),
    (["generate", "runs/no-such-run", "--prompt", "hi"], "no such run directory or config file"),
    (["generate", "configs", "--prompt", "hi"], "not a run directory (no config.toml)"),
])
def test_user_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nd_model = = 3\n")
    proc = run_cli("params", str(bad))
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr and "Traceback" not in proc.stderr
