"""`torchrun --nproc_per_node=2` on CPU (gloo) gives the loss curve of one process at the same tokens
per update (the loader's global batch order does not depend on the world size)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from trainkit import subprocess_env, train_rows

from llmlab.config import load_run_config
from llmlab.errors import CheckpointError
from llmlab.train import train

TRAIN = {"max_steps": 8, "micro_batch_size": 8, "tokens_per_update": 512, "eval_interval": 4, "ckpt_interval": 4}


def torchrun(config, run_dir, *overrides: str) -> subprocess.CompletedProcess:
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "llmlab", "train", str(config), "--run-dir", str(run_dir), *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())


@pytest.mark.parametrize("parallelism", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_match_one_at_equal_tokens_per_update(parallelism, make_config, tmp_path):
    config = make_config(train=TRAIN)
    single = train(load_run_config(config), tmp_path / "one")  # 2 micro-steps of 8 x 32
    assert single.status == "completed"
    proc = torchrun(config, tmp_path / "two", f"train.parallelism={parallelism}")  # 1 micro-step per rank
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert [r["step"] for r in two] == list(range(1, 9))
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in two]), torch.tensor([r["loss"] for r in one]),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in two]), torch.tensor([r["grad_norm"] for r in one]),
                               rtol=1e-4, atol=1e-6)
    result_one = json.loads((tmp_path / "one" / "result.json").read_text())
    result_two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result_two["world_size"] == 2
    assert result_two["val_loss"] == pytest.approx(result_one["val_loss"], rel=1e-5)
    assert result_two["test_loss"] == pytest.approx(result_one["test_loss"], rel=1e-5)
    # the loader's saved positions are per rank: resuming at another world size is refused
    with pytest.raises(CheckpointError, match="world_size: checkpoint 2, now 1"):
        train(load_run_config(config, ["train.max_steps=10"]), tmp_path / "two")


def test_two_processes_average_moe_statistics(make_config, tmp_path):
    """MoE routing statistics and the aux loss are means over all processes: two processes (one
    micro-batch each) log what one process logs for the same two micro-batches, not rank 0's alone."""
    config = make_config("moe", train={**TRAIN, "max_steps": 2, "eval_interval": 0, "ckpt_interval": 0})
    assert train(load_run_config(config), tmp_path / "one").status == "completed"
    proc = torchrun(config, tmp_path / "two")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("MoE dispatch 'capacity' (factor 1.5)") == 1  # said once, at the start
    one, two = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    for key in ("aux_loss", "moe_load", "moe_dropped_frac", "moe_max_load", "moe_router_entropy"):
        torch.testing.assert_close(torch.tensor([r[key] for r in two]), torch.tensor([r[key] for r in one]),
                                   rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")
