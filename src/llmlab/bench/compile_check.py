"""`llmlab compile-check CONFIG`: prove a model is torch.compile-clean.

Three checks, each must pass (exit 1 otherwise):
1. forward: `torch._dynamo.explain` finds zero graph breaks;
2. train step: forward + backward compiled with fullgraph=True runs N steps (weights updated by SGD
   between them) with exactly one compilation;
3. decode: the KV-cached one-token step compiled with fullgraph=True runs N successive positions
   with exactly one compilation.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from llmlab.bench.common import emit_json, print_table
from llmlab.config import PRECISIONS, ModelConfig, load_model_config, to_dict
from llmlab.device import torch_dtype
from llmlab.errors import ConfigError
from llmlab.infer.generate import decode_step, prefill
from llmlab.model import GPT
from llmlab.model.moe import check_compilable


def _autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_forward(model: GPT, idx: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
    torch._dynamo.reset()
    with _autocast(idx.device.type, dtype):
        explain = torch._dynamo.explain(lambda i: model(i).logits.sum())(idx)
    return {"check": "forward graph breaks", "value": explain.graph_break_count,
            "ok": explain.graph_break_count == 0,
            "detail": "; ".join(str(r.reason) for r in explain.break_reasons)[:300]}


def check_train_steps(model: GPT, idx: torch.Tensor, steps: int, backend: str, dtype: torch.dtype) -> dict[str, Any]:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        with _autocast(idx.device.type, dtype):
            out = compiled(idx)
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), idx.flatten()) + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return {"check": f"train step compilations in {steps} steps", "value": counter.frame_count,
            "ok": counter.frame_count == 1, "detail": ""}


@torch.no_grad()
def check_decode(model: GPT, prompt: torch.Tensor, steps: int, backend: str, dtype: torch.dtype) -> dict[str, Any]:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(decode_step, fullgraph=True, dynamic=False, backend=counter)
    B, T = prompt.shape
    model.setup_kv_cache(B, T + steps)
    try:
        with _autocast(prompt.device.type, dtype):
            token = prefill(model, prompt).argmax(-1, keepdim=True)
            for pos in range(T, T + steps):
                token = step(model, token, torch.tensor([pos], device=prompt.device)).argmax(-1, keepdim=True)
    finally:
        model.clear_kv_cache()
    return {"check": f"decode compilations in {steps} positions", "value": counter.frame_count,
            "ok": counter.frame_count == 1, "detail": ""}


def compile_check(cfg: ModelConfig, *, steps: int = 4, decode_steps: int = 32, batch_size: int = 2,
                  seq_len: int = 64, backend: str = "inductor", dtype: str = "fp32",
                  device: str = "cpu") -> dict[str, Any]:
    amp = torch_dtype(dtype)
    check_compilable(cfg.moe, compile=True, dtype=amp)  # a dispatch that cannot compile: exit 2, one line
    prompt_len = max(1, min(8, cfg.max_seq_len - decode_steps))
    if seq_len > cfg.max_seq_len or prompt_len + decode_steps > cfg.max_seq_len:
        raise ConfigError(f"seq_len ({seq_len}) and 8 + decode steps ({decode_steps}) must fit "
                         f"model.max_seq_len ({cfg.max_seq_len})")
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    idx = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device)
    rows = [
        _guarded("forward graph breaks", check_forward, model, idx, amp),
        _guarded("train step compilations", check_train_steps, model, idx, steps, backend, amp),
        _guarded("decode compilations", check_decode, model, idx[:, :prompt_len], decode_steps, backend, amp),
    ]
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def _guarded(name: str, check: Any, *args: Any) -> dict[str, Any]:
    """A check that raises (fullgraph=True turns a graph break into an exception) has failed."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001 - any failure to compile is the finding we report
        return {"check": name, "value": "error", "ok": False, "detail": f"{type(e).__name__}: {e}"[:300]}


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
