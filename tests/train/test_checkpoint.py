"""Atomic, checksummed checkpoints: keep K, survive a crash mid-write, detect corruption."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab import checkpoint
from llmlab.config import load_run_config
from llmlab.files import sha256_file
from llmlab.train import train


def state(step: int) -> dict:
    return {"step": step, "w": torch.full((64,), float(step)), "rng": torch.get_rng_state()}


def test_save_keeps_last_k_and_manifest_names_only_existing_files(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, state(step), keep=2)
    directory = checkpoint.ckpt_dir(tmp_path)
    entries = checkpoint.read_manifest(directory)
    assert [e.step for e in entries] == [30, 40]
    assert sorted(p.name for p in directory.glob("*.pt")) == ["step-00000030.pt", "step-00000040.pt"]
    for e in entries:
        assert sha256_file(directory / e.file) == e.sha256
    entry, loaded = checkpoint.load_latest(tmp_path)
    assert entry.step == 40 and torch.equal(loaded["w"], state(40)["w"])


def test_crash_during_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 10, state(10), keep=2)

    def dies_halfway(obj, f):  # the process "dies" after writing part of the file
        f.write(b"PK\x03\x04 half a zip file")
        raise SystemExit("killed")

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(SystemExit):
        checkpoint.save(tmp_path, 20, state(20), keep=2)
    monkeypatch.undo()
    directory = checkpoint.ckpt_dir(tmp_path)
    assert (directory / "step-00000020.pt.tmp").exists()
    entry, loaded = checkpoint.load_latest(tmp_path)
    assert entry.step == 10 and loaded["step"] == 10
    (tmp_path / "result.json.tmp").write_text("{")  # any other half-written record
    assert checkpoint.clean_stale(tmp_path) == ["result.json.tmp", "step-00000020.pt.tmp"]
    # also an orphan: renamed but never committed to the manifest
    (directory / "step-00000030.pt").write_bytes(b"orphan")
    assert checkpoint.clean_stale(tmp_path) == ["step-00000030.pt"]
    assert checkpoint.load_latest(tmp_path)[0].step == 10


def test_corrupted_checkpoint_is_detected_and_previous_used(tmp_path):
    checkpoint.save(tmp_path, 10, state(10), keep=3)
    checkpoint.save(tmp_path, 20, state(20), keep=3)
    path = checkpoint.ckpt_dir(tmp_path) / "step-00000020.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: same size, different sha256
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"step-00000020.pt is corrupt \(sha256 mismatch\)"):
        entry, loaded = checkpoint.load_latest(tmp_path)
    assert entry.step == 10 and loaded["step"] == 10
    assert (checkpoint.ckpt_dir(tmp_path) / "step-00000020.pt.corrupt").exists()
    assert [e.step for e in checkpoint.read_manifest(checkpoint.ckpt_dir(tmp_path))] == [10]


def test_run_resumes_from_previous_checkpoint_when_latest_is_corrupt(make_config, tmp_path, rows_of):
    cfg = load_run_config(make_config(train={"max_steps": 12, "ckpt_interval": 4, "keep_checkpoints": 3}))
    reference = train(cfg, tmp_path / "ref")
    assert reference.status == "completed"
    train(load_run_config(make_config(train={"max_steps": 8, "ckpt_interval": 4, "keep_checkpoints": 3})), tmp_path / "run")
    latest = checkpoint.ckpt_dir(tmp_path / "run") / "step-00000008.pt"
    latest.write_bytes(latest.read_bytes()[:-100])  # truncated copy
    with pytest.warns(UserWarning, match="corrupt"):
        train(cfg, tmp_path / "run")
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resume"] == [4]
    assert [r["loss"] for r in rows_of(tmp_path / "run")] == [r["loss"] for r in rows_of(tmp_path / "ref")]


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    from llmlab.errors import CheckpointError

    directory = checkpoint.ckpt_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint manifest"):
        checkpoint.load_latest(tmp_path)
