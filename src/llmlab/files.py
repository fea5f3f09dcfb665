"""The ground floor: writing files so that a kill never leaves half of one, reading the JSON
records back, and hashing. Every llmlab module that writes a file goes through here.

A write goes to `<name>.<pid>.tmp` beside the target, is fsynced, renamed over the target and the
directory is fsynced: a killed process leaves the old file or the new one, and two processes
writing the same cache entry never write into one temp file. Imports nothing of llmlab but its
errors, and not torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llmlab.errors import LLMLabError

_CHUNK = 1 << 22


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder itself (before renaming the folder into place)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename a fully written and fsynced `tmp` over `final`, durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename: beside it, named for this process."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` all or nothing (its folder is created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """Indented JSON, atomically. sort_keys=True gives identical bytes for equal content (meta.json)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file of a record; a missing or invalid file is an LLMLabError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMLabError(f"{path}: no such file") from None
    except ValueError as e:
        raise LLMLabError(f"{path}: invalid JSON ({e})") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file. A cut last line (a process killed mid-write) is skipped; a bad
    line before the last one is corruption, not a kill, and raises."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise LLMLabError(f"{path}: line {number} is not JSON (only the last line may be cut by a kill)") from None
    return rows


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read in 4 MiB chunks (token files run to gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
