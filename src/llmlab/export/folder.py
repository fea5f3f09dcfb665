"""`llmlab export RUN_DIR --format hf --out DIR`: a trained run as a folder `transformers` loads.

The folder holds config.json, model.safetensors and generation_config.json (written by
transformers' own `save_pretrained`, so the layout is the one the ecosystem reads: vLLM,
lm-evaluation-harness), the tokenizer files (`hf_tokenizer`), and llmlab.json: where the weights
come from (run directory, step, checkpoint sha256, llmlab config).

Atomic: everything is written into a hidden staging folder next to --out and renamed into place
at the end, so --out is either absent, untouched, or complete. A non-empty --out is refused
unless `force`, which replaces a previous export whole (never another folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from llmlab.config import to_dict
from llmlab.data.tokenizers import get_tokenizer
from llmlab.export.hf import ExportError, hf_architecture, routing_notes, to_transformers
from llmlab.export.hf_tokenizer import write_tokenizer
from llmlab.files import fsync_dir, fsync_tree
from llmlab.infer.load import load_run_model
from llmlab.runs import resolve_run_dir

FORMATS = ("hf",)
PROVENANCE = "llmlab.json"


def check_target(out: Path, force: bool) -> None:
    """Refuse to write over anything unless `force`, and let `force` replace only a previous
    export (a folder with llmlab.json): a mistyped --out must never delete someone's folder."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ExportError(f"--out {out} is not empty: choose a new folder, or pass --force to replace it")
    if not (out / PROVENANCE).is_file():
        raise ExportError(f"--out {out} is not a previous export (no {PROVENANCE}): --force replaces only those")


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "hf", force: bool = False) -> dict[str, Any]:
    """Export the newest good checkpoint of `run_dir` into `out`; returns a summary (architecture,
    files, step, notes on what differs)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out).resolve()  # "." or "x/.." have no usable name for the staging folder
    check_target(out, force)
    run_dir = resolve_run_dir(run_dir)  # a variant folder: its seed-0 run
    cfg, entry, model = load_run_model(run_dir, torch.device("cpu"))
    arch = hf_architecture(cfg.model)  # refuse before any work
    tokenizer = get_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_file or None)
    hf = to_transformers(model.eval(), eos_token_id=tokenizer.eot_id)
    provenance = {"run_dir": str(Path(run_dir).resolve()), "step": entry.step, "checkpoint": entry.file,
                  "checkpoint_sha256": entry.sha256, "architecture": arch, "tokenizer": tokenizer.name,
                  "tokenizer_hash": tokenizer.hash, "notes": routing_notes(cfg.model), "config": to_dict(cfg)}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        _save_model(hf, staging)
        write_tokenizer(tokenizer, staging, cfg.model.max_seq_len)
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        fsync_tree(staging)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out), "architecture": arch, "step": entry.step, "tokenizer": tokenizer.name,
            "files": sorted(p.name for p in out.iterdir()), "notes": provenance["notes"]}


def _save_model(hf: Any, folder: Path) -> None:
    """save_pretrained without its progress bar (the CLI prints one summary line)."""
    from transformers.utils import logging as hf_logging  # optional ([bench] extra): require_transformers ran

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf.save_pretrained(folder, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an existing `out` (empty, or replaced under --force) is moved
    aside first and deleted only once the new folder is in place."""
    if not out.exists():
        os.rename(staging, out)
        fsync_dir(out.parent)
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)  # put the old folder back: --out is never left missing
        raise
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
