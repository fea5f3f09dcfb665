"""Run a campaign: check every variant's record, train each (resuming where a run stopped), then
sweep decode speed with and without the KV cache on the trained weights. Each variant's run
directory is a complete record (fingerprint, config, env, metrics, checkpoints, result.json,
infer.json); the report reads only those.

Nothing is silently reused: a variant whose record was made under another config is refused
(integrity.py); a finished infer.json is kept only while its measurement spec is unchanged, and
`remeasure=True` (--remeasure) times it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmlab.campaign import integrity
from llmlab.campaign.plan import Campaign, GenerateSpec, Variant
from llmlab.device import resolve_device, resolve_dtype
from llmlab.infer.generate import generate
from llmlab.infer.measure import measure_decode
from llmlab.runs import load_for_inference, read_json, write_json
from llmlab.train import train


def run_campaign(campaign: Campaign, out_dir: str | Path, *, retrain: list[str] = (),
                 remeasure: bool = False) -> list[Path]:
    """Train and measure each variant under out_dir/<name>; returns the run directories.

    retrain: variant names whose run directories are deleted and trained again (their records may
    differ from the campaign). remeasure: time every infer.json again."""
    out = Path(out_dir)
    fingerprints = integrity.fingerprints(campaign)
    stale = integrity.check_records(campaign, out, fingerprints, list(retrain))
    integrity.reset(stale)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "campaign.json", _campaign_record(campaign, fingerprints))
    run_dirs = []
    for i, variant in enumerate(campaign.variants, 1):
        run_dir = out / integrity.run_dirname(variant.name)
        print(f"\n== [{i}/{len(campaign.variants)}] {variant.name} -> {run_dir}", flush=True)
        integrity.record(run_dir, fingerprints[variant.name])
        if _completed(run_dir):
            print("   already trained (result.json present, same fingerprint); skipping training", flush=True)
        else:
            outcome = train(variant.config, run_dir)
            if outcome.status != "completed":
                raise SystemExit(outcome.exit_code)  # stopped by a signal: rerun to resume
        _measure(run_dir, campaign.generate, variant, fingerprints[variant.name]["sha256"], remeasure)
        run_dirs.append(run_dir)
    return run_dirs


def _measure(run_dir: Path, spec: GenerateSpec, variant: Variant, config_sha: str, remeasure: bool) -> None:
    """Write infer.json unless it holds a measurement of this very spec (and not remeasure)."""
    path = run_dir / "infer.json"
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
    """What an infer.json's figures depend on: the sweep, the device, dtype and threads, the weights."""
    device = _device(variant)
    return {
        "contexts": spec.contexts, "batch_sizes": spec.batch_sizes, "new_tokens": spec.new_tokens,
        "repeats": spec.repeats, "cases": list(_cases(spec, device)), "prompt": spec.prompt,
        "max_new_tokens": spec.max_new_tokens, "device": str(device),
        "dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
        "threads": torch.get_num_threads(), "config_sha256": config_sha,
    }


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
                                     cases=cases, repeats=spec.repeats)
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


def _campaign_record(campaign: Campaign, fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": campaign.name, "match": campaign.match, "tolerance": campaign.tolerance,
        "generate": vars(campaign.generate),
        "variants": [{"name": v.name, "dir": integrity.run_dirname(v.name), "ablation": v.ablation,
                      "params": v.params, "config": v.config.to_dict(),
                      "fingerprint": fingerprints[v.name]["sha256"]} for v in campaign.variants],
    }


def _completed(run_dir: Path) -> bool:
    path = run_dir / "result.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"
