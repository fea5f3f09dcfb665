"""Kill and resume: `llmlab train` in a subprocess, killed (SIGKILL at a random step, SIGKILL right
after a checkpoint, SIGTERM), then run again, gives the loss sequence and the final weights of the
uninterrupted run, bit for bit (CPU, fp32, eager)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainkit import subprocess_env, train_rows, write_config

from llmlab import checkpoint
from llmlab.config import load_run_config
from llmlab.runs import read_metrics
from llmlab.train import EXIT_STOPPED, train
from llmlab.train.metrics import WALL_CLOCK_FIELDS
from llmlab.train.routing_probe import read_routing

STEPS = 100
TRAIN = {"max_steps": STEPS, "ckpt_interval": 10, "keep_checkpoints": 2, "log_interval": 1}


def start(config: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmlab", "train", str(config), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())


def finish(config: Path, run_dir: Path) -> str:
    proc = start(config, run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def wait_until(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.005)


def last_step(run_dir: Path) -> int:
    try:
        rows = train_rows(run_dir)
    except FileNotFoundError:
        return 0
    return rows[-1]["step"] if rows else 0


def checkpoint_steps(run_dir: Path) -> list[int]:
    try:
        return [e.step for e in checkpoint.read_manifest(checkpoint.ckpt_dir(run_dir))]
    except Exception:  # the manifest being replaced right now: look again
        return []


def final_state(run_dir: Path) -> dict:
    return checkpoint.load_latest(run_dir)[1]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = train_rows(run_dir), train_rows(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
    a, b = final_state(run_dir), final_state(reference)
    assert a["step"] == b["step"] == STEPS
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    for index, slot in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][index]["exp_avg_sq"], slot["exp_avg_sq"])
    result_a = json.loads((run_dir / "result.json").read_text())
    result_b = json.loads((reference / "result.json").read_text())
    assert result_a["val_loss"] == result_b["val_loss"] and result_a["test_loss"] == result_b["test_loss"]


@pytest.fixture(scope="module")
def reference(byte_data, tmp_path_factory) -> tuple[Path, Path]:
    """The uninterrupted run, shared by the tests of this file."""
    root = tmp_path_factory.mktemp("resume")
    config = write_config(root / "run.toml", byte_data, train=TRAIN)
    finish(config, root / "reference")
    return config, root / "reference"


def test_sigkill_at_random_step_and_after_a_checkpoint_then_resume(reference, tmp_path):
    config, ref_dir = reference
    run_dir = tmp_path / "killed"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_at = rng.randint(3, 45)
    proc = start(config, run_dir)
    wait_until(proc, lambda: last_step(run_dir) >= kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # a checkpoint step after the first kill: resume, then kill as soon as the manifest names it
    resumed_from = max(checkpoint_steps(run_dir), default=0)
    ckpt_at = rng.choice([s for s in range(10, 90, 10) if s > resumed_from + 10])
    proc = start(config, run_dir)
    wait_until(proc, lambda: ckpt_at in checkpoint_steps(run_dir))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = finish(config, run_dir)
    assert "resuming" in out, out
    try:
        assert_same_run(run_dir, ref_dir)
    except AssertionError as e:
        raise AssertionError(f"(random seed {seed}: killed at step >= {kill_at}, then after checkpoint {ckpt_at}) {e}") from e


def test_sigterm_finishes_the_step_checkpoints_and_exits_75(reference, tmp_path):
    config, ref_dir = reference
    run_dir = tmp_path / "terminated"
    proc = start(config, run_dir)
    wait_until(proc, lambda: last_step(run_dir) >= 15)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, out
    stop = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert stop["event"] == "stop" and stop["signal"] == signal.SIGTERM
    assert checkpoint_steps(run_dir)[-1] == stop["step"] == last_step(run_dir)
    assert "run again to resume" in out
    finish(config, run_dir)
    assert_same_run(run_dir, ref_dir)


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its events and wall-clock fields: what a resume must reproduce."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_FIELDS}
            for row in read_metrics(run_dir) if "event" not in row]


@pytest.mark.parametrize("rollback", ["final", "intermediate"])
def test_a_resume_after_a_kill_logs_no_row_twice(make_config, tmp_path, rollback):
    """The states a kill leaves, made exactly: "final" = killed after the last checkpoint and the
    final evaluation's row, before result.json (that row used to be logged twice); "intermediate"
    = killed after evaluation rows (steps 3, 6, 9) that no checkpoint covers (only step 4's is
    left). The resumed log equals the uninterrupted one but for events and wall-clock fields;
    so do result.json's losses and the MoE routing records."""
    cfg = load_run_config(make_config("moe", train={"max_steps": 12, "ckpt_interval": 4, "eval_interval": 3,
                                                    "keep_checkpoints": 3, "eval_windows": 4}))
    reference, run_dir = tmp_path / "reference", tmp_path / "killed"
    train(cfg, reference)
    shutil.copytree(reference, run_dir)
    (run_dir / "result.json").unlink()
    if rollback == "intermediate":
        directory = checkpoint.ckpt_dir(run_dir)
        checkpoint.write_manifest(directory, checkpoint.read_manifest(directory)[:1])
        assert checkpoint.load_latest(run_dir)[0].step == 4
    train(cfg, run_dir)
    assert logged(run_dir) == logged(reference)
    assert [r["step"] for r in logged(run_dir) if "val_loss" in r] == [3, 6, 9, 12]
    events = [r["event"] for r in read_metrics(run_dir) if "event" in r]
    assert events == ["start", "resume"]
    got, want = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference))
    assert {k: got[k] for k in got if "loss" in k or "ppl" in k} == {k: want[k] for k in want if "loss" in k or "ppl" in k}
    routing = lambda d: [(s, t.tolist()) for s, t in read_routing(d)]  # noqa: E731
    assert routing(run_dir) == routing(reference) and [s for s, _ in routing(run_dir)] == [3, 6, 9, 12]


def test_per_step_values_between_log_rows_survive_a_stop_and_resume(make_config, tmp_path, monkeypatch):
    """Rows every 4 updates, a stop (and its checkpoint) at update 10: updates 9 and 10 are not in
    any row yet (MoE: nor in its routing means). They travel in the checkpoint, so the resumed run writes the uninterrupted run's
    per-step values, every one of them (in-process, so quick)."""
    from llmlab.config import load_run_config
    from llmlab.train import loop, train

    cfg = load_run_config(make_config("moe", train={"max_steps": 20, "log_interval": 4, "ckpt_interval": 0}))
    train(cfg, tmp_path / "reference")
    calls = {"n": 0}

    def stop_at_update_10(flag: bool, device: torch.device) -> bool:
        calls["n"] += 1
        return flag or calls["n"] == 10

    monkeypatch.setattr(loop, "any_rank", stop_at_update_10)
    assert train(cfg, tmp_path / "run").status == "stopped"
    monkeypatch.undo()
    assert train(cfg, tmp_path / "run").status == "completed"
    per_step = lambda run_dir: [(r["step"], r["loss_steps"], r["grad_norm_steps"], r["moe_max_load"])  # noqa: E731
                                for r in train_rows(run_dir)]
    got, want = per_step(tmp_path / "run"), per_step(tmp_path / "reference")
    assert [row[0] for row in got] == [4, 8, 12, 16, 20]
    assert got == want  # the MoE interval means too: their device sums travel in the checkpoint
    assert sum(len(row[1]) for row in got) == 20
