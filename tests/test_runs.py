"""llmlab.runs, the run directory as a record: atomic writes, one tolerant metrics reader, clear
errors for what is not a run."""

from __future__ import annotations

import json

import pytest

from llmlab.errors import CheckpointError, LLMLabError
from llmlab.runs import load_for_inference, read_json, read_metrics, write_bytes_atomic, write_json


def test_write_json_is_atomic_and_sorted_keys_give_identical_bytes(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert read_json(path) == {"b": 1, "a": [1, 2]}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    write_json(tmp_path / "x.json", {"b": 1, "a": 2}, sort_keys=True)
    write_json(tmp_path / "y.json", {"a": 2, "b": 1}, sort_keys=True)
    assert (tmp_path / "x.json").read_bytes() == (tmp_path / "y.json").read_bytes()


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    write_bytes_atomic(path, b"old")

    def no_disk(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("llmlab.runs.os.fsync", no_disk)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"


def test_metrics_reader_skips_only_a_cut_last_line(tmp_path):
    assert read_metrics(tmp_path) == []  # before the first row
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "lo')  # killed mid-write
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo\n' + text)  # corruption, not a kill
    with pytest.raises(LLMLabError, match="line 1 is not JSON"):
        read_metrics(tmp_path)


def test_bad_records_are_one_line_errors(tmp_path):
    with pytest.raises(LLMLabError, match="no such file"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LLMLabError, match="bad.json: invalid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_for_inference(tmp_path)
    (tmp_path / "config.toml").write_text("[train]\nmax_steps = 1\n")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_for_inference(tmp_path)
