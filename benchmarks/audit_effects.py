"""The measured effect of each hazard `llmlab audit` reports, flawed example vs fixed, with the
real compiler (inductor): compile time, recompilations, tokens/s. Figures for docs/torch-compile.md.

    python benchmarks/audit_effects.py [--repeats 3] [--steps 5] [--backend inductor] [--threads 1]

Per pair (examples/audit/<name>_flawed.py vs _fixed.py): the compiled train step (forward,
backward, SGD) — first step apart (it compiles), recompilations over the next 8 steps, then
tokens/s in `repeats` interleaved rounds against eager; for nanoGPT also the compiled decode step
over 32 positions (batch 2), with default dynamic shapes and with dynamic=False (what CUDA graphs
need). Threads: 1 by default (on a busy shared 2-core CPU, tiny ops at 2 threads spin-wait).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch._functorch.config
import torch._inductor.config

from llmlab.audit.dynamic import TrainStep, quiet, recompilations, reset
from llmlab.environment import machine
from llmlab.tables import emit_json, print_table
from llmlab.timing import time_round_robin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "audit"))
PAIRS = ("nanogpt", "moe", "stats", "student")
POSITIONS = 32


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_case(model: torch.nn.Module, idx: torch.Tensor, backend: str | None, steps: int) -> Callable[[], None]:
    step = TrainStep.of(model)  # model(idx, targets) when forward takes targets, as the audit's train step
    loss_fn = torch.compile(step.__call__, backend=backend) if backend else step
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def run() -> None:
        for _ in range(steps):
            loss_fn(model, idx).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


def decode_case(model: torch.nn.Module, idx: torch.Tensor, step: Callable, backend: str | None,
                dynamic: bool | None = None) -> Callable[[], None]:
    fn = torch.compile(step, backend=backend, dynamic=dynamic) if backend else step

    @torch.no_grad()
    def run() -> None:
        for m in model.modules():  # a new sequence: the grown cache starts empty (the static one is overwritten)
            if type(m).__module__ == "nanogpt_flawed" and hasattr(m, "cache_k"):
                m.cache_k = m.cache_v = None
        if hasattr(model, "reset_cache"):  # student_flawed: its tuple cache and Python position counter
            model.reset_cache()
        for pos in range(POSITIONS):
            fn(model, idx[:, pos % idx.shape[1]:][:, :1], torch.tensor([pos]))
    return run


def measure(name: str, kind: str, backend: str, steps: int, repeats: int) -> dict[str, Any]:
    module = __import__(f"{name}_{kind}")
    built = module.build()
    model, idx = built[0], built[1]
    reset()
    row: dict[str, Any] = {"example": f"{name}_{kind}"}
    compiled = train_case(model, idx, backend, 1)
    model.train()
    row["train_compile_s"] = _timed(compiled)
    for _ in range(8):
        compiled()
    row["train_recompiles"] = len(recompilations())
    times, _ = time_round_robin({"compiled": train_case(model, idx, backend, steps),
                                 "eager": train_case(model, idx, None, steps)}, repeats=repeats)
    tokens = idx.numel() * steps
    row["train_tok_s"] = [tokens / t for t in times["compiled"]]
    row["train_eager_tok_s"] = [tokens / t for t in times["eager"]]
    if len(built) == 3:
        model.eval()
        reset()
        compiled_decode = decode_case(model, idx, built[2], backend)
        row["decode_compile_s"] = _timed(compiled_decode)
        row["decode_recompiles"] = len(recompilations())
        times, _ = time_round_robin({"compiled": compiled_decode, "eager": decode_case(model, idx, built[2], None)},
                                    repeats=repeats)
        row["decode_tok_s"] = [idx.shape[0] * POSITIONS / t for t in times["compiled"]]
        row["decode_eager_tok_s"] = [idx.shape[0] * POSITIONS / t for t in times["eager"]]
        row.update(_decode_static(model, idx, built[2], backend, repeats))
    return row


def _decode_static(model: torch.nn.Module, idx: torch.Tensor, step: Callable, backend: str,
                   repeats: int) -> dict[str, Any]:
    """dynamic=False, as with CUDA graphs (mode="reduce-overhead"): every new shape recompiles."""
    reset()
    case = decode_case(model, idx, step, backend, dynamic=False)
    compile_s = _timed(case)
    recompiles = len(recompilations())
    times, _ = time_round_robin({"static": case}, repeats=repeats)
    return {"decode_static_compile_s": compile_s, "decode_static_recompiles": recompiles,
            "decode_static_tok_s": [idx.shape[0] * POSITIONS / t for t in times["static"]]}


def _warm_compiler(backend: str) -> None:
    """Compile-time figures must not depend on order: no cache hits between examples (the fixed
    and flawed train graphs can be identical), and inductor's one-time start-up paid first."""
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    torch.compile(lambda x: (x @ x).relu().sum(), backend=backend)(torch.randn(8, 8, requires_grad=True)).backward()


def _range(xs: list[float] | None) -> str:
    return "-" if not xs else f"{min(xs):,.0f}-{max(xs):,.0f}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="train steps per timed repeat")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--pairs", default=",".join(PAIRS))
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (1: tiny ops on a busy shared CPU spin-wait at 2 threads)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _warm_compiler(args.backend)
    rows = []
    for name in args.pairs.split(","):
        for kind in ("flawed", "fixed"):
            with quiet():
                rows.append(measure(name, kind, args.backend, args.steps, args.repeats))
            print(f"measured {rows[-1]['example']}", file=sys.stderr, flush=True)
    table = [{**r, "train": _range(r["train_tok_s"]), "train_eager": _range(r["train_eager_tok_s"]),
              "decode": _range(r.get("decode_tok_s")), "decode_eager": _range(r.get("decode_eager_tok_s")),
              "decode_static": _range(r.get("decode_static_tok_s"))}
             for r in rows]
    print_table(table, [("example", "example", ""), ("train_compile_s", "train compile s", ".1f"),
                        ("train_recompiles", "recompiles (8 steps)", "d"), ("train", "train tok/s", ""),
                        ("train_eager", "eager tok/s", ""), ("decode_compile_s", "decode compile s", ".1f"),
                        ("decode_recompiles", "decode recompiles", ""), ("decode", "decode tok/s", ""),
                        ("decode_eager", "eager tok/s", ""), ("decode_static_recompiles", "dynamic=False recompiles", ""),
                        ("decode_static", "dynamic=False tok/s", "")])
    emit_json({"benchmark": "audit_effects", "backend": args.backend, "repeats": args.repeats, "rows": rows,
               "env": machine("cpu")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
