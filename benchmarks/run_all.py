"""`make bench`: run every benchmark, show its tables, keep its JSON lines in benchmarks/results/.

    python benchmarks/run_all.py [infer train moe data] [--runs N] [--quick]

Each benchmark runs in its own process (fresh threads and compile caches), with the flags the
README's figures were measured with, `--runs` times one after another (default 3: the README gives
ranges over runs; `bench moe` repeats its rounds inside one process and runs once). Results are
written atomically to benchmarks/results/<name>.json: {"runs": [each run's JSON line], "measured":
{date, commit}}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BENCHES = {
    "infer": ["infer", "--threads", "1,2", "--batch-sizes", "1", "--skip-no-cache"],  # see the README
    "train": ["train", "configs/runs/bench-train.toml"],
    "moe": ["moe", "--threads", "1", "--clock", "cpu"],
    "data": ["data"],
}
ONE_RUN = {"moe"}  # its ranges come from rounds within one process
QUICK = {
    "infer": ["--quick"],
    "train": ["--steps", "2", "--repeats", "1", "--no-compile"],
    "moe": ["--tokens", "512,2048", "--repeats", "3", "--warmup", "1"],
    "data": ["--mb", "8", "--repeat", "1"],
}


def git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def run_once(name: str, quick: bool) -> dict | None:
    """One run of a benchmark: its table printed, its JSON line parsed (None when it failed)."""
    cmd = [sys.executable, "-m", "llmlab", "bench", *BENCHES[name], *(QUICK[name] if quick else [])]
    print(f"\n$ {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(lines[-1])


def run_one(name: str, quick: bool, runs: int) -> dict | None:
    """`runs` runs of one benchmark, written together (nothing is written if one fails)."""
    payloads = []
    for _ in range(1 if quick or name in ONE_RUN else runs):
        payload = run_once(name, quick)
        if payload is None:
            return None
        payloads.append(payload)
    record = {"bench": name, "runs": payloads,
              "measured": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "quick": quick}}
    out = ROOT / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out)
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BENCHES)} (default: all)")
    p.add_argument("--runs", type=int, default=3, help="runs of each benchmark, one after another (default 3)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repeat, one run: a smoke run")
    args = p.parse_args()
    if args.runs < 1:
        print(f"run_all: error: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        print(f"run_all: error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = [name for name in args.names or BENCHES if run_one(name, args.quick, args.runs) is None]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
