"""`llmlab generate`: prefill and decode reported apart; bad sampling arguments exit 2 in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmlab.cli import main

ARGS = ["generate", "configs/models/tiny.toml", "--prompt-ids", "1,2,3", "--max-new-tokens", "6"]


def test_generate_json_reports_prefill_and_decode_apart(capsys: pytest.CaptureFixture) -> None:
    assert main(ARGS + ["--batch-size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] == 12 and len(out["ids"]) == 2
    assert out["prefill_s"] > 0 and out["decode_s"] > 0
    assert out["decode_tokens_per_s"] == pytest.approx(2 * 5 / out["decode_s"])
    assert out["seconds"] == pytest.approx(out["prefill_s"] + out["decode_s"])
    assert out["compile_s"] is None and out["compiled"] is False
    assert out["decode_threads"] == 1 and out["thread_trial_ms"] is None  # the conftest's one thread


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--temperature", "1", "--top-k", "0"], "top_k must be an integer >= 1"),
    (["--no-kv-cache", "--compile"], "compile=True compiles the cached decode step"),
    (["--decode-threads", "0"], "decode_threads must be an integer >= 1"),
])
def test_bad_sampling_flags_exit_2_in_one_line(flags: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "llmlab", *ARGS, *flags], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_set_with_a_run_directory_is_refused(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """A run's model is the one it trained: --set is refused, not silently ignored."""
    assert main(["generate", str(tmp_path), "--prompt-ids", "1", "--set", "model.n_layers=1"]) == 2
    assert "--set applies to a config file" in capsys.readouterr().err


def test_generate_compile_reports_compile_time_apart_and_eager_tokens(capsys: pytest.CaptureFixture) -> None:
    small = ["--set", "model.n_layers=1", "--set", "model.vocab_size=512", "--json"]
    ids = {}
    for flag in ([], ["--compile"]):
        assert main(ARGS + small + flag) == 0
        out = json.loads(capsys.readouterr().out)
        ids[bool(flag)] = out["ids"]
        assert out["compiled"] is bool(flag) and out["compile_mode"] == ("default" if flag else None)
        assert (out["compile_s"] is not None and out["compile_s"] > 0) is bool(flag)
    assert ids[True] == ids[False]
