"""The checkpoint format, written and read in this one module: atomic, checksummed checkpoints
with a manifest.

Layout: `run_dir/checkpoints/step-00000100.pt` plus `manifest.json` listing each committed
checkpoint with its step, size and sha256. A checkpoint exists only once the manifest names it:

1. `torch.save` into `step-….pt.tmp`, hashing the bytes as they are written; fsync; rename.
2. Rewrite the manifest the same way (temp, fsync, rename) with the new entry.
3. Prune: keep the newest `keep` entries and the pinned ones.

A process killed at any point leaves the previous checkpoint and manifest intact; what it left
half-written (`*.tmp`, a renamed file the manifest does not name) is removed by `clean_stale`.
`load_latest` verifies the sha256; a mismatch (bit rot, a truncated copy) falls back to the
previous checkpoint with a warning. Below `train` and `infer` (both read checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from llmlab.errors import CheckpointError
from llmlab.files import replace_durably, sha256_file, write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# The manifest and reading


@dataclass(frozen=True)
class Entry:
    """One committed checkpoint, as the manifest lists it."""

    file: str
    step: int
    sha256: str
    bytes: int


def ckpt_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


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


def write_manifest(directory: Path, entries: list[Entry]) -> None:
    """entries oldest first, as read_manifest returns them (checkpoint.save sorts them)."""
    write_json(directory / MANIFEST, {"format": MANIFEST_FORMAT, "checkpoints": [e.__dict__ for e in entries]})


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


def load_latest(run_dir: str | Path) -> tuple[Entry, dict[str, Any]] | None:
    """The newest checkpoint whose checksum verifies, or None when there is none.

    A corrupted one is renamed `*.corrupt` (kept for inspection), dropped from the manifest and
    the previous one is tried, with a warning."""
    directory = ckpt_dir(run_dir)
    for entry in reversed(read_manifest(directory)):
        problem = _verify(directory, entry)
        if problem is None:
            return entry, torch.load(directory / entry.file, map_location="cpu", weights_only=True)
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
    write_manifest(directory, [e for e in read_manifest(directory) if e.step != entry.step])


# ---------------------------------------------------------------------------------------------
# Writing


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


# ---------------------------------------------------------------------------------------------
# Save / prune / clean


def save(run_dir: Path, step: int, state: dict[str, Any], keep: int, pinned: Collection[int] = ()) -> Entry:
    """Write `state` as the checkpoint of `step`, commit it in the manifest, keep the newest `keep`
    and every one at a `pinned` step (train.ckpt_at)."""
    directory = ckpt_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}.pt"
    tmp = directory / (name + ".tmp")
    with open(tmp, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(state, writer)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, directory / name)
    entry = Entry(file=name, step=step, sha256=writer.sha.hexdigest(), bytes=writer.size)
    entries = [e for e in read_manifest(directory) if e.step != step] + [entry]
    entries.sort(key=lambda e: e.step)
    rolling = [e for e in entries if e.step not in pinned]
    kept = {e.step for e in rolling[-keep:]} | {e.step for e in entries if e.step in pinned}
    write_manifest(directory, [e for e in entries if e.step in kept])
    # Files are deleted only after the manifest stops naming them: a crash here leaves orphans
    # (removed by clean_stale), never a manifest entry without its file.
    for old in (e for e in entries if e.step not in kept):
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
