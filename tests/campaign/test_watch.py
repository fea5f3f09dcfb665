"""The report's watches: over-fitting past one epoch, the MoE dispatch and its dropped tokens,
the FLOPs-per-token gaps between compared arms."""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.campaign.records import VariantRecord
from llmlab.campaign.report import compute_section, dispatch_section, overfit_section
from llmlab.campaign.spec import flops_gaps
from llmlab.campaign.watch import rose_at_end
from llmlab.config import dump_toml, load_run_config

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, name: str, val_losses: list[float], tokens: int, overrides: list[str] = (),
        dropped: list[float] = ()) -> Path:
    """A finished run's records: config (its data folder holds a meta.json of 10,000 training
    tokens), result.json, and metrics with one evaluation per val loss."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "meta.json").write_text(json.dumps({"format": "llmlab-tokens/1", "splits": {"train": {"tokens": 10_000}}}))
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    cfg = load_run_config(REPO / "configs/runs/tiny.toml", [f'data.dir="{data}"', *overrides])
    (run_dir / "config.toml").write_text(dump_toml(cfg.to_dict()))
    (run_dir / "result.json").write_text(json.dumps({"status": "completed", "tokens": tokens}))
    rows = [{"step": 10 * (i + 1), "val_loss": v} for i, v in enumerate(val_losses)]
    rows += [{"step": 10 * (i + 1), "loss": 3.0, "moe_load": [[0.5, 0.5, 0.0, 0.0]], "moe_dropped_frac": [d],
              "moe_router_entropy": [1.0]} for i, d in enumerate(dropped)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_rose_at_end() -> None:
    assert rose_at_end([3.0, 2.5, 2.6, 2.7])
    assert not rose_at_end([3.0, 2.5, 2.7, 2.6])  # fell again at the end
    assert not rose_at_end([3.0, 2.9, 2.8])
    assert not rose_at_end([2.5, 2.6])  # too few evaluations to tell


def test_an_arm_whose_val_loss_rises_past_one_epoch_is_flagged(tmp_path: Path) -> None:
    rising = [3.0, 2.5, 2.6, 2.7]
    records = [
        VariantRecord("base", "baseline", runs={0: run(tmp_path, "b0", [3.0, 2.6, 2.5, 2.4], 45_000),
                                                1: run(tmp_path, "b1", [3.0, 2.6, 2.5, 2.4], 45_000)}),
        VariantRecord("wide", "compared", runs={0: run(tmp_path, "w0", [3.0, 2.6, 2.5, 2.4], 45_000),
                                                1: run(tmp_path, "w1", rising, 45_000)}),
        VariantRecord("short", "compared", runs={0: run(tmp_path, "s0", rising, 5_000)}),  # half an epoch
    ]
    md = overfit_section(records)
    assert "Flagged: wide -- its validation loss was rising" in md
    assert "| wide | 4.50 | 2.5000 → 2.6000 → 2.7000 | seed 1 |" in md  # 45,000 tokens over 10,000
    assert "| base | 4.50 | 2.6000 → 2.5000 → 2.4000 | - |" in md
    assert "| short | 0.50 | 2.5000 → 2.6000 → 2.7000 | - (under one epoch) |" in md  # a rise before any repeat


def test_dispatch_section_states_the_dropped_tokens(tmp_path: Path) -> None:
    moe = ["model.moe.n_experts=4", "model.moe.d_ff_expert=192"]
    dropping = VariantRecord("moe", "compared", runs={0: run(
        tmp_path, "m", [2.0], 1_000, [*moe, 'model.moe.dispatch="capacity"', "model.moe.capacity_factor=1.25"],
        dropped=[0.10, 0.04])})
    md = dispatch_section([dropping])
    assert "moe dropped the assignments that overflowed" in md
    assert "| moe | capacity, factor 1.25 (drops overflow) | 4.00% | 10.00% |" in md
    grouped = VariantRecord("g", "compared", runs={0: run(tmp_path, "g", [2.0], 1_000, moe, dropped=[0.0])})
    assert "Every MoE arm ran dropless" in dispatch_section([grouped])
    assert dispatch_section([VariantRecord("dense", "baseline", runs={0: run(tmp_path, "d", [2.0], 1_000)})]) == ""


def test_flops_gaps_name_arms_more_than_two_percent_apart() -> None:
    gaps = flops_gaps([("base", 1000, False), ("gqa", 1088, False), ("wide", 1001, False), ("kv", 930, True)])
    assert len(gaps) == 2 and gaps[0].startswith("gqa does +8.8% FLOPs per token against base")
    assert gaps[1].startswith("kv (ablation) does -7.0%")
    rows = [{"variant": "base", "flops_per_token": 1000}, {"variant": "wide", "flops_per_token": 1015}]
    assert "Every arm is within 2% of base's FLOPs per token" in compute_section(rows)
