"""`llmlab compile-check CONFIG`: prove a model is torch.compile-clean.

llmlab's own model from CONFIG goes through `llmlab audit`'s dynamic checks (llmlab.audit.dynamic:
one owner, so a fix to a check is a fix to both commands), with this command's backend (inductor
by default: the kernels are generated too) and dtype (autocast). Each must pass (exit 1 otherwise):
1. forward: zero graph breaks (dynamo's graph-break log, from the train-step compilation);
2. train step: forward + loss + backward compiled once, N steps (weights updated by SGD between
   them) with exactly one compilation;
3. decode: the KV-cached one-token step (llmlab.infer.decode_step) over N successive positions
   with exactly one compilation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from llmlab.audit.dynamic import quiet, run_checks
from llmlab.audit.target import Target
from llmlab.config import PRECISIONS, ModelConfig, load_model_config, to_dict
from llmlab.device import autocast_dtype, resolve_dtype
from llmlab.errors import ConfigError
from llmlab.infer.step import decode_step
from llmlab.model import GPT
from llmlab.model.moe_advice import check_compilable
from llmlab.tables import emit_json, print_table


def gpt_target(cfg: ModelConfig, *, batch_size: int, seq_len: int, decode_steps: int, device: str) -> Target:
    """llmlab's GPT as the audit's target: (model, idx, decode_step), the KV cache set up for
    decode_steps positions. Seeded: the same config gives the same model and batch."""
    def make() -> tuple[GPT, torch.Tensor, Any]:
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        model.setup_kv_cache(batch_size, decode_steps)
        return model, torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device), decode_step

    model, idx, step = make()
    return Target(Path("<config>"), "GPT", model, idx, step, make)


def compile_check(cfg: ModelConfig, *, steps: int = 4, decode_steps: int = 32, batch_size: int = 2,
                  seq_len: int = 64, backend: str = "inductor", dtype: str = "fp32",
                  device: str = "cpu") -> dict[str, Any]:
    """{"ok": every row passed, "rows": [forward graph breaks, train step, decode]} (audit rows)."""
    amp = resolve_dtype(dtype, device)
    check_compilable(cfg.moe, compile=True, dtype=amp, device=device)  # a dispatch that cannot compile: exit 2, one line
    if seq_len > cfg.max_seq_len or decode_steps > cfg.max_seq_len:
        raise ConfigError(f"seq_len ({seq_len}) and decode steps ({decode_steps}) must fit "
                          f"model.max_seq_len ({cfg.max_seq_len})")
    target = gpt_target(cfg, batch_size=batch_size, seq_len=seq_len, decode_steps=decode_steps, device=device)
    with quiet():
        checks = run_checks(target, steps, positions=decode_steps, shapes=False, backend=backend,
                            dtype=autocast_dtype(dtype, device))
    rows = [c.to_dict() for c in checks]
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab compile-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a TOML file with a [model] table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=4, help="train steps (default 4)")
    p.add_argument("--decode-steps", type=int, default=32, help="decode positions (default 32)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager", "eager"),
                   help="inductor generates kernels; aot_eager traces forward and backward the same way, faster")
    p.add_argument("--dtype", default="fp32", choices=tuple(PRECISIONS),
                   help="bf16 autocast (needed for MoE grouped dispatch under compile)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="only the JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    cfg = load_model_config(args.config, args.set)
    out = compile_check(cfg, steps=args.steps, decode_steps=args.decode_steps, batch_size=args.batch_size,
                        seq_len=args.seq_len, backend=args.backend, dtype=args.dtype, device=args.device)
    if not args.json:
        print_table(out["rows"], [("check", "check", ""), ("value", "value", ""), ("ok", "ok", ""),
                                  ("detail", "detail", "")])
        print("compile-check: " + ("OK" if out["ok"] else "FAILED"))
    emit_json({"compile_check": args.config, "ok": out["ok"], "rows": out["rows"], "backend": args.backend,
               "dtype": args.dtype, "config": to_dict(cfg)})
    return 0 if out["ok"] else 1
