"""The answer against budget: a campaign's decay branches (spec.BudgetSpec, runlist.budget_runs)
give each hypothesis at every budget, for little more than one run per (variant, seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_campaign import REPO, mini, write_campaign  # noqa: F401  (mini: the fixture)

from llmlab.campaign.budgets import budget_finding, sign_change
from llmlab.campaign.runlist import budget_cost, seed_runs
from llmlab.campaign.spec import load_campaign
from llmlab.errors import ConfigError

WSD = 'schedule = "wsd"\ndecay_frac = 0.25\n'


def budget_campaign(mini: str) -> str:  # noqa: F811
    """The mini campaign at 8 updates, WSD, two seeds, budgets of 4 and 8 updates; MQA against MHA."""
    text = mini.replace('name = "mini"', 'name = "budgets"\nseeds = [0, 1]\n[budgets]\nfractions = [0.5]', 1)
    return (text.replace("max_steps = 3", "max_steps = 8\n" + WSD).replace("eval_interval = 0", "eval_interval = 2")
            .replace("batch_sizes = [1, 2]", "batch_sizes = [1]").replace("contexts = [16, 48]", "contexts = [16]"))


def test_budgets_are_validated(tmp_path: Path) -> None:
    body = f"""
[train]
max_steps = 40
warmup = 4
{{train}}
[budgets]
fractions = {{fractions}}
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
"""
    ok = load_campaign(write_campaign(tmp_path, body.format(train=WSD, fractions="[0.25, 0.5]")))
    assert ok.budgets.fractions == [0.25, 0.5]
    for train, fractions, message in (("", "[0.5]", r'\[budgets\] needs train.schedule = "wsd"'),
                                      (WSD, "[1.0]", "distinct fractions in \\(0, 1\\)"),
                                      (WSD, "[0.1]", "fraction 0.1 .* is 4 updates, too few for a warm-up of 4")):
        with pytest.raises(ConfigError, match=message):
            load_campaign(write_campaign(tmp_path, body.format(train=train, fractions=fractions)))


def test_stable_run_and_branches_are_planned_with_the_full_runs_warmup(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, f"""
seeds = [0]
[train]
max_steps = 40
warmup = 4
{WSD}
[budgets]
fractions = [0.25, 0.5]
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
""")
    campaign = load_campaign(path)
    runs = seed_runs(campaign, {"base": 1e-3})
    assert [(r.kind, r.dirname, r.steps, r.stable) for r in runs] == [
        ("stable", "base/stable/seed-0", 30, None),
        ("budget", "base/budget-10/seed-0", 10, "base/stable/seed-0"),
        ("budget", "base/budget-20/seed-0", 20, "base/stable/seed-0"),
        ("seed", "base/seed-0", 40, "base/stable/seed-0")]
    stable = runs[0].config.train
    assert (stable.schedule, stable.ckpt_at, stable.warmup) == ("constant", [8, 15, 30], 4)  # 10 - round(2.5) = 8
    assert all(r.config.train.warmup == 4 and r.config.train.lr == 1e-3 for r in runs)
    # 30 stable updates + decays of 2, 5 and 10: 47 of 40
    assert budget_cost(campaign, campaign.variants[0]) == pytest.approx(47 / 40)


def test_sign_change_in_words() -> None:
    rows = [{"updates": u, "mean": m} for u, m in ((120, 0.3), (240, 0.1), (480, -0.02))]
    assert sign_change(rows) == "the sign changes between 240 and 480 updates"
    assert sign_change(rows[:2]) == "the same sign at every budget (above 0)"


@pytest.mark.slow  # 2 variants x 2 seeds x (stable + 2 branches), a decode sweep, a report (~40 s)
def test_a_campaign_answers_at_every_budget_and_its_full_branch_is_the_plain_run(tmp_path: Path, mini: str) -> None:  # noqa: F811
    """Each (variant, seed): a stable run, a branch at 4 updates and the full one at 8. The full
    branch gives the test loss of the same campaign run without budgets (a from-scratch WSD run);
    the report gives every hypothesis at both budgets, says whether the sign changes, and draws it."""
    from llmlab.campaign.report import write_report
    from llmlab.campaign.execute import run_campaign

    path, out = tmp_path / "b.toml", tmp_path / "out"
    path.write_text(budget_campaign(mini))
    run_campaign(load_campaign(path), out)
    record = json.loads((out / "campaign.json").read_text())
    mha = record["variants"][0]
    assert [b["steps"] for b in mha["budgets"]] == [4, 8]
    assert [r["dir"] for r in mha["budgets"][0]["runs"]] == ["mha/budget-4/seed-0", "mha/budget-4/seed-1"]
    assert [r["dir"] for r in mha["stable"]] == ["mha/stable/seed-0", "mha/stable/seed-1"]
    branch = json.loads((out / "mha/seed-0/branch.json").read_text())
    assert branch["step"] == branch["decay_start"] == 6

    plain = tmp_path / "plain.toml"
    plain.write_text(budget_campaign(mini).replace("[budgets]\nfractions = [0.5]", "").replace("seeds = [0, 1]", "seeds = [0]"))
    run_campaign(load_campaign(plain), tmp_path / "plain")
    for variant in ("mha", "mqa"):
        ours, scratch = (json.loads((d / variant / "seed-0/result.json").read_text()) for d in (out, tmp_path / "plain"))
        assert ours["test_loss"] == pytest.approx(scratch["test_loss"], rel=1e-9), variant
        steps = lambda d: [r["loss_steps"] for r in map(json.loads, (d / variant / "seed-0/metrics.jsonl")  # noqa: E731
                                                        .read_text().splitlines()) if "loss_steps" in r]
        assert steps(out) == steps(tmp_path / "plain")  # every update's loss, the shared ones included

    md = write_report(out, memory_gb=1.0)["markdown"]
    table = md.split("## The answer against budget")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| GQA with more query heads")]
    assert [row.split(" | ")[1] for row in rows] == ["4", "8"]
    assert "- GQA with more query heads lowers test loss: the s" in table and "budgets.png" in table
    findings = md.split("## Findings")[1]
    assert "**Against budget**" in findings and "4 updates" in findings and "8 updates" in findings
    assert "Every verdict below is at the full budget, 1,024 training tokens per run." in findings
    assert (out / "budgets.png").stat().st_size > 1000


def test_budget_finding_names_each_budget() -> None:
    rows = [{"title": "H", "updates": u, "mean": m, "low": m - 0.1, "high": m + 0.1, "verdict_holm": v}
            for u, m, v in ((100, 0.2, "worse"), (200, -0.01, "no difference detectable at this budget"))]
    text = budget_finding(rows)
    assert "H: 100 updates +0.2000 [+0.1000, +0.3000] contradicted; 200 updates -0.0100" in text
    assert "not resolved at this budget; the sign changes between 100 and 200 updates." in text


def test_training_time_counts_a_branch_s_copied_rows_once() -> None:
    """A decay branch carries its stable run's metrics rows: the report's training time is the union
    of the runs' spans, not their sum (the v2 study's first report said 123 of 56 minutes)."""
    from llmlab.campaign.records import covered_seconds

    stable, branch, next_run = (0.0, 80.0), (0.0, 100.0), (120.0, 150.0)  # the branch starts at the stable's rows
    assert covered_seconds([branch, next_run, stable]) == 100.0 + 30.0
    assert covered_seconds([]) == 0.0
