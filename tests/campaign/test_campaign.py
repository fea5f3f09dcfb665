"""Campaigns: variants at equal parameters, run records, and a report that reads only records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmlab.campaign.report import write_report
from llmlab.campaign.spec import load_campaign, plan_rows
from llmlab.config import dump_toml, load_run_config
from llmlab.errors import ConfigError, LLMLabError

REPO = Path(__file__).resolve().parents[2]


def write_campaign(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'include = "{REPO}/configs/runs/_pydocs-tiny.toml"\n' + body)
    return path


def test_demo_campaign_variants_match_active_parameters() -> None:
    campaign = load_campaign(REPO / "configs/campaigns/demo.toml")
    names = [v.name for v in campaign.variants]
    assert names == ["base", "base+gqa", "base+gqa (wider FFN)", "base+gqa+moe", "base+gqa (kv only)"]
    rows = plan_rows(campaign)
    assert all(abs(r["vs_first"] - 1) <= 0.01 for r in rows if r["role"] != "ablation")
    assert len({r["tokens"] for r in rows}) == 1  # equal budget, the ablation's too
    # the shared recipe's [model] keys (the byte vocabulary) override each variant's model file
    assert {v.config.model.vocab_size for v in campaign.variants} == {257}
    base, gqa, wide, moe, kv_only = campaign.variants
    assert gqa.config.model.n_kv_heads < base.config.model.n_kv_heads
    assert (wide.config.model.n_kv_heads, wide.config.model.n_heads) == (gqa.config.model.n_kv_heads, base.config.model.n_heads)
    assert wide.config.model.d_ff > base.config.model.d_ff  # the saved KV parameters, in the FFN
    assert moe.config.model.moe is not None and moe.params["total"] > base.params["total"]


def test_demo_campaign_has_the_gqa_ablation_labelled() -> None:
    """base+gqa (kv only): base's query heads, base+gqa's KV heads, fewer parameters, an ablation."""
    campaign = load_campaign(REPO / "configs/campaigns/demo.toml")
    rows = {r["variant"]: r for r in plan_rows(campaign)}
    base, gqa = (campaign.variants[i].config.model for i in (0, 1))
    kv_only = next(v for v in campaign.variants if v.name == "base+gqa (kv only)")
    assert kv_only.ablation and rows["base+gqa (kv only)"]["role"] == "ablation"
    assert (kv_only.config.model.n_heads, kv_only.config.model.n_kv_heads) == (base.n_heads, gqa.n_kv_heads)
    assert rows["base+gqa (kv only)"]["vs_first"] < 0.99  # fewer parameters: not iso-parameter
    assert [r["role"] for r in rows.values()] == ["baseline", "compared", "compared", "compared", "ablation"]
    out = subprocess.run([sys.executable, "-m", "llmlab", "plan", str(REPO / "configs/campaigns/demo.toml"),
                          "--memory-gb", "1"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"base\+gqa \(kv only\)\s+ablation", out)
    assert "memory budget 1.0 GiB (--memory-gb)" in out


@pytest.mark.parametrize("override, field", [
    ("[variant.train]\nseed = 1", "train.seed"),
    ('[variant.data]\ndataset = "wikitext-2"', "data.dataset"),
    ("[variant.train]\nmax_tokens = 8192", "train.max_tokens"),
    ("[variant.train]\nseq_len = 64", "train.seq_len"),
])
def test_plan_refuses_a_non_ablation_recipe_override(tmp_path: Path, override: str, field: str) -> None:
    body = f"""
[train]
max_tokens = 4096
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
[[variant]]
name = "other"
include = "{REPO}/configs/models/tiny.toml"
"""
    with pytest.raises(ConfigError, match=rf"variant 'other' sets {re.escape(field)} = .*ablation = true"):
        load_campaign(write_campaign(tmp_path, body + override + "\n"))
    ablation = load_campaign(write_campaign(tmp_path, body + "ablation = true\n" + override + "\n"))
    assert plan_rows(ablation)[1]["differs"].startswith(field)  # allowed, and shown


def test_plan_command_refuses_a_seed_override_in_one_line(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, f"""
[[variant]]
name = "base"
include = "{REPO}/configs/models/tiny.toml"
[[variant]]
name = "lucky"
include = "{REPO}/configs/models/tiny.toml"
[variant.train]
seed = 7
""")
    proc = subprocess.run([sys.executable, "-m", "llmlab", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("llmlab: error: variant 'lucky' sets train.seed = 7 ('base': 0)")
    assert len(proc.stderr.strip().splitlines()) == 1


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


def test_generate_spec_is_validated(tmp_path: Path) -> None:
    variant = f'[[variant]]\nname = "a"\ninclude = "{REPO}/configs/models/tiny.toml"\n'
    with pytest.raises(ConfigError, match="exceeds variant 'a'"):
        load_campaign(write_campaign(tmp_path, "[generate]\ncontexts = [512]\n" + variant))
    with pytest.raises(ConfigError, match="must be below every context"):
        load_campaign(write_campaign(tmp_path, "[generate]\ncontexts = [16]\nnew_tokens = 16\n" + variant))
    with pytest.raises(ConfigError, match="batch_sizes must be a non-empty list"):
        load_campaign(write_campaign(tmp_path, "[generate]\nbatch_sizes = []\n" + variant))
    with pytest.raises(ConfigError, match='generate.compile must be true, false, "auto" or "max-autotune"'):
        load_campaign(write_campaign(tmp_path, '[generate]\ncompile = "fast"\n' + variant))


@pytest.mark.parametrize("compile,device,cases,mode", [
    ("auto", "cpu", ["kv_cache", "no_cache"], None),
    ("auto", "cuda", ["kv_cache", "no_cache", "compiled"], "default"),
    ("max-autotune", "cpu", ["kv_cache", "no_cache", "compiled"], "max-autotune"),
])
def test_compile_mode_is_part_of_the_measurement_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      compile: str, device: str, cases: list, mode: str | None
                                                      ) -> None:
    """infer.json is measured again when the compiled case's mode changes (its figures depend on it);
    a sweep without a compiled case records no mode, so older records stay valid."""
    import torch

    import llmlab.campaign.execute as run

    variant = f'[[variant]]\nname = "a"\ninclude = "{REPO}/configs/models/tiny.toml"\n'
    campaign = load_campaign(write_campaign(tmp_path, f'[generate]\ncompile = "{compile}"\n' + variant))
    monkeypatch.setattr(run, "_device", lambda variant: torch.device(device))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    spec = run.measurement_spec(campaign.generate, campaign.variants[0], "sha")
    assert spec["cases"] == cases and spec.get("compile_mode") == mode
    assert spec["torch"] == torch.__version__ and spec.get("gpu") == ("Some GPU" if device == "cuda" else None)


def fake_run(run_dir: Path, val: float, moe: bool, kv_heads: int = 4) -> None:
    """A finished run's records, written by hand: tiny model (byte vocabulary), a 2-point sweep."""
    run_dir.mkdir(parents=True)
    cfg = load_run_config(REPO / "configs/runs/tiny.toml", [f"model.n_kv_heads={kv_heads}"])
    (run_dir / "config.toml").write_text(dump_toml(cfg.to_dict()))
    (run_dir / "result.json").write_text(json.dumps({
        "status": "completed", "val_loss": val, "test_loss": val + 0.1, "test_ppl": 2.0, "tokens_per_s": 1000.0,
        "tokens": 4096, "params": {"active_non_embedding": 100, "active": 120, "total": 300 if moe else 100,
                                   "kv_cache_bytes_per_token": 64}}))
    case = lambda tok_s: {"prefill_s": 0.002, "decode_tokens_per_s": tok_s}  # noqa: E731
    points = [{"context": 64, "batch_size": 1, "cases": {"kv_cache": case(50.0), "no_cache": case(10.0)}},
              {"context": 256, "batch_size": 8, "cases": {"kv_cache": case(300.0), "no_cache": case(20.0)}}]
    (run_dir / "infer.json").write_text(json.dumps(
        {"points": points, "tokens_per_s_kv_cache": 50.0, "tokens_per_s_no_cache": 10.0, "kv_cache_speedup": 5.0,
         "dtype": "float32"}))
    (run_dir / "env.json").write_text(json.dumps({"device": "cpu", "device_name": "test cpu", "threads": 1,
                                                  "torch": "2.13.0", "git": {"commit": "abc1234567890", "dirty": False}}))
    t0 = time.time() - 600  # ten minutes ago; the infer.json just written is the last write
    rows = [{"step": 1, "loss": 5.0, "tokens": 2048, "time": t0}, {"step": 1, "val_loss": val, "time": t0 + 300}]
    if moe:
        rows.append({"step": 2, "loss": 4.0, "tokens": 4096, "moe_load": [[0.5, 0.25, 0.25, 0.0]],
                     "moe_max_load": [2.0], "moe_dropped_frac": [0.1]})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")


def test_report_reads_records_in_campaign_order(tmp_path: Path) -> None:
    fake_run(tmp_path / "b", 3.5, moe=False)
    fake_run(tmp_path / "a", 3.0, moe=True)
    fake_run(tmp_path / "k", 3.6, moe=False, kv_heads=2)
    (tmp_path / "campaign.json").write_text(json.dumps(
        {"variants": [{"name": "base", "dir": "b"}, {"name": "base+moe", "dir": "a"},
                      {"name": "base (kv only)", "dir": "k", "ablation": True}]}))
    report = write_report(tmp_path, memory_gb=1.0)
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["base", "base+moe", "base (kv only)"]
    assert rows[1]["moe_max_load"] == 2.0 and rows[1]["moe_min_load"] == 0.0 and rows[1]["moe_dropped_frac"] == 0.1
    assert "moe_max_load" not in rows[0]
    md = (tmp_path / "report.md").read_text()
    assert "| base+moe | compared | 0.002 | 1 | 100 | 300 | 3.0000 (1 seed) | 3.1000 (1 seed) |" in md
    assert "| base (kv only) | ablation | 0.002 | 1 | 100 | 100 | 3.6000 (1 seed) |" in md  # labelled
    # memory at a 1 GiB budget, fp32 (from infer.json): half the KV heads, about twice the batch
    memory = md.split("## Memory")[1].split("##")[0]
    assert "memory budget 1.0 GiB (--memory-gb), fp32 decode, batch at seq_len 128" in memory
    assert "| base | 4,096 | 3,544,064 |" in memory and "| base (kv only) | 2,048 | 3,281,920 |" in memory
    # the decode sweep: one row per variant and point, speedup over the no-cache baseline
    assert "| base+moe | 256 | 8 | 2.0 | 300.0 | 20.0 | 15.00 |" in md
    assert (tmp_path / "report.csv").read_text().startswith("variant,")
    # the record: what the runs were made on and when, from their env.json and metrics times
    record = md.split("## Record")[1]
    assert "Runs: 3 (seed runs and sweep points)" in record and "10 minutes of wall time" in record
    assert "test cpu (cpu, threads=1, torch 2.13.0)" in record and "llmlab commit(s): abc1234567\n" in record


def test_report_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LLMLabError, match="no finished runs"):
        write_report(tmp_path)


def test_shipped_campaigns_plan() -> None:
    """Every shipped campaign has the five arms (the quick 125M tier the three main ones), the
    compared ones within 1 % active non-embedding parameters of the baseline."""
    five = ["base", "base+gqa", "base+gqa (wider FFN)", "base+gqa+moe", "base+gqa (kv only)"]
    for path in sorted((REPO / "configs/campaigns").glob("*.toml")):
        campaign = load_campaign(path)
        names = [v.name for v in campaign.variants]
        assert names == (["base", "base+gqa", "base+gqa+moe"] if path.stem.endswith("-quick") else five), path
        assert [v.ablation for v in campaign.variants] == [n == "base+gqa (kv only)" for n in names], path
        assert len({v.config.data.tokenizer for v in campaign.variants}) == 1  # one tokenizer for all
        rows = plan_rows(campaign)
        assert all(abs(r["vs_first"] - 1) <= 0.01 for r in rows if r["role"] != "ablation"), path


DROPPING_ARM = """
[[variant]]
name = "base"
include = "{repo}/configs/models/tiny.toml"
[[variant]]
name = "moe"
include = "{model}"
"""


def test_a_token_dropping_moe_arm_needs_an_explicit_capacity_factor(tmp_path: Path) -> None:
    """A compared MoE arm whose included model file drops tokens (capacity + capacity_factor) is
    refused in one line, exit 2; the campaign's own capacity_factor (the arm's [variant.model.moe])
    accepts it, and an ablation is exempt."""
    model = tmp_path / "moe.toml"
    model.write_text(f'include = "{REPO}/configs/models/tiny-moe.toml"\n[model]\nn_heads = 4\nn_kv_heads = 4\n'
                     'd_ff = 384\n[model.moe]\nd_ff_expert = 192\ndispatch = "capacity"\ncapacity_factor = 1.25\n')
    path = write_campaign(tmp_path, "tolerance = 0.02\n" + DROPPING_ARM.format(repo=REPO, model=model))
    with pytest.raises(ConfigError, match=r"variant 'moe': model.moe.dispatch = 'capacity' with capacity_factor 1.25 "
                                          r"\(from an included file\) drops .* setting capacity_factor in that arm"):
        load_campaign(path)
    proc = subprocess.run([sys.executable, "-m", "llmlab", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "capacity_factor" in proc.stderr
    own = write_campaign(tmp_path, "tolerance = 0.02\n" + DROPPING_ARM.format(repo=REPO, model=model)
                         + "[variant.model.moe]\ncapacity_factor = 1.5\n")
    accepted = load_campaign(own)  # chosen in the campaign, for that arm
    assert plan_rows(accepted)[1]["dispatch"] == "capacity, factor 1.5 (drops overflow)"
    ablation = write_campaign(tmp_path, DROPPING_ARM.format(repo=REPO, model=model).replace(
        'name = "moe"', 'name = "moe"\nablation = true'))
    assert load_campaign(ablation).variants[1].ablation


MINI = """
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
dataset = "{corpus}"
tokenizer = "byte"
dir = "{data}"
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
contexts = [16, 48]
batch_sizes = [1, 2]
new_tokens = 4
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
"""


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The mini campaign's text, on a small corpus folder (train/val/test) prepared once: the
    whole test split is evaluated at the end of every run, so it is kept to a few windows."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("mini")
    text = "\n".join(topics.values())
    for split, (start, size) in {"train": (0, 40_000), "val": (40_000, 2_000), "test": (42_000, 2_000)}.items():
        (root / "corpus" / split).mkdir(parents=True)
        (root / "corpus" / split / "doc.txt").write_text(text[start:start + size])
    return MINI.replace("{corpus}", str(root / "corpus")).replace("{data}", str(root / "data"))


def mtimes(out: Path, name: str) -> tuple[float, float]:
    return tuple((out / d / "seed-0" / name).stat().st_mtime_ns for d in ("mha", "mqa"))


def test_campaign_runs_end_to_end_and_keeps_its_records_honest(tmp_path: Path, mini: str) -> None:
    """Two tiny variants: train, sweep decode, report. A rerun retrains and re-times nothing; an
    edited budget or model is refused naming the field, and campaign.json is left alone;
    --retrain retrains only that variant; --remeasure or a changed sweep re-times infer.json."""
    from llmlab.campaign.execute import run_campaign

    path, out = tmp_path / "mini.toml", tmp_path / "out"
    path.write_text(mini)
    campaign = load_campaign(path)
    dirs = run_campaign(campaign, out)
    assert [str(d.relative_to(out)) for d in dirs] == ["mha/seed-0", "mqa/seed-0"]
    for d in dirs:
        infer = json.loads((d / "infer.json").read_text())
        assert [(p["context"], p["batch_size"]) for p in infer["points"]] == [(16, 1), (16, 2), (48, 1), (48, 2)]
        assert set(infer["points"][0]["cases"]) == {"kv_cache", "no_cache"}  # compile = "auto": not on a CPU
        assert infer["headline"] == {"context": 48, "batch_size": 1} and infer["tokens_per_s_kv_cache"] > 0
        assert infer["sample"].startswith("def ")
        assert (d / "fingerprint.json").is_file()
    rows = write_report(out)["rows"]
    assert [r["variant"] for r in rows] == ["mha", "mqa"]
    assert rows[1]["kv_bytes_per_token"] * 2 == rows[0]["kv_bytes_per_token"]
    trained, timed = mtimes(out, "result.json"), mtimes(out, "infer.json")
    run_campaign(campaign, out)  # finished variants are neither retrained nor re-timed
    assert mtimes(out, "result.json") == trained and mtimes(out, "infer.json") == timed

    record = (out / "campaign.json").read_text()
    for edit, field in (("max_steps = 3", "max_steps = 4"), ("d_ff = 64", "d_ff = 96")):
        path.write_text(mini.replace(edit, field))
        key = "train.max_steps" if "steps" in edit else "model.d_ff"
        old, new = edit.split(" = ")[1], field.split(" = ")[1]
        with pytest.raises(ConfigError, match=rf"variant 'mha' in .* was run with {key} = {old}, the campaign "
                                              rf"now says {new}.*--retrain 'mha'"):
            run_campaign(load_campaign(path), out)
        assert (out / "campaign.json").read_text() == record  # never rewritten to describe other runs
    # A sweep added afterwards trains and picks another rate than the seed runs were trained at:
    # they are refused, and campaign.json still describes them.
    path.write_text(mini.replace('name = "mini"', 'name = "mini"\n[sweep]\nlr = [1e-4, 3e-3]\nfraction = 0.5', 1))
    with pytest.raises(ConfigError, match=r"was run with train.lr = 0.0006"):
        run_campaign(load_campaign(path), out)
    assert (out / "campaign.json").read_text() == record

    edited = load_campaign(path)  # d_ff 96 for both: retrain only mqa, mha is still refused
    with pytest.raises(ConfigError, match="variant 'mha'"):
        run_campaign(edited, out, retrain=["mqa"])
    with pytest.raises(ConfigError, match="--retrain 'nope': no such variant"):
        run_campaign(campaign, out, retrain=["nope"])
    run_campaign(campaign, out, retrain=["mqa"])  # back to the original config: retrain mqa alone
    after = mtimes(out, "result.json")
    assert after[0] == trained[0] and after[1] != trained[1]

    timed = mtimes(out, "infer.json")
    run_campaign(campaign, out, remeasure=True)
    assert all(a != b for a, b in zip(mtimes(out, "infer.json"), timed))
    timed = mtimes(out, "infer.json")
    path.write_text(mini.replace("repeats = 1", "repeats = 2"))
    run_campaign(load_campaign(path), out)  # a changed measurement spec is measured again, never kept
    assert all(a != b for a, b in zip(mtimes(out, "infer.json"), timed))
    assert json.loads((out / "mha/seed-0/infer.json").read_text())["spec"]["repeats"] == 2


def study_campaign(mini: str) -> str:
    """The mini campaign as a study: 2 LRs x 2 seeds, three variants (dense MHA, MQA, MQA + MoE)."""
    study = mini.replace('name = "mini"', 'name = "study"\ntolerance = 0.05\nseeds = [0, 1]\n'
                                          '[sweep]\nlr = [1e-4, 3e-3]\nfraction = 0.5', 1)
    study = study.replace("max_steps = 3", "max_steps = 4").replace("eval_interval = 0", "eval_interval = 2")
    study = study.replace("batch_sizes = [1, 2]", "batch_sizes = [1]")
    return study + ('[[variant]]\nname = "moe"\n[variant.model]\nn_heads = 3\nn_kv_heads = 1\n'
                    '[variant.model.moe]\nn_experts = 4\ntop_k = 2\nd_ff_expert = 32\ndispatch = "loop"\n')


@pytest.mark.slow  # a whole campaign: 12 tiny runs, a decode sweep, a report (~45 s of CPU)
def test_study_picks_each_variants_lr_runs_every_seed_and_reports(tmp_path: Path, mini: str) -> None:
    """Sweep -> per-variant LR (lowest final val loss) -> every seed at it -> report with every plot
    and a generated Findings section; a rerun trains and times nothing again."""
    from llmlab.campaign.execute import run_campaign

    path, out = tmp_path / "study.toml", tmp_path / "out"
    path.write_text(study_campaign(mini))
    campaign = load_campaign(path)
    run_campaign(campaign, out)
    record = json.loads((out / "campaign.json").read_text())
    for v in record["variants"]:
        sweep = {lr: json.loads((out / v["dir"] / "sweep" / f"lr-{lr:g}" / "result.json").read_text())["val_loss"]
                 for lr in (1e-4, 3e-3)}
        assert v["lr"] == min(sweep, key=sweep.get), (v["name"], sweep)  # the lower val loss wins
        assert [e["val_loss"] for e in v["sweep"]] == [sweep[1e-4], sweep[3e-3]]
        sweep_cfg = load_run_config(out / v["dir"] / "sweep/lr-0.0001/config.toml").train
        assert sweep_cfg.max_steps == 2 and sweep_cfg.seed == 0  # half the budget, the first seed
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for seed in (0, 1):
            cfg = load_run_config(out / v["dir"] / f"seed-{seed}" / "config.toml").train
            assert (cfg.lr, cfg.seed, cfg.total_steps()) == (v["lr"], seed, 4)
            assert (out / v["dir"] / f"seed-{seed}" / "result.json").is_file()
        assert (out / v["dir"] / "seed-0/infer.json").is_file() and not (out / v["dir"] / "seed-1/infer.json").exists()

    report = write_report(out, memory_gb=1.0)
    names = {Path(f).name for f in report["files"]}
    assert {"loss.png", "params_vs_loss.png", "lr_sweep.png", "decode.png", "memory.png",
            "moe_load_moe.png", "moe_routing_moe.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    md = (out / "report.md").read_text()
    findings = md.split("## Findings")[1]
    for claim in ("GQA with more query heads lowers test loss: test loss mqa − mha =",
                  "GQA + MoE lowers test loss: test loss moe − mha =", "GQA + MoE lowers test loss further than GQA",
                  "GQA shrinks the KV cache", "The KV cache speeds up decoding", "Seed noise"):
        assert claim in findings.replace("**", ""), claim
    assert "over 2 paired seeds" in findings and "Verdict:" in findings
    assert "| mqa | mha | 2 |" in md  # the paired-difference table
    routing = md.split("## MoE routing over training")[1].split("\n## ")[0]
    assert "| moe | 0 |" in routing and "| moe | 1 |" in routing  # every seed's routing, side by side
    assert re.search(r"- moe: saturation at the middle evaluation [0-9.]+–[0-9.]+ over 2 seeds", routing)
    assert "lowest mean validation loss" in md and "Spikes (loss and gradient norm, per run)" in md
    # the family of loss hypotheses, with an evaluation-noise interval from the runs' eval_windows.json
    assert "Holm-adjusted over the 3 loss hypotheses p = " in findings
    assert "evaluation noise alone (paired bootstrap over " in findings

    results = sorted(out.rglob("result.json"))
    assert len(results) == 12  # 3 variants x (2 sweep LRs + 2 seeds)
    before = {p: p.stat().st_mtime_ns for p in results + sorted(out.rglob("infer.json"))}
    run_campaign(load_campaign(path), out)  # everything done: nothing trained or timed again
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_lr_choice_rule() -> None:
    from llmlab.campaign.runlist import choose_lr

    entries = [{"lr": 1e-3, "status": "completed", "val_loss": 2.0},
               {"lr": 2e-3, "status": "completed", "val_loss": 1.9},
               {"lr": 4e-3, "status": "diverged", "val_loss": None}]
    assert choose_lr("v", entries) == 2e-3
    entries[0]["val_loss"] = 1.9  # a tie goes to the smaller rate
    assert choose_lr("v", entries) == 1e-3
    with pytest.raises(LLMLabError, match="no sweep run finished"):
        choose_lr("v", [entries[2]])
    # sweep.seeds: the mean over seeds decides, and a rate at which any seed diverged is out
    seeds = [{"lr": 1e-3, "seed": 0, "status": "completed", "val_loss": 2.00},
             {"lr": 1e-3, "seed": 1, "status": "completed", "val_loss": 2.02},
             {"lr": 2e-3, "seed": 0, "status": "completed", "val_loss": 1.95},  # best single run...
             {"lr": 2e-3, "seed": 1, "status": "completed", "val_loss": 2.10},  # ...worse mean (2.025)
             {"lr": 4e-3, "seed": 0, "status": "completed", "val_loss": 1.90},
             {"lr": 4e-3, "seed": 1, "status": "diverged", "val_loss": None}]
    assert choose_lr("v", seeds) == 1e-3


def test_lr_choice_flags_the_grid_edge_and_a_cliff() -> None:
    """The CPU study's GQA: 2e-3 chosen at val 2.041 next to 2.658 at 4e-3 (+30 %, threshold 10 %)."""
    from llmlab.campaign.runlist import choice_flags

    curve = lambda vals: [{"lr": lr, "status": "completed" if v else "diverged", "val_loss": v}  # noqa: E731
                                       for lr, v in zip((5e-4, 1e-3, 2e-3, 4e-3), vals)]
    gqa = choice_flags(2e-3, curve((2.30, 2.15, 2.041, 2.658)))
    assert gqa == ["next to a much worse neighbour: lr 0.004 at val 2.658 against 2.041 (+30 %, threshold 10 %)"]
    assert choice_flags(1e-3, curve((2.10, 2.05, 2.08, 2.12))) == []  # a smooth optimum inside the grid
    assert choice_flags(4e-3, curve((2.3, 2.2, 2.1, 2.0)))[0].startswith("at the grid's edge")
    assert choice_flags(2e-3, curve((2.3, 2.2, 2.1, None))) == ["next to lr 0.004, which diverged"]


def test_sweep_on_several_seeds_and_a_larger_validation_set(tmp_path: Path) -> None:
    from llmlab.campaign.estimate import runs_per_variant
    from llmlab.campaign.runlist import sweep_runs

    head = "seeds = [3, 4]\n[sweep]\nlr = [1e-3, 2e-3]\nfraction = 0.5\nseeds = [3, 5]\neval_windows = 96\n"
    variant = f'[[variant]]\nname = "a"\ninclude = "{REPO}/configs/models/tiny.toml"\n'
    path = tmp_path / "c.toml"
    path.write_text(f'include = "{REPO}/configs/runs/_pydocs-tiny.toml"\n' + head + variant)
    runs = sweep_runs(load_campaign(path))
    assert [(r.lr, r.seed, r.dirname) for r in runs] == [
        (1e-3, 3, "a/sweep/lr-0.001"), (1e-3, 5, "a/sweep/lr-0.001-seed-5"),  # the first seed keeps its layout
        (2e-3, 3, "a/sweep/lr-0.002"), (2e-3, 5, "a/sweep/lr-0.002-seed-5")]
    assert {(r.config.train.seed, r.config.train.eval_windows) for r in runs} == {(3, 96), (5, 96)}
    assert runs_per_variant(load_campaign(path))["sweep_runs"] == 4  # the plan counts them: 2 LRs x 2 seeds
    for bad, message in (("seeds = [1, 1]", "sweep.seeds must be a list of distinct"),
                         ("eval_windows = -1", "sweep.eval_windows must be an integer >= 0")):
        path.write_text(f'include = "{REPO}/configs/runs/_pydocs-tiny.toml"\n[sweep]\nlr = [1e-3, 2e-3]\n{bad}\n'
                        + variant)
        with pytest.raises(ConfigError, match=message):
            load_campaign(path)


def test_report_draws_the_lr_curve_over_seeds_and_flags_a_cliff(tmp_path: Path) -> None:
    fake_run(tmp_path / "b/seed-0", 2.0, moe=False)
    sweep = []
    for lr, vals in ((1e-3, (2.10, 2.12)), (2e-3, (2.04, 2.05)), (4e-3, (2.60, 2.70))):
        for seed, val in enumerate(vals):
            d = f"b/sweep/lr-{lr:g}" + (f"-seed-{seed}" if seed else "")
            fake_run(tmp_path / d, val, moe=False)
            sweep.append({"lr": lr, "seed": seed, "dir": d, "status": "completed", "val_loss": val, "steps": 2})
    (tmp_path / "campaign.json").write_text(json.dumps({
        "seeds": [0], "sweep": {"lr": [1e-3, 2e-3, 4e-3], "fraction": 0.5, "rule": "r", "seeds": [0, 1],
                                "eval_windows": 128},
        "variants": [{"name": "base", "dir": "b", "lr": 2e-3, "sweep": sweep, "runs": [{"seed": 0, "dir": "b/seed-0"}]}]}))
    md = write_report(tmp_path, memory_gb=1.0)["markdown"]
    assert "(seeds [0, 1], 128 validation windows, same tokens" in md
    section = md.split("## Learning-rate sweep")[1].split("##")[0]
    assert "| base | 0.002 | 2 | 2 | completed | 2.0450 | 2.0400, 2.0500 | yes |" in section
    assert "- base (lr 0.002): next to a much worse neighbour: lr 0.004 at val 2.650 against 2.045 (+30 %" in section
    assert "sweep lr 0.004 seed 1" in md  # its stability row names the seed


@pytest.mark.parametrize("head, message", [
    ("[sweep]\nlr = [1e-3]\n", "sweep.lr must be a list of at least two"),
    ("[sweep]\nlr = [1e-3, 1e-3]\n", "repeated value"),
    ("[sweep]\nlr = [1e-3, 2e-3]\nfraction = 0\n", r"sweep.fraction must be in \(0, 1\]"),
    ("[sweep]\nlr = [1e-3, 2e-3]\nsteps = 3\n", r"\[sweep\]: .*keys: lr, fraction"),
    ("seeds = [0, 0]\n", "seeds must be a non-empty list of distinct"),
    ("seeds = []\n", "seeds must be a non-empty list"),
])
def test_sweep_and_seeds_are_validated(tmp_path: Path, head: str, message: str) -> None:
    variant = f'[[variant]]\nname = "a"\ninclude = "{REPO}/configs/models/tiny.toml"\n'
    path = tmp_path / "c.toml"
    path.write_text(f'include = "{REPO}/configs/runs/_pydocs-tiny.toml"\n' + head + variant)
    with pytest.raises(ConfigError, match=message):
        load_campaign(path)


def test_seed_runs_share_everything_but_lr_and_seed() -> None:
    """The study's runs: sweep runs at half the budget (warm-up alike) on two seeds and 128 validation
    windows, min_lr scaled with the LR; each seed is a stable run and its three decay branches."""
    from llmlab.campaign.runlist import seed_runs, sweep_runs

    campaign = load_campaign(REPO / "configs/campaigns/cpu-study.toml")
    assert campaign.seeds == [0, 1, 2] and campaign.sweep.lr == [5e-4, 1e-3, 2e-3, 4e-3]
    sweep = sweep_runs(campaign)
    assert len(sweep) == 40 and {r.seed for r in sweep} == {0, 1}  # 5 variants x 4 LRs x 2 seeds
    first = sweep[0].config.train
    assert (first.total_steps(), first.warmup, first.lr, first.eval_windows) == (240, 10, 5e-4, 128)
    assert first.min_lr == pytest.approx(2e-4 * 5e-4 / 2e-3)
    runs = seed_runs(campaign, {v.name: 1e-3 for v in campaign.variants})
    assert len(runs) == 60  # 3 seeds x 5 variants x (stable + 3 branches)
    assert [(r.dirname, r.steps) for r in runs[:5]] == [
        ("base/stable/seed-0", 384), ("base/budget-120/seed-0", 120), ("base/budget-240/seed-0", 240),
        ("base/seed-0", 480), ("base-gqa/stable/seed-0", 384)]
    assert {r.config.train.total_steps() for r in runs if r.kind == "seed"} == {480}


def test_a_run_of_the_single_run_layout_is_refused_not_mixed(tmp_path: Path) -> None:
    """<out>/<variant> holding a run itself (before per-seed runs) is never silently nested under."""
    from llmlab.campaign import integrity

    campaign = load_campaign(REPO / "configs/campaigns/demo.toml")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "fingerprint.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"single-run layout .*--retrain 'base'"):
        integrity.variants_to_retrain(campaign, tmp_path, [])
    assert integrity.variants_to_retrain(campaign, tmp_path, ["base"]) == [tmp_path / "base"]
    (tmp_path / "base-gqa").mkdir()  # base+gqa's folder, holding something else
    (tmp_path / "base-gqa" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no run record"):
        integrity.variants_to_retrain(campaign, tmp_path, ["base", "base+gqa"])


def test_a_diverged_run_is_recorded_and_not_retried(tmp_path: Path) -> None:
    """A run whose metrics end in a "diverged" event (non-finite loss) counts as a failed point:
    retrying would diverge again from the same checkpoint."""
    from llmlab.campaign.execute import train_once

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n"
                                            + json.dumps({"event": "diverged", "step": 2}) + "\n")
    cfg = load_run_config(REPO / "configs/runs/tiny.toml")
    assert train_once(cfg, tmp_path) == "diverged"
    assert not (tmp_path / "result.json").exists()  # nothing was trained


def test_report_pairs_only_finished_seeds_and_names_the_others(tmp_path: Path) -> None:
    for d, val in (("b/seed-0", 3.5), ("b/seed-1", 3.4), ("g/seed-0", 3.3)):
        fake_run(tmp_path / d, val, moe=False)
    runs = lambda v, status1: [{"seed": 0, "dir": f"{v}/seed-0"},  # noqa: E731
                               {"seed": 1, "dir": f"{v}/seed-1", "status": status1}]
    (tmp_path / "campaign.json").write_text(json.dumps({"seeds": [0, 1], "variants": [
        {"name": "base", "dir": "b", "lr": 2e-3, "runs": runs("b", "completed")},
        {"name": "gqa", "dir": "g", "lr": 1e-3, "runs": runs("g", "diverged")}]}))
    md = write_report(tmp_path, memory_gb=1.0)["markdown"]
    assert "- gqa, seed 1: diverged (left out of the means and the pairing)" in md
    assert "| base | baseline | 0.002 | 2 |" in md and "| gqa | compared | 0.001 | 1 |" in md
    assert "| gqa | base | 1 | -0.2000 |" in md  # seed 0 alone: 3.4 - 3.6 (test = val + 0.1)


def test_findings_state_results_against_the_hypothesis() -> None:
    from llmlab.campaign.aggregate import difference_row
    from llmlab.campaign.findings import loss_finding
    from llmlab.campaign.stats import paired_difference

    worse = paired_difference({0: 2.10, 1: 2.21, 2: 2.12}, {0: 2.00, 1: 2.10, 2: 2.05})
    text = loss_finding("GQA + MoE lowers test loss", difference_row("moe", "base", "test_loss", worse))
    assert text.startswith("- **GQA + MoE lowers test loss**: test loss moe − base = +0.0933 nats/token, 95 % CI [")
    assert text.endswith("Verdict: **contradicted (the difference goes the other way)**.")
    unclear = paired_difference({0: 2.00, 1: 2.20, 2: 2.05}, {0: 2.10, 1: 2.05, 2: 2.08})
    assert "not resolved at this budget" in loss_finding("h", difference_row("a", "b", "test_loss", unclear))


def test_an_outlier_seed_is_named_and_the_family_is_holm_corrected(tmp_path: Path) -> None:
    """Three seeds per arm; gqa's seed 2 ends 0.4 nats above its other two. The report names it (never
    averaged in silently), pools the seed noise over the compared arms only, and gives each loss
    hypothesis its raw and Holm p and an evaluation-noise interval from the per-window records."""
    from llmlab.runs import WindowLosses, write_eval_windows

    vals = {"b": (3.50, 3.52, 3.48), "g": (3.30, 3.31, 3.70), "k": (3.40, 3.45, 3.41)}
    for arm, losses in vals.items():
        for seed, val in enumerate(losses):
            run_dir = tmp_path / arm / f"seed-{seed}"
            fake_run(run_dir, val, moe=False)
            test = val + 0.1  # fake_run's test loss
            write_eval_windows(run_dir, "test", WindowLosses([(test + e) * 32 for e in (0.02, -0.02, 0.01, -0.01)],
                                                             [32] * 4))
    model = {"b": {"n_heads": 4, "n_kv_heads": 4}, "g": {"n_heads": 8, "n_kv_heads": 2},
             "k": {"n_heads": 4, "n_kv_heads": 2}}
    variant = lambda name, arm, **kw: {"name": name, "dir": arm, "lr": 1e-3, "config": {"model": model[arm]},  # noqa: E731
                                       "runs": [{"seed": s, "dir": f"{arm}/seed-{s}"} for s in range(3)], **kw}
    (tmp_path / "campaign.json").write_text(json.dumps({"seeds": [0, 1, 2], "variants": [
        variant("base", "b"), variant("gqa", "g"), variant("kv-only", "k", ablation=True)]}))
    md = write_report(tmp_path, memory_gb=1.0)["markdown"]
    flagged = md.split("## Flagged runs")[1].split("##")[0]
    assert "| gqa | 2 | outlier | test_loss 3.8000 against the arm's median 3.4100" in flagged
    assert "| base |" not in flagged and "| kv-only |" not in flagged
    findings = md.split("## Findings")[1]
    assert "**Flagged runs**: gqa seed 2 (outlier: test_loss 3.8000" in findings
    assert "pooled over the compared arms (base, gqa)" in findings and "Ablations apart: kv-only" in findings
    table = md.split("## Loss hypotheses (one family, Holm)")[1].split("##")[0]
    assert "p (raw) | p (Holm) | eval-noise CI low | eval-noise CI high | verdict (Holm) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| GQA") or line.startswith("| Fewer")]
    assert len(rows) == 2
    # the same 4 windows for every run, shifted: evaluation noise is zero width at the seed mean
    gqa = rows[0].split(" | ")
    assert gqa[2] == "-0.0633" and gqa[7] == gqa[8] == "-0.0633"
    assert "Holm-adjusted over the 2 loss hypotheses p = " in findings


def test_moe_routing_figures_average_every_seed(tmp_path: Path) -> None:
    """Not the first seed's alone: seed 0 at max/mean load 2.0, seed 1 at 3.0 -> 2.5 in the table."""
    from llmlab.campaign.records import load_records
    from llmlab.campaign.report import routing_over_seeds

    for seed, load in ((0, 2.0), (1, 3.0)):
        run_dir = tmp_path / f"m/seed-{seed}"
        fake_run(run_dir, 3.0, moe=True)
        text = (run_dir / "metrics.jsonl").read_text().replace('"moe_max_load": [2.0]', f'"moe_max_load": [{load}]')
        (run_dir / "metrics.jsonl").write_text(text)
    (tmp_path / "campaign.json").write_text(json.dumps({"seeds": [0, 1], "variants": [
        {"name": "moe", "dir": "m", "lr": 1e-3, "runs": [{"seed": s, "dir": f"m/seed-{s}"} for s in (0, 1)]}]}))
    records, _ = load_records(tmp_path)
    assert routing_over_seeds(records[0])["moe_max_load"] == pytest.approx(2.5)
