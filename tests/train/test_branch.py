"""A WSD decay branch (llmlab.train.branch) is the run trained from scratch with its schedule."""

from __future__ import annotations

import json

import pytest
import torch
from trainkit import train_rows

from llmlab import checkpoint
from llmlab.config import load_run_config, run_config_from_dict
from llmlab.errors import ConfigError
from llmlab.train import train
from llmlab.train.branch import branch_start, read_branch, seed_branch, stable_config

WSD = {"schedule": "wsd", "decay_frac": 0.2, "warmup": 5, "log_interval": 4, "eval_interval": 0}


def test_a_decay_branch_gives_the_losses_of_a_run_trained_from_scratch(make_config, tmp_path):
    """A stable run of 30 updates, checkpointed every 8; a branch of 20 updates decays over its last 4,
    so it leaves the stable run at update 16 (a checkpoint), and must then match the 20-update WSD
    run trained from scratch: every update's loss and grad norm, the final weights, val and test loss."""
    branch_cfg = load_run_config(make_config(train={**WSD, "max_steps": 20}))
    assert branch_start(branch_cfg) == 16
    stable = stable_config(branch_cfg)
    stable["train"].update(max_steps=30, ckpt_interval=8, keep_checkpoints=10)
    train(run_config_from_dict(stable), tmp_path / "stable")
    train(branch_cfg, tmp_path / "scratch")

    assert seed_branch(tmp_path / "stable", branch_cfg, tmp_path / "branch") == 16
    assert train(branch_cfg, tmp_path / "branch").status == "completed"
    per_step = lambda d: [(r["step"], r["loss_steps"], r["grad_norm_steps"]) for r in train_rows(d)]  # noqa: E731
    assert per_step(tmp_path / "branch") == per_step(tmp_path / "scratch")
    assert [r["lr"] for r in train_rows(tmp_path / "branch")] == [r["lr"] for r in train_rows(tmp_path / "scratch")]
    a, b = (checkpoint.load_latest(tmp_path / d)[1] for d in ("branch", "scratch"))
    for name, tensor in b["model"].items():
        torch.testing.assert_close(a["model"][name], tensor, rtol=0, atol=0)
    result = lambda d: json.loads((tmp_path / d / "result.json").read_text())  # noqa: E731
    for key in ("val_loss", "test_loss"):
        assert result("branch")[key] == pytest.approx(result("scratch")[key], rel=1e-12), key
    # the stable run itself decays never: at update 20 its rate is still the peak
    assert [r["lr"] for r in train_rows(tmp_path / "stable") if r["step"] == 20] == [branch_cfg.train.lr]
    assert read_branch(tmp_path / "branch")["step"] == 16 and read_branch(tmp_path / "scratch") is None


def test_a_branch_needs_a_stable_checkpoint_up_to_its_decay_start(make_config, tmp_path):
    cfg = load_run_config(make_config(train={**WSD, "max_steps": 20}))
    stable = stable_config(cfg)
    stable["train"].update(max_steps=24, ckpt_interval=6, keep_checkpoints=1)
    train(run_config_from_dict(stable), tmp_path / "stable")
    with pytest.raises(ConfigError, match=r"no checkpoint at or before step 16.*keeps \[24\]"):
        seed_branch(tmp_path / "stable", cfg, tmp_path / "branch")
    cosine = load_run_config(make_config(name="c.toml", train={"max_steps": 20}))
    with pytest.raises(ConfigError, match="needs train.schedule"):
        branch_start(cosine)
