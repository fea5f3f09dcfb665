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

from llmlab.config import load_run_config
from llmlab.errors import LLMLabError
from llmlab.files import read_json
from llmlab.runs import CONFIG_FILE, ENV_FILE, INFER_FILE, is_finished, read_metrics, read_result


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
    budgets: dict[int, dict[int, Path]] = field(default_factory=dict)
    """With [budgets]: updates -> {seed: finished run} at each budget, the full one included."""
    budget_failed: dict[int, dict[int, str]] = field(default_factory=dict)
    """updates -> {seed: status} of the branches that did not finish."""
    stable: list[Path] = field(default_factory=list)
    """With [budgets]: the stable runs the branches left (their records count in the campaign's cost)."""

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
        variants = [_single(p.name, None, p) for p in sorted(directory.iterdir()) if (p / CONFIG_FILE).is_file()]
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
        if is_finished(run_dir):
            record.runs[run["seed"]] = run_dir
        else:
            record.failed[run["seed"]] = run.get("status", "pending")
    record.sweep = [e | {"dir": directory / e["dir"]} for e in v.get("sweep", [])]
    for budget in v.get("budgets", []):
        for run in budget["runs"]:
            finished = is_finished(directory / run["dir"])
            into = record.budgets if finished else record.budget_failed
            into.setdefault(budget["steps"], {})[run["seed"]] = (directory / run["dir"] if finished
                                                                  else run.get("status", "pending"))
    record.stable = [directory / run["dir"] for run in v.get("stable", []) if (directory / run["dir"]).is_dir()]
    return record


def _single(name: str, kind: str | None, run_dir: Path) -> VariantRecord:
    """One run directory as a variant with one seed (read from its config.toml)."""
    record = VariantRecord(name, kind)
    if is_finished(run_dir):
        cfg = load_run_config(run_dir / CONFIG_FILE)
        record.runs[cfg.train.seed] = run_dir
        record.lr, record.config = cfg.train.lr, cfg.to_dict()
    return record


def common_budgets(records: list[VariantRecord]) -> list[int]:
    """The budgets (in updates) at which every variant has a finished run, smallest first."""
    common = set.intersection(*(set(r.budgets) for r in records)) if records else set()
    return sorted(common)


def at_budget(records: list[VariantRecord], steps: int) -> list[VariantRecord]:
    """The variants as they stand at the budget of `steps` updates: each one's runs are its decay
    branches of that budget (kind, LR and config unchanged), so every comparison of the report can
    be made at that budget too."""
    return [VariantRecord(r.name, r.kind, runs=dict(r.budgets.get(steps, {})),
                          failed=dict(r.budget_failed.get(steps, {})), lr=r.lr, config=r.config) for r in records]


def all_run_dirs(records: list[VariantRecord]) -> list[Path]:
    """Every run directory a report reads: each variant's finished seed runs, its decay branches
    and its sweep points."""
    dirs = list(dict.fromkeys([d for r in records for d in r.runs.values()]
                              + [d for r in records for runs in r.budgets.values() for d in runs.values()]
                              + [d for r in records for d in r.stable]))
    return dirs + [Path(e["dir"]) for r in records for e in r.sweep if Path(e["dir"]).is_dir()]


def provenance(run_dirs: list[Path]) -> dict[str, Any]:
    """Where and when the records were made, from their env.json and metrics.jsonl: the machines,
    the llmlab commits (a campaign resumed across code changes shows several), the first start and
    the last write (training, evaluation and the decode sweep's infer.json) and the time spent
    training (the union of the runs' spans). Wall time is the campaign's cost on that machine, not
    a property of the models."""
    machines, commits, starts, ends, spans = set(), set(), [], [], []
    for run_dir in run_dirs:
        env = read_json(run_dir / ENV_FILE) if (run_dir / ENV_FILE).is_file() else {}
        machines.add(f"{env.get('device_name') or env.get('platform', '?')} ({env.get('device', '?')}, "
                     f"threads={env.get('threads', '?')}, torch {env.get('torch', '?')})")
        git = env.get("git") or {}
        commits.add((git.get("commit") or "unknown")[:10] + (" (uncommitted edits)" if git.get("dirty") else ""))
        times = [row["time"] for row in read_metrics(run_dir) if isinstance(row.get("time"), (int, float))]
        if times:
            starts.append(min(times))
            ends.append(max(times))
            spans.append((min(times), max(times)))
        if (run_dir / INFER_FILE).is_file():
            ends.append((run_dir / INFER_FILE).stat().st_mtime)
    return {"runs": len(run_dirs), "machines": sorted(machines), "commits": sorted(commits),
            "first_start": min(starts) if starts else None, "last_write": max(ends) if ends else None,
            "training_s": covered_seconds(spans)}


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans: a decay branch carries its stable run's
    metrics rows (and their times), which must not count twice."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def result(run_dir: Path) -> dict[str, Any]:
    return read_result(run_dir)


def infer(run_dir: Path) -> dict[str, Any]:
    path = run_dir / INFER_FILE
    return read_json(path) if path.is_file() else {}
