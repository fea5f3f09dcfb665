"""Atomic, checksummed checkpoints with a manifest.

Layout: `run_dir/checkpoints/step-00000100.pt` plus `manifest.json` listing each committed
checkpoint with its step, size and sha256. A checkpoint exists only once the manifest names it:

1. `torch.save` into `step-….pt.tmp`, hashing the bytes as they are written; fsync; rename.
2. Rewrite the manifest the same way (temp, fsync, rename) with the new entry.
3. Prune: keep the newest `keep` entries.

A process killed at any point leaves the previous checkpoint and manifest intact; what it left
half-written (`*.tmp`, a renamed file the manifest does not name) is removed by `clean_stale`.
Loading (`llmlab.runs.load_latest`) verifies the sha256; a mismatch (bit rot, a truncated copy) falls back to the previous
checkpoint with a warning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

import torch

# Reading checkpoints lives in llmlab.runs (inference and eval need it without importing train);
# the names are imported here so that `checkpoint.load_latest` etc. read as one interface.
from llmlab.runs import Entry, ckpt_dir, load_latest, read_manifest, replace_durably, write_manifest

__all__ = ["Entry", "ckpt_dir", "read_manifest", "load_latest", "save", "clean_stale"]


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
