"""A campaign's record answers only the question it was made for (DESIGN.md 9).

Each variant's run directory holds `fingerprint.json`: its resolved config (flattened) and the
identity of its data (meta.json's fingerprint and the tokenizer hash). Rerunning a campaign
compares every variant's record with what the campaign file now resolves to; a difference is
refused, naming the field and both values, unless that variant is retrained (`--retrain NAME`,
which deletes its run directory first) or the campaign goes to a fresh `--out`. All variants are
checked before anything is written, so `campaign.json` never describes runs it does not match.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from llmlab.campaign.spec import Campaign
from llmlab.config import DataConfig, RunConfig, flatten
from llmlab.data.meta import read_meta
from llmlab.data.prepare import ensure_prepared
from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import ConfigError
from llmlab.files import read_json, write_json
from llmlab.runs import CONFIG_FILE

FINGERPRINT_FILE = "fingerprint.json"
# Settings that change neither the weights nor the record's figures: where files are and how often
# progress is written. (The data's identity is its fingerprint, not the folder it sits in.)
IGNORED_KEYS = ("train.log_interval", "train.ckpt_interval", "train.keep_checkpoints", "train.ckpt_at",
                "data.dir", "data.source_dir", "data.tokenizer_file")


def run_dirname(name: str) -> str:
    """A variant's folder name: its name with anything but [A-Za-z0-9-_.] as '-'. Its runs go
    below it: <variant>/sweep/lr-X and <variant>/seed-N (runlist.py)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def data_identity(data: DataConfig) -> dict[str, Any]:
    """Prepare the data when missing (as training would) and return its identity from meta.json."""
    meta = read_meta(ensure_prepared(data))
    return {"data.fingerprint": meta.get("fingerprint"), "tokenizer.hash": meta.get("tokenizer", {}).get("hash")}


def fingerprint(cfg: RunConfig, data: dict[str, Any]) -> dict[str, Any]:
    """{"fields": {dotted key: value}, "sha256": ...} of a resolved config and its data identity.
    train.device and train.dtype are resolved ("auto" -> cpu / cuda, float32 / bfloat16): a run
    made on a CPU in fp32 never pairs with one continued on a GPU in bf16."""
    device = resolve_device(cfg.train.device)
    resolved = {"train.device": device.type,
                "train.dtype": str(resolve_dtype(cfg.train.dtype, device)).removeprefix("torch.")}
    fields = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in IGNORED_KEYS} | resolved | data
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {"fields": fields, "sha256": digest}


class DataIdentities:
    """data_identity per data folder, computed once (preparing the data when missing)."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Any]] = {}

    def __call__(self, data: DataConfig) -> dict[str, Any]:
        key = str(data.resolved_dir)
        if key not in self._known:
            self._known[key] = data_identity(data)
        return self._known[key]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    a, b = old.get("fields", {}), new.get("fields", {})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _mismatch(name: str, run_dir: Path, new: dict[str, Any]) -> str | None:
    """Why run_dir's record does not match `new` (None when it does, or holds nothing yet)."""
    if not run_dir.is_dir() or all(p.suffix == ".tmp" for p in run_dir.iterdir()):
        return None  # nothing yet, or the first write cut by a kill (fingerprint.json.tmp)
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return f"{run_dir} holds a run without {FINGERPRINT_FILE}: it cannot be shown to match variant {name!r}"
    diffs = differences(read_json(path), new)
    if not diffs:
        return None
    key, old, now = diffs[0]
    more = f" (and {len(diffs) - 1} more: {', '.join(k for k, _, _ in diffs[1:])})" if len(diffs) > 1 else ""
    return f"variant {name!r} in {run_dir} was run with {key} = {old!r}, the campaign now says {now!r}{more}"


def check_records(planned: list[tuple[str, Path, dict[str, Any]]]) -> None:
    """Raise naming every run whose record differs from its planned fingerprint.
    planned: (variant name, run directory, fingerprint) for each run the campaign will make."""
    problems = [(name, p) for name, run_dir, fp in planned if (p := _mismatch(name, run_dir, fp))]
    if problems:
        raise ConfigError("; ".join(p for _, p in problems)
                          + f" -- retrain it (--retrain {problems[0][0]!r}) or use a fresh --out")


def variants_to_retrain(campaign: Campaign, out: Path, retrain: list[str]) -> list[Path]:
    """The variant folders to delete for --retrain (checked to hold only run records). Also refuses
    a variant folder that is itself a run: a record of the layout before per-seed runs, which no
    planned run would be compared with."""
    names = [v.name for v in campaign.variants]
    unknown = [n for n in retrain if n not in names]
    if unknown:
        raise ConfigError(f"--retrain {unknown[0]!r}: no such variant (variants: {', '.join(names)})")
    stale = []
    for name in names:
        folder = out / run_dirname(name)
        if name in retrain and folder.is_dir():
            stale.append(_deletable(folder))
        elif (folder / FINGERPRINT_FILE).is_file() or (folder / CONFIG_FILE).is_file():
            raise ConfigError(f"{folder} holds a run of the single-run layout (runs now go to "
                              f"{folder}/seed-N): --retrain {name!r} or use a fresh --out")
    return stale


def _deletable(folder: Path) -> Path:
    """folder, after checking it holds run records (so --retrain never deletes anything else)."""
    if any(folder.iterdir()) and not any(folder.rglob(FINGERPRINT_FILE)) and not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"--retrain: {folder} holds no run record (no {FINGERPRINT_FILE}, no config.toml); "
                          "not deleting it")
    return folder


def reset(run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        print(f"   --retrain: deleting {run_dir}", flush=True)
        shutil.rmtree(run_dir)


def record(run_dir: Path, fp: dict[str, Any]) -> None:
    """Write the fingerprint into a run directory (before training, so a half-trained run has one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / FINGERPRINT_FILE).is_file():
        write_json(run_dir / FINGERPRINT_FILE, fp)
