"""Short runs on the embedded corpus: loss goes down, records are written, runs reproduce."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from llmlab import checkpoint
from llmlab.config import load_run_config
from llmlab.errors import CheckpointError, ConfigError
from llmlab.runs import read_eval_windows
from llmlab.train import TrainingDiverged, train
from llmlab.train.lock import RunDirBusy, RunLock

GOLDEN = Path(__file__).parent / "golden" / "dense_10_losses.json"


@pytest.mark.parametrize("variant", ["dense", "gqa", "moe"])
def test_tiny_variant_trains_and_loss_goes_down(variant, make_config, tmp_path, rows_of):
    cfg = load_run_config(make_config(variant, train={"max_steps": 40, "eval_interval": 20}))
    outcome = train(cfg, tmp_path / "run")
    assert outcome.status == "completed" and outcome.step == 40
    losses = [r["loss"] for r in rows_of(tmp_path / "run")]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, f"{variant}: loss {first:.3f} -> {last:.3f}"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("val_loss", "val_ppl", "val_bits_per_byte", "test_loss", "test_ppl",
                "test_bits_per_byte", "tokens_per_s", "params"):
        assert result[key] is not None, key
    assert "test_word_ppl" not in result  # words are the unit of WikiText only, not of pydocs
    assert result["test_ppl"] == pytest.approx(math.exp(result["test_loss"]))
    assert result["val_loss"] < math.log(257)
    windows = read_eval_windows(tmp_path / "run", "test")  # per-window: the report's bootstrap resamples them
    assert windows.n_tokens == result["test_tokens"] and windows.mean == pytest.approx(result["test_loss"], rel=1e-12)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [20, 40]
    if variant == "moe":
        last_row = rows_of(tmp_path / "run")[-1]
        assert len(last_row["moe_load"]) == 2 and len(last_row["moe_load"][0]) == 4  # (L_moe, E)
        assert "aux_loss" in last_row and "moe_dropped_frac" in last_row


def test_losses_reproduce_bit_for_bit_and_match_golden(make_config, synthetic_data, tmp_path, rows_of):
    cfg = load_run_config(make_config(train={"max_steps": 10}, data=synthetic_data))

    def losses(name: str) -> list[float]:
        train(cfg, tmp_path / name)
        return [r["loss"] for r in rows_of(tmp_path / name)]

    a, b = losses("a"), losses("b")
    assert a == b  # same machine, same process: bit for bit
    compare_with_golden(a, GOLDEN)


def compare_with_golden(losses: list[float], path: Path) -> None:
    """The expectation is a committed file, never written by a passing test: after an intended
    change to the model or data, LLMLAB_UPDATE_GOLDEN=1 rewrites it and skips (review the diff,
    commit, rerun without the variable); a missing file fails."""
    if os.environ.get("LLMLAB_UPDATE_GOLDEN"):
        path.write_text(json.dumps({"losses": losses, "torch": torch.__version__}, indent=1) + "\n")
        pytest.skip(f"LLMLAB_UPDATE_GOLDEN: rewrote {path.name}; rerun without it to compare")
    assert path.is_file(), f"{path} is missing: restore it from git (or regenerate with LLMLAB_UPDATE_GOLDEN=1)"
    golden = json.loads(path.read_text())["losses"]
    # Another CPU (other SIMD kernels) or torch version rounds differently: close, not identical.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(golden), rtol=1e-4, atol=0)


def test_golden_comparison_fails_when_the_file_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMLAB_UPDATE_GOLDEN", raising=False)
    missing = tmp_path / "golden.json"
    with pytest.raises(AssertionError, match="is missing"):
        compare_with_golden([2.0, 1.9], missing)
    assert not missing.exists()  # and it did not write its own expectation
    missing.write_text(json.dumps({"losses": [2.0, 1.5]}))
    with pytest.raises(AssertionError):
        compare_with_golden([2.0, 1.9], missing)


def test_non_finite_loss_stops_before_the_update(make_config, tmp_path, monkeypatch):
    from llmlab.train import step as step_module

    calls = {"n": 0}
    real_forward = step_module.LossHead.forward

    def poisoned(self, x, y):
        ce, aux, stats = real_forward(self, x, y)
        calls["n"] += 1
        return (ce * float("nan") if calls["n"] == 7 else ce), aux, stats

    monkeypatch.setattr(step_module.LossHead, "forward", poisoned)
    cfg = load_run_config(make_config(train={"max_steps": 20, "ckpt_interval": 5, "tokens_per_update": 256}))
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7 .*last good checkpoint is step 5"):
        train(cfg, tmp_path / "run")
    assert [e.step for e in checkpoint.read_manifest(checkpoint.ckpt_dir(tmp_path / "run"))] == [5]
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "diverged" and events[-1]["step"] == 7


def test_non_finite_step_leaves_weights_and_optimizer_unchanged():
    from llmlab.config import ModelConfig, TrainConfig
    from llmlab.model import GPT
    from llmlab.train.optim import build_optimizer
    from llmlab.train.step import LossHead, train_step

    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16))
    opt = build_optimizer(model, TrainConfig(max_steps=1), torch.device("cpu"))
    x = torch.randint(0, 64, (2, 16))
    head = LossHead(model, None, "cpu")
    train_step(head, model, opt, lambda: (x, x), 1, 1.0, torch.device("cpu"))  # optimizer state exists
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = float("nan")  # the poison: non-finite loss and gradients
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v["exp_avg"].clone() for k, v in opt.state_dict()["state"].items()}
    result = train_step(head, model, opt, lambda: (x, x), 1, 1.0, torch.device("cpu"))
    assert not result.applied and not math.isfinite(result.loss)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], equal_nan=True, rtol=0, atol=0)
    for k, v in opt.state_dict()["state"].items():
        torch.testing.assert_close(v["exp_avg"], opt_before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_resume_refuses_changed_architecture_naming_the_field(make_config, tmp_path):
    train(load_run_config(make_config(train={"max_steps": 4})), tmp_path / "run")
    changed = load_run_config(make_config(model={"n_kv_heads": 2}, train={"max_steps": 8}))
    with pytest.raises(CheckpointError, match=r"model\.n_kv_heads: checkpoint 4, now 2"):
        train(changed, tmp_path / "run")
    reseeded = load_run_config(make_config(train={"max_steps": 8, "seed": 1}))
    with pytest.raises(CheckpointError, match=r"train\.seed: checkpoint 0, now 1"):
        train(reseeded, tmp_path / "run")


def test_resume_refuses_other_data_naming_the_fingerprint(make_config, synthetic_data, tmp_path):
    train(load_run_config(make_config(train={"max_steps": 4}, data=synthetic_data)), tmp_path / "run")
    other = load_run_config(make_config(train={"max_steps": 8}))  # pydocs: same tokenizer, other data
    with pytest.raises(CheckpointError, match=r"data\.fingerprint: checkpoint '\w+', now '\w+'") as e:
        train(other, tmp_path / "run")
    assert "tokenizer" not in str(e.value).split(" -- ")[0]


def test_resume_allows_and_logs_training_only_changes(make_config, tmp_path):
    train(load_run_config(make_config(train={"max_steps": 4})), tmp_path / "run")
    more = load_run_config(make_config(train={"max_steps": 6, "eval_interval": 3}))
    outcome = train(more, tmp_path / "run")
    assert outcome.status == "completed" and outcome.step == 6
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    resume = next(r for r in rows if r.get("event") == "resume")
    assert resume["step"] == 4
    assert resume["changes"] == {"train.eval_interval": [0, 3], "train.max_steps": [4, 6]}
    assert "eval_interval = 3" in (tmp_path / "run" / "config.toml").read_text()
    # once complete, running it again changes nothing
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(more, tmp_path / "run")
    assert again.result == json.loads((tmp_path / "run" / "result.json").read_text())
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_second_process_on_a_busy_run_dir_exits_at_once(make_config, tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirBusy, match=rf"in use by pid {os.getpid()}"):
            train(load_run_config(make_config()), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_grouped_moe_compiled_in_fp32_is_refused_before_training(make_config, tmp_path):
    """torch._grouped_mm compiles in bf16 only: a one-line error at the start, not a trace error."""
    moe = {"n_experts": 4, "top_k": 2, "d_ff_expert": 64, "dispatch": "grouped"}
    config = make_config("gqa", model={"moe": moe}, train={"compile": True})
    with pytest.raises(ConfigError, match="'grouped' compiles only in bf16"):
        train(load_run_config(config), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_moe_routing_rows_average_every_update_of_their_interval(make_config, tmp_path, rows_of):
    """A row every 4 updates carries the mean of the 4 updates' routing statistics, the same numbers
    as the mean of the rows of the same run logged at every update (logging does not change training)."""
    every = rows_of(_trained(make_config, tmp_path / "every", log_interval=1))
    grouped = rows_of(_trained(make_config, tmp_path / "grouped", log_interval=4))
    assert [r["step"] for r in grouped] == [4, 8]
    for row, first in zip(grouped, (0, 4)):
        for key in ("moe_max_load", "moe_router_entropy", "moe_dropped_frac"):
            want = torch.tensor([r[key] for r in every[first:first + 4]]).mean(0)
            torch.testing.assert_close(torch.tensor(row[key]), want, rtol=1e-5, atol=1e-6)
        assert row["loss_steps"] == [r["loss"] for r in every[first:first + 4]]


def _trained(make_config, run_dir, log_interval: int):
    cfg = load_run_config(make_config("moe", name=f"{run_dir.name}.toml",
                                      train={"max_steps": 8, "log_interval": log_interval}))
    train(cfg, run_dir)
    return run_dir
