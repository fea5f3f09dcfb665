"""What a figure or a run was made on -- one record, used by every run (env.json), every benchmark
(its "env" block) and the campaign's decode measurements: a number means nothing without it."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from llmlab import __version__


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The software and hardware a measurement ran on: torch, Python, device, intra-op threads,
    CPU, and the GPU's model on CUDA."""
    device = torch.device(device)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def git_info() -> dict[str, Any]:
    """Commit of the llmlab source tree (None outside a git checkout) and whether it had edits."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def run_environment(device: torch.device, dtype: torch.dtype, world_size: int) -> dict[str, Any]:
    """A training run's env.json: `machine` plus when, where (host, pid), which llmlab (version,
    git commit), CUDA, the training dtype and the world size."""
    m = machine(device)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": m["python"],
        "platform": platform.platform(),
        "torch": m["torch"],
        "llmlab": __version__,
        "git": git_info(),
        "device": m["device"],
        "device_name": m.get("gpu") or platform.processor(),
        "cuda": torch.version.cuda,
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": world_size,
        "threads": m["threads"],
        "pid": os.getpid(),
    }
