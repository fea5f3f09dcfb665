"""`llmlab plan`'s cost estimate: epochs, tokens per parameter, runs, wall time, warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.campaign.estimate import estimate
from llmlab.campaign.plan import load_campaign
from llmlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def campaign_file(tmp_path: Path, max_tokens: int, split_tokens: int | None) -> Path:
    data = tmp_path / "data"
    if split_tokens is not None:  # a prepared folder, as far as plan reads it
        data.mkdir()
        (data / "meta.json").write_text(json.dumps({"format": "llmlab-tokens/1",
                                                    "splits": {"train": {"tokens": split_tokens}}}))
    path = tmp_path / "c.toml"
    path.write_text(f"""include = "{REPO}/configs/runs/_pydocs-tiny.toml"
seeds = [0, 1, 2]
[sweep]
lr = [1e-3, 2e-3]
fraction = 0.5
[data]
dir = "{data}"
[train]
max_tokens = {max_tokens}
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
[[variant]]
name = "gqa"
include = "{REPO}/configs/models/tiny-gqa.toml"
""")
    return path


def test_estimate_equals_hand_arithmetic(tmp_path: Path) -> None:
    campaign = load_campaign(campaign_file(tmp_path, max_tokens=40_960, split_tokens=20_480))
    cost = estimate(campaign, mfu=0.5)
    assert cost["runs"] == 2 * (2 + 3)  # variants x (sweep LRs + seeds)
    base = cost["rows"][0]
    params = campaign.variants[0].params
    assert base["active"] == params["active"] == 886_016  # with embeddings (tied: counted once)
    assert base["tokens"] == 40_960 and base["epochs"] == 2.0
    assert base["tokens_per_active_param"] == pytest.approx(40_960 / 886_016)
    # FLOPs: per token x tokens x (2 sweep runs at half the budget + 3 seeds = 4 full runs)
    flops = params["flops_per_token"] * 40_960 * 4
    assert base["train_flops"] == flops
    assert base["hours_A100"] == pytest.approx(flops / (312e12 * 0.5) / 3600)
    assert base["hours_H100"] == pytest.approx(flops / (989e12 * 0.5) / 3600)
    assert cost["hours_A100"] == pytest.approx(sum(r["hours_A100"] for r in cost["rows"]))
    assert cost["hours_cpu"] is None  # only measured on request
    assert any("2.00 epochs" in w and "dropout" in w for w in cost["warnings"])
    assert any("tokens per active parameter, far from ~20" in w for w in cost["warnings"])


def test_estimate_warnings_and_unknowns(tmp_path: Path) -> None:
    campaign = load_campaign(campaign_file(tmp_path, max_tokens=5_000, split_tokens=None))
    cost = estimate(campaign)
    assert cost["rows"][0]["epochs"] is None and cost["rows"][0]["epochs_text"] == "unknown"
    assert any("is not a whole number of updates of 2,048 tokens: 4,096 are trained" in w for w in cost["warnings"])
    assert any(w.startswith("epochs unknown") for w in cost["warnings"])
    assert not any("epochs over" in w for w in cost["warnings"])
    with pytest.raises(ConfigError, match="--mfu"):
        estimate(campaign, mfu=1.5)


def test_125m_campaign_plans_about_four_and_a_half_epochs() -> None:
    cost = estimate(load_campaign(REPO / "configs/campaigns/wikitext103-125m.toml"))
    base = cost["rows"][0]
    assert 123e6 < base["active"] < 126e6  # the "125M" a user means: active, embeddings included
    assert 4.3 < base["epochs"] < 4.7  # 524M tokens over WikiText-103's ~117M (published or prepared)


def test_plan_command_prints_runs_and_wall_time() -> None:
    out = subprocess.run([sys.executable, "-m", "llmlab", "plan", str(REPO / "configs/campaigns/cpu-study.toml"),
                          "--memory-gb", "1"], capture_output=True, text=True, check=True).stdout
    assert "runs: 28 = 4 variants x (4 sweep runs + 3 seeds)" in out
    assert "at 40% MFU (bf16 peak) (--measure-cpu for this CPU)" in out
