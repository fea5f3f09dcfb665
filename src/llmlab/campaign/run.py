"""Run a campaign: train every variant (resuming where a run stopped), then measure generation
with and without the KV cache on the trained weights. Each variant's run directory is a complete
record (config, env, metrics, checkpoints, result.json, infer.json); the report reads only those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmlab.campaign.plan import Campaign, GenerateSpec, Variant
from llmlab.device import resolve_dtype
from llmlab.infer.generate import generate
from llmlab.runs import load_for_inference, write_json
from llmlab.timing import median, time_round_robin
from llmlab.train import train


def run_campaign(campaign: Campaign, out_dir: str | Path) -> list[Path]:
    """Train and measure each variant under out_dir/<name>; returns the run directories."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "campaign.json", _campaign_record(campaign))
    run_dirs = []
    for i, variant in enumerate(campaign.variants, 1):
        run_dir = out / _dirname(variant.name)
        print(f"\n== [{i}/{len(campaign.variants)}] {variant.name} -> {run_dir}", flush=True)
        if _completed(run_dir):
            print("   already trained (result.json present); skipping training", flush=True)
        else:
            outcome = train(variant.config, run_dir)
            if outcome.status != "completed":
                raise SystemExit(outcome.exit_code)  # stopped by a signal: rerun to resume
        write_json(run_dir / "infer.json", measure_generation(run_dir, campaign.generate, variant))
        run_dirs.append(run_dir)
    return run_dirs


def measure_generation(run_dir: Path, spec: GenerateSpec, variant: Variant) -> dict[str, Any]:
    """Decode tokens/s with and without the cache (interleaved repeats, greedy), and a sample."""
    model, tokenizer = load_for_inference(run_dir, device=variant.config.train.device)
    device = next(model.parameters()).device
    model = model.to(resolve_dtype("auto", str(device)))  # bf16 weights on CUDA, fp32 on CPU
    prompt = torch.tensor([tokenizer.encode(spec.prompt)], device=device)
    new = min(spec.max_new_tokens, model.config.max_seq_len - prompt.shape[1])
    cases = {
        "kv_cache": lambda: generate(model, prompt, new, use_kv_cache=True),
        "no_cache": lambda: generate(model, prompt, new, use_kv_cache=False),
    }
    times, _ = time_round_robin(cases, device, repeats=spec.repeats)
    sample = generate(model, prompt, new, use_kv_cache=True, temperature=0.8, top_k=50, seed=0)
    cached, uncached = (new / median(times[k]) for k in ("kv_cache", "no_cache"))
    return {
        "prompt": spec.prompt, "prompt_tokens": prompt.shape[1], "new_tokens": new,
        "tokens_per_s_kv_cache": cached, "tokens_per_s_no_cache": uncached,
        "kv_cache_speedup": cached / uncached, "device": str(device), "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "sample": tokenizer.decode(sample[0].tolist()),
    }


def _campaign_record(campaign: Campaign) -> dict[str, Any]:
    return {
        "name": campaign.name, "match": campaign.match, "tolerance": campaign.tolerance,
        "generate": vars(campaign.generate),
        "variants": [{"name": v.name, "dir": _dirname(v.name), "params": v.params, "config": v.config.to_dict()}
                     for v in campaign.variants],
    }


def _completed(run_dir: Path) -> bool:
    path = run_dir / "result.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"


def _dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
