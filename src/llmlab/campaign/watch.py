"""What a report checks in each arm's records beyond its final figures: over-fitting when the
budget repeats the data, the MoE dispatch and the tokens it dropped, and the evaluation stride.

Over-fitting (issue 18): an arm trained for more than one epoch is flagged when, in any of its
seed runs, the validation loss rose at each of its last RISE_EVALS evaluations (a cosine-decayed
run on new tokens keeps falling; once windows repeat, a steady rise at the end is the model
learning its training set). The plan recommends the dropout for such a budget (estimate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmlab.campaign import aggregate
from llmlab.campaign.records import VariantRecord, result
from llmlab.campaign.spec import dispatch_text
from llmlab.config import RunConfig, load_run_config
from llmlab.data.meta import META_FILE, read_meta
from llmlab.runs import CONFIG_FILE, read_metrics

RISE_EVALS = 2
"""Flag when each of the last RISE_EVALS evaluations is above the one before it."""
OVERFIT_RULE = (f"validation loss above the evaluation before at each of the last {RISE_EVALS} evaluations,"
                " in a run of more than one epoch")


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val_loss) of each evaluation, in order (a resumed run's repeats: the last kept)."""
    by_step = {r["step"]: float(r["val_loss"]) for r in read_metrics(run_dir) if "val_loss" in r}
    return sorted(by_step.items())


def rose_at_end(losses: list[float], evals: int = RISE_EVALS) -> bool:
    """Each of the last `evals` losses is above the one before it."""
    if len(losses) < evals + 1:
        return False
    tail = losses[-(evals + 1):]
    return all(b > a for a, b in zip(tail, tail[1:]))


def epochs_trained(run_dir: Path, cfg: RunConfig | None = None) -> float | None:
    """Tokens trained over the training split's tokens (meta.json of the run's data), or None
    when the data folder is not on this machine."""
    cfg = cfg or load_run_config(run_dir / CONFIG_FILE)
    data_dir = Path(cfg.data.resolved_dir)
    tokens = result(run_dir).get("tokens")
    if not tokens or not (data_dir / META_FILE).is_file():
        return None
    return tokens / int(read_meta(data_dir)["splits"]["train"]["tokens"])


def overfit_rows(records: list[VariantRecord]) -> list[dict[str, Any]]:
    """Per arm: epochs, the seeds flagged by the rule, and the last evaluations of the first
    flagged seed (else of the first seed)."""
    rows = []
    for r in records:
        epochs = epochs_trained(r.first)
        curves = {seed: [loss for _, loss in val_curve(d)] for seed, d in sorted(r.runs.items())}
        flagged = [seed for seed, losses in curves.items() if epochs and epochs > 1 and rose_at_end(losses)]
        last = curves[flagged[0] if flagged else min(curves)][-(RISE_EVALS + 1):]
        rows.append({"variant": r.name, "epochs": epochs, "last_val_losses": " → ".join(f"{x:.4f}" for x in last),
                     "flagged": ", ".join(f"seed {s}" for s in flagged) if flagged else
                     ("-" if epochs is None or epochs > 1 else "- (under one epoch)")})
    return rows


def dispatch_rows(records: list[VariantRecord]) -> list[dict[str, Any]]:
    """Per MoE arm: its dispatch (from its first run's config.toml) and the share of expert
    assignments it dropped (moe_dropped_frac, mean over layers: at the last logged step, and the
    largest over training)."""
    rows = []
    for r in records:
        cfg = load_run_config(r.first / CONFIG_FILE)
        if cfg.model.moe is None:
            continue
        figures = aggregate.routing_row(r.name, r.first, read_metrics(r.first)) or {}
        rows.append({"variant": r.name, "dispatch": dispatch_text(cfg),
                     "capacity_factor": cfg.model.moe.capacity_factor,
                     "dropped_last": figures.get("dropped_last"), "dropped_max": figures.get("dropped_max")})
    return rows


def eval_strides(records: list[VariantRecord]) -> dict[str, set[Any]]:
    """{"val", "test"} -> the strides the finished runs' result.json recorded (None: not recorded)."""
    found: dict[str, set[Any]] = {"val": set(), "test": set()}
    for r in records:
        for d in r.runs.values():
            res = result(d)
            for split in found:
                found[split].add(res.get(f"{split}_stride"))
    return found
