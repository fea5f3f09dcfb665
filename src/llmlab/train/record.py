"""Every run is a record (STYLE.md item 10): its resolved config (its environment is
llmlab.environment.run_environment), and the rule for what may change when a run is resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmlab.config import dump_toml, flatten
from llmlab.errors import CheckpointError
from llmlab.files import write_bytes_atomic
from llmlab.runs import CONFIG_FILE

# Settings a resumed run must share with its checkpoint, besides the whole [model] table and the
# data identity: they fix which windows each update sees (the loader cuts each epoch's permutation
# into updates of tokens_per_update / seq_len windows) and the per-process states saved.
# micro_batch_size is not one of them: it only splits an update into micro-steps.
DATA_ORDER_KEYS = ("train.seq_len", "train.tokens_per_update", "train.seed", "world_size")
RETIRED_KEYS = ("train.micro_batch_size",)
"""Recorded by checkpoints of earlier versions, no longer part of the rule."""


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_bytes_atomic(Path(run_dir) / CONFIG_FILE, dump_toml(config).encode())


# ---------------------------------------------------------------------------------------------
# Resume rule


def identity(config: dict[str, Any], data_meta: dict[str, Any], world_size: int) -> dict[str, Any]:
    """What a checkpoint records about the run it belongs to, flattened to dotted keys."""
    flat = {f"model.{k}": v for k, v in flatten(config.get("model", {})).items()}
    train = config.get("train", {})
    for key in DATA_ORDER_KEYS:
        section, _, name = key.partition(".")
        flat[key] = world_size if key == "world_size" else train.get(name)
    tokenizer = data_meta.get("tokenizer", {})
    flat["tokenizer.name"] = tokenizer.get("name")
    flat["tokenizer.hash"] = tokenizer.get("hash")
    flat["data.fingerprint"] = data_meta.get("fingerprint")
    return flat


def check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Raise CheckpointError naming every field that differs (old and new value). A data-order key
    that an older checkpoint did not record is not compared (its loader state still is)."""
    saved = {k: v for k, v in saved.items() if k not in RETIRED_KEYS}
    keys = sorted((set(saved) | set(current)) - {k for k in DATA_ORDER_KEYS if k not in saved})
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(
            f"cannot resume {run_dir}: " + "; ".join(diffs)
            + " -- the architecture, tokenizer, data and data order must match the checkpoint"
            " (start a new run with --run-dir, or restore the old settings)"
        )


def training_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """Allowed differences (train.* recipe, data paths), as {key: [old, new]}, for the log."""
    old, new = flatten(saved), flatten(current)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and not k.startswith("model.")}
