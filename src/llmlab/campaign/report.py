"""`llmlab report DIR`: the campaign's answer from run records alone (campaign.json, result.json,
infer.json, metrics.jsonl, routing/, config.toml), as report.md, report.csv and PNGs (matplotlib).

DIR is a campaign output (campaign.json: variants in order, ablations, sweep points and chosen LR,
runs by seed) or any folder of run directories (one run per variant). Comparisons are against the
first variant, the baseline. Sections: method (seeds, LR rule, spike rule, verdict rule); quality
(mean ± std over seeds) with loss-vs-tokens and params-vs-loss plots; paired differences; the LR
sweep; speed; stability (spikes per run); MoE routing over training (load heatmap, dropped
fraction, entropy, router saturation); memory (what fits a budget); the decode sweep; and the
Findings, generated from those numbers (findings.py).
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path
from typing import Any

from llmlab.campaign import aggregate, budgets as budget_answer, figures, watch
from llmlab.campaign.findings import findings, loss_hypotheses
from llmlab.campaign.integrity import run_dirname
from llmlab.campaign.memory import MEMORY_COLUMNS, describe_budget, memory_budget, memory_table
from llmlab.campaign.records import VariantRecord, all_run_dirs, load_records, provenance
from llmlab.campaign.records import infer as infer_record, result as result_record
from llmlab.campaign.runlist import CLIFF, choice_flags, lr_points
from llmlab.campaign.spec import FLOPS_GAP, flops_gaps
from llmlab.campaign.stability import SpikeRule
from llmlab.campaign.stats import OutlierRule
from llmlab.config import load_run_config
from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import LLMLabError
from llmlab.files import write_bytes_atomic
from llmlab.runs import CONFIG_FILE, read_metrics
from llmlab.train.routing_probe import router_saturation

Column = tuple[str, str, str]  # (key, header, format)
TABLES: list[tuple[str, list[Column]]] = [  # one markdown table each: a wide one would not read
    ("Quality", [
        ("variant", "variant", ""), ("kind", "kind", ""), ("lr", "lr", "g"), ("seeds", "seeds", "d"),
        ("active_non_embedding", "active non-emb", ",d"), ("total", "total params", ",d"),
        ("val_loss_text", "val loss", ""), ("test_loss_text", "test loss", ""),
        ("test_bits_per_byte_text", "test bits/byte", ""), ("test_word_ppl_text", "test word ppl", ""),
    ]),
    ("Speed", [
        ("variant", "variant", ""), ("kv_bytes_per_token", "KV B/token (bf16)", ",d"),
        ("flops_per_token", "train FLOPs/token", ",d"), ("train_tokens_per_s", "train tok/s", ",.0f"),
        ("decode_tokens_per_s_cache", "decode tok/s (cache)", ",.1f"),
        ("decode_tokens_per_s_no_cache", "decode tok/s (no cache)", ",.1f"),
        ("kv_cache_speedup", "cache speedup", ".2f"),
    ]),
    ("MoE routing", [
        ("variant", "variant", ""), ("moe_max_load", "MoE max/mean load", ".2f"),
        ("moe_min_load", "MoE min load", ".3f"), ("moe_dropped_frac", "MoE dropped", ".2%"),
    ]),
]
SECTION_NOTES = {
    "Quality": "Mean ± sample standard deviation over seeds (seed s drives initialisation and data order, the"
               " same for every variant); bits per byte everywhere, word-level perplexity only where the corpus"
               " defines words (WikiText).\n\n",
    "Speed": "Train tok/s: the median over the variant's seed runs (each run's rate over its own timed updates;"
             " a busy machine lowers it: `llmlab bench train` compares speed side by side). Decode tokens/s at the"
             " sweep's smallest batch and longest context, on the seed-0 weights (all points: Decode sweep).\n\n",
    "MoE routing": "Each row of metrics.jsonl averages every update since the previous row; the table gives the"
                   " mean over the last 5 rows of each seed, averaged over the variant's seeds.\n\n",
}
SWEEP_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("context", "context", ",d"), ("batch_size", "batch", ",d"),
    ("prefill_ms_cache", "prefill ms (cache)", ",.1f"),
    ("decode_tokens_per_s_cache", "decode tok/s (cache)", ",.1f"),
    ("decode_tokens_per_s_no_cache", "decode tok/s (no cache)", ",.1f"),
    ("kv_cache_speedup", "cache speedup", ".2f"),
    ("decode_tokens_per_s_compiled", "decode tok/s (compiled)", ",.1f"),
    ("compiled_speedup", "compiled speedup", ".2f"),
]


def routing_summary(metrics: list[dict[str, Any]], last: int = 5) -> dict[str, float]:
    """Mean over the last `last` logged steps (and over MoE layers) of the routing statistics."""
    rows = [r for r in metrics if "moe_load" in r][-last:]
    if not rows:
        return {}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "moe_max_load": mean([mean(r["moe_max_load"]) for r in rows]),
        "moe_min_load": mean([min(min(layer) for layer in r["moe_load"]) for r in rows]),
        "moe_dropped_frac": mean([mean(r["moe_dropped_frac"]) for r in rows]),
    }


def routing_over_seeds(record: VariantRecord) -> dict[str, float]:
    """routing_summary averaged over every finished seed of the variant (not its first alone)."""
    summaries = [x for d in record.runs.values() if (x := routing_summary(read_metrics(d)))]
    return {key: sum(x[key] for x in summaries) / len(summaries) for key in summaries[0]} if summaries else {}


def train_rate_over_seeds(record: VariantRecord) -> dict[str, float]:
    """The median training tokens/s over the variant's finished seed runs: one run that shared the
    machine with other work does not stand for the variant (its own rate is in its result.json)."""
    rates = [r for d in record.runs.values() if (r := result_record(d).get("tokens_per_s"))]
    return {"train_tokens_per_s": statistics.median(rates)} if rates else {}


def variant_row(name: str, run_dir: Path) -> dict[str, Any]:
    result, infer = result_record(run_dir), infer_record(run_dir)
    params = result.get("params", {})
    row = {
        "variant": name,
        "active_non_embedding": params.get("active_non_embedding"),
        "total": params.get("total"),
        "kv_bytes_per_token": params.get("kv_cache_bytes_per_token"),
        "flops_per_token": params.get("flops_per_token"),
        "val_loss": result.get("val_loss"),
        "test_loss": result.get("test_loss"),
        "test_ppl": result.get("test_ppl"),
        "test_bits_per_byte": result.get("test_bits_per_byte"),
        "test_word_ppl": result.get("test_word_ppl"),
        "train_tokens_per_s": result.get("tokens_per_s"),
        "decode_tokens_per_s_cache": infer.get("tokens_per_s_kv_cache"),
        "decode_tokens_per_s_no_cache": infer.get("tokens_per_s_no_cache"),
        "kv_cache_speedup": infer.get("kv_cache_speedup"),
        "tokens": result.get("tokens"),
        "device": result.get("device"),
        "sample": infer.get("sample"),
    }
    row.update(routing_summary(read_metrics(run_dir)))
    return row


def sweep_rows(name: str, run_dir: Path) -> list[dict[str, Any]]:
    """One row per (context, batch size) of the variant's decode sweep (infer.json "points")."""
    points = infer_record(run_dir).get("points", [])
    rows = []
    for p in points:
        cases, base = p["cases"], p["cases"].get("no_cache", {}).get("decode_tokens_per_s")
        tok_s = {case: figures["decode_tokens_per_s"] for case, figures in cases.items()}
        rows.append({
            "variant": name, "context": p["context"], "batch_size": p["batch_size"],
            "prefill_ms_cache": 1000 * cases["kv_cache"]["prefill_s"] if "kv_cache" in cases else None,
            "decode_tokens_per_s_cache": tok_s.get("kv_cache"),
            "decode_tokens_per_s_no_cache": base,
            "kv_cache_speedup": tok_s["kv_cache"] / base if base and "kv_cache" in tok_s else None,
            "decode_tokens_per_s_compiled": tok_s.get("compiled"),
            "compiled_speedup": tok_s["compiled"] / base if base and "compiled" in tok_s else None,
        })
    return rows


def markdown(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    cols = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    out = io.StringIO()
    out.write("| " + " | ".join(h for _, h, _ in cols) + " |\n")
    out.write("|" + "|".join(" ---: " if f else " --- " for _, _, f in cols) + "|\n")  # numbers right
    for r in rows:
        cells = ["-" if r.get(k) is None else format(r[k], f) if f else str(r[k]) for k, _, f in cols]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def memory_section(records: list[VariantRecord], memory_gb: float | None) -> tuple[list[dict[str, Any]], str]:
    """(rows, markdown): what fits a memory budget, per variant, from each first run's config.toml."""
    device = resolve_device("auto")
    budget, source = memory_budget(memory_gb, device)
    configs = [(r.name, load_run_config(r.first / CONFIG_FILE), r.kind == "ablation") for r in records]
    dtype_bytes = _inference_dtype_bytes(records[0].first, device)
    seq_len = configs[0][1].train.seq_len
    rows = memory_table([(n, c.model, a) for n, c, a in configs], seq_len, budget, dtype_bytes)
    text = f"{describe_budget(budget, source, dtype_bytes, seq_len)}.\n\n{markdown(rows, MEMORY_COLUMNS)}"
    return rows, text


def _inference_dtype_bytes(run_dir: Path, device: Any) -> int:
    """Bytes per element of the dtype the campaign decoded in (infer.json), else this device's."""
    dtype = infer_record(run_dir).get("dtype")
    if dtype is None:
        dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


DIFFERENCE_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("against", "against", ""), ("n", "paired seeds", "d"),
    ("mean", "Δ test loss", "+.4f"), ("low", "95 % CI low", "+.4f"), ("high", "95 % CI high", "+.4f"),
    ("p_value", "p (paired t)", ".3g"), ("verdict", "verdict", ""),
]
SWEEP_LR_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("lr", "lr", "g"), ("steps", "updates", ",d"), ("seeds", "seeds", "d"),
    ("status", "status", ""), ("val_loss", "final val loss (mean)", ".4f"), ("per_seed", "per seed", ""),
    ("chosen", "chosen", ""),
]
HYPOTHESIS_COLUMNS: list[Column] = [
    ("title", "hypothesis", ""), ("n", "paired seeds", "d"), ("mean", "Δ test loss", "+.4f"),
    ("low", "seed CI low", "+.4f"), ("high", "seed CI high", "+.4f"), ("p_value", "p (raw)", ".3g"),
    ("p_holm", "p (Holm)", ".3g"), ("eval_low", "eval-noise CI low", "+.4f"), ("eval_high", "eval-noise CI high", "+.4f"),
    ("verdict_holm", "verdict (Holm)", ""),
]
FLAGGED_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("seed", "seed", "d"), ("problem", "problem", ""), ("detail", "detail", ""),
]
STABILITY_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("run", "run", ""), ("loss_spikes", "loss spikes", "d"),
    ("loss_spike_steps", "at steps", ""), ("grad_spikes", "grad-norm spikes", "d"), ("grad_spike_steps", "at steps", ""),
]
ROUTING_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("seed", "seed", "d"), ("entropy_first", "router entropy (first)", ".3f"),
    ("entropy_last", "(last)", ".3f"), ("max_entropy", "log E", ".3f"), ("dropped_max", "dropped (max)", ".2%"),
    ("dropped_last", "dropped (last)", ".2%"), ("saturation_mid_step", "saturation at step", ",d"),
    ("saturation_mid", "saturation", ".3f"),
]


def method_section(campaign: dict[str, Any]) -> str:
    """How the figures were made: seeds, the LR choice rule, the spike rule, the verdict rule."""
    sweep = campaign.get("sweep")
    lines = ["## Method", ""]
    if campaign.get("seeds"):
        lines.append(f"- Seeds {campaign['seeds']}: every variant at every seed; seed s sets the initialisation"
                     " and the data order, so runs with the same seed are paired across variants.")
    if sweep:
        seeds = f"seeds {sweep['seeds']}" if len(sweep.get("seeds") or []) > 1 else "first seed"
        windows = f", {sweep['eval_windows']} validation windows" if sweep.get("eval_windows") else ""
        lines.append(f"- Learning rate: a sweep over {sweep['lr']} on {sweep['fraction']:g} of the budget ({seeds}"
                     f"{windows}, same tokens for every variant; min_lr scaled with the LR); chosen: {sweep['rule']}.")
    else:
        lines.append("- Learning rate: each variant's config (no sweep in this campaign).")
    if campaign.get("budgets"):
        lines.append(f"- Budgets: the full one and fractions {campaign['budgets']['fractions']} of it, by "
                     f"{campaign['budgets']['method']}: each branch decays off the stable run at the start of its"
                     " own decay, so it is the WSD run of that budget (with the full run's warm-up).")
    lines.append(f"- Spikes (loss and gradient norm, per run): {SpikeRule().describe()}.")
    lines.append("- Differences: variant − baseline per seed; 95 % paired t interval (scipy) = seed noise. The loss"
                 " hypotheses form one family: beside each raw p its Holm-adjusted p (Holm 1979), and the verdict from"
                 " the adjusted p (better / worse below 0.05, otherwise no difference detectable at this budget).")
    lines.append("- Evaluation noise, apart: a paired bootstrap over the test windows (the same resampled windows for"
                 " both arms and every seed; 2,000 resamples, seed 0; percentile 95 % interval), weights held fixed.")
    lines.append(f"- Seed noise is pooled over the compared arms (ablations apart). Flagged by name, never silently"
                 f" averaged: runs that diverged, and runs far from their arm's other seeds: {OutlierRule().describe()}.")
    return "\n".join(lines) + "\n"


def hypotheses_section(rows: list[dict[str, Any]]) -> str:
    """The family of loss hypotheses: raw and Holm-adjusted p, seed and evaluation-noise intervals."""
    if not rows:
        return ""
    table = [r | {"eval_low": r["bootstrap"].low if r["bootstrap"] else None,
                  "eval_high": r["bootstrap"].high if r["bootstrap"] else None} for r in rows]
    return ("## Loss hypotheses (one family, Holm)\n\nSeed CI: paired t over seeds (95 %). Eval-noise CI: paired"
            " bootstrap over test windows with the trained weights fixed (95 %; '-' where per-window losses were not"
            f" recorded). Verdicts on the Holm-adjusted p.\n\n{markdown(table, HYPOTHESIS_COLUMNS)}")


BUDGET_COLUMNS: list[Column] = [
    ("title", "hypothesis", ""), ("updates", "updates", ",d"), ("tokens", "tokens", ",d"), ("n", "paired seeds", "d"),
    ("mean", "Δ test loss", "+.4f"), ("low", "seed CI low", "+.4f"), ("high", "seed CI high", "+.4f"),
    ("p_value", "p (raw)", ".3g"), ("p_holm", "p (Holm, this budget)", ".3g"), ("eval_low", "eval-noise CI low", "+.4f"),
    ("eval_high", "eval-noise CI high", "+.4f"), ("verdict_holm", "verdict (Holm)", ""),
]


def budget_section(rows: list[dict[str, Any]], plot: str | None) -> str:
    """Each loss hypothesis at every budget of the decay branches, and whether its sign changes."""
    if not rows:
        return ""
    table = [r | {"eval_low": r["bootstrap"].low if r["bootstrap"] else None,
                  "eval_high": r["bootstrap"].high if r["bootstrap"] else None} for r in rows]
    signs = "".join(f"- {title}: {budget_answer.sign_change(rs)}.\n"
                    for title, rs in budget_answer.by_hypothesis(rows).items())
    return ("## The answer against budget\n\nEach budget's runs are decay branches (WSD, Hägele et al. 2024) of one"
            " stable run per variant and seed: the run of that budget trained from scratch, with the full run's"
            " warm-up. Holm within each budget; budgets share their stable runs, so they are not independent tests."
            f"\n\n{markdown(table, BUDGET_COLUMNS)}\n{signs}{_image(plot)}")


def flagged_section(records: list[VariantRecord]) -> str:
    """Runs named before any mean is read: outlying seeds and runs that did not finish."""
    rows = aggregate.flagged_runs(records)
    if not rows:
        return ""
    return ("## Flagged runs\n\nRuns a mean would hide. Outliers stay in the means (the Findings give the seed"
            " noise without them); runs that did not finish are left out.\n\n" + markdown(rows, FLAGGED_COLUMNS))


def sweep_section(records: list[VariantRecord], plot: str | None) -> str:
    """Each variant's LR curve (mean final val loss over the sweep seeds per grid LR), the chosen
    point, and the choices that deserve a second look (runlist.choice_flags)."""
    rows = []
    for r in records:
        steps = {e["lr"]: e.get("steps") for e in r.sweep}
        for p in lr_points(r.sweep):
            status = "diverged" if p["diverged"] else "completed" if p["val_loss"] is not None else "unfinished"
            rows.append({"variant": r.name, "lr": p["lr"], "steps": steps[p["lr"]], "seeds": p["seeds"], "status": status,
                         "val_loss": p["val_loss"], "chosen": "yes" if p["lr"] == r.lr else "",
                         "per_seed": ", ".join("-" if v is None else f"{v:.4f}" for v in p["values"])
                         if p["seeds"] > 1 else None})
    if not rows:
        return ""
    flags = [f"- {r.name} (lr {r.lr:g}): {'; '.join(f)}" for r in records
             if r.sweep and r.lr is not None and (f := choice_flags(r.lr, r.sweep))]
    note = ("\nChoices to read with care (edge of the grid, or a grid neighbour more than "
            f"{100 * CLIFF:g} % worse or diverged):\n\n" + "\n".join(flags) + "\n" if flags else "")
    return f"## Learning-rate sweep\n\n{markdown(rows, SWEEP_LR_COLUMNS)}{note}{_image(plot)}"


def _image(name: str | None, alt: str = "") -> str:
    return f"\n![{alt or name}]({name})\n" if name else ""


def moe_section(records: list[VariantRecord], directory: Path) -> tuple[str, list[str]]:
    """Routing over training for each MoE variant: a table row per seed (entropy, dropped tokens,
    router saturation, so seeds can be compared), and the first seed's heatmap and curves."""
    rows, images = [], []
    for r in records:
        seed_rows = [row | {"seed": seed} for seed, d in sorted(r.runs.items())
                     if (row := aggregate.routing_row(r.name, d, read_metrics(d))) is not None]
        if not seed_rows or figures.pyplot() is None:
            continue
        rows += seed_rows
        slug = run_dirname(r.name)
        heat = figures.moe_load(r.name, r.first, directory / f"moe_load_{slug}.png")
        curves = figures.moe_routing(r.name, r.first, router_saturation(r.first),
                                     directory / f"moe_routing_{slug}.png")
        images += [x for x in (heat, curves) if x]
    if not rows:
        return "", []
    spread = "".join(f"- {name}: saturation at the middle evaluation {min(v):.3f}–{max(v):.3f} over {len(v)} seeds.\n"
                     for name in dict.fromkeys(row["variant"] for row in rows)
                     if len(v := [row["saturation_mid"] for row in rows
                                  if row["variant"] == name and row["saturation_mid"] is not None]) > 1)
    text = ("## MoE routing over training\n\nEvery seed of each MoE variant (figures: its first seed). Router"
            " saturation (OLMoE): the share of a fixed probe batch's top-k assignments at an evaluation that equal"
            " the final step's; entropy and dropped tokens are interval means of metrics.jsonl.\n\n"
            + markdown(rows, ROUTING_COLUMNS) + ("\n" + spread if spread else "") + "".join(_image(i) for i in images))
    return text, images


OVERFIT_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("epochs", "epochs", ".2f"), ("last_val_losses", "last val losses (flagged seed, else first)", ""),
    ("flagged", "val loss rose at the end", ""),
]
DISPATCH_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("dispatch", "dispatch", ""), ("dropped_last", "dropped (last step)", ".2%"),
    ("dropped_max", "dropped (max over training)", ".2%"),
]


def evaluation_note(records: list[VariantRecord]) -> str:
    """The windows behind the loss figures: the stride each split was evaluated at."""
    strides = watch.eval_strides(records)

    def text(split: str) -> str:
        values = sorted(strides[split], key=lambda v: (v is None, v))
        return " / ".join("not recorded" if v is None else f"{v:,}" for v in values)
    return (f"- Evaluation: windows of seq_len at stride {text('test')} on test (the whole split) and {text('val')}"
            " on validation (its first train.eval_windows windows); a stride below seq_len is the sliding-window"
            " evaluation of the published WikiText figures (each window scores only its last stride tokens,"
            " every token once).\n")


def compute_section(rows: list[dict[str, Any]]) -> str:
    """FLOPs per token beside parameters: which arms differ from the baseline by more than FLOPS_GAP."""
    arms = [(r["variant"], r["flops_per_token"], r.get("kind") == "ablation") for r in rows if r.get("flops_per_token")]
    if len(arms) < 2 or len(arms) != len(rows):
        return ""
    gaps = flops_gaps(arms)
    body = "".join(f"- {g}.\n" for g in gaps) or f"- Every arm is within {FLOPS_GAP:.0%} of {arms[0][0]}'s FLOPs per token.\n"
    return ("## Compute per token\n\nTraining FLOPs per token (6 N_active + attention, model/accounting.py; Speed"
            f" table) against the baseline; a gap above {FLOPS_GAP:.0%} is named, since an equal-parameter comparison"
            f" is then not an equal-compute one.\n\n{body}")


def overfit_section(records: list[VariantRecord]) -> str:
    rows = watch.overfit_rows(records)
    if not any(r["epochs"] is not None for r in rows):
        return ""
    flagged = [r["variant"] for r in rows if r["flagged"].startswith("seed")]
    verdict = (f"Flagged: {', '.join(flagged)} -- its validation loss was rising when training ended: the budget"
               " repeats the data more than this arm can use (dropout, `llmlab plan` recommends one, or fewer"
               " epochs)." if flagged else "No arm flagged.")
    return (f"## Over-fitting watch\n\nRule: {watch.OVERFIT_RULE}. {verdict}\n\n{markdown(rows, OVERFIT_COLUMNS)}")


def dispatch_section(records: list[VariantRecord]) -> str:
    """Each MoE arm's dispatch, and the tokens it dropped (a dropless dispatch drops none)."""
    rows = watch.dispatch_rows(records)
    if not rows:
        return ""
    dropping = [r["variant"] for r in rows if r["capacity_factor"] is not None]
    note = (f"{', '.join(dropping)} dropped the assignments that overflowed an expert's capacity (chosen"
            " explicitly in the campaign): its loss is that of a model which skips those tokens' expert pass."
            if dropping else "Every MoE arm ran dropless: no assignment was dropped.")
    return f"## MoE dispatch\n\n{note}\n\n{markdown(rows, DISPATCH_COLUMNS)}"


def record_section(records: list[VariantRecord]) -> str:
    """## Record: date, machine, code version and wall time of the runs behind the report."""
    p = provenance(all_run_dirs(records))
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "unknown"  # noqa: E731
    wall = (p["last_write"] - p["first_start"]) / 60 if p["first_start"] and p["last_write"] else None
    lines = [
        f"- Runs: {p['runs']} (seed runs and sweep points), from {stamp(p['first_start'])} to {stamp(p['last_write'])}"
        + (f": {wall:.0f} minutes of wall time, {p['training_s'] / 60:.0f} of them training" if wall else ""),
        f"- Machine: {'; '.join(p['machines'])}",
        f"- llmlab commit(s): {', '.join(p['commits'])}"
        + (" (the campaign was resumed across code versions)" if len(p["commits"]) > 1 else ""),
        f"- Report written {stamp(time.time())}",
    ]
    return "## Record\n\n" + "\n".join(lines) + "\n"


def report_markdown(directory: Path, records: list[VariantRecord], rows: list[dict[str, Any]],
                    campaign: dict[str, Any], memory: tuple[list[dict[str, Any]], str], plots: dict[str, str | None],
                    moe_text: str) -> str:
    parts = [f"# Campaign report: {directory.name}\n"]
    hypotheses = loss_hypotheses(records)
    budget_rows = budget_answer.budget_rows(records)
    if any(r.get("kind") == "ablation" for r in rows):
        parts.append("Variants of kind *ablation* isolate one change; they are exempt from the parameter"
                     " match and are not iso-parameter comparisons.\n")
    parts.append(method_section(campaign) + evaluation_note(records))
    for title, columns in TABLES:
        if any(r.get(k) is not None for r in rows for k, _, _ in columns[1:]):
            parts.append(f"## {title}\n\n{SECTION_NOTES.get(title, '')}{markdown(rows, columns)}")
        if title == "Quality":
            parts.append(_image(plots.get("loss")) + _image(plots.get("params")))
            diffs = aggregate.comparisons(records)
            if diffs:
                parts.append(f"## Paired differences against {records[0].name}\n\n{markdown(diffs, DIFFERENCE_COLUMNS)}")
            parts.append(hypotheses_section(hypotheses))
            parts.append(budget_section(budget_rows, plots.get("budgets")))
            parts.append(flagged_section(records))
            parts.append(sweep_section(records, plots.get("lr_sweep")))
    parts += [compute_section(rows), overfit_section(records)]
    stability = aggregate.stability_rows(records)
    unfinished = "".join(f"- {r.name}, seed {seed}: {status} (left out of the means and the pairing)\n"
                         for r in records for seed, status in sorted(r.failed.items()))
    parts.append(f"## Stability\n\nEvery finished run; the rule is in Method.\n\n{markdown(stability, STABILITY_COLUMNS)}"
                 + (f"\nRuns that did not finish:\n\n{unfinished}" if unfinished else ""))
    parts += [dispatch_section(records), moe_text]
    parts.append(f"## Memory\n\n{memory[1]}{_image(plots.get('memory'))}")
    sweep = [row for r in records for row in sweep_rows(r.name, r.first)]
    if sweep:
        parts.append("## Decode sweep\n\nDecode tokens/s after the first token (all sequences of the batch),"
                     " prefill (time to first token) apart; medians of interleaved repeats; speedups are"
                     f" over the no-cache baseline at the same point.\n\n{markdown(sweep, SWEEP_COLUMNS)}"
                     + _image(plots.get("decode")))
    parts.append(findings(records, memory[0], hypotheses, budget_answer.budget_finding(budget_rows)))
    parts.append(record_section(records))
    return "\n".join(p for p in parts if p)


def draw(directory: Path, records: list[VariantRecord], memory_rows: list[dict[str, Any]]) -> dict[str, str | None]:
    """The campaign-wide PNGs ({} without matplotlib)."""
    if figures.pyplot() is None:
        return {}
    return {
        "loss": figures.loss_curves(records, directory / "loss.png"),
        "params": figures.params_vs_loss(records, directory / "params_vs_loss.png"),
        "lr_sweep": figures.lr_sweep(records, directory / "lr_sweep.png"),
        "decode": figures.decode_speed(records, directory / "decode.png"),
        "memory": figures.memory_fit(memory_rows, directory / "memory.png"),
        "budgets": figures.budget_differences(budget_answer.budget_rows(records), directory / "budgets.png"),
    }


def write_report(directory: str | Path, memory_gb: float | None = None) -> dict[str, Any]:
    """Write report.md, report.csv and the PNGs; return {"rows", "markdown", "files"}.
    memory_gb: the budget of the memory section (default: this machine's device memory)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LLMLabError(f"{directory} is not a directory: pass a campaign output (e.g. runs/demo)")
    records, campaign = load_records(directory)
    rows = [variant_row(r.name, r.first) | train_rate_over_seeds(r) | routing_over_seeds(r) | aggregate.quality_row(r)
            | {"kind": r.kind}
            for r in records]
    memory = memory_section(records, memory_gb)
    plots = draw(directory, records, memory[0])
    moe_text, moe_images = moe_section(records, directory)
    md = report_markdown(directory, records, rows, campaign, memory, plots, moe_text)
    # Each file is written atomically, report.md (which names the others) last: a kill leaves the
    # previous report.md or the new one, whole.
    write_bytes_atomic(directory / "report.csv", to_csv(rows).encode())
    write_bytes_atomic(directory / "report.md", md.encode())
    pngs = [p for p in plots.values() if p] + moe_images
    files = [str(directory / "report.md"), str(directory / "report.csv")] + [str(directory / p) for p in pngs]
    return {"rows": rows, "markdown": md, "files": files}
