"""`llmlab plan`'s cost estimate: epochs, tokens per parameter, runs, wall time, warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.campaign.estimate import estimate
from llmlab.campaign.spec import load_campaign
from llmlab.config import MoEConfig
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
    assert any("2.00 epochs" in w and "watch validation loss" in w for w in cost["warnings"])
    assert base["recommended_dropout"] == 0.0 and not any("recommended" in w for w in cost["warnings"])  # <= 4 epochs
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
    assert ("runs: 100 = 5 variants x (8 sweep runs + 12 seed runs (stable runs and decay branches)); "
            "7.45 full-run equivalents per variant") in out
    assert "sweep and seeds included: A100 " in out and "MFU (bf16 peak): A100 40% (assumed); H100 40% (assumed)" in out
    assert "smallest resolvable test-loss difference (estimate): ~0.025 nats/token" in out


@pytest.mark.parametrize("tier, arms, lrs, fraction, seeds", [
    ("wikitext103-125m", 5, 4, 0.25, 3), ("wikitext103-125m-quick", 3, 3, 0.5, 2)])
def test_125m_tiers_cost_their_sweep_and_seeds(tier: str, arms: int, lrs: int, fraction: float, seeds: int) -> None:
    """Both tiers: hours are one run's x (sweep LRs x fraction + seeds), per arm and in all, on
    both GPUs; the quick tier fits 4 A100-hours at the assumed MFU; compared arms within 1 %."""
    campaign = load_campaign(REPO / f"configs/campaigns/{tier}.toml")
    cost = estimate(campaign, results_dir=REPO / "tests")  # no GPU record there: the assumed 40 %
    assert cost["mfu"]["A100"] == {"mfu": 0.40, "source": "assumed"}
    assert cost["runs"] == arms * (lrs + seeds) and cost["per_variant"]["full_run_equivalents"] == lrs * fraction + seeds
    for v, row in zip(campaign.variants, cost["rows"]):
        one_run = v.params["flops_per_token"] * row["tokens"] / (312e12 * 0.40) / 3600
        assert row["hours_A100"] == pytest.approx(one_run * (lrs * fraction + seeds))
        assert row["hours_H100"] == pytest.approx(row["hours_A100"] * 312 / 989)
    assert cost["hours_A100"] == pytest.approx(sum(r["hours_A100"] for r in cost["rows"]))
    base = campaign.variants[0].params["active_non_embedding"]
    assert all(abs(v.params["active_non_embedding"] / base - 1) <= 0.01 for v in campaign.variants if not v.ablation)
    if tier.endswith("-quick"):
        assert cost["hours_A100"] <= 4.0 and 0.9 < cost["rows"][0]["epochs"] < 1.1
    else:
        assert cost["rows"][0]["recommended_dropout"] == 0.1 == campaign.variants[0].config.model.dropout
        assert not any("recommended" in w for w in cost["warnings"])  # the full tier follows the advice
    assert {v.config.train.eval_stride for v in campaign.variants} == {512}  # <= seq_len / 2: sliding window
    assert not any("eval_stride" in w for w in cost["warnings"])
    unstrided = estimate(load_campaign(REPO / f"configs/campaigns/{tier}.toml", ["train.eval_stride=0"]))
    assert any("train.eval_stride 1024 is above half of seq_len (1024)" in w for w in unstrided["warnings"])


def gpu_record(path: Path, name: str, status: str, mfu: float) -> None:
    path.write_text(json.dumps({"gpu": {"name": name, "slug": path.stem[4:]}, "parts": {"train": {
        "status": status, "rows": [{"variant": "gqa", "mfu": 0.9, "tokens_per_s": 1.0},
                                   {"variant": "base", "mfu": mfu, "tokens_per_s": 1.0}]}}}))


def test_a_measured_mfu_replaces_the_assumed_one_for_its_gpu(tmp_path: Path) -> None:
    from llmlab.campaign.estimate import measured_mfu

    campaign = load_campaign(campaign_file(tmp_path, max_tokens=40_960, split_tokens=20_480))
    results = tmp_path / "results"
    results.mkdir()
    assert measured_mfu("A100", results) is None
    gpu_record(results / "gpu-nvidia-a100-sxm4-80gb.json", "NVIDIA A100-SXM4-80GB", "ok", 0.31)
    gpu_record(results / "gpu-nvidia-a100-sxm4-40gb.json", "NVIDIA A100-SXM4-40GB", "ok", 0.35)
    gpu_record(results / "gpu-nvidia-h100-80gb-hbm3.json", "NVIDIA H100 80GB HBM3", "failed", 0.50)
    got = measured_mfu("A100", results)
    assert got["mfu"] == 0.31 and "gpu-nvidia-a100-sxm4-80gb.json" in got["source"]  # the lower of two cards
    assert measured_mfu("H100", results) is None  # its train part failed: not a measurement
    cost = estimate(campaign, results_dir=results)
    assert cost["mfu"]["A100"]["mfu"] == 0.31 and cost["mfu"]["H100"] == {"mfu": 0.40, "source": "assumed"}
    flops = cost["rows"][0]["train_flops"]
    assert cost["rows"][0]["hours_A100"] == pytest.approx(flops / (312e12 * 0.31) / 3600)
    forced = estimate(campaign, mfu=0.5, results_dir=results)  # --mfu wins over a measurement
    assert forced["mfu"]["A100"] == {"mfu": 0.5, "source": "--mfu"}
    (results / "gpu-broken.json").write_text("{cut")
    with pytest.raises(ConfigError, match=r"gpu-broken.json is not a GPU record \(invalid JSON"):
        estimate(campaign, results_dir=results)


def test_capacity_dispatch_costs_its_extra_expert_work(tmp_path: Path) -> None:
    """grouped: top-k expert work; capacity: E x C slots (C = ceil(cf K N / E)), E / K x without a factor."""
    from llmlab.campaign.estimate import expert_work_factor, routed_expert_flops

    def moe_cost(moe: str) -> tuple[float, float]:
        path = tmp_path / "moe.toml"
        path.write_text(f"""include = "{REPO}/configs/runs/_pydocs-tiny.toml"
[[variant]]
name = "moe"
include = "{REPO}/configs/models/tiny-moe.toml"
[variant.model.moe]
{moe}
""")
        campaign = load_campaign(path)
        return estimate(campaign)["rows"][0], campaign.variants[0]

    grouped, v = moe_cost('dispatch = "grouped"')
    capped, _ = moe_cost('dispatch = "capacity"\ncapacity_factor = 1.25')
    full, _ = moe_cost('dispatch = "capacity"')
    n = 16 * 128  # the micro-batch's tokens: capacity is per micro-batch
    assert grouped["expert_work_factor"] == 1.0 and grouped["flops_per_token"] == v.params["flops_per_token"]
    moe = MoEConfig(n_experts=4, top_k=2, dispatch="capacity", capacity_factor=1.25)
    assert capped["expert_work_factor"] == 4 * 1280 / (2 * n) == expert_work_factor(moe, n)  # C = ceil(1.25 x 2 x 2048 / 4)
    assert full["expert_work_factor"] == 2.0  # E / K
    expert = routed_expert_flops(v.config.model)
    assert expert == 6 * 2 * 3 * 128 * 192 * 4  # top-2 SwiGLU experts of 128 x 192, 4 layers
    assert full["flops_per_token"] == v.params["flops_per_token"] + expert
    assert capped["hours_A100"] / grouped["hours_A100"] == pytest.approx(
        (v.params["flops_per_token"] + 0.25 * expert) / v.params["flops_per_token"])


def test_resolution_and_dropout_are_stated_estimates(tmp_path: Path) -> None:
    from scipy import stats

    from llmlab.campaign.estimate import recommended_dropout

    campaign = load_campaign(campaign_file(tmp_path, max_tokens=40_960, split_tokens=20_480))
    r = estimate(campaign)["resolution"]
    assert r["estimate"] and r["seeds"] == 3 and r["seed_std"] == 0.011 and "CPU study" in r["seed_std_source"]
    assert r["resolvable"] == pytest.approx(stats.t.ppf(0.975, 4) * 0.011 * (2 / 3) ** 0.5)
    other = estimate(campaign, seed_std=0.03)
    assert other["resolution"]["seed_std_source"] == "--seed-std" and other["resolution"]["resolvable"] > r["resolvable"]
    assert (recommended_dropout(None), recommended_dropout(1.0), recommended_dropout(4.0), recommended_dropout(4.5)) == \
        (None, 0.0, 0.0, 0.1)
    (tmp_path / "data" / "meta.json").unlink()
    (tmp_path / "data").rmdir()
    many = estimate(load_campaign(campaign_file(tmp_path, max_tokens=204_800, split_tokens=20_480)))  # 10 epochs
    assert any("model.dropout = 0; recommended 0.1 at 10.00 epochs" in w for w in many["warnings"])
