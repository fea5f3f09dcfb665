"""The report's Findings: one paragraph per hypothesis, generated from the numbers -- never
hand-written -- with the measured effect, its uncertainty and the verdict, whichever way it goes.

Which variant tests which hypothesis is read from the configs, not from names:
- GQA with more query heads: a dense variant with fewer KV heads and more query heads than the
  baseline;
- GQA with a wider FFN (Llama 2's way of spending the saved parameters): fewer KV heads at the
  baseline's query heads and a wider d_ff; compared with the baseline, and with the query-heads
  arm when there is one ("where GQA's parameters went");
- the ablation: fewer KV heads at the baseline's query heads and d_ff;
- GQA + MoE: a variant with experts (compared with the baseline, and with the GQA variant when
  there is one: "further");
- the KV cache: every variant's decode sweep; GQA's memory: the memory table.

The loss hypotheses (LOSS_HYPOTHESES) are one family: each gets the paired t-test's raw p and its
Holm-adjusted p over the family (Holm 1979), and its verdict from the adjusted one -- *supported*
when the adjusted p is below 0.05 and the difference is negative, *contradicted* when it is below
0.05 and positive, *not resolved at this budget* otherwise. Beside the seed interval (paired t)
each gets an evaluation-noise interval (paired bootstrap over test windows, weights fixed).
"""

from __future__ import annotations

from typing import Any

from llmlab.campaign import aggregate
from llmlab.campaign.records import VariantRecord, infer, result
from llmlab.campaign.stats import BETTER, NO_DIFFERENCE, ONE_SEED, WORSE, OutlierRule, adjusted_verdict, holm

VERDICT = {BETTER: "supported", WORSE: "contradicted (the difference goes the other way)",
           NO_DIFFERENCE: "not resolved at this budget", ONE_SEED: "not testable with one seed"}


def _model(record: VariantRecord) -> dict[str, Any]:
    return record.config.get("model", {})


def roles(records: list[VariantRecord]) -> dict[str, VariantRecord]:
    """{"gqa", "gqa_wideffn", "kv_only", "moe"} -> the variant that tests each, from the configs."""
    base = _model(records[0])
    out: dict[str, VariantRecord] = {}
    for record in records[1:]:
        m = _model(record)
        if not m or not base:
            continue
        fewer_kv = m.get("n_kv_heads", 0) < base.get("n_kv_heads", 0)
        if m.get("moe"):
            out.setdefault("moe", record)
        elif fewer_kv and m.get("n_heads", 0) > base.get("n_heads", 0):
            out.setdefault("gqa", record)
        elif fewer_kv and m.get("n_heads") == base.get("n_heads") and m.get("d_ff", 0) > base.get("d_ff", 0):
            out.setdefault("gqa_wideffn", record)
        elif fewer_kv and m.get("n_heads") == base.get("n_heads"):
            out.setdefault("kv_only", record)
    return out


# (role of the variant, role of the one it is compared with (None: the baseline), the claim,
# whether Findings state it even when the campaign cannot test it), in the order Findings give them
LOSS_HYPOTHESES = (("gqa", None, "GQA with more query heads lowers test loss", True),
                   ("gqa_wideffn", None, "GQA with the saved parameters in a wider FFN lowers test loss", False),
                   ("gqa", "gqa_wideffn", "GQA's saved parameters do better in query heads than in the FFN", False),
                   ("kv_only", None, "Fewer KV heads alone (ablation, fewer parameters) lowers test loss", True),
                   ("moe", None, "GQA + MoE lowers test loss", True),
                   ("moe", "gqa", "GQA + MoE lowers test loss further than GQA", False))


def loss_hypotheses(records: list[VariantRecord], alpha: float = 0.05) -> list[dict[str, Any]]:
    """The family of loss hypotheses this campaign can test, each a paired row (aggregate.paired)
    plus "title", "p_holm" (Holm over the family), "verdict_holm" and "bootstrap" (evaluation
    noise, or None where per-window losses were not recorded)."""
    role = roles(records)
    rows = []
    for key, against, title, _ in LOSS_HYPOTHESES:
        if key not in role or (against is not None and against not in role):
            continue
        other = records[0].name if against is None else role[against].name
        row = aggregate.paired(records, role[key].name, other)
        if row is not None:
            rows.append(row | {"title": title, "bootstrap": aggregate.window_bootstrap(records, role[key].name, other)})
    for row, p in zip(rows, holm([row["p_value"] for row in rows])):
        row["p_holm"], row["verdict_holm"] = p, adjusted_verdict(row["difference"], p, alpha)
    return rows


def loss_finding(title: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return f"- **{title}**: no paired runs to compare."
    d = row["difference"]
    family = f", Holm-adjusted over the {row['family']} loss hypotheses p = {row['p_holm']:.3g}" \
        if row.get("p_holm") is not None else ""
    effect = (f"test loss {row['variant']} − {row['against']} = {d.mean:+.4f} nats/token"
              + ("" if d.low is None else f", 95 % CI [{d.low:+.4f}, {d.high:+.4f}] over {d.n} paired seeds (seed noise)"
                 + ("" if d.p_value is None else f" (paired t-test p = {d.p_value:.3g}{family})")))
    boot = row.get("bootstrap")
    if boot is not None:
        effect += (f"; evaluation noise alone (paired bootstrap over {boot.n_windows:,} test windows, weights fixed): "
                   f"95 % [{boot.low:+.4f}, {boot.high:+.4f}]")
    return f"- **{title}**: {effect}. Verdict: **{VERDICT[row.get('verdict_holm', d.verdict)]}**."


def memory_finding(memory: list[dict[str, Any]], gqa: VariantRecord | None) -> str:
    title = "GQA shrinks the KV cache and raises the context or batch that fits"
    row = next((r for r in memory if gqa and r["variant"] == gqa.name), None)
    if row is None or not memory:
        return f"- **{title}**: no GQA variant in this campaign."
    base = memory[0]
    ratio = base["kv_bytes_per_token"] / row["kv_bytes_per_token"]
    verdict = "supported" if ratio > 1 and row["max_batch_at_seq_len"] > base["max_batch_at_seq_len"] else "contradicted"
    return (f"- **{title}**: KV cache {row['kv_bytes_per_token']:,} B/token against {base['kv_bytes_per_token']:,} "
            f"({ratio:.2f}x smaller); under the report's memory budget the longest context at batch 1 is "
            f"{row['max_context_batch1']:,} against {base['max_context_batch1']:,} "
            f"({row['max_context_batch1_vs_first']:.2f}x) and the largest batch at seq_len {row['seq_len']} is "
            f"{row['max_batch_at_seq_len']:,} against {base['max_batch_at_seq_len']:,} "
            f"({row['max_batch_at_seq_len_vs_first']:.2f}x). Exact arithmetic from the configs (no seed noise). "
            f"Verdict: **{verdict}**.")


def cache_finding(records: list[VariantRecord]) -> str:
    """Speedup of cached over uncached decode at each (context, batch): the range over variants."""
    title = "The KV cache speeds up decoding"
    at: dict[tuple[int, int], list[float]] = {}
    for record in records:
        for p in infer(record.first).get("points", []):
            c = p["cases"]
            if "kv_cache" in c and "no_cache" in c and c["no_cache"]["decode_tokens_per_s"]:
                ratio = c["kv_cache"]["decode_tokens_per_s"] / c["no_cache"]["decode_tokens_per_s"]
                at.setdefault((p["context"], p["batch_size"]), []).append(ratio)
    if not at:
        return f"- **{title}**: no decode sweep recorded."
    parts = [f"context {ctx}, batch {b}: {min(r):.2f}–{max(r):.2f}x" if len(r) > 1 else f"context {ctx}, batch {b}: {r[0]:.2f}x"
             for (ctx, b), r in sorted(at.items())]
    all_ratios = [x for r in at.values() for x in r]
    verdict = ("supported at every point" if min(all_ratios) > 1 else
               "supported at some points only" if max(all_ratios) > 1 else "contradicted")
    return (f"- **{title}**: decode tokens/s with the cache over without, range over the {len(records)} variants "
            f"(medians of interleaved repeats; one timing run per variant, so the spread across variants is the "
            f"uncertainty shown): {'; '.join(parts)}. Verdict: **{verdict}**.")


def noise_finding(records: list[VariantRecord]) -> str:
    noise = aggregate.seed_noise(records)
    if noise["std"] is None:
        return ("- **Seed noise**: one seed per variant: no standard deviation, so no difference in loss can be "
                "told from seed noise.")
    text = (f"- **Seed noise**: the seed standard deviation of the final test loss, pooled over the compared arms "
            f"({', '.join(noise['arms'])}), is {noise['std']:.4f} nats/token; with {noise['n']} seeds, differences "
            f"between two variants' means below about {noise['resolvable']:.4f} cannot be told from seed noise "
            "(unpaired t half-width; pairing by seed can resolve smaller differences).")
    if noise["std_without_flagged"] is not None:
        text += f" Without the flagged runs (below) it is {noise['std_without_flagged']:.4f}."
    if noise["ablations"]:
        text += " Ablations apart: " + ", ".join(f"{name} {std:.4f}" for name, std in noise["ablations"].items()) + "."
    return text


def flagged_finding(records: list[VariantRecord]) -> str:
    """Runs that are far from their arm's other seeds or did not finish, by name."""
    flagged = aggregate.flagged_runs(records)
    if not flagged:
        return f"- **Flagged runs**: none (outlier rule: {OutlierRule().describe()}; no run diverged)."
    names = "; ".join(f"{f['variant']} seed {f['seed']} ({f['problem']}: {f['detail']})" for f in flagged)
    return f"- **Flagged runs**: {names}. Outlier rule: {OutlierRule().describe()}."


def findings(records: list[VariantRecord], memory: list[dict[str, Any]],
             hypotheses: list[dict[str, Any]] | None = None, against_budget: str = "") -> str:
    """The Findings section's markdown. hypotheses: loss_hypotheses(records), when already computed;
    against_budget: budgets.budget_finding's line (campaigns with decay branches)."""
    role = roles(records)
    rows = loss_hypotheses(records) if hypotheses is None else hypotheses
    by_title = {row["title"]: row | {"family": len(rows)} for row in rows}
    tokens = records[0].runs and result(records[0].first).get("tokens")
    at = f" Every verdict below is at the full budget, {tokens:,} training tokens per run." if tokens else ""
    lines = ["## Findings", "",
             f"Generated from the records above (paired by seed; 95 % intervals: paired t, scipy).{at} The {len(rows)} loss "
             "hypotheses are one family: verdicts use Holm-adjusted p-values (supported = adjusted p < 0.05 with the "
             "difference below 0, contradicted = above 0, otherwise not resolved at this budget).", ""]
    for key, against, title, always in LOSS_HYPOTHESES:
        if key == "moe" and against is None:
            lines.append(memory_finding(memory, role.get("gqa") or role.get("kv_only")))
        if always or (key in role and (against is None or against in role)):
            lines.append(loss_finding(title, by_title.get(title)))
    if against_budget:
        lines.append(against_budget)
    lines += [cache_finding(records), noise_finding(records), flagged_finding(records)]
    return "\n".join(lines) + "\n"
