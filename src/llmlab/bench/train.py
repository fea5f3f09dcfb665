"""`llmlab bench train CONFIG`: training-step throughput, eager vs torch.compile, and a peer.

One training step = forward, fp32 cross-entropy, backward, gradient clipping, AdamW -- the path
`llmlab train` runs (`llmlab.train.step.train_step`), on a fixed random batch of the config's
(micro_batch_size, seq_len). Compile time (the first compiled steps) is reported apart and
excluded from tokens/s. The peer is Hugging Face `transformers` (optional extra `[bench]`):
LlamaForCausalLM for a dense Llama-style config, MixtralForCausalLM for an MoE one, with our initial
weights (`llmlab.export.hf.to_transformers`, checked to give our logits before timing), the same
loss, optimizer and thread count. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.config import DTYPES, RunConfig, load_run_config
from llmlab.device import autocast_dtype, resolve_device
from llmlab.environment import machine
from llmlab.export.hf import ExportError
from llmlab.export.hf import check_same_function, to_transformers
from llmlab.model.accounting import count
from llmlab.tables import emit_json, print_table
from llmlab.timing import clock, median
from llmlab.train.metrics import mfu, peak_flops
from llmlab.train.optim import build_optimizer
from llmlab.train.setup import build_model, build_trainable
from llmlab.train.step import StepResult, train_step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a run (or model) TOML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.micro_batch_size")
    p.add_argument("--seq-len", type=int, default=None, help="default: train.seq_len")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="tokens/s is the median over repeats")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads, the same for every row")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: train.dtype")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled row")
    p.add_argument("--no-peer", action="store_true", help="skip the Hugging Face row")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# What is timed


def our_step(cfg: RunConfig, device: torch.device, amp: torch.dtype | None, compiled: bool) -> Callable[[], StepResult]:
    """llmlab's training step on one fixed batch (model seed 0): each call one update, returning its
    StepResult (`applied` False for a non-finite step, skipped)."""
    parts = build_trainable(cfg, device, amp, seed=0, compile=compiled)
    batch = _batch(cfg, device)
    tc = cfg.train

    def step() -> StepResult:
        return train_step(parts.module, parts.model, parts.optimizer, lambda: batch, 1, tc.grad_clip, device)

    return step


def _peer_step(cfg: RunConfig, device: torch.device, amp: torch.dtype | None) -> tuple[Callable, str]:
    """The Hugging Face model on the same shapes, trained the same way (loss, clipping, AdamW). The
    weights check runs in eval mode, so training-only work is matched here: no dropout on either
    side (the peer has none), and for MoE the peer adds its router's load-balancing loss as ours
    adds its auxiliary losses."""
    if cfg.model.dropout > 0:
        raise ExportError(f"model.dropout = {cfg.model.dropout}: the Llama peer trains without dropout, so the "
                          "steps would not do the same work (set model.dropout = 0 to compare)")
    model, name = _hf_model(cfg, device)
    model = model.to(device).train()
    model.config.output_router_logits = cfg.model.moe is not None  # Mixtral: returns aux_loss
    optimizer = build_optimizer(model, cfg.train, device)
    x, y = _batch(cfg, device)
    tc = cfg.train

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(input_ids=x)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        if getattr(out, "aux_loss", None) is not None:
            loss = loss + out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"), foreach=True)
        loss.item()  # the same host sync as our step's finite check
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, name


def _hf_model(cfg: RunConfig, device: torch.device) -> tuple[nn.Module, str]:
    """Our model's initial weights (the seed of `our_step`) in transformers' Llama / Mistral /
    Mixtral (`llmlab.export.hf`), checked to give our logits on the benchmark batch: equal work.
    ExportError when the config has no equivalent or transformers is missing."""
    ours = build_model(cfg.model, seed=0, device=device)
    peer = to_transformers(ours)
    check_same_function(ours, peer, _batch(cfg, device)[0])
    return peer, f"HF {type(peer).__name__}"


def _batch(cfg: RunConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.train.seq_len + 1), generator=g)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


# ---------------------------------------------------------------------------------------------
# Timing


def warm_up(step: Callable[[], None], device: torch.device, n: int) -> float:
    """Seconds for the first n steps (compilation, allocator and kernel warm-up): reported apart."""
    t0 = clock(device)
    for _ in range(n):
        step()
    return clock(device) - t0


def interleaved_rates(steps: dict[str, Callable[[], None]], device: torch.device, tokens_per_step: int,
                      args: argparse.Namespace) -> dict[str, list[float]]:
    """tokens/s of each implementation, `repeats` times, taking turns: on a shared machine a busy
    moment then slows every row alike instead of whichever happened to run during it."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = clock(device)
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps * tokens_per_step / (clock(device) - t0))
    return rates


# ---------------------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> tuple[RunConfig, torch.device, torch.dtype | None]:
    overrides = list(args.set)
    if args.batch_size:
        overrides.append(f"train.micro_batch_size={args.batch_size}")
    if args.seq_len:
        overrides.append(f"train.seq_len={args.seq_len}")
    if args.dtype:
        overrides.append(f"train.dtype={args.dtype}")
    overrides.append("train.tokens_per_update=0")  # one micro-batch per step
    cfg = load_run_config(args.config, overrides)
    device = resolve_device(cfg.train.device)
    return cfg, device, autocast_dtype(cfg.train.dtype, device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg, device, amp = _resolve(args)
    tokens = cfg.train.micro_batch_size * cfg.train.seq_len
    steps, notes = _implementations(cfg, device, amp, args)
    warmup_s = {name: warm_up(step, device, args.warmup) for name, step in steps.items()}
    rates = interleaved_rates(steps, device, tokens, args)
    flops = count(cfg.model, seq_len=cfg.train.seq_len)["flops_per_token"]
    peak = peak_flops(device) if amp == torch.bfloat16 else None
    peer = next((name for name in steps if name.startswith("HF")), None)
    rows = []
    for name in steps:
        rate = median(rates[name])
        row = {"impl": name, "tokens_per_s": rate, "step_ms": 1000 * tokens / rate, "warmup_s": warmup_s[name],
               "mfu": mfu(flops, rate, peak), "vs_peer": rate / median(rates[peer]) if peer else None}
        if name == "llmlab compiled":  # the warm-up steps beyond what they cost once compiled
            row["compile_s"] = max(0.0, warmup_s[name] - args.warmup * row["step_ms"] / 1000)
        rows.append(row)
    return {"rows": rows, "notes": notes, "cfg": cfg, "device": device, "amp": amp, "flops": flops}


def _implementations(cfg: RunConfig, device: torch.device, amp: torch.dtype | None, args: argparse.Namespace
                     ) -> tuple[dict[str, Callable[[], None]], list[str]]:
    steps = {"llmlab eager": our_step(cfg, device, amp, compiled=False)}
    if not args.no_compile:
        steps["llmlab compiled"] = our_step(cfg, device, amp, compiled=True)
    notes: list[str] = []
    if args.no_peer:
        return steps, notes

    try:  # a peer that computes something else (PeerMismatch) is an error, not a skip
        step, name = _peer_step(cfg, device, amp)
        steps[f"{name} eager"] = step
    except ExportError as e:  # no equivalent, or transformers not installed
        notes.append(f"peer skipped: {e}")
    return steps, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = run(args)
    cfg, rows = out["cfg"], out["rows"]
    print(f"training step (fwd + bwd + clip + AdamW), batch {cfg.train.micro_batch_size} x {cfg.train.seq_len}, "
          f"{out['device']}, {str(out['amp'] or torch.float32).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads")
    print_table(rows, [("impl", "impl", ""), ("tokens_per_s", "tokens/s", ",.0f"), ("step_ms", "step ms", ".1f"),
                       ("compile_s", "compile s", ".1f"), ("mfu", "MFU", ".1%"), ("vs_peer", "vs peer", ".2f")])
    for note in out["notes"]:
        print(note)
    emit_json({
        "bench": "train", "config": args.config, "overrides": args.set,
        "batch_size": cfg.train.micro_batch_size, "seq_len": cfg.train.seq_len,
        "dtype": str(out["amp"] or torch.float32).removeprefix("torch."), "flops_per_token": out["flops"],
        "results": rows, "notes": out["notes"], "env": machine(out["device"]),
    })
    return 0
