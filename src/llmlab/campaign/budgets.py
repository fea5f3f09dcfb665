"""The answer against budget: each loss hypothesis at every budget a campaign's decay branches
reached (spec.BudgetSpec), and whether its sign changes with the budget.

At each budget the hypotheses are tested exactly as at the full one (findings.loss_hypotheses on
that budget's branches): paired t over seeds, Holm over the hypotheses *within the budget* (the
family a verdict "at B updates" belongs to), a bootstrap over test windows beside it. The budgets
are not independent experiments -- a (variant, seed)'s branches share its stable run -- so the
table says at which budget each verdict holds; it is not a pooled test over budgets.
"""

from __future__ import annotations

from typing import Any

from llmlab.campaign.findings import VERDICT, loss_hypotheses
from llmlab.campaign.records import VariantRecord, at_budget, common_budgets


def budget_rows(records: list[VariantRecord]) -> list[dict[str, Any]]:
    """One row per (hypothesis, budget), budgets from the smallest: loss_hypotheses' row plus
    "updates" and "tokens". Empty without [budgets]."""
    tokens_per_update = records[0].config.get("train", {}).get("tokens_per_update") if records else None
    rows = []
    for steps in common_budgets(records):
        for row in loss_hypotheses(at_budget(records, steps)):
            rows.append(row | {"updates": steps, "tokens": steps * tokens_per_update if tokens_per_update else None})
    return rows


def by_hypothesis(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["title"], []).append(row)
    return out


def sign_change(rows: list[dict[str, Any]]) -> str:
    """How one hypothesis's mean difference moves across budgets (rows in budget order), in words."""
    signs = [(r["updates"], r["mean"]) for r in rows]
    flips = [(a, b) for (a, x), (b, y) in zip(signs, signs[1:]) if (x > 0) != (y > 0)]
    if not flips:
        side = "above" if signs[0][1] > 0 else "below"
        return f"the same sign at every budget ({side} 0)"
    return "the sign changes " + ", ".join(f"between {a:,} and {b:,} updates" for a, b in flips)


def budget_finding(rows: list[dict[str, Any]]) -> str:
    """The Findings line: per hypothesis, the difference and verdict at each budget and the sign."""
    if not rows:
        return ""
    parts = []
    for title, rs in by_hypothesis(rows).items():
        at = "; ".join(f"{r['updates']:,} updates {r['mean']:+.4f}"
                       + ("" if r["low"] is None else f" [{r['low']:+.4f}, {r['high']:+.4f}]")
                       + f" {VERDICT[r['verdict_holm']].split(' (')[0]}" for r in rs)
        parts.append(f"{title}: {at}; {sign_change(rs)}")
    return ("- **Against budget** (decay branches; Δ test loss with its 95 % seed interval and the Holm verdict "
            "within each budget): " + ". ".join(parts) + ".")


__all__ = ["budget_rows", "by_hypothesis", "sign_change", "budget_finding"]
