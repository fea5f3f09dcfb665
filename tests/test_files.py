"""llmlab.files, the ground floor: atomic writes (a kill or a full disk leaves the old file) and
JSON records that fail in one line."""

from __future__ import annotations

import pytest

from llmlab.errors import LLMLabError
from llmlab.files import read_json, write_bytes_atomic, write_json


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

    monkeypatch.setattr("llmlab.files.os.fsync", no_disk)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"


def test_bad_records_are_one_line_errors(tmp_path):
    with pytest.raises(LLMLabError, match="no such file"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LLMLabError, match="bad.json: invalid JSON"):
        read_json(tmp_path / "bad.json")
