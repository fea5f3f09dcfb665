"""Atomic, checksummed checkpoints with a manifest.

Layout: `run_dir/checkpoints/step-00000100.pt` plus `manifest.json` listing each committed
checkpoint with its step, size and sha256. A checkpoint exists only once the manifest names it:

1. `torch.save` into `step-….pt.tmp`, hashing the bytes as they are written; fsync; rename.
2. Rewrite the manifest the same way (temp, fsync, rename) with the new entry.
3. Prune: keep the newest `keep` entries.

A process killed at any point leaves the previous checkpoint and manifest intact; what it left
half-written (`*.tmp`, a renamed file the manifest does not name) is removed by `clean_stale`.
Loading verifies the sha256; a mismatch (bit rot, a truncated copy) falls back to the previous
checkpoint with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from llmlab.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Entry:
    file: str
    step: int
    sha256: str
    bytes: int


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (no second read of the file)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _commit(tmp, path)


# ---------------------------------------------------------------------------------------------
# Manifest


def read_manifest(directory: Path) -> list[Entry]:
    """Committed checkpoints, oldest first ([] when none)."""
    path = directory / MANIFEST
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [Entry(**e) for e in data["checkpoints"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({e}); move it away to start over") from None


def _write_manifest(directory: Path, entries: list[Entry]) -> None:
    data = {"format": FORMAT_VERSION, "checkpoints": [e.__dict__ for e in sorted(entries, key=lambda e: e.step)]}
    write_bytes_atomic(directory / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# Save / prune / clean


def save(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Entry:
    """Write `state` as the checkpoint of `step`, commit it in the manifest, keep the newest `keep`."""
    directory = ckpt_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}.pt"
    tmp = directory / (name + ".tmp")
    with open(tmp, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(state, writer)
        f.flush()
        os.fsync(f.fileno())
    _commit(tmp, directory / name)
    entry = Entry(file=name, step=step, sha256=writer.sha.hexdigest(), bytes=writer.size)
    entries = [e for e in read_manifest(directory) if e.step != step] + [entry]
    entries.sort(key=lambda e: e.step)
    _write_manifest(directory, entries[-keep:])
    # Files are deleted only after the manifest stops naming them: a crash here leaves orphans
    # (removed by clean_stale), never a manifest entry without its file.
    for old in entries[:-keep]:
        (directory / old.file).unlink(missing_ok=True)
    return entry


def clean_stale(run_dir: Path) -> list[str]:
    """Remove what a killed process left half-written: `*.tmp` files (checkpoints, manifest,
    result.json, ...) and checkpoint files the manifest does not name. Call with the run lock held."""
    directory = ckpt_dir(run_dir)
    named = {e.file for e in read_manifest(directory)}
    stale = sorted(Path(run_dir).glob("*.tmp")) + sorted(directory.glob("*.tmp"))
    stale += [p for p in sorted(directory.glob("*.pt")) if p.name not in named]
    for path in stale:
        path.unlink()
    return [path.name for path in stale]


# ---------------------------------------------------------------------------------------------
# Load


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(directory: Path, entry: Entry) -> str | None:
    """None when the file matches its manifest entry, else the reason it does not."""
    path = directory / entry.file
    if not path.exists():
        return "file missing"
    if path.stat().st_size != entry.bytes:
        return f"size {path.stat().st_size} != {entry.bytes} bytes in the manifest"
    if sha256_file(path) != entry.sha256:
        return "sha256 mismatch"
    return None


def load_latest(run_dir: Path) -> tuple[Entry, dict[str, Any]] | None:
    """The newest checkpoint whose checksum verifies, or None when there is none.

    A corrupted one is renamed `*.corrupt` (kept for inspection), dropped from the manifest and
    the previous one is tried, with a warning."""
    directory = ckpt_dir(run_dir)
    entries = read_manifest(directory)
    for entry in reversed(entries):
        problem = _verify(directory, entry)
        if problem is None:
            state = torch.load(directory / entry.file, map_location="cpu", weights_only=True)
            return entry, state
        warnings.warn(
            f"checkpoint {directory / entry.file} is corrupt ({problem}); falling back to the previous one",
            stacklevel=2,
        )
        _quarantine(directory, entry)
    return None


def _quarantine(directory: Path, entry: Entry) -> None:
    path = directory / entry.file
    if path.exists():
        os.replace(path, path.with_name(path.name + ".corrupt"))
    _write_manifest(directory, [e for e in read_manifest(directory) if e.step != entry.step])
