"""Figures over seeds: mean ± std per variant, paired differences against the baseline, the
stability of every run and the MoE routing over training -- all read from run records.

The statistics are campaign/stats.py's (paired t interval, scipy); the spike rule is
campaign/stability.py's; router saturation is train/routing_probe.py's.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.campaign.records import VariantRecord, result
from llmlab.campaign.stability import run_stability
from llmlab.campaign.stats import (BootstrapInterval, OutlierRule, PairedDifference, bootstrap_difference,
                                   outlying_seeds, paired_difference, pooled_std, resolvable_difference, summarize)
from llmlab.runs import read_eval_windows
from llmlab.train.routing_probe import router_saturation

# (result.json key, label, format): the quality figures averaged over seeds. Word perplexity is
# in result.json only where words are defined (WikiText); bits per byte everywhere.
SEED_METRICS = (("val_loss", "val loss", ".4f"), ("test_loss", "test loss", ".4f"),
                ("test_bits_per_byte", "test bits/byte", ".4f"), ("test_word_ppl", "test word ppl", ".2f"))


def by_seed(record: VariantRecord, key: str) -> dict[int, float]:
    """{seed: result.json[key]} over the variant's finished runs that have the key."""
    values = {seed: result(d).get(key) for seed, d in record.runs.items()}
    return {s: float(v) for s, v in values.items() if v is not None}


def quality_row(record: VariantRecord) -> dict[str, Any]:
    """Mean (and std, as text) over seeds of each SEED_METRICS figure."""
    row: dict[str, Any] = {"seeds": len(record.runs), "lr": record.lr}
    for key, _, fmt in SEED_METRICS:
        values = list(by_seed(record, key).values())
        if values:
            s = summarize(values)
            row[key], row[f"{key}_std"], row[f"{key}_text"] = s.mean, s.std, s.text(fmt)
    return row


def comparisons(records: list[VariantRecord], key: str = "test_loss") -> list[dict[str, Any]]:
    """Each variant against the baseline (the first): the paired difference over common seeds."""
    return [row for r in records[1:] if (row := paired(records, r.name, records[0].name, key))]


def difference_row(name: str, against: str, key: str, d: PairedDifference) -> dict[str, Any]:
    return {"variant": name, "against": against, "metric": key, "n": d.n, "mean": d.mean, "low": d.low,
            "high": d.high, "p_value": d.p_value, "verdict": d.verdict, "text": d.text("+.4f"), "difference": d}


def paired(records: list[VariantRecord], name: str, against: str, key: str = "test_loss") -> dict[str, Any] | None:
    """One named pair (e.g. GQA+MoE against GQA), or None when they share no seed."""
    found = {r.name: r for r in records}
    if name not in found or against not in found:
        return None
    ours, theirs = by_seed(found[name], key), by_seed(found[against], key)
    common = sorted(set(ours) & set(theirs))
    if not common:
        return None
    d = paired_difference({s: ours[s] for s in common}, {s: theirs[s] for s in common})
    return difference_row(name, against, key, d)


def seed_noise(records: list[VariantRecord], key: str = "test_loss") -> dict[str, Any]:
    """The seed std of `key` pooled over the compared arms (baseline and compared variants; the
    ablations apart: an ablation changes the recipe, so its noise is not the comparison's), the
    smallest difference it lets n seeds resolve (stats.resolvable_difference), the same pool
    without the runs OutlierRule flags, and each ablation's own std."""
    compared = [r for r in records if r.kind != "ablation"]
    std, n = _pooled(compared, key)
    flagged = {(row["variant"], row["seed"]) for row in outlier_rows(records, key)}
    clean_std, _ = _pooled(compared, key, drop=flagged)
    ablations = {r.name: summarize(list(v.values())).std for r in records
                 if r.kind == "ablation" and len(v := by_seed(r, key)) > 1}
    return {"std": std, "n": n, "resolvable": resolvable_difference(std, n) if std is not None else None,
            "arms": [r.name for r in compared], "std_without_flagged": clean_std if flagged else None,
            "ablations": ablations}


def _pooled(records: list[VariantRecord], key: str, drop: Collection[tuple[str, int]] = ()) -> tuple[float | None, int]:
    """(pooled seed std, fewest seeds of a variant with two or more) over `records`, leaving out
    the (variant, seed) runs in `drop`."""
    summaries = [summarize(list(v.values())) for r in records
                 if (v := {s: x for s, x in by_seed(r, key).items() if (r.name, s) not in drop})]
    n = min((s.n for s in summaries if s.n > 1), default=0)  # variants short of seeds resolve less
    return pooled_std(summaries), n


def outlier_rows(records: list[VariantRecord], key: str = "test_loss",
                 rule: OutlierRule = OutlierRule()) -> list[dict[str, Any]]:
    """The finished runs whose `key` OutlierRule flags against their arm's other seeds."""
    rows = []
    for r in records:
        values = by_seed(r, key)
        median = float(np.median(list(values.values()))) if values else None
        for seed, z in sorted(outlying_seeds(values, rule).items()):
            rows.append({"variant": r.name, "seed": seed, "run": str(r.runs[seed]), "problem": "outlier",
                         "detail": f"{key} {values[seed]:.4f} against the arm's median {median:.4f} "
                                   f"(robust z {z:+.1f}); kept in the means, named here"})
    return rows


def flagged_runs(records: list[VariantRecord], key: str = "test_loss") -> list[dict[str, Any]]:
    """Every run a reader must know about before trusting a mean: seeds far from their arm's
    others (outlier_rows) and runs that diverged or did not finish (left out of the means)."""
    failed = [{"variant": r.name, "seed": seed, "run": "-", "problem": status,
               "detail": "did not finish: left out of the means and the pairing"}
              for r in records for seed, status in sorted(r.failed.items())]
    return outlier_rows(records, key) + failed


def window_bootstrap(records: list[VariantRecord], name: str, against: str, n_resamples: int = 2000,
                     seed: int = 0) -> BootstrapInterval | None:
    """Evaluation noise of name − against on the test set (stats.bootstrap_difference) over their
    common seeds; None when a run has no per-window record (made before they were kept)."""
    found = {r.name: r for r in records}
    ours, theirs = found[name], found[against]
    common = sorted(set(by_seed(ours, "test_loss")) & set(by_seed(theirs, "test_loss")))
    windows = {s: (read_eval_windows(ours.runs[s]), read_eval_windows(theirs.runs[s])) for s in common}
    if not common or any(v is None or b is None for v, b in windows.values()):
        return None
    return bootstrap_difference({s: v for s, (v, _) in windows.items()}, {s: b for s, (_, b) in windows.items()},
                                n_resamples=n_resamples, seed=seed)


def stability_rows(records: list[VariantRecord]) -> list[dict[str, Any]]:
    """Loss and gradient-norm spikes after warm-up for every finished run, seed runs then sweep
    runs (stability.py's rule)."""
    rows = []
    for record in records:
        several = len({e.get("seed") for e in record.sweep}) > 1  # sweep.seeds: name the seed too
        sweep = [(f"sweep lr {e['lr']:g}" + (f" seed {e['seed']}" if several else ""), Path(e["dir"]))
                 for e in record.sweep if e["status"] == "completed"]
        for label, run_dir in [(f"seed {seed}", d) for seed, d in sorted(record.runs.items())] + sweep:
            spikes = run_stability(run_dir)
            rows.append({
                "variant": record.name, "run": label,
                "loss_spikes": spikes["loss"]["count"], "loss_spike_steps": _steps(spikes["loss"]["steps"]),
                "grad_spikes": spikes["grad_norm"]["count"], "grad_spike_steps": _steps(spikes["grad_norm"]["steps"]),
            })
    return rows


def _steps(steps: list[int], most: int = 8) -> str:
    if not steps:
        return "-"
    shown = ", ".join(str(s) for s in steps[:most])
    return shown + (f" (+{len(steps) - most})" if len(steps) > most else "")


def routing_over_training(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """MoE statistics per logged step: {"steps", "tokens", "load" [step][layer][expert] (share of
    assignments), "dropped" [step][layer], "entropy" [step][layer]}; empty for a dense run."""
    rows = [r for r in metrics if "moe_load" in r and "event" not in r]
    if not rows:
        return {}
    return {"steps": [r["step"] for r in rows], "tokens": [r.get("tokens") for r in rows],
            "load": [r["moe_load"] for r in rows], "dropped": [r.get("moe_dropped_frac") for r in rows],
            "entropy": [r.get("moe_router_entropy") for r in rows]}


def routing_row(name: str, run_dir: Path, metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One MoE run's routing in figures: entropy (start, end, of log E), dropped (max, end),
    saturation at the middle recorded step."""
    over = routing_over_training(metrics)
    if not over:
        return None
    n_experts = len(over["load"][-1][0])
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    entropy = [mean(e) for e in over["entropy"] if e]
    dropped = [mean(d) for d in over["dropped"] if d]
    saturation = router_saturation(run_dir)
    middle = saturation[len(saturation) // 2] if saturation else None
    return {
        "variant": name, "max_entropy": math.log(n_experts),
        "entropy_first": entropy[0] if entropy else None, "entropy_last": entropy[-1] if entropy else None,
        "dropped_max": max(dropped) if dropped else None, "dropped_last": dropped[-1] if dropped else None,
        "saturation_mid_step": middle[0] if middle else None, "saturation_mid": middle[1] if middle else None,
    }
