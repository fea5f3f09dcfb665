"""Reading a campaign's output folder: which variants, which runs (by seed), which sweep points.

campaign.json (run.py) lists each variant with its kind (baseline = the first, ablation when
marked), its sweep points, its chosen LR and its runs by seed. A record from before seeds (a
variant whose `dir` is itself a run) and a plain folder of run directories (no campaign.json) are
read as one run per variant, at the seed its config.toml says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import LLMLabError
from llmlab.runs import read_json, read_metrics


@dataclass
class VariantRecord:
    name: str
    kind: str | None
    """baseline | compared | ablation; None without campaign.json."""
    runs: dict[int, Path] = field(default_factory=dict)
    """seed -> finished run directory (result.json present)."""
    failed: dict[int, str] = field(default_factory=dict)
    """seed -> status of a run that did not finish (diverged, pending)."""
    sweep: list[dict[str, Any]] = field(default_factory=list)
    """{"lr", "dir" (absolute), "status", "val_loss", "steps"} per grid point."""
    lr: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> Path:
        """The run at the lowest finished seed: the one whose decode speed was measured."""
        return self.runs[min(self.runs)]


def load_records(directory: Path) -> tuple[list[VariantRecord], dict[str, Any]]:
    """(variants in campaign order with at least one finished run, campaign.json or {})."""
    path = directory / "campaign.json"
    if path.is_file():
        campaign = read_json(path)
        variants = [_from_campaign(directory, i, v) for i, v in enumerate(campaign["variants"])]
    else:
        campaign = {}
        variants = [_single(p.name, None, p) for p in sorted(directory.iterdir()) if (p / "config.toml").is_file()]
    variants = [v for v in variants if v.runs]
    if not variants:
        raise LLMLabError(f"{directory}: no finished runs (no */result.json); train them first")
    return variants, campaign


def _from_campaign(directory: Path, index: int, v: dict[str, Any]) -> VariantRecord:
    kind = "ablation" if v.get("ablation") else "baseline" if index == 0 else "compared"
    if "runs" not in v:
        return _single(v["name"], kind, directory / v["dir"])
    record = VariantRecord(v["name"], kind, lr=v.get("lr"), config=v.get("config", {}))
    for run in v["runs"]:
        run_dir = directory / run["dir"]
        if (run_dir / "result.json").is_file():
            record.runs[run["seed"]] = run_dir
        else:
            record.failed[run["seed"]] = run.get("status", "pending")
    record.sweep = [e | {"dir": directory / e["dir"]} for e in v.get("sweep", [])]
    return record


def _single(name: str, kind: str | None, run_dir: Path) -> VariantRecord:
    """One run directory as a variant with one seed (read from its config.toml)."""
    from llmlab.config import load_run_config

    record = VariantRecord(name, kind)
    if (run_dir / "result.json").is_file():
        cfg = load_run_config(run_dir / "config.toml")
        record.runs[cfg.train.seed] = run_dir
        record.lr, record.config = cfg.train.lr, cfg.to_dict()
    return record


def all_run_dirs(records: list[VariantRecord]) -> list[Path]:
    """Every run directory a report reads: each variant's finished seed runs and its sweep points."""
    dirs = [d for r in records for d in r.runs.values()]
    return dirs + [Path(e["dir"]) for r in records for e in r.sweep if Path(e["dir"]).is_dir()]


def provenance(run_dirs: list[Path]) -> dict[str, Any]:
    """Where and when the records were made, from their env.json and metrics.jsonl: the machines,
    the llmlab commits (a campaign resumed across code changes shows several), the first start and
    the last write (training, evaluation and the decode sweep's infer.json) and the summed
    training time. Wall time is the campaign's cost on that machine, not a property of the models."""
    machines, commits, starts, ends, train_s = set(), set(), [], [], 0.0
    for run_dir in run_dirs:
        env = read_json(run_dir / "env.json") if (run_dir / "env.json").is_file() else {}
        machines.add(f"{env.get('device_name') or env.get('platform', '?')} ({env.get('device', '?')}, "
                     f"threads={env.get('threads', '?')}, torch {env.get('torch', '?')})")
        git = env.get("git") or {}
        commits.add((git.get("commit") or "unknown")[:10] + (" (uncommitted edits)" if git.get("dirty") else ""))
        times = [row["time"] for row in read_metrics(run_dir) if isinstance(row.get("time"), (int, float))]
        if times:
            starts.append(min(times))
            ends.append(max(times))
            train_s += max(times) - min(times)
        if (run_dir / "infer.json").is_file():
            ends.append((run_dir / "infer.json").stat().st_mtime)
    return {"runs": len(run_dirs), "machines": sorted(machines), "commits": sorted(commits),
            "first_start": min(starts) if starts else None, "last_write": max(ends) if ends else None,
            "training_s": train_s}


def result(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / "result.json")


def infer(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "infer.json"
    return read_json(path) if path.is_file() else {}
