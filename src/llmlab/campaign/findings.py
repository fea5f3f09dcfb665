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

A loss hypothesis ("lowers test loss") is *supported* when the paired 95 % interval of the
difference lies below 0, *contradicted* when it lies above 0, and *not resolved at this budget*
otherwise (stats.py's verdicts).
"""

from __future__ import annotations

from typing import Any

from llmlab.campaign import aggregate
from llmlab.campaign.records import VariantRecord, infer
from llmlab.campaign.stats import BETTER, NO_DIFFERENCE, ONE_SEED, WORSE

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


def loss_finding(title: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return f"- **{title}**: no paired runs to compare."
    d = row["difference"]
    effect = (f"test loss {row['variant']} − {row['against']} = {d.mean:+.4f} nats/token"
              + ("" if d.low is None else f", 95 % CI [{d.low:+.4f}, {d.high:+.4f}] over {d.n} paired seeds"
                 + ("" if d.p_value is None else f" (paired t-test p = {d.p_value:.3g})")))
    return f"- **{title}**: {effect}. Verdict: **{VERDICT[d.verdict]}**."


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
    return (f"- **Seed noise**: the seed standard deviation of the final test loss, pooled over variants, is "
            f"{noise['std']:.4f} nats/token; with {noise['n']} seeds, differences between two variants' means "
            f"below about {noise['resolvable']:.4f} cannot be told from seed noise (unpaired t half-width; "
            "pairing by seed can resolve smaller differences).")


def findings(records: list[VariantRecord], memory: list[dict[str, Any]]) -> str:
    """The Findings section's markdown."""
    role = roles(records)
    base = records[0].name
    pair = lambda key, against=base: (aggregate.paired(records, role[key].name, against)  # noqa: E731
                                      if key in role else None)
    lines = ["## Findings", "",
             "Generated from the records above (paired by seed; 95 % intervals: paired t, scipy): "
             "supported = interval below 0, contradicted = above 0, otherwise not resolved at this budget.", "",
             loss_finding("GQA with more query heads lowers test loss", pair("gqa"))]
    if "gqa_wideffn" in role:  # only campaigns with the arm (the quick tier has none)
        lines.append(loss_finding("GQA with the saved parameters in a wider FFN lowers test loss", pair("gqa_wideffn")))
    if "gqa" in role and "gqa_wideffn" in role:
        lines.append(loss_finding("GQA's saved parameters do better in query heads than in the FFN",
                                  pair("gqa", role["gqa_wideffn"].name)))
    lines += [loss_finding("Fewer KV heads alone (ablation, fewer parameters) lowers test loss", pair("kv_only")),
              memory_finding(memory, role.get("gqa") or role.get("kv_only")),
              loss_finding("GQA + MoE lowers test loss", pair("moe"))]
    if "moe" in role and "gqa" in role:
        lines.append(loss_finding("GQA + MoE lowers test loss further than GQA", pair("moe", role["gqa"].name)))
    lines += [cache_finding(records), noise_finding(records)]
    return "\n".join(lines) + "\n"
