"""The plan before the compute: what a campaign costs and what its budget means.

Per variant: active parameters with embeddings (the "125M" a user means), training tokens, epochs
over the training split (from the prepared data's meta.json; unknown when the data is not
prepared yet), tokens per active parameter. For the campaign: the number of runs (sweep LRs and
seeds per variant) and the wall time on an A100 and an H100, per arm and in all, sweep and seeds
included, from FLOPs per token (6 N_active + attention, model/accounting.py) at an MFU that is
stated with its source: `--mfu` when given, else the dense baseline's MFU measured on that GPU
(`benchmarks/results/gpu-<name>.json`, the GPU proof's record) when the repository holds one, else
an assumed 40 %. On this CPU the rate comes from a few measured training steps
(`measure_cpu=True`: it builds each model and times a few optimizer steps, so it is an option).

MoE work: `grouped` (and `loop`) dispatch compute the top-k experts of each token and nothing
more; `capacity` dispatch computes every expert's C slots per micro-batch whether filled or not,
capacity_factor x the top-k expert work (E / top_k x without a factor): that extra expert work is
counted in the FLOPs (expert_work_factor).

The GPU figures count training FLOPs only: evaluation and the decode sweep are extra (a few %).
Warnings: more than one epoch (validation loss may start to rise: watch it; above 4 epochs the
plan recommends a dropout); a budget that is not a whole number of updates (the remainder is not
trained); tokens per active parameter more than 2x away from ~20 (Hoffmann et al. 2022,
"Chinchilla": the compute-optimal ratio; far below it a model is under-trained for its size,
which a comparison at equal budget may accept, but should say).

The smallest loss difference a campaign can expect to resolve is an estimate: the unpaired t
half-width for its number of seeds (stats.resolvable_difference) at a stated seed standard
deviation -- by default the CPU study's, pooled over its compared arms (docs/results/cpu-study),
not yet measured at this scale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from llmlab.bench.train import our_step
from llmlab.campaign.runlist import budget_cost
from llmlab.campaign.spec import Campaign, Variant
from llmlab.campaign.stats import resolvable_difference
from llmlab.config import MoEConfig, ModelConfig
from llmlab.data.corpus import WIKITEXT
from llmlab.data.meta import META_FILE, read_meta
from llmlab.errors import ConfigError
from llmlab.model.mlp import mlp_params
from llmlab.model.moe import expert_capacity
from llmlab.timing import median, time_fn
from llmlab.train.metrics import PEAK_BF16_FLOPS

DEFAULT_MFU = 0.40
# The GPU proof's records (llmlab.gpu_check): gpu-<slug>.json, one per card it ran on.
GPU_RESULTS_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
# Seed standard deviation of the final test loss assumed by the plan: the CPU study's (v2,
# 2026-12-07), pooled over its compared (non-ablation) arms -- base 0.0033, base+gqa 0.0128, wider
# FFN 0.0161, base+gqa+moe 0.0084 nats/token, 3 seeds each: 0.0112 (docs/results/cpu-study/report.md)
# -- an estimate until a 125M campaign measures its own.
ASSUMED_SEED_STD = 0.011
SEED_STD_SOURCE = "the CPU study's seed sd pooled over its compared arms (docs/results/cpu-study)"
# Above this many epochs repeated tokens are worth clearly less than new ones (Muennighoff et al.
# 2023, "Scaling Data-Constrained Language Models": up to ~4 epochs nearly as good as unique data),
# so the plan recommends dropout: 0.1, as GPT-2 (Radford et al. 2019) and Transformer-XL's
# WikiText-103 base model (Dai et al. 2019) used.
DROPOUT_EPOCHS = 4.0
RECOMMENDED_DROPOUT = 0.1
GPUS = ("A100", "H100")
CHINCHILLA_TOKENS_PER_PARAM = 20.0
# Published training-split sizes, for a plan made before the data is prepared (then marked "~"):
# WikiText-103's train split is 103M words (Merity et al. 2016), ~117M GPT-2 BPE tokens.
KNOWN_TRAIN_TOKENS = {("wikitext-103", "gpt2"): 117_000_000}


def train_split_tokens(variant: Variant) -> int | None:
    """Tokens in the prepared training split, or None when the data is not prepared (plan never
    prepares data: it must stay fast)."""
    data_dir = Path(variant.config.data.resolved_dir)
    if not (data_dir / META_FILE).is_file():
        return None
    return int(read_meta(data_dir)["splits"]["train"]["tokens"])


def approx_split_tokens(variant: Variant) -> int | None:
    return KNOWN_TRAIN_TOKENS.get((variant.config.data.dataset, variant.config.data.tokenizer))


def measured_mfu(gpu: str, results_dir: Path = GPU_RESULTS_DIR) -> dict[str, Any] | None:
    """{"mfu", "source"}: the dense baseline's ("base") training MFU from the GPU proof's record of
    a card whose name contains `gpu` ("A100", "H100"), or None when the repository holds no such
    record with its train part "ok". Several matching cards (e.g. 40 and 80 GB): the lowest MFU,
    so that the plan errs long."""
    found = []
    for path in sorted(results_dir.glob("gpu-*.json")):
        record = _gpu_record(path)
        name = record.get("gpu", {}).get("name", "")
        train = record.get("parts", {}).get("train", {})
        if not re.search(rf"\b{re.escape(gpu)}\b", name) or train.get("status") != "ok":
            continue
        base = [r["mfu"] for r in train.get("rows", []) if r.get("variant") == "base" and r.get("mfu")]
        if base:
            found.append({"mfu": float(base[0]), "source": f"measured: {name}, dense base ({path.name})"})
    return min(found, key=lambda m: m["mfu"]) if found else None


def _gpu_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not a GPU record (invalid JSON: {e}): rerun benchmarks/gpu_check.sh or "
                          "remove it, or pass --mfu") from None


def mfu_by_gpu(mfu: float | None, results_dir: Path = GPU_RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """{gpu: {"mfu", "source"}} for each of GPUS: --mfu, else measured, else DEFAULT_MFU (assumed)."""
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1]; got {mfu}")
    out = {}
    for gpu in GPUS:
        if mfu is not None:
            out[gpu] = {"mfu": mfu, "source": "--mfu"}
        else:
            out[gpu] = measured_mfu(gpu, results_dir) or {"mfu": DEFAULT_MFU, "source": "assumed"}
    return out


def expert_work_factor(moe: MoEConfig, n_tokens: int) -> float:
    """Expert work a dispatch does over the top-k work (one expert pass per token and chosen
    expert): 1 for grouped and loop (dropless, top-k rows); E x C / (top_k x N) for capacity,
    which computes every slot of its (E, C, d) buffers: ~capacity_factor, or E / top_k without a
    factor (C = N). n_tokens: the tokens of one micro-batch, over which capacity is counted."""
    if moe.dispatch != "capacity":
        return 1.0
    return moe.n_experts * expert_capacity(moe, n_tokens) / (moe.top_k * n_tokens)


def routed_expert_flops(model: ModelConfig) -> int:
    """Training FLOPs per token in the routed experts at top-k work: 6 x top_k x one expert's
    parameters, over the MoE layers (0 for a dense model)."""
    if model.moe is None:
        return 0
    layers = sum(model.is_moe_layer(i) for i in range(model.n_layers))
    return 6 * model.moe.top_k * mlp_params(model.d_model, model.moe.d_ff_expert, model.mlp, model.bias) * layers


def train_flops_per_token(variant: Variant) -> tuple[int, float]:
    """(FLOPs per token the plan counts, the MoE expert-work factor): accounting's figure, plus
    the dispatch's extra expert work beyond top-k (capacity only)."""
    model, t = variant.config.model, variant.config.train
    if model.moe is None:
        return variant.params["flops_per_token"], 1.0
    factor = expert_work_factor(model.moe, t.micro_batch_size * t.seq_len)
    return round(variant.params["flops_per_token"] + (factor - 1) * routed_expert_flops(model)), factor


def recommended_dropout(epochs: float | None) -> float | None:
    """model.dropout for a run of `epochs` over its data (None when unknown): RECOMMENDED_DROPOUT
    above DROPOUT_EPOCHS epochs, else 0 (new or barely repeated tokens: no dropout, as GPT-3 and
    Chinchilla-style pre-training)."""
    if epochs is None:
        return None
    return RECOMMENDED_DROPOUT if epochs > DROPOUT_EPOCHS else 0.0


def resolution(campaign: Campaign, seed_std: float = ASSUMED_SEED_STD,
               source: str = SEED_STD_SOURCE) -> dict[str, Any]:
    """The smallest test-loss difference between two arms' means the campaign's seeds can expect
    to resolve at a stated seed sd: an estimate (unpaired t half-width; pairing does better)."""
    n = len(campaign.seeds)
    return {"seed_std": seed_std, "seed_std_source": source, "seeds": n,
            "resolvable": resolvable_difference(seed_std, n), "estimate": True}


def runs_per_variant(campaign: Campaign) -> dict[str, Any]:
    """Sweep and seed runs per variant, and their cost in full-run equivalents."""
    n_lr = len(campaign.sweep.lr) * max(1, len(campaign.sweep.seeds)) if campaign.sweep else 0  # LRs x sweep seeds
    fraction = campaign.sweep.fraction if campaign.sweep else 0.0
    seeds = len(campaign.seeds)
    # with [budgets], each seed is a stable run and its decay branches (runlist.budget_cost)
    per_seed = budget_cost(campaign, campaign.variants[0])
    branches = 1 + (len(campaign.budgets.fractions) + 1 if campaign.budgets else 0)
    return {"sweep_runs": n_lr, "seed_runs": seeds * branches, "runs": n_lr + seeds * branches, "branches": branches > 1,
            "full_run_equivalents": n_lr * fraction + seeds * per_seed}


def variant_estimate(variant: Variant, per_variant: dict[str, Any], mfu: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t = variant.config.train
    tokens = t.total_steps() * t.tokens_per_update
    split, source = train_split_tokens(variant), "meta.json"
    if split is None:
        split, source = approx_split_tokens(variant), "published size (data not prepared)"
    flops_per_token, factor = train_flops_per_token(variant)
    flops = flops_per_token * tokens * per_variant["full_run_equivalents"]
    epochs = tokens / split if split else None
    row = {
        "variant": variant.name, "active": variant.params["active"], "tokens": tokens,
        "epochs": epochs, "train_split_tokens": split,
        "epochs_source": source if split else None,
        "epochs_text": "unknown" if not split else f"{tokens / split:.2f}" + ("" if source == "meta.json" else "~"),
        "tokens_per_active_param": tokens / variant.params["active"], "runs": per_variant["runs"],
        "flops_per_token": flops_per_token, "expert_work_factor": factor if variant.config.model.moe else None,
        "train_flops": flops, "dropout": variant.config.model.dropout, "recommended_dropout": recommended_dropout(epochs),
    }
    for gpu in GPUS:
        row[f"hours_{gpu}"] = flops / (PEAK_BF16_FLOPS[gpu] * mfu[gpu]["mfu"]) / 3600
    return row


def measure_cpu_rate(variant: Variant, steps: int = 3) -> float:
    """Training tokens/s of one micro-batch optimizer step on this CPU (fp32, eager), median of
    `steps` after one warm-up step."""
    step = our_step(variant.config, torch.device("cpu"), None, compiled=False)
    seconds = median(time_fn(step, "cpu", repeats=steps, warmup=1))
    t = variant.config.train
    return t.micro_batch_size * t.seq_len / seconds


def estimate(campaign: Campaign, mfu: float | None = None, measure_cpu: bool = False,
             seed_std: float | None = None, results_dir: Path = GPU_RESULTS_DIR) -> dict[str, Any]:
    """{"rows": per variant, "runs", "hours_<GPU>" (in all), "hours_cpu" (None unless measured),
    "mfu" ({gpu: {"mfu", "source"}}), "resolution", "warnings"}. mfu: --mfu for every GPU (None:
    measured where recorded, else assumed); seed_std: the resolution's seed sd (None: ASSUMED_SEED_STD)."""
    mfus = mfu_by_gpu(mfu, results_dir)
    per_variant = runs_per_variant(campaign)
    rows = [variant_estimate(v, per_variant, mfus) for v in campaign.variants]
    if measure_cpu:
        for v, row in zip(campaign.variants, rows):
            row["cpu_tokens_per_s"] = measure_cpu_rate(v)
            row["hours_cpu"] = row["tokens"] * per_variant["full_run_equivalents"] / row["cpu_tokens_per_s"] / 3600
    resolved = resolution(campaign) if seed_std is None else resolution(campaign, seed_std, "--seed-std")
    out = {"rows": rows, "runs": per_variant["runs"] * len(rows), "per_variant": per_variant, "mfu": mfus,
           "resolution": resolved,
           "hours_cpu": sum(r["hours_cpu"] for r in rows) if measure_cpu else None,
           "warnings": warnings(campaign, rows)}
    for gpu in GPUS:
        out[f"hours_{gpu}"] = sum(r[f"hours_{gpu}"] for r in rows)
    return out


def warnings(campaign: Campaign, rows: list[dict[str, Any]]) -> list[str]:
    found = []
    for v, row in zip(campaign.variants, rows):
        t = v.config.train
        if not t.max_steps and t.max_tokens % t.tokens_per_update:
            found.append(f"{v.name}: train.max_tokens {t.max_tokens:,} is not a whole number of updates of "
                         f"{t.tokens_per_update:,} tokens: {row['tokens']:,} are trained")
        if row["epochs"] is not None and row["epochs"] > 1:
            found.append(f"{v.name}: {row['epochs']:.2f} epochs over the training split: watch validation loss "
                         "(it may rise once windows repeat; the report flags an arm whose last evaluations rose)")
        if row["recommended_dropout"] is not None and row["recommended_dropout"] != row["dropout"]:
            found.append(f"{v.name}: model.dropout = {row['dropout']:g}; recommended {row['recommended_dropout']:g} at "
                         f"{row['epochs']:.2f} epochs ({'above' if row['epochs'] > DROPOUT_EPOCHS else 'at most'} "
                         f"{DROPOUT_EPOCHS:g}: Muennighoff et al. 2023)")
        ratio = row["tokens_per_active_param"] / CHINCHILLA_TOKENS_PER_PARAM
        if not 0.5 <= ratio <= 2:
            found.append(f"{v.name}: {row['tokens_per_active_param']:.1f} tokens per active parameter, far from "
                         f"~{CHINCHILLA_TOKENS_PER_PARAM:g} (Chinchilla): "
                         + ("under-trained for its size" if ratio < 1 else "over-trained for its size"))
    first = campaign.variants[0].config
    stride = first.train.eval_stride or first.train.seq_len
    if first.data.dataset in WIKITEXT and stride > first.train.seq_len // 2:
        found.append(f"train.eval_stride {stride} is above half of seq_len ({first.train.seq_len}): the WikiText "
                     "perplexities will not compare with published sliding-window figures (set eval_stride <= "
                     f"{first.train.seq_len // 2})")
    if rows and rows[0]["epochs"] is None:
        found.append("epochs unknown: the data is not prepared yet (llmlab prepare, or the first run prepares it)")
    elif rows and rows[0]["epochs_source"] != "meta.json":
        found.append(f"epochs marked ~ are from the {rows[0]['epochs_source']}: "
                     f"~{rows[0]['train_split_tokens']:,} training tokens")
    return found
