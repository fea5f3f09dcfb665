"""llmlab.runs, the run directory as a record: one tolerant metrics reader, which run a folder
stands for, and clear errors for what is not a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab.errors import CheckpointError, LLMLabError
from llmlab.infer.load import load_for_inference
from llmlab.runs import read_metrics, resolve_run_dir


def test_metrics_reader_skips_only_a_cut_last_line(tmp_path):
    assert read_metrics(tmp_path) == []  # before the first row
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "lo')  # killed mid-write
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo\n' + text)  # corruption, not a kill
    with pytest.raises(LLMLabError, match="line 1 is not JSON"):
        read_metrics(tmp_path)


def test_what_is_not_a_run_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_for_inference(tmp_path)
    (tmp_path / "config.toml").write_text("[train]\nmax_steps = 1\n")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_for_inference(tmp_path)


def test_a_variant_folder_stands_for_its_seed_0_run_and_a_campaign_names_its_runs(tmp_path: Path, capsys) -> None:
    """`llmlab generate runs/demo/base` after `make demo`: the variant folder picks seed-0, and says so;
    a folder of several variants names the runs inside instead of guessing."""
    for run in ("base/seed-0", "base/seed-1", "base-gqa/seed-0"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.toml").write_text("")
    assert resolve_run_dir(tmp_path / "base/seed-1") == tmp_path / "base/seed-1"
    assert resolve_run_dir(tmp_path / "base") == tmp_path / "base/seed-0"
    assert "variant folder: using its seed-0 run" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"holds the runs base-gqa/seed-0, base/seed-0, base/seed-1: pass one"):
        resolve_run_dir(tmp_path)
