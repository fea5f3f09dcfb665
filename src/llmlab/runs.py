"""The run directory as a record (STYLE.md item 10): how it is written and read.

Layout of a run directory (train writes it; eval, generate, campaign and report read it):

    config.toml         the resolved run config
    env.json            where and with what it ran
    metrics.jsonl       one JSON object a line (llmlab.train.metrics writes it)
    result.json         final figures, written once the run ends
    eval_windows.json   the final test evaluation window by window (summed loss, targets scored)
    infer.json          decode measurements (campaign)
    checkpoints/        step-XXXXXXXX.pt + manifest.json (sha256 of each committed checkpoint)

Every file is written atomically (temp file, fsync, rename, fsync of the directory), so a killed
process leaves the old file or the new one, never half of one. This module sits below `train`,
`infer`, `bench` and `campaign` and imports none of them. torch and the model are imported only
by the functions that load weights: reading records (`llmlab report`, `llmlab prepare`) stays
free of torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.config import RunConfig, load_run_config
from llmlab.errors import CheckpointError, LLMLabError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
EVAL_WINDOWS_FILE = "eval_windows.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 22


# ---------------------------------------------------------------------------------------------
# Atomic writes


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename a fully written and fsynced `tmp` over `final`, durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via `path.tmp` (fsynced, then renamed): all or nothing."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """Indented JSON, atomically. sort_keys=True gives identical bytes for equal content (meta.json)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """A JSON file of a record; a missing or invalid file is an LLMLabError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMLabError(f"{path}: no such file") from None
    except ValueError as e:
        raise LLMLabError(f"{path}: invalid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows ([] before the first row is written)."""
    path = Path(run_dir) / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


@dataclass(frozen=True)
class WindowLosses:
    """An evaluation window by window (padding rows dropped): the summed cross-entropy of each
    window's scored targets and their count -- what a bootstrap over test windows resamples."""

    loss_sum: list[float]
    tokens: list[int]

    @property
    def n_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def mean(self) -> float:
        """Mean cross-entropy per scored target over all windows (0 when nothing was scored)."""
        return math.fsum(self.loss_sum) / max(self.n_tokens, 1)


def write_eval_windows(run_dir: str | Path, split: str, windows: WindowLosses) -> None:
    """Record one split's per-window losses in eval_windows.json ({split: {"loss_sum", "tokens"}})."""
    path = Path(run_dir) / EVAL_WINDOWS_FILE
    record = read_json(path) if path.is_file() else {}
    record[split] = {"loss_sum": windows.loss_sum, "tokens": windows.tokens}
    write_json(path, record)


def read_eval_windows(run_dir: str | Path, split: str = "test") -> WindowLosses | None:
    """One split's per-window losses, None for a run recorded before they were kept."""
    path = Path(run_dir) / EVAL_WINDOWS_FILE
    entry = read_json(path).get(split) if path.is_file() else None
    return WindowLosses(entry["loss_sum"], entry["tokens"]) if entry else None


# ---------------------------------------------------------------------------------------------
# Checkpoints: reading (writing is llmlab.train.checkpoint)


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


def sha256_file(path: str | Path) -> str:
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


def load_latest(run_dir: str | Path) -> tuple[Entry, dict[str, Any]] | None:
    """The newest checkpoint whose checksum verifies, or None when there is none.

    A corrupted one is renamed `*.corrupt` (kept for inspection), dropped from the manifest and
    the previous one is tried, with a warning."""
    import torch

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
# A trained model


def load_run_model(run_dir: str | Path, device: torch.device) -> tuple[RunConfig, Entry, Any]:
    """(resolved config, checkpoint entry, GPT with the newest good weights on `device`)."""
    from llmlab.model import GPT

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}): train it first")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    found = load_latest(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir} has no usable checkpoint: train it first")
    entry, state = found
    model = GPT(cfg.model)
    model.load_state_dict(state["model"])  # every weight comes from the checkpoint: no seed needed
    return cfg, entry, model.to(device)


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(GPT in eval mode on `device`, the run's tokenizer). `device` may be "auto"."""
    from llmlab.data.tokenizers import get_tokenizer
    from llmlab.device import resolve_device

    cfg, _, model = load_run_model(run_dir, resolve_device(device))
    return model.eval(), get_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_file or None)
