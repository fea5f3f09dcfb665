"""The run directory as a record (STYLE.md item 10): its file names, "is it finished?", and the
readers of its metrics and evaluation windows.

Layout of a run directory (train writes it; eval, generate, campaign and report read it):

    config.toml         the resolved run config
    env.json            where and with what it ran
    metrics.jsonl       one JSON object a line (llmlab.train.metrics writes it)
    result.json         final figures, written once the run ends: a run is finished when it exists
    eval_windows.json   the final test evaluation window by window (summed loss, targets scored)
    infer.json          decode measurements (campaign)
    checkpoints/        step-XXXXXXXX.pt + manifest.json (llmlab.checkpoint)

Every file is written atomically (llmlab.files). This module sits below `train`, `infer`, `bench`
and `campaign`, imports none of them, nor torch: reading records (`llmlab report`) stays free of
torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import CheckpointError
from llmlab.files import read_json, read_jsonl, write_json

CONFIG_FILE = "config.toml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
EVAL_WINDOWS_FILE = "eval_windows.json"
INFER_FILE = "infer.json"


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished once its result.json -- the last file a run writes -- says "completed"
    (the one question train, campaign and report ask of a run directory)."""
    path = Path(run_dir) / RESULT_FILE
    return path.is_file() and read_json(path).get("status") == "completed"


def resolve_run_dir(path: str | Path) -> Path:
    """The run a folder given to generate / eval / export stands for: itself when it is a run; a
    campaign's variant folder (`runs/demo/base`) stands for its seed-0 run, said on stderr; any other
    folder holding runs is an error naming them."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "seed-0" / CONFIG_FILE).is_file():
        print(f"llmlab: {path} is a variant folder: using its seed-0 run, {path / 'seed-0'}", file=sys.stderr)
        return path / "seed-0"
    inside = sorted(str(p.parent.relative_to(path)) for p in path.rglob(CONFIG_FILE)) if path.is_dir() else []
    if inside:
        shown = ", ".join(inside[:6]) + (f" and {len(inside) - 6} more" if len(inside) > 6 else "")
        raise CheckpointError(f"{path} is not a run directory; it holds the runs {shown}: pass one of them")
    raise CheckpointError(f"{path} is not a run directory (no {CONFIG_FILE}): train it first")


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's result.json (an LLMLabError naming the file when it is missing)."""
    return read_json(Path(run_dir) / RESULT_FILE)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


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
