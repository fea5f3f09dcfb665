"""Which runs a campaign makes: the learning-rate sweep, then every variant at every seed.

    <out>/<variant>/sweep/lr-0.002/     one sweep run per grid LR (first seed, sweep.fraction of the budget)
    <out>/<variant>/sweep/lr-0.002-seed-1/   the same LR at a further sweep seed (sweep.seeds)
    <out>/<variant>/seed-0/             the full runs, at the LR the sweep chose (or the config's)
    <out>/<variant>/stable/seed-0/      with [budgets]: the constant-rate run the decay branches leave
    <out>/<variant>/budget-120/seed-0/  with [budgets]: the WSD run of 120 updates, branched off it

A run differs from its variant's config in three settings only: `train.lr` (with `train.min_lr`
scaled by the same factor, so every LR gets the same schedule shape: the cosine ends at the same
fraction of its peak), `train.seed`, and for sweep runs the budget (`train.max_steps`, warm-up
compressed in proportion). Everything else -- data, tokens per update, seq_len -- is the
variant's, so each variant's sweep runs see the same tokens in the same order.

With `[budgets]` (spec.BudgetSpec) each seed run is a decay branch: the stable run (the same
config at a constant rate after the same warm-up, `train.max_steps` = the latest decay start,
checkpoints kept at every branch's decay start) trains first, then each budget's branch resumes
from its decay start (train/branch.py). A branch of a fraction of the budget is the WSD run of
that many updates *with the full run's warm-up* (not compressed, unlike a sweep run's: the branch
shares every step before its decay with the stable run); the full budget's branch is exactly the
seed run a campaign without budgets makes.

The choice rule (stated in the report): the grid LR whose sweep runs have the lowest mean final
validation loss over the sweep seeds; an LR at which any sweep run diverged (non-finite loss) is
excluded; a tie goes to the smaller LR. A choice is flagged (`choice_flags`) when it sits at the
grid's edge (the optimum may lie outside) or next to a much worse neighbour -- one whose mean
validation loss exceeds the chosen one's by more than CLIFF (10 %), or that diverged: the optimum
then sits near an instability, and a seed or a budget slightly different could fall over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmlab.campaign.integrity import run_dirname
from llmlab.campaign.spec import Campaign, Variant, budget_steps
from llmlab.config import RunConfig, run_config_from_dict
from llmlab.errors import LLMLabError
from llmlab.train.branch import branch_start, stable_config

CHOICE_RULE = ("for each variant, the grid learning rate whose sweep runs end with the lowest mean validation "
               "loss over the sweep seeds (a rate at which a run diverged excluded; a tie goes to the smaller rate)")
CLIFF = 0.10
"""A grid neighbour whose mean validation loss exceeds the chosen LR's by more than this fraction
is "much worse" (the CPU study's GQA: 2.041 at 2e-3, 2.658 at 4e-3, +30 %)."""


@dataclass(frozen=True)
class PlannedRun:
    variant: str
    kind: str
    """"sweep", "seed" (the full budget), "stable" or "budget" (a decay branch of a smaller budget)."""
    lr: float
    seed: int
    dirname: str
    """Relative to the campaign's output folder."""
    config: RunConfig
    stable: str | None = None
    """A decay branch's stable run (its dirname): trained first, the branch resumes from it."""

    @property
    def steps(self) -> int:
        return self.config.train.total_steps()


def lr_label(lr: float) -> str:
    return f"lr-{lr:g}"


def run_config(cfg: RunConfig, lr: float, seed: int, steps: int | None = None, eval_windows: int = 0) -> RunConfig:
    """cfg at learning rate `lr` (min_lr scaled alike) and `seed`; `steps` shortens the budget;
    eval_windows > 0 replaces train.eval_windows (a sweep's larger validation set)."""
    d = cfg.to_dict()
    train = d["train"]
    if eval_windows:
        train["eval_windows"] = eval_windows
    train["min_lr"] = train["min_lr"] * lr / train["lr"]
    train["lr"], train["seed"] = lr, seed
    if steps is not None:
        full = cfg.train.total_steps()
        train["max_steps"], train["max_tokens"] = steps, 0
        train["warmup"] = min(steps - 1, math.ceil(cfg.train.warmup * steps / full)) if steps > 1 else 0
    return run_config_from_dict(d)


def sweep_steps(variant: Variant, fraction: float) -> int:
    return max(1, int(variant.config.train.total_steps() * fraction))


def sweep_seeds(campaign: Campaign) -> list[int]:
    """The seeds every grid LR runs at: sweep.seeds, else the campaign's first seed."""
    return (campaign.sweep.seeds if campaign.sweep and campaign.sweep.seeds else campaign.seeds[:1])


def sweep_dirname(variant: str, lr: float, seed: int, first_seed: int) -> str:
    """The first campaign seed keeps the one-seed layout (records made before sweep.seeds stay valid)."""
    tail = "" if seed == first_seed else f"-seed-{seed}"
    return f"{run_dirname(variant)}/sweep/{lr_label(lr)}{tail}"


def sweep_runs(campaign: Campaign) -> list[PlannedRun]:
    """Every variant at every grid LR and sweep seed, on sweep.fraction of the budget."""
    if campaign.sweep is None:
        return []
    spec = campaign.sweep
    return [PlannedRun(v.name, "sweep", lr, seed, sweep_dirname(v.name, lr, seed, campaign.seeds[0]),
                       run_config(v.config, lr, seed, sweep_steps(v, spec.fraction), spec.eval_windows))
            for v in campaign.variants for lr in spec.lr for seed in sweep_seeds(campaign)]


def seed_runs(campaign: Campaign, lrs: dict[str, float]) -> list[PlannedRun]:
    """Every variant at every seed, at its chosen LR; seed-major so that an interrupted campaign
    has all variants at the first seeds (a paired comparison) before any at the later ones. With
    [budgets], each (variant, seed) is its stable run, then its branches from the smallest budget
    to the full one."""
    runs = []
    for seed in campaign.seeds:
        for v in campaign.variants:
            full = PlannedRun(v.name, "seed", lrs[v.name], seed, f"{run_dirname(v.name)}/seed-{seed}",
                              run_config(v.config, lrs[v.name], seed))
            runs += budget_runs(campaign, v, full) if campaign.budgets else [full]
    return runs


def budget_runs(campaign: Campaign, variant: Variant, full: PlannedRun) -> list[PlannedRun]:
    """A (variant, seed)'s stable run and its decay branches, the full budget's (`full`) last."""
    branches = [PlannedRun(variant.name, "budget", full.lr, full.seed,
                           f"{run_dirname(variant.name)}/budget-{steps}/seed-{full.seed}",
                           with_steps(full.config, steps))
                for steps in (budget_steps(variant.config, f) for f in campaign.budgets.fractions)] + [full]
    starts = [branch_start(b.config) for b in branches]
    stable = stable_config(full.config)
    stable["train"].update(max_steps=max(starts), max_tokens=0, ckpt_at=starts)
    stable_run = PlannedRun(variant.name, "stable", full.lr, full.seed,
                            f"{run_dirname(variant.name)}/stable/seed-{full.seed}", run_config_from_dict(stable))
    return [stable_run] + [PlannedRun(b.variant, b.kind, b.lr, b.seed, b.dirname, b.config, stable_run.dirname)
                           for b in branches]


def with_steps(cfg: RunConfig, steps: int) -> RunConfig:
    """cfg with a budget of `steps` updates and everything else -- warm-up included -- unchanged."""
    d = cfg.to_dict()
    d["train"]["max_steps"], d["train"]["max_tokens"] = steps, 0
    return run_config_from_dict(d)


def budget_cost(campaign: Campaign, variant: Variant) -> float:
    """Updates a (variant, seed) trains with [budgets], in full runs: its stable run plus every
    branch's decay (1.0 without budgets). E.g. fractions 0.25 and 0.5 with a 20 % decay: 0.8 + 0.05
    + 0.1 + 0.2 = 1.15."""
    if campaign.budgets is None:
        return 1.0
    full = run_config(variant.config, variant.config.train.lr, 0)
    runs = budget_runs(campaign, variant, PlannedRun(variant.name, "seed", full.train.lr, 0, "-", full))
    decays = sum(r.steps - branch_start(r.config) for r in runs[1:])
    return (runs[0].steps + decays) / full.train.total_steps()


def lr_points(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A variant's sweep entries ({"lr", "status", "val_loss", "seed"?}) per grid LR, in LR order:
    {"lr", "val_loss" (mean over its seeds; None unless every one completed finite), "seeds",
    "values" (per seed), "diverged" (a run at this LR did)}."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for e in entries:
        by_lr.setdefault(e["lr"], []).append(e)
    points = []
    for lr, runs in sorted(by_lr.items()):
        values = [e.get("val_loss") for e in runs]
        ok = all(e["status"] == "completed" and v is not None and math.isfinite(v) for e, v in zip(runs, values))
        points.append({"lr": lr, "val_loss": sum(values) / len(values) if ok else None, "seeds": len(runs),
                       "values": values, "diverged": any(e["status"] == "diverged" for e in runs)})
    return points


def choose_lr(variant: str, entries: list[dict[str, Any]]) -> float:
    """CHOICE_RULE over a variant's sweep entries ({"lr", "status", "val_loss"}, one per LR and seed)."""
    done = [p for p in lr_points(entries) if p["val_loss"] is not None]
    if not done:
        grid = ", ".join(f"{e['lr']:g}" for e in entries)
        raise LLMLabError(f"variant {variant!r}: no sweep run finished ({grid}: diverged): lower the grid")
    return min(done, key=lambda p: (p["val_loss"], p["lr"]))["lr"]


def at_grid_edge(lr: float, grid: list[float]) -> bool:
    """The chosen LR is the grid's smallest or largest: the optimum may lie outside it."""
    return lr in (min(grid), max(grid))


def choice_flags(lr: float, entries: list[dict[str, Any]], cliff: float = CLIFF) -> list[str]:
    """Why a chosen LR deserves a second look (empty: none): at the grid's edge, or next to a much
    worse or diverged grid neighbour (see CLIFF)."""
    points = lr_points(entries)
    grid = [p["lr"] for p in points]
    if lr not in grid:
        return []
    flags = ["at the grid's edge (the optimum may lie outside it)"] if at_grid_edge(lr, grid) else []
    i = grid.index(lr)
    chosen = points[i]["val_loss"]
    for neighbour in points[max(0, i - 1):i] + points[i + 1:i + 2]:
        if neighbour["diverged"]:
            flags.append(f"next to lr {neighbour['lr']:g}, which diverged")
        elif neighbour["val_loss"] is not None and chosen is not None and neighbour["val_loss"] > chosen * (1 + cliff):
            flags.append(f"next to a much worse neighbour: lr {neighbour['lr']:g} at val {neighbour['val_loss']:.3f}"
                         f" against {chosen:.3f} (+{100 * (neighbour['val_loss'] / chosen - 1):.0f} %, threshold "
                         f"{100 * cliff:g} %)")
    return flags
