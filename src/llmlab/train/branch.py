"""Decay branches of a warmup-stable-decay run: the loss at several budgets for little more than
the cost of one run (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations", section 3; WSD: Hu et al. 2024, MiniCPM).

Under `train.schedule = "wsd"` the learning rate of a run of B updates is the warm-up, then flat at
`lr`, then a linear decay over its last `decay_frac` of B updates (schedule.wsd_decay_start). Up to
that decay's start it depends on nothing but the step, so a run of B updates has, at the step its
decay starts, exactly the weights, optimizer state, data position and RNG states of a longer
*stable* run (same config, `schedule = "constant"`, same warm-up) at that step. A branch is that:
the stable run's checkpoint at the decay's start, copied into a new run directory, then resumed
with the branch's own budget and WSD schedule -- the run trained from scratch with that schedule,
minus the updates it shares with the stable run. tests/train/test_branch.py checks the two agree.

    stable/                    schedule = "constant", its checkpoints at every branch's decay start
    branch-240/branch.json     {"stable", "step", "decay_start", "checkpoint_sha256"}: where it starts
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmlab.checkpoint import ckpt_dir, read_manifest, write_manifest
from llmlab.config import RunConfig
from llmlab.errors import ConfigError
from llmlab.files import read_json, write_json
from llmlab.runs import ENV_FILE, METRICS_FILE
from llmlab.train.routing_probe import recorded_files, routing_file
from llmlab.train.schedule import wsd_decay_start

BRANCH_FILE = "branch.json"


def branch_start(cfg: RunConfig) -> int:
    """The update a WSD branch of cfg's budget leaves the stable run at: its decay's start."""
    if cfg.train.schedule != "wsd":
        raise ConfigError(f"a decay branch needs train.schedule = \"wsd\", got {cfg.train.schedule!r}")
    return wsd_decay_start(cfg.train, cfg.train.total_steps())


def stable_config(cfg: RunConfig) -> dict[str, Any]:
    """The stable run of a WSD config, as a dict: the same run at a constant rate after warm-up."""
    d = cfg.to_dict()
    d["train"]["schedule"] = "constant"
    return d


def seed_branch(stable_dir: str | Path, cfg: RunConfig, branch_dir: str | Path) -> int:
    """Make `branch_dir` resume from the stable run's latest checkpoint at or before
    branch_start(cfg) (any step up to the decay's start is shared with the stable run; the one at
    the start saves the most): that checkpoint (and a manifest naming it), the stable run's
    env.json and metrics.jsonl (the resume drops its rows after that step), and branch.json.
    Returns the checkpoint's step. A branch that already has a checkpoint of its own is left as it
    is (training it again resumes it)."""
    stable_dir, branch_dir = Path(stable_dir), Path(branch_dir)
    step = branch_start(cfg)
    if read_manifest(ckpt_dir(branch_dir)):
        return read_branch(branch_dir)["step"]
    kept = read_manifest(ckpt_dir(stable_dir))
    entry = max((e for e in kept if e.step <= step), key=lambda e: e.step, default=None)
    if entry is None:
        raise ConfigError(f"{stable_dir} has no checkpoint at or before step {step}, where the branch's decay "
                          f"starts (it keeps {[e.step for e in kept]}): train it with {step} in train.ckpt_at (a "
                          "checkpoint kept at that very step)")
    ckpt_dir(branch_dir).mkdir(parents=True, exist_ok=True)
    for name in (ENV_FILE, METRICS_FILE):
        if (stable_dir / name).is_file():
            shutil.copyfile(stable_dir / name, branch_dir / name)
    # An MoE run's router decisions at the evaluations the branch shares with the stable run (the
    # one a stable run's final evaluation adds at a step no interval names is the stable run's own)
    interval = cfg.train.eval_interval
    for recorded, path in recorded_files(stable_dir):
        if recorded <= entry.step and interval and recorded % interval == 0:
            routing_file(branch_dir, recorded).parent.mkdir(exist_ok=True)
            shutil.copyfile(path, routing_file(branch_dir, recorded))
    shutil.copyfile(ckpt_dir(stable_dir) / entry.file, ckpt_dir(branch_dir) / entry.file)
    write_json(branch_dir / BRANCH_FILE, {"stable": str(stable_dir.resolve()), "step": entry.step,
                                          "decay_start": step, "checkpoint_sha256": entry.sha256})
    write_manifest(ckpt_dir(branch_dir), [entry])  # last: the branch exists once it names its checkpoint
    return entry.step


def read_branch(run_dir: str | Path) -> dict[str, Any] | None:
    """branch.json of a decay branch, None for any other run."""
    path = Path(run_dir) / BRANCH_FILE
    return read_json(path) if path.is_file() else None


__all__ = ["BRANCH_FILE", "branch_start", "stable_config", "seed_branch", "read_branch"]
