"""Run a campaign: the learning-rate sweep (runlist.py), then every variant at every seed at its
chosen LR (resuming where a run stopped), then the decode sweep with and without the KV cache on
each variant's first-seed weights. Each run directory is a complete record (fingerprint, config,
env, metrics, checkpoints, result.json; infer.json for the measured one); campaign.json lists
them, with each variant's sweep points and chosen LR; the report reads only those.

Nothing is silently reused: a variant whose record was made under another config is refused
(integrity.py); a finished infer.json is kept only while its measurement spec is unchanged, and
`remeasure=True` (--remeasure) times it again.

A campaign killed at any moment (SIGKILL, a pre-empted machine) and run again ends with the
records an uninterrupted one would have left, but for wall-clock figures and the runs' start and
resume events (tests/campaign/test_soak.py): runs resume from their checkpoints, every file is
written atomically (infer.json only once its measurement is complete: a kill mid-sweep measures
again), and one process at a time works in a folder (`run_and_report` holds its lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmlab.campaign import integrity, runlist
from llmlab.campaign.report import write_report
from llmlab.campaign.spec import Campaign, GenerateSpec, Variant
from llmlab.device import resolve_device, resolve_dtype
from llmlab.environment import machine
from llmlab.files import read_json, write_json
from llmlab.infer.generate import generate
from llmlab.infer.load import load_for_inference
from llmlab.infer.measure import measure_decode
from llmlab.runs import INFER_FILE, is_finished, read_metrics, read_result
from llmlab.train import train
from llmlab.train.branch import seed_branch
from llmlab.train.lock import RunLock
from llmlab.train.loop import TrainingDiverged

BUSY_HINT = ": another llmlab campaign is working there; wait for it to end (or stop it), then run again"


def run_and_report(campaign: Campaign, out_dir: str | Path, *, retrain: list[str] = (), remeasure: bool = False,
                   memory_gb: float | None = None) -> dict[str, Any]:
    """`llmlab campaign`: run_campaign, then write_report (its return value), holding the folder's
    lock throughout. A second process on the same folder raises RunDirBusy at once, naming the
    first's pid, before it writes or deletes anything; a killed holder's lock is free at once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, what="campaign folder", hint=BUSY_HINT):
        run_campaign(campaign, out, retrain=retrain, remeasure=remeasure)
        print(f"\n== report: {out}/report.md, report.csv and the figures", flush=True)
        return write_report(out, memory_gb=memory_gb)


def run_campaign(campaign: Campaign, out_dir: str | Path, *, retrain: list[str] = (),
                 remeasure: bool = False) -> list[Path]:
    """The LR sweep (when the campaign has one), then every variant at every seed at its chosen
    LR, then the decode sweep on each variant's first-seed weights. Returns the seed runs' folders.

    Finished runs are skipped, interrupted ones resume, a run that diverged is recorded and not
    retried. retrain: variant names whose folders are deleted and trained again (their records
    may differ from the campaign). remeasure: time every infer.json again."""
    out = Path(out_dir)
    identity = integrity.DataIdentities()
    integrity.reset(integrity.variants_to_retrain(campaign, out, list(retrain)))
    sweep = _prepared(runlist.sweep_runs(campaign), out, identity)
    out.mkdir(parents=True, exist_ok=True)
    if sweep and not (out / "campaign.json").exists():
        # A first run: record the sweep in progress. An existing campaign.json stays as it is until
        # the seed runs, which need the sweep's choice, are checked against it too.
        write_json(out / "campaign.json", campaign_record(campaign, out, sweep, []))
    outcomes = _train_all(sweep, out, "sweep")
    lrs = chosen_lrs(campaign, out, sweep, outcomes)
    seeds = _prepared(runlist.seed_runs(campaign, lrs), out, identity)
    write_json(out / "campaign.json", campaign_record(campaign, out, sweep, seeds, outcomes, lrs))
    outcomes |= _train_all(seeds, out, "seed")
    write_json(out / "campaign.json", campaign_record(campaign, out, sweep, seeds, outcomes, lrs))
    by_name = {v.name: v for v in campaign.variants}
    for run, fp in seeds:
        if run.kind == "seed" and run.seed == campaign.seeds[0] and outcomes[run.dirname] == "completed":
            print(f"\n== decode sweep: {run.variant} ({run.dirname})", flush=True)
            _measure(out / run.dirname, campaign.generate, by_name[run.variant], fp["sha256"], remeasure)
    return [out / run.dirname for run, _ in seeds if run.kind == "seed"]


Prepared = list[tuple[runlist.PlannedRun, dict[str, Any]]]


def _prepared(runs: list[runlist.PlannedRun], out: Path, identity: integrity.DataIdentities) -> Prepared:
    """Each planned run with its fingerprint, after checking every existing record matches."""
    planned = [(run, integrity.fingerprint(run.config, identity(run.config.data))) for run in runs]
    integrity.check_records([(run.variant, out / run.dirname, fp) for run, fp in planned])
    return planned


def _train_all(planned: Prepared, out: Path, label: str) -> dict[str, str]:
    """Train each run unless finished; {dirname: "completed" | "diverged"}. A decay branch starts
    from its stable run's checkpoint (trained before it); it counts as diverged when that run did."""
    outcomes: dict[str, str] = {}
    for i, (run, fp) in enumerate(planned, 1):
        run_dir = out / run.dirname
        print(f"\n== {label} [{i}/{len(planned)}] {run.variant}, lr {run.lr:g}, seed {run.seed}, "
              f"{run.steps} updates ({run.kind}) -> {run_dir}", flush=True)
        if run.stable is not None and outcomes.get(run.stable) == "diverged":
            print(f"   its stable run {run.stable} diverged: no branch to train", flush=True)
            outcomes[run.dirname] = "diverged"
            continue
        integrity.record(run_dir, fp)
        if run.stable is not None and not is_finished(run_dir):
            step = seed_branch(out / run.stable, run.config, run_dir)
            print(f"   decay branch: resumes from {run.stable} at update {step}", flush=True)
        outcomes[run.dirname] = train_once(run.config, run_dir)
    return outcomes


def train_once(cfg: Any, run_dir: Path) -> str:
    """"completed" or "diverged". A finished run is not retrained; a run that diverged (a
    non-finite loss: its metrics end with a "diverged" event) is not retried -- it would diverge
    again from the same checkpoint -- and counts as a failed point (the sweep excludes it)."""
    if is_finished(run_dir):
        print("   already trained (result.json present, same fingerprint); skipping", flush=True)
        return "completed"
    if _diverged(run_dir):
        print("   diverged in an earlier attempt (metrics.jsonl); not retried", flush=True)
        return "diverged"
    try:
        outcome = train(cfg, run_dir)
    except TrainingDiverged as e:
        print(f"   diverged: {e}", flush=True)
        return "diverged"
    if outcome.status != "completed":
        raise SystemExit(outcome.exit_code)  # stopped by a signal: rerun to resume
    return "completed"


def chosen_lrs(campaign: Campaign, out: Path, sweep: Prepared, outcomes: dict[str, str]) -> dict[str, float]:
    """Each variant's LR: the sweep's choice (runlist.CHOICE_RULE), else its config's train.lr."""
    if campaign.sweep is None:
        return {v.name: v.config.train.lr for v in campaign.variants}
    return {v.name: runlist.choose_lr(v.name, sweep_entries(v.name, sweep, outcomes, out))
            for v in campaign.variants}


def sweep_entries(name: str, sweep: Prepared, outcomes: dict[str, str], out: Path) -> list[dict[str, Any]]:
    """A variant's sweep points: {"lr", "dir", "status", "val_loss"} (val_loss None unless completed)."""
    entries = []
    for run, _ in sweep:
        if run.variant != name:
            continue
        status = outcomes.get(run.dirname, "pending")
        result = read_result(out / run.dirname) if status == "completed" else {}
        entries.append({"lr": run.lr, "dir": run.dirname, "status": status, "val_loss": result.get("val_loss"),
                        "steps": run.config.train.total_steps(), "seed": run.seed})
    return entries


def _measure(run_dir: Path, spec: GenerateSpec, variant: Variant, config_sha: str, remeasure: bool) -> None:
    """Write infer.json unless it holds a measurement of this very spec (and not remeasure)."""
    path = run_dir / INFER_FILE
    want = measurement_spec(spec, variant, config_sha)
    if path.is_file() and not remeasure:
        old = read_json(path).get("spec")
        if old == want:
            print("   infer.json up to date (same measurement spec); --remeasure to time it again", flush=True)
            return
        changed = sorted(k for k in set(want) | set(old or {}) if (old or {}).get(k) != want.get(k))
        print(f"   infer.json was measured under another spec ({', '.join(changed)}): measuring again", flush=True)
    write_json(path, measure_generation(run_dir, spec, variant) | {"spec": want})


def measurement_spec(spec: GenerateSpec, variant: Variant, config_sha: str) -> dict[str, Any]:
    """What an infer.json's figures depend on: the sweep, the device (its GPU model), dtype, threads
    and torch version, the weights."""
    device = _device(variant)
    cases = _cases(spec, device)
    env = machine(device)
    out = {
        "contexts": spec.contexts, "batch_sizes": spec.batch_sizes, "new_tokens": spec.new_tokens,
        "repeats": spec.repeats, "cases": list(cases), "prompt": spec.prompt,
        "max_new_tokens": spec.max_new_tokens, "device": env["device"],
        "dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
        "threads": env["threads"], "torch": env["torch"], "config_sha256": config_sha,
    }
    if "gpu" in env:
        out["gpu"] = env["gpu"]
    if "compiled" in cases:
        out["compile_mode"] = spec.compile_mode
    return out


def measure_generation(run_dir: Path, spec: GenerateSpec, variant: Variant) -> dict[str, Any]:
    """Decode sweep on the trained weights: at each (context, batch size), prefill and decode
    timed apart with and without the cache (and compiled), interleaved; then one sample."""
    device = _device(variant)
    model, tokenizer = load_for_inference(run_dir, device=str(device))
    model = model.to(resolve_dtype("auto", device))  # bf16 weights on CUDA, fp32 on CPU
    cases = _cases(spec, device)
    points = []
    for context in spec.contexts:
        for batch in spec.batch_sizes:
            print(f"   decode: context {context}, batch {batch}, {', '.join(cases)}", flush=True)
            figures = measure_decode(model, batch_size=batch, context=context, new_tokens=spec.new_tokens,
                                     cases=cases, repeats=spec.repeats, compile_mode=spec.compile_mode)
            points.append({"context": context, "batch_size": batch, "cases": figures})
    head = headline(points)
    prompt = torch.tensor([tokenizer.encode(spec.prompt)], device=device)
    new = min(spec.max_new_tokens, model.config.max_seq_len - prompt.shape[1])
    sample = generate(model, prompt, new, use_kv_cache=True, temperature=0.8, top_k=50, seed=0)
    return {
        "points": points, "headline": {"context": head["context"], "batch_size": head["batch_size"]},
        "tokens_per_s_kv_cache": head["cases"]["kv_cache"]["decode_tokens_per_s"],
        "tokens_per_s_no_cache": head["cases"]["no_cache"]["decode_tokens_per_s"],
        "kv_cache_speedup": speedup(head, "kv_cache"),
        "device": str(device), "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "sample": tokenizer.decode(sample[0].tolist()),
    }


def headline(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point the summary table quotes: the smallest batch at the longest context."""
    return max(points, key=lambda p: (p["context"], -p["batch_size"]))


def speedup(point: dict[str, Any], case: str) -> float:
    """Decode tokens/s of `case` over the no-cache baseline's at the same point."""
    return point["cases"][case]["decode_tokens_per_s"] / point["cases"]["no_cache"]["decode_tokens_per_s"]


def _cases(spec: GenerateSpec, device: torch.device) -> tuple[str, ...]:
    return ("kv_cache", "no_cache", "compiled") if spec.compiled_on(device.type) else ("kv_cache", "no_cache")


def _device(variant: Variant) -> torch.device:
    return resolve_device(variant.config.train.device)


def campaign_record(campaign: Campaign, out: Path, sweep: Prepared, seeds: Prepared,
                    outcomes: dict[str, str] | None = None, lrs: dict[str, float] | None = None) -> dict[str, Any]:
    """campaign.json: the variants, their sweep points and chosen LR, and their runs by seed."""
    outcomes, lrs = outcomes or {}, lrs or {}
    variants = []
    for v in campaign.variants:
        entry = lambda r, fp: {"seed": r.seed, "dir": r.dirname, "lr": r.lr, "fingerprint": fp["sha256"],  # noqa: E731
                               "status": outcomes.get(r.dirname, "pending"), "steps": r.steps}
        mine = [(r, fp) for r, fp in seeds if r.variant == v.name]
        runs = [entry(r, fp) for r, fp in mine if r.kind == "seed"]
        budgets = [{"steps": steps, "tokens": steps * v.config.train.tokens_per_update,
                    "runs": [entry(r, fp) for r, fp in mine if r.steps == steps and r.kind in ("seed", "budget")]}
                   for steps in sorted({r.steps for r, _ in mine if r.kind == "budget"})]
        if budgets:
            budgets.append({"steps": runs[0]["steps"], "tokens": runs[0]["steps"] * v.config.train.tokens_per_update,
                            "runs": runs})
        variants.append({
            "name": v.name, "dir": integrity.run_dirname(v.name), "ablation": v.ablation, "params": v.params,
            "config": v.config.to_dict(), "lr": lrs.get(v.name),
            "lr_source": "sweep" if campaign.sweep else "config",
            "sweep": sweep_entries(v.name, sweep, outcomes, out) if campaign.sweep else [], "runs": runs,
            "budgets": budgets, "stable": [entry(r, fp) for r, fp in mine if r.kind == "stable"],
        })
    return {
        "name": campaign.name, "match": campaign.match, "tolerance": campaign.tolerance,
        "generate": vars(campaign.generate), "seeds": campaign.seeds,
        "sweep": {"lr": campaign.sweep.lr, "fraction": campaign.sweep.fraction, "rule": runlist.CHOICE_RULE,
                  "seeds": runlist.sweep_seeds(campaign), "eval_windows": campaign.sweep.eval_windows}
        if campaign.sweep else None,
        "budgets": {"fractions": campaign.budgets.fractions, "method": "decay branches of one stable WSD run per "
                    "variant and seed (Hägele et al. 2024)"} if campaign.budgets else None,
        "variants": variants,
    }


def _diverged(run_dir: Path) -> bool:
    return any(r.get("event") == "diverged" for r in read_metrics(run_dir)) if run_dir.is_dir() else False


