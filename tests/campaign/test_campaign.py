"""Campaigns: variants at equal parameters, run records, and a report that reads only records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab.campaign.plan import load_campaign, plan_rows
from llmlab.campaign.report import write_report
from llmlab.errors import ConfigError, LLMLabError

REPO = Path(__file__).resolve().parents[2]


def write_campaign(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'include = "{REPO}/configs/runs/_pydocs-tiny.toml"\n' + body)
    return path


def test_demo_campaign_variants_match_active_parameters() -> None:
    campaign = load_campaign(REPO / "configs/campaigns/demo.toml")
    names = [v.name for v in campaign.variants]
    assert names == ["base", "base+gqa", "base+gqa+moe"]
    rows = plan_rows(campaign)
    assert all(abs(r["vs_first"] - 1) <= 0.01 for r in rows)
    assert len({r["tokens"] for r in rows}) == 1  # equal budget
    # the shared recipe's [model] keys (the byte vocabulary) override each variant's model file
    assert {v.config.model.vocab_size for v in campaign.variants} == {257}
    base, gqa, moe = campaign.variants
    assert gqa.config.model.n_kv_heads < base.config.model.n_kv_heads
    assert moe.config.model.moe is not None and moe.params["total"] > base.params["total"]


def test_mismatched_variant_is_refused(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, f"""
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
[[variant]]
name = "wide"
include = "{REPO}/configs/models/tiny.toml"
[variant.model]
d_ff = 512
""")
    with pytest.raises(ConfigError, match=r"variant 'wide' has active_non_embedding = .* from 'base'"):
        load_campaign(path)


def test_campaign_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        load_campaign(write_campaign(tmp_path, ""))
    with pytest.raises(ConfigError, match="unique name"):
        load_campaign(write_campaign(tmp_path, '[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n'))
    with pytest.raises(ConfigError, match="unknown key variant.modle"):
        load_campaign(write_campaign(tmp_path, '[[variant]]\nname = "a"\n[variant.modle]\nn_heads = 2\n'))


def fake_run(run_dir: Path, val: float, moe: bool) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text("")
    (run_dir / "result.json").write_text(json.dumps({
        "status": "completed", "val_loss": val, "test_loss": val + 0.1, "test_ppl": 2.0, "tokens_per_s": 1000.0,
        "tokens": 4096, "params": {"active_non_embedding": 100, "total": 300 if moe else 100,
                                   "kv_cache_bytes_per_token": 64}}))
    (run_dir / "infer.json").write_text(json.dumps(
        {"tokens_per_s_kv_cache": 50.0, "tokens_per_s_no_cache": 10.0, "kv_cache_speedup": 5.0}))
    rows = [{"step": 1, "loss": 5.0, "tokens": 2048}, {"step": 1, "val_loss": val}]
    if moe:
        rows.append({"step": 2, "loss": 4.0, "tokens": 4096, "moe_load": [[0.5, 0.25, 0.25, 0.0]],
                     "moe_max_load": [2.0], "moe_dropped_frac": [0.1]})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")


def test_report_reads_records_in_campaign_order(tmp_path: Path) -> None:
    fake_run(tmp_path / "b", 3.5, moe=False)
    fake_run(tmp_path / "a", 3.0, moe=True)
    (tmp_path / "campaign.json").write_text(json.dumps(
        {"variants": [{"name": "base", "dir": "b"}, {"name": "base+moe", "dir": "a"}]}))
    report = write_report(tmp_path)
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["base", "base+moe"]
    assert rows[1]["moe_max_load"] == 2.0 and rows[1]["moe_min_load"] == 0.0 and rows[1]["moe_dropped_frac"] == 0.1
    assert "moe_max_load" not in rows[0]
    md = (tmp_path / "report.md").read_text()
    assert "| base+moe | 100 | 300 | 64 | 3.0000 | 3.1000 |" in md
    assert (tmp_path / "report.csv").read_text().startswith("variant,")


def test_report_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LLMLabError, match="no finished runs"):
        write_report(tmp_path)


def test_shipped_campaigns_plan() -> None:
    for path in sorted((REPO / "configs/campaigns").glob("*.toml")):
        campaign = load_campaign(path)
        assert len(campaign.variants) == 3, path
        assert len({v.config.data.tokenizer for v in campaign.variants}) == 1  # one tokenizer for all


def test_campaign_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    """Two tiny variants: train, measure decode, report; a second run retrains nothing."""
    from llmlab.campaign.run import run_campaign

    path = tmp_path / "mini.toml"
    path.write_text(f"""
name = "mini"
[model]
vocab_size = 257
d_model = 32
n_layers = 1
n_heads = 2
head_dim = 16
d_ff = 64
max_seq_len = 64
[data]
dataset = "pydocs"
tokenizer = "byte"
dir = "{tmp_path / 'data'}"
[train]
seq_len = 32
micro_batch_size = 4
max_steps = 3
eval_interval = 0
eval_windows = 2
ckpt_interval = 0
log_interval = 1
warmup = 1
[generate]
prompt = "def "
max_new_tokens = 8
repeats = 1
[[variant]]
name = "mha"
[[variant]]
name = "mqa"
[variant.model]
n_heads = 3
n_kv_heads = 1
""")
    campaign = load_campaign(path)
    dirs = run_campaign(campaign, tmp_path / "out")
    assert [d.name for d in dirs] == ["mha", "mqa"]
    for d in dirs:
        infer = json.loads((d / "infer.json").read_text())
        assert infer["new_tokens"] == 8 and infer["tokens_per_s_kv_cache"] > 0
        assert infer["sample"].startswith("def ")
    rows = write_report(tmp_path / "out")["rows"]
    assert [r["variant"] for r in rows] == ["mha", "mqa"]
    assert rows[1]["kv_bytes_per_token"] * 2 == rows[0]["kv_bytes_per_token"]
    mtime = (dirs[0] / "result.json").stat().st_mtime
    run_campaign(campaign, tmp_path / "out")  # finished variants are not retrained
    assert (dirs[0] / "result.json").stat().st_mtime == mtime
