"""The plan before the compute: what a campaign costs and what its budget means.

Per variant: active parameters with embeddings (the "125M" a user means), training tokens, epochs
over the training split (from the prepared data's meta.json; unknown when the data is not
prepared yet), tokens per active parameter. For the campaign: the number of runs (sweep LRs and
seeds per variant) and the wall time on an A100 and an H100 at a stated MFU from FLOPs per token
(6 N_active + attention, model/accounting.py), and on this CPU from a few measured training steps
(`measure_cpu=True`: it builds each model and times a few optimizer steps, so it is an option).

The GPU figures count training FLOPs only: evaluation and the decode sweep are extra (a few %).
Warnings: more than one epoch (validation loss may start to rise: watch it, consider dropout);
a budget that is not a whole number of updates (the remainder is not trained); tokens per active
parameter more than 2x away from ~20 (Hoffmann et al. 2022, "Chinchilla": the compute-optimal
ratio; far below it a model is under-trained for its size, which a comparison at equal budget
may accept, but should say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmlab.campaign.plan import Campaign, Variant

DEFAULT_MFU = 0.40
GPUS = ("A100", "H100")
CHINCHILLA_TOKENS_PER_PARAM = 20.0
# Published training-split sizes, for a plan made before the data is prepared (then marked "~"):
# WikiText-103's train split is 103M words (Merity et al. 2016), ~117M GPT-2 BPE tokens.
KNOWN_TRAIN_TOKENS = {("wikitext-103", "gpt2"): 117_000_000}


def train_split_tokens(variant: Variant) -> int | None:
    """Tokens in the prepared training split, or None when the data is not prepared (plan never
    prepares data: it must stay fast)."""
    from llmlab.data.meta import META_FILE, read_meta

    data_dir = Path(variant.config.data.resolved_dir)
    if not (data_dir / META_FILE).is_file():
        return None
    return int(read_meta(data_dir)["splits"]["train"]["tokens"])


def approx_split_tokens(variant: Variant) -> int | None:
    return KNOWN_TRAIN_TOKENS.get((variant.config.data.dataset, variant.config.data.tokenizer))


def runs_per_variant(campaign: Campaign) -> dict[str, Any]:
    """Sweep and seed runs per variant, and their cost in full-run equivalents."""
    n_lr = len(campaign.sweep.lr) * max(1, len(campaign.sweep.seeds)) if campaign.sweep else 0  # LRs x sweep seeds
    fraction = campaign.sweep.fraction if campaign.sweep else 0.0
    seeds = len(campaign.seeds)
    return {"sweep_runs": n_lr, "seed_runs": seeds, "runs": n_lr + seeds, "full_run_equivalents": n_lr * fraction + seeds}


def variant_estimate(variant: Variant, per_variant: dict[str, Any], mfu: float) -> dict[str, Any]:
    from llmlab.train.metrics import PEAK_BF16_FLOPS

    t = variant.config.train
    tokens = t.total_steps() * t.tokens_per_update
    split, source = train_split_tokens(variant), "meta.json"
    if split is None:
        split, source = approx_split_tokens(variant), "published size (data not prepared)"
    flops = variant.params["flops_per_token"] * tokens * per_variant["full_run_equivalents"]
    row = {
        "variant": variant.name, "active": variant.params["active"], "tokens": tokens,
        "epochs": tokens / split if split else None, "train_split_tokens": split,
        "epochs_source": source if split else None,
        "epochs_text": "unknown" if not split else f"{tokens / split:.2f}" + ("" if source == "meta.json" else "~"),
        "tokens_per_active_param": tokens / variant.params["active"], "runs": per_variant["runs"],
        "train_flops": flops,
    }
    for gpu in GPUS:
        row[f"hours_{gpu}"] = flops / (PEAK_BF16_FLOPS[gpu] * mfu) / 3600
    return row


def measure_cpu_rate(variant: Variant, steps: int = 3) -> float:
    """Training tokens/s of one micro-batch optimizer step on this CPU (fp32, eager), median of
    `steps` after one warm-up step."""
    import torch

    from llmlab.bench.train import our_step  # the benchmark's own timed step: model, loss, AdamW
    from llmlab.timing import median, time_fn

    step = our_step(variant.config, torch.device("cpu"), None, compiled=False)
    seconds = median(time_fn(step, "cpu", repeats=steps, warmup=1))
    t = variant.config.train
    return t.micro_batch_size * t.seq_len / seconds


def estimate(campaign: Campaign, mfu: float = DEFAULT_MFU, measure_cpu: bool = False) -> dict[str, Any]:
    """{"rows": per variant, "runs", "hours_<GPU>", "hours_cpu" (None unless measured), "mfu", "warnings"}."""
    from llmlab.errors import ConfigError

    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1]; got {mfu}")
    per_variant = runs_per_variant(campaign)
    rows = [variant_estimate(v, per_variant, mfu) for v in campaign.variants]
    if measure_cpu:
        for v, row in zip(campaign.variants, rows):
            row["cpu_tokens_per_s"] = measure_cpu_rate(v)
            row["hours_cpu"] = row["tokens"] * per_variant["full_run_equivalents"] / row["cpu_tokens_per_s"] / 3600
    out = {"rows": rows, "runs": per_variant["runs"] * len(rows), "per_variant": per_variant, "mfu": mfu,
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
                         "(it may rise once windows repeat) and consider dropout (model.dropout)")
        ratio = row["tokens_per_active_param"] / CHINCHILLA_TOKENS_PER_PARAM
        if not 0.5 <= ratio <= 2:
            found.append(f"{v.name}: {row['tokens_per_active_param']:.1f} tokens per active parameter, far from "
                         f"~{CHINCHILLA_TOKENS_PER_PARAM:g} (Chinchilla): "
                         + ("under-trained for its size" if ratio < 1 else "over-trained for its size"))
    if rows and rows[0]["epochs"] is None:
        found.append("epochs unknown: the data is not prepared yet (llmlab prepare, or the first run prepares it)")
    elif rows and rows[0]["epochs_source"] != "meta.json":
        found.append(f"epochs marked ~ are from the {rows[0]['epochs_source']}: "
                     f"~{rows[0]['train_split_tokens']:,} training tokens")
    return found
