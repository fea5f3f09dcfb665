"""Which runs a campaign makes: the learning-rate sweep, then every variant at every seed.

    <out>/<variant>/sweep/lr-0.002/     one sweep run per grid LR (first seed, sweep.fraction of the budget)
    <out>/<variant>/seed-0/             the full runs, at the LR the sweep chose (or the config's)

A run differs from its variant's config in three settings only: `train.lr` (with `train.min_lr`
scaled by the same factor, so every LR gets the same schedule shape: the cosine ends at the same
fraction of its peak), `train.seed`, and for sweep runs the budget (`train.max_steps`, warm-up
compressed in proportion). Everything else -- data, tokens per update, seq_len -- is the
variant's, so each variant's sweep runs see the same tokens in the same order.

The choice rule (stated in the report): the grid LR whose sweep run has the lowest final
validation loss; runs that diverged (non-finite loss) are excluded; a tie goes to the smaller LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmlab.campaign.integrity import run_dirname
from llmlab.campaign.plan import Campaign, Variant
from llmlab.config import RunConfig, run_config_from_dict
from llmlab.errors import LLMLabError

CHOICE_RULE = ("for each variant, the grid learning rate whose sweep run ends with the lowest validation "
               "loss (runs that diverged excluded; a tie goes to the smaller rate)")


@dataclass(frozen=True)
class PlannedRun:
    variant: str
    kind: str
    """"sweep" or "seed"."""
    lr: float
    seed: int
    dirname: str
    """Relative to the campaign's output folder."""
    config: RunConfig


def lr_label(lr: float) -> str:
    return f"lr-{lr:g}"


def run_config(cfg: RunConfig, lr: float, seed: int, steps: int | None = None) -> RunConfig:
    """cfg at learning rate `lr` (min_lr scaled alike) and `seed`; `steps` shortens the budget."""
    d = cfg.to_dict()
    train = d["train"]
    train["min_lr"] = train["min_lr"] * lr / train["lr"]
    train["lr"], train["seed"] = lr, seed
    if steps is not None:
        full = cfg.train.total_steps()
        train["max_steps"], train["max_tokens"] = steps, 0
        train["warmup"] = min(steps - 1, math.ceil(cfg.train.warmup * steps / full)) if steps > 1 else 0
    return run_config_from_dict(d)


def sweep_steps(variant: Variant, fraction: float) -> int:
    return max(1, int(variant.config.train.total_steps() * fraction))


def sweep_runs(campaign: Campaign) -> list[PlannedRun]:
    """Every variant at every grid LR, at the first seed, on sweep.fraction of the budget."""
    if campaign.sweep is None:
        return []
    seed = campaign.seeds[0]
    return [PlannedRun(v.name, "sweep", lr, seed, f"{run_dirname(v.name)}/sweep/{lr_label(lr)}",
                       run_config(v.config, lr, seed, sweep_steps(v, campaign.sweep.fraction)))
            for v in campaign.variants for lr in campaign.sweep.lr]


def seed_runs(campaign: Campaign, lrs: dict[str, float]) -> list[PlannedRun]:
    """Every variant at every seed, at its chosen LR; seed-major so that an interrupted campaign
    has all variants at the first seeds (a paired comparison) before any at the later ones."""
    return [PlannedRun(v.name, "seed", lrs[v.name], seed, f"{run_dirname(v.name)}/seed-{seed}",
                       run_config(v.config, lrs[v.name], seed))
            for seed in campaign.seeds for v in campaign.variants]


def choose_lr(variant: str, entries: list[dict[str, Any]]) -> float:
    """CHOICE_RULE over a variant's sweep entries ({"lr", "status", "val_loss"})."""
    done = [e for e in entries if e["status"] == "completed" and e.get("val_loss") is not None
            and math.isfinite(e["val_loss"])]
    if not done:
        grid = ", ".join(f"{e['lr']:g}" for e in entries)
        raise LLMLabError(f"variant {variant!r}: no sweep run finished ({grid}: diverged): lower the grid")
    return min(done, key=lambda e: (e["val_loss"], e["lr"]))["lr"]


def at_grid_edge(lr: float, grid: list[float]) -> bool:
    """The chosen LR is the grid's smallest or largest: the optimum may lie outside it."""
    return lr in (min(grid), max(grid))
