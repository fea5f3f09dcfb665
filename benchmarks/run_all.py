"""`make bench`: run every benchmark, show its table, keep its JSON line in benchmarks/results/.

    python benchmarks/run_all.py [infer train moe data] [--quick]

Each benchmark runs in its own process (fresh threads and compile caches). Results are written
atomically to benchmarks/results/<name>.json, with the date and git commit they were measured at.
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
    "infer": ["infer"],
    "train": ["train", "configs/runs/bench-train.toml"],
    "moe": ["moe"],
    "data": ["data"],
}
QUICK = {
    "infer": ["--quick"],
    "train": ["--steps", "2", "--repeats", "1", "--no-compile"],
    "moe": ["--tokens", "512,2048", "--repeats", "3", "--warmup", "1"],
    "data": ["--mb", "8", "--repeat", "1"],
}


def git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def run_one(name: str, quick: bool) -> dict | None:
    cmd = [sys.executable, "-m", "llmlab", "bench", *BENCHES[name], *(QUICK[name] if quick else [])]
    print(f"\n$ {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    payload = json.loads(lines[-1])
    payload["measured"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "quick": quick}
    out = ROOT / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)
    return payload


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BENCHES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repeat: a smoke run")
    args = p.parse_args()
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        print(f"run_all: error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = [name for name in args.names or BENCHES if run_one(name, args.quick) is None]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
