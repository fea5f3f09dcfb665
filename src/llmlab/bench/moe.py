"""`llmlab bench moe`: forward + backward time of one MoE layer, per dispatch strategy, against a
dense MLP with the same active parameters.

Reference shapes (the defaults): d_model 256, 8 experts, top-2, expert width 352, SwiGLU, against a
dense SwiGLU of width 2 x 352 = 704 (the MoE adds only its 256 x 8 router), at 512, 2,048 and 8,192
tokens. Every case gets the same input and the same output gradient, runs interleaved with the
others (a, b, c, a, b, c, ...) so that noise from a shared machine falls on all alike, after
untimed warm-up calls, at one thread count; we report the median time and the median over rounds
of (time / dense time in the same round), a paired ratio that a load change between rounds does
not skew. A step is a training step's work: forward, then backward to the input and to every
parameter (the MoE's backward includes its auxiliary loss). On a small shared machine, use
--threads 1 --clock cpu: OpenMP threads waiting for a busy core make wall times meaningless.

Peers on the same shapes and weights when Hugging Face `transformers` is installed:
MixtralSparseMoeBlock with its default "eager" experts (a Python loop over the experts hit) and
with "grouped_mm", each checked to give our layer's output before timing.

Then a breakdown of one layer's step into phases, each timed forward + backward on its own with the
module's own functions (router + losses, sort and gather, expert matmuls, combine), interleaved
with the dense step for reference; their sum is close to, not exactly, the whole step. Weights are random, so routing is close to uniform: the
capacity dispatch drops little and the grouped GEMMs are balanced (the best case for both).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from typing import Any, Callable

import torch
from torch import nn

from llmlab.config import DISPATCHES, PRECISIONS, MoEConfig
from llmlab.device import torch_dtype
from llmlab.environment import machine
from llmlab.export.hf import PeerMismatch, moe_to_transformers
from llmlab.model.mlp import MLP
from llmlab.model.moe import MoE, combine, compute_dtype
from llmlab.tables import emit_json, print_table
from llmlab.timing import clock, median


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab bench moe", description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--d-ff-expert", type=int, default=352)
    p.add_argument("--mlp", choices=("swiglu", "gelu"), default="swiglu")
    p.add_argument("--tokens", default="512,2048,8192", help="comma-separated token counts (batch 1)")
    p.add_argument("--dispatch", default=",".join(DISPATCHES), help="comma-separated: grouped,capacity,loop")
    p.add_argument("--capacity-factor", type=float, default=1.25, help="for `capacity` (Switch default 1.25)")
    p.add_argument("--dtype", choices=tuple(PRECISIONS), default="fp32", help="bf16 is very slow on most CPUs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time, robust to other jobs on a "
                        "shared machine (use it with --threads 1; CPU devices only)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per run (each case once a round)")
    p.add_argument("--runs", type=int, default=3,
                   help="consecutive runs of --repeats rounds: ratios are reported as the range of the runs' medians")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per case first")
    p.add_argument("--breakdown-tokens", type=int, default=2048, help="token count of the phase breakdown (0 = none)")
    p.add_argument("--no-peers", action="store_true", help="skip the Hugging Face Mixtral rows")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile(fullgraph=True) rows (grouped: bf16 only); compile time is reported apart")
    args = p.parse_args(argv)
    unknown = [d for d in args.dispatch.split(",") if d.strip() not in DISPATCHES]
    if unknown:
        p.error(f"unknown dispatch {unknown[0]!r} (choose from {', '.join(DISPATCHES)})")
    if args.runs < 1 or args.repeats < 1:
        p.error(f"--runs ({args.runs}) and --repeats ({args.repeats}) must be >= 1")
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        p.error("--clock cpu measures CPU time: use it with --device cpu")
    return args


# -- the cases -----------------------------------------------------------------------------------


def step(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of `module` on x with output gradient g (and 1 for an aux loss)."""

    def run() -> None:
        for p in module.parameters():
            p.grad = None
        x.grad = None
        out = module(x)
        if isinstance(out, tuple) and isinstance(out[1], dict):  # our MoE: (y, stats)
            y, stats = out
            torch.autograd.backward([y, stats["aux_loss"]], [g, torch.ones_like(stats["aux_loss"])])
        else:  # a dense MLP, or a peer (older transformers return (y, router_logits))
            (out[0] if isinstance(out, tuple) else out).backward(g)

    return run


def make_layers(args: argparse.Namespace, dispatches: list[str]) -> dict[str, nn.Module]:
    """The dense reference and one MoE per dispatch, same weights for every MoE."""
    D, F = args.d_model, args.d_ff_expert
    layers: dict[str, nn.Module] = {"dense": MLP(D, args.top_k * F, args.mlp, bias=False)}
    for dispatch in dispatches:
        cf = args.capacity_factor if dispatch == "capacity" else None
        cfg = MoEConfig(n_experts=args.n_experts, top_k=args.top_k, d_ff_expert=F, dispatch=dispatch,
                        capacity_factor=cf)
        torch.manual_seed(0)
        layers[dispatch] = MoE(D, cfg, args.mlp, bias=False)
    return layers


def hf_mixtral_layers(args: argparse.Namespace, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """transformers' MixtralSparseMoeBlock with our MoE's weights (`llmlab.export.hf`), with its
    "eager" and "grouped_mm" experts, each checked to give our layer's dropless output first."""
    ours = next((layer for layer in layers.values() if isinstance(layer, MoE)), None)
    if args.mlp != "swiglu" or ours is None or importlib.util.find_spec("transformers") is None:
        return {}
    with torch.random.fork_rng(devices=[]):  # the timed inputs stay what they were
        reference = MoE(args.d_model, dataclasses.replace(ours.cfg, dispatch="loop", capacity_factor=None),
                        args.mlp, bias=False)
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(1, 256, args.d_model)
    peers = {}
    for impl in ("eager", "grouped_mm"):
        peer = moe_to_transformers(ours, args.d_model, impl)
        with torch.no_grad():
            diff = (peer(x) - reference(x)[0]).abs().max().item()
        if not diff <= 1e-5:
            raise PeerMismatch(f"HF Mixtral ({impl}) output differs from our MoE layer's by {diff:.3g}")
        peers[f"hf mixtral {impl}"] = peer
    return peers


def compiled_layers(layers: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, nn.Module]:
    """torch.compile(fullgraph=True) copies of the layers that can compile at this dtype."""
    out = {}
    for name, layer in layers.items():
        if name == "loop" or name.startswith("hf") or (name == "grouped" and dtype != torch.bfloat16):
            continue
        out[f"{name} compiled"] = torch.compile(layer, fullgraph=True)
    return out


def time_cases(cases: dict[str, Callable[[], Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """ms per case in runs x repeats interleaved rounds (a, b, c, a, b, c, ...), so that noise from a
    shared machine falls on all alike, and their median; before that, each case's first call (which
    includes any compilation) is timed apart and args.warmup - 1 more calls are untimed."""
    device = torch.device(args.device)
    process = args.clock == "cpu"

    def timed(fn: Callable[[], Any]) -> float:
        t0 = clock(device, process)
        fn()
        return clock(device, process) - t0

    first = {name: timed(fn) for name, fn in cases.items()}
    for fn in cases.values():
        for _ in range(args.warmup - 1):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs * args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {name: {"ms": 1e3 * median(t), "rounds_ms": [1e3 * x for x in t], "first_call_ms": 1e3 * first[name]}
            for name, t in times.items()}


def time_layers(layers: dict[str, nn.Module], n_tokens: int, args: argparse.Namespace
                ) -> dict[str, dict[str, float]]:
    """One forward + backward per layer, on the same input and output gradient, with the median
    over rounds of the time / dense time ratio within each round (pairs close in time, so a load
    change on the machine between rounds cancels out), and the range of that median over
    args.runs consecutive runs of args.repeats rounds (what a README figure quotes)."""
    dtype, device = torch_dtype(args.dtype), torch.device(args.device)
    x = torch.randn(1, n_tokens, args.d_model, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(1, n_tokens, args.d_model, device=device, dtype=dtype)
    timed = time_cases({name: step(layer, x, g) for name, layer in layers.items()}, args)
    dense = timed["dense"]["rounds_ms"]
    for t in timed.values():
        ratios = [a / b for a, b in zip(t.pop("rounds_ms"), dense)]
        t["ratio_to_dense"] = median(ratios)
        runs = [median(ratios[i : i + args.repeats]) for i in range(0, len(ratios), args.repeats)]
        t["ratio_range"] = [min(runs), max(runs)]
    return timed


def dropped_frac(layer: nn.Module, n_tokens: int) -> float | None:
    """The fraction of assignments a MoE of ours drops on this benchmark's input (None otherwise)."""
    moe = getattr(layer, "_orig_mod", layer)  # a compiled module wraps the original
    if not isinstance(moe, MoE):
        return None
    p = next(moe.parameters())
    with torch.no_grad():
        x = torch.randn(1, n_tokens, moe.router.in_features, device=p.device, dtype=p.dtype)
        return moe(x)[1]["dropped_frac"].item()


# -- phase breakdown -----------------------------------------------------------------------------


def phase_cases(moe: MoE, n_tokens: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    """Each phase of one MoE step, forward + backward on its own, from the module's own functions.
    Inputs of each phase are leaves (so its backward stops there) with a fixed routing."""
    D = moe.router.in_features
    x_ND = torch.randn(n_tokens, D, device=device, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        route = moe.route(x_ND)
    if moe.cfg.dispatch == "loop":
        with torch.no_grad():
            y_RD, token_R, weight_R = moe.loop_experts(x_ND, route)
        middle = {"gather + expert matmuls (loop)": lambda: moe.loop_experts(x_ND, route)[0]}
        x_RD = None
    else:
        cdt = compute_dtype(x_ND)
        token_R, weight_R, linear = moe.plan(route, (1, n_tokens), cdt)
        x_RD = x_ND.detach().index_select(0, token_R).requires_grad_()
        with torch.no_grad():
            y_RD = moe.experts(x_RD, linear)
        middle = {
            "sort + gather": lambda: x_ND.index_select(0, moe.plan(route, (1, n_tokens), cdt).token_R),
            "expert matmuls": lambda: moe.experts(x_RD, linear),
        }
    y_RD = y_RD.detach().requires_grad_()
    weight_R = weight_R.detach().requires_grad_()

    def router() -> tuple[torch.Tensor, torch.Tensor]:
        r = moe.route(x_ND)
        return moe.stats(r)["aux_loss"], r.weights_A

    phases = {"router + losses": router, **middle,
              "combine": lambda: combine(y_RD, token_R, weight_R, n_tokens)}
    leaves = [t for t in (x_ND, x_RD, y_RD, weight_R) if t is not None] + list(moe.parameters())
    return {name: _fwd_bwd(fn, leaves) for name, fn in phases.items()}


def _fwd_bwd(forward: Callable[[], Any], leaves: list[torch.Tensor]) -> Callable[[], None]:
    """forward() then backward with random output gradients, leaf gradients cleared first (as in a
    training step, where they are set to None after each optimizer step)."""
    outs = forward()
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    grads = [torch.randn_like(o) for o in outs]

    def run() -> None:
        for t in leaves:
            t.grad = None
        out = forward()
        torch.autograd.backward(list(out) if isinstance(out, tuple) else [out], grads)

    return run


def breakdown(layers: dict[str, nn.Module], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """{dispatch: {phase: median ms}} at args.breakdown_tokens tokens, all phases of all dispatches
    interleaved in one round robin."""
    device, dtype = torch.device(args.device), torch_dtype(args.dtype)
    x = torch.randn(1, args.breakdown_tokens, args.d_model, device=device, dtype=dtype, requires_grad=True)
    cases = {"dense|whole step (reference)": step(layers["dense"], x, torch.randn_like(x))}
    for name, layer in layers.items():
        if isinstance(layer, MoE):
            for phase, fn in phase_cases(layer, args.breakdown_tokens, device, dtype).items():
                cases[f"{name}|{phase}"] = fn
    out: dict[str, dict[str, float]] = {}
    for key, t in time_cases(cases, args).items():
        name, phase = key.split("|")
        out.setdefault(name, {})[phase] = t["ms"]
    return out


# -- report --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    dispatches = [d.strip() for d in args.dispatch.split(",") if d.strip()]
    dtype, device = torch_dtype(args.dtype), torch.device(args.device)
    layers = make_layers(args, dispatches)
    if not args.no_peers:
        layers.update(hf_mixtral_layers(args, layers))
    layers = {name: layer.to(device=device, dtype=dtype) for name, layer in layers.items()}
    if args.compile:
        layers.update(compiled_layers(layers, dtype))
    rows = []
    for n_tokens in [int(t) for t in args.tokens.split(",")]:
        for name, t in time_layers(layers, n_tokens, args).items():
            rows.append({"tokens": n_tokens, "case": name, **t, "dropped_frac": dropped_frac(layers[name], n_tokens)})
    phases = breakdown(layers, args) if args.breakdown_tokens else {}
    return {
        "bench": "moe",
        "env": {**machine(device), "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]},
        "dtype": args.dtype,
        "shapes": {"d_model": args.d_model, "n_experts": args.n_experts, "top_k": args.top_k,
                   "d_ff_expert": args.d_ff_expert, "dense_d_ff": args.top_k * args.d_ff_expert,
                   "mlp": args.mlp, "capacity_factor": args.capacity_factor},
        "clock": args.clock,
        "repeats": args.repeats,
        "runs": args.runs,
        "warmup": args.warmup,
        "rows": rows,
        "breakdown_tokens": args.breakdown_tokens,
        "breakdown_ms": phases,
        "goals": goals(rows),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets: grouped within 1.15x dense at >= 2,048 tokens; ahead of loop everywhere."""
    by = {(r["tokens"], r["case"]): r for r in rows}
    out = {}
    tokens = sorted({r["tokens"] for r in rows})
    if all((n, "grouped") in by for n in tokens):
        big = [n for n in tokens if n >= 2048]
        if big:
            out["grouped_within_1.15x_dense_at_2048_plus"] = all(by[n, "grouped"]["ratio_to_dense"] <= 1.15 for n in big)
        if all((n, "loop") in by for n in tokens):
            out["grouped_ahead_of_loop_everywhere"] = all(
                by[n, "grouped"]["ratio_to_dense"] < by[n, "loop"]["ratio_to_dense"] for n in tokens)
    return out


def print_report(result: dict[str, Any]) -> None:
    env, s = result["env"], result["shapes"]
    print(f"MoE layer forward+backward, {result['dtype']} on {env['device']} ({env['threads']} threads), "
          f"d={s['d_model']}, {s['n_experts']} experts top-{s['top_k']} of width {s['d_ff_expert']} "
          f"vs dense {s['mlp']} {s['dense_d_ff']}; {result['clock']} clock; dense: median ms; others: time / "
          f"dense time in the same round, range of the medians of {result['runs']} runs of {result['repeats']} rounds")
    cases = list(dict.fromkeys(r["case"] for r in result["rows"]))
    table = []
    for n in sorted({r["tokens"] for r in result["rows"]}):
        row: dict[str, Any] = {"tokens": n}
        for r in result["rows"]:
            if r["tokens"] == n:
                lo, hi = r["ratio_range"]
                row[r["case"]] = r["ms"] if r["case"] == "dense" else f"{lo:.2f}-{hi:.2f}"
        table.append(row)
    columns = [("tokens", "tokens", "d"), ("dense", "dense ms", ".1f")]
    columns += [(c, f"{c} x", "") for c in cases if c != "dense"]
    print_table(table, columns)
    if result["breakdown_ms"]:
        print(f"\nWhere one step's time goes at {result['breakdown_tokens']} tokens (ms, each phase fwd+bwd alone):")
        for dispatch, phases in result["breakdown_ms"].items():
            total = sum(phases.values())
            parts = ", ".join(f"{p} {ms:.1f} ({100 * ms / total:.0f}%)" for p, ms in phases.items())
            print(f"  {dispatch:<9} {parts}; sum {total:.1f}")
    drops = [r for r in result["rows"] if r["case"] == "capacity"]
    if drops:
        print(f"capacity (factor {s['capacity_factor']}) dropped: "
              + ", ".join(f"{100 * r['dropped_frac']:.2f}% at {r['tokens']}" for r in drops))
    compiled = [r for r in result["rows"] if r["case"].endswith("compiled")]
    if compiled:
        print("first call (compilation) of compiled cases: "
              + ", ".join(f"{r['case']} @{r['tokens']} {r['first_call_ms'] / 1e3:.1f} s" for r in compiled))
    if env["load_avg_1min"] > 0.75 * (env["cpu_count"] or 1):
        print(f"warning: load average {env['load_avg_1min']:.1f} on {env['cpu_count']} cores: other jobs share "
              "this machine and the figures are noisy (--threads 1 --clock cpu suffers least)")
    for goal, ok in result["goals"].items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")


def main(argv: list[str]) -> int:
    result = run(parse_args(argv))
    print_report(result)
    emit_json(result)
    return 0
