"""`llmlab bench infer`: decode tokens/s with and without the KV cache, side by side with peers.

Same shapes on every row (default: d=256, 4 layers, 8 query heads, 2 kv heads, SwiGLU 704,
vocab 8192, tied; prompt 256 + 256 new tokens, batch 1, greedy, random weights). Rows:
- llmlab, KV cache, eager; llmlab, KV cache, compiled decode step (compile time reported apart);
- llmlab, no cache (the whole prefix recomputed each token);
- Hugging Face transformers LlamaForCausalLM `generate` with and without cache, when installed,
  with our weights (`llmlab.export.hf.to_transformers`), checked to give the same greedy tokens.
Batch-1 decode reads every weight once per token, so weight bytes / (seconds per token) is the
memory bandwidth achieved: the figure that says how far from the hardware limit we are.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from llmlab.bench.common import emit_json, environment, print_table
from llmlab.config import ModelConfig, load_model_config, to_dict
from llmlab.infer.generate import decode_step, generate
from llmlab.model import GPT
from llmlab.timing import median, time_round_robin


def default_config(max_seq_len: int) -> ModelConfig:
    return ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32,
                       d_ff=704, max_seq_len=max_seq_len, tie_embeddings=True)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: all parameters except the embedding rows it does not
    gather (a tied table is read whole by the output head)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def llmlab_cases(model: GPT, prompt: torch.Tensor, new: int, compile: bool) -> dict[str, Callable[[], Any]]:
    cases = {
        "llmlab|kv cache, eager": lambda: generate(model, prompt, new, use_kv_cache=True),
        "llmlab|no cache, eager": lambda: generate(model, prompt, new, use_kv_cache=False),
    }
    if compile:
        step = torch.compile(decode_step, fullgraph=True, dynamic=False)
        cases["llmlab|kv cache, compiled"] = lambda: generate(model, prompt, new, decode_fn=step)
    return cases


PEER_CHECK_TOKENS = 32
"""Greedy tokens both sides must agree on before any timing (more would only add near-ties)."""


def hf_peer(model: GPT, prompt: torch.Tensor) -> torch.nn.Module | None:
    """Our model's weights in transformers (Llama / Mistral / Mixtral, `llmlab.export.hf`), checked
    to give the same logits and greedy tokens on the prompt: equal work. None without transformers."""
    import importlib.util

    from llmlab.export.hf import ExportError, check_same_function, to_transformers

    if importlib.util.find_spec("transformers") is None:
        return None
    try:
        peer = to_transformers(model)
    except ExportError as e:
        raise ExportError(f"{e} (run with --no-peers)") from None
    room = model.config.max_seq_len - prompt.shape[1]
    check_same_function(model, peer, prompt, greedy_tokens=min(PEER_CHECK_TOKENS, room))
    return peer


def hf_cases(model: torch.nn.Module, prompt: torch.Tensor, new: int) -> dict[str, Callable[[], Any]]:
    def run(use_cache: bool) -> Any:
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  use_cache=use_cache, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    return {"hf-transformers|kv cache, eager": lambda: run(True),
            "hf-transformers|no cache, eager": lambda: run(False)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab bench infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a model TOML (default: the d=256 GQA shapes above)")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled row")
    p.add_argument("--no-peers", action="store_true", help="skip Hugging Face transformers")
    p.add_argument("--quick", action="store_true", help="32 + 32 tokens, 1 repeat: a smoke run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    if args.quick:
        args.prompt_len, args.new_tokens, args.repeats = 32, 32, 1
    total = args.prompt_len + args.new_tokens
    cfg = load_model_config(args.config) if args.config else default_config(total)
    torch.manual_seed(0)
    model = GPT(cfg).to(args.device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.batch_size, args.prompt_len), device=args.device)
    new, wbytes = args.new_tokens, weight_bytes_per_token(model)

    cases = llmlab_cases(model, prompt, new, compile=not args.no_compile)
    peer = None if args.no_peers else hf_peer(model, prompt)
    if peer is not None:
        cases |= hf_cases(peer.to(args.device), prompt, new)
    times, warmup_s = time_round_robin(cases, args.device, repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    for name in cases:
        impl, mode = name.split("|")
        compile_s = warmup_s[name] - median(times[name]) if "compiled" in mode else None
        rows.append({"impl": impl, "mode": mode, "seconds": median(times[name]), "compile_s": compile_s})
    base = rows[0]["seconds"]
    for row in rows:
        row["tokens_per_s"] = new * args.batch_size / row["seconds"]
        row["speedup_vs_llmlab_cache"] = base / row["seconds"]
        row["bandwidth_gb_s"] = wbytes * new / row["seconds"] / 1e9 if "kv cache" in row["mode"] else None
    print(f"decode: prompt {args.prompt_len} + {new} new tokens, batch {args.batch_size}, {args.device}, "
          f"{environment(args.device)['threads']} threads; weights {wbytes / 1e6:.1f} MB read per token")
    print_table(rows, [("impl", "impl", ""), ("mode", "mode", ""), ("tokens_per_s", "tokens/s", ".1f"),
                       ("speedup_vs_llmlab_cache", "x llmlab cache", ".2f"),
                       ("bandwidth_gb_s", "weights GB/s", ".2f"), ("compile_s", "compile s", ".1f")])
    tps = {f"{r['impl']}|{r['mode']}": r["tokens_per_s"] for r in rows}
    cache_speedup = tps["llmlab|kv cache, eager"] / tps["llmlab|no cache, eager"]
    print(f"llmlab cache speedup: {cache_speedup:.2f}x")
    payload = {"bench": "infer", "config": to_dict(cfg), "prompt_len": args.prompt_len,
               "new_tokens": new, "batch_size": args.batch_size, "weight_bytes_per_token": wbytes,
               "rows": rows, "llmlab_cache_speedup": cache_speedup, "env": environment(args.device)}
    if peer is not None:
        payload["hf_cache_speedup"] = tps["hf-transformers|kv cache, eager"] / tps["hf-transformers|no cache, eager"]
        payload["llmlab_vs_hf_cached"] = tps["llmlab|kv cache, eager"] / tps["hf-transformers|kv cache, eager"]
    emit_json(payload)
    return 0
