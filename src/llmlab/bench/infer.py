"""`llmlab bench infer`: prefill and decode with and without the KV cache, side by side with peers,
against the machine's read bandwidth measured in the same run.

Same shapes on every row (default: d=256, 4 layers, 8 query heads, 2 kv heads, SwiGLU 704,
vocab 8192, tied; prompt 256 + 256 new tokens, greedy, random weights), at batch 1 and 8. Rows:
- llmlab, KV cache, eager; llmlab, KV cache, compiled decode step (`generate(compile=True)`, and
  `compile="max-autotune"`, compile time reported apart);
- llmlab, no cache: the whole prefix recomputed each token, the output head on the last position;
- llmlab, compiled, "called in inference_mode": the same compiled steps, first used outside
  `torch.inference_mode()` (the plain rows' warm-up) and timed inside it, the usual warm-up-then-
  serve pattern: its ratio to the plain row shows whether the calling context costs speed;
- Hugging Face transformers `generate` with and without cache (when installed), with our weights
  (`llmlab.export.hf.to_transformers`), checked to give the same greedy tokens before timing. HF's
  no-cache path is equal work too: `generate` passes `logits_to_keep=1` to models that accept it
  (Llama, Mistral, Mixtral do), so it also computes the head on the last position only;
- Hugging Face at its best: `generate(cache_implementation="static")` with the forward through
  `torch.compile` as its guide documents (`hf_static_compiled_run`), its greedy tokens checked
  against the eager peer's before timing, its first call (compile + one generation) reported apart.
No-cache and HF-static rows run at the smallest batch only (at batch 8 no-cache rows are
compute-bound prefills; each HF compile costs minutes on a small CPU).
Every row runs at each of `--threads` (default 1 and torch's count), all interleaved in one loop;
a compiled row's decode may run at fewer threads than its row's (`decode threads` column: the
faster of the count and 1, timed when compiling; see `llmlab.infer.compiled`).
Prefill (prompt forward + first token) is reported apart from decode (the other tokens). Each
decode row's bytes per step (weights + the KV cache a step must read, at the mean position) x steps
per second, over the same run's read bandwidth, says how close to the memory limit it runs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import os
import time
from typing import Any

import torch

from llmlab.bench.bandwidth import measure_bandwidths
from llmlab.config import ModelConfig, load_model_config, to_dict
from llmlab.environment import machine
from llmlab.errors import ConfigError
from llmlab.export.hf import ExportError, check_same_function, to_transformers
from llmlab.infer.generate import GenerationTimes, generate_timed
from llmlab.infer.measure import Run, random_prompt, time_interleaved
from llmlab.model import GPT
from llmlab.model.accounting import count
from llmlab.tables import emit_json, print_table
from llmlab.timing import clock, intra_op_threads


def default_config(max_seq_len: int) -> ModelConfig:
    return ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32,
                       d_ff=704, max_seq_len=max_seq_len, tie_embeddings=True)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights a dense decode step reads: every parameter once (a tied table once, read
    whole by the output head; the embedding gather of one row is negligible). For MoE an upper
    bound: a batch-1 step reads only its top-k experts."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_step(cfg: ModelConfig, batch: int, prompt_len: int, new: int, element_size: int) -> int:
    """KV bytes a cached decode step needs at the mean decode position (prompt + new / 2): the
    useful reads. (Our static cache is attended whole, masked: the llmlab rows read up to the cache
    length; crediting them only the useful bytes keeps the fraction honest, not flattering.)"""
    per_token = count(cfg, kv_bytes_per_element=element_size)["kv_cache_bytes_per_token"]
    return per_token * batch * (prompt_len + new // 2)


def llmlab_runs(model: GPT, prompt: torch.Tensor, new: int, compile: bool, no_cache: bool,
                verbose: bool = False) -> dict[str, Run]:
    runs = {"llmlab|kv cache, eager": functools.partial(generate_timed, model, prompt, new)}
    if compile:
        for mode, name in (("default", "compiled"), ("max-autotune", "compiled, max-autotune")):
            run = functools.partial(generate_timed, model, prompt, new, compile=mode, verbose=verbose)
            runs[f"llmlab|kv cache, {name}"] = run
            runs[f"llmlab|kv cache, {name}, called in inference_mode"] = in_inference_mode(run)
    if no_cache:
        runs["llmlab|no cache, eager"] = functools.partial(generate_timed, model, prompt, new, use_kv_cache=False)
    return runs


def in_inference_mode(run: Run) -> Run:
    """The run called inside `torch.inference_mode()` (its step compiled before, outside it)."""

    def call() -> tuple[torch.Tensor, GenerationTimes]:
        with torch.inference_mode():
            return run()

    return call


def at_threads(runs: dict[str, Run], threads: int) -> dict[str, Run]:
    """Each run at `threads` intra-op threads (the caller's count back after), named name|threads."""

    def wrap(run: Run) -> Run:
        def call() -> tuple[torch.Tensor, GenerationTimes]:
            with intra_op_threads(threads):
                return run()

        return call

    return {f"{name}|{threads}": wrap(run) for name, run in runs.items()}


PEER_CHECK_TOKENS = 32
"""Greedy tokens both sides must agree on before any timing (more would only add near-ties)."""


def hf_peer(model: GPT, prompt: torch.Tensor) -> torch.nn.Module | None:
    """Our model's weights in transformers (Llama / Mistral / Mixtral, `llmlab.export.hf`), checked
    to give the same logits and greedy tokens on the prompt: equal work. None without transformers."""
    if importlib.util.find_spec("transformers") is None:
        return None
    try:
        peer = to_transformers(model)
    except ExportError as e:
        raise ExportError(f"{e} (run with --no-peers)") from None
    room = model.config.max_seq_len - prompt.shape[1]
    check_same_function(model, peer, prompt, greedy_tokens=min(PEER_CHECK_TOKENS, room))
    return peer


class FirstTokenClock:
    """A transformers streamer that stamps the first new token: generate() calls put() with the
    prompt, then with each new token, so HF's prefill is timed within the same call as its decode."""

    def __init__(self) -> None:
        self.puts, self.first = 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate_timed(peer: torch.nn.Module, prompt: torch.Tensor, new: int, use_cache: bool,
                      **generate_kwargs: Any) -> tuple[torch.Tensor, GenerationTimes]:
    """HF `generate`, greedy, exactly `new` tokens, timed like `generate_timed` (generate_kwargs:
    more of `generate`'s arguments, e.g. cache_implementation)."""
    first_token = FirstTokenClock()
    t0 = clock(prompt.device)
    with torch.no_grad():
        out = peer.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=use_cache,
                            pad_token_id=0, attention_mask=torch.ones_like(prompt), streamer=first_token,
                            **generate_kwargs)
    t1 = clock(prompt.device)
    return out, GenerationTimes(first_token.first - t0, t1 - first_token.first, (new - 1) * prompt.shape[0],
                                decode_threads=torch.get_num_threads())


class PeerTokensDiffer(RuntimeError):
    """HF's compiled static-cache generate did not give the eager peer's greedy tokens."""


def hf_static_compiled_run(peer: torch.nn.Module, prompt: torch.Tensor, new: int,
                           check_tokens: int = PEER_CHECK_TOKENS) -> Run:
    """Hugging Face's fastest documented decoding, on the peer's weights and any device: a copy of
    the peer whose forward goes through `torch.compile(mode="reduce-overhead", fullgraph=True)`
    (HF's torch.compile guide; CUDA graphs on a GPU, plain inductor on a CPU), called as
    `generate(cache_implementation="static")`; HF's own automatic compile is off
    (`disable_compile=True`) so the forward is compiled once, the documented way.

    The returned Run's first call compiles (prefill and decode graphs) and raises PeerTokensDiffer
    unless its first `check_tokens` greedy tokens equal the eager peer's; that call's GenerationTimes
    carries compile_s = its whole wall time (compile + one generation). Call it before timing, as
    `llmlab.infer.measure.time_interleaved` does with its warm-up. The copy leaves `peer` eager.
    """
    static = copy.deepcopy(peer)
    static.forward = torch.compile(static.forward, mode="reduce-overhead", fullgraph=True)
    run = functools.partial(hf_generate_timed, static, prompt, new, True, cache_implementation="static",
                            disable_compile=True)
    first = [True]

    def call() -> tuple[torch.Tensor, GenerationTimes]:
        if not first[0]:
            return run()
        first[0] = False
        expect, _ = hf_generate_timed(peer, prompt, min(check_tokens, new), True)
        t0 = clock(prompt.device)
        out, times = run()
        times.compile_s = clock(prompt.device) - t0
        if not torch.equal(out[:, :expect.shape[1]], expect):
            pos = int((out[:, :expect.shape[1]] != expect).any(dim=0).nonzero()[0]) - prompt.shape[1]
            raise PeerTokensDiffer(f"HF's compiled static-cache generate differs from its eager generate at new "
                                   f"token {pos}: not timed")
        return out, times

    return call


def hf_runs(peer: torch.nn.Module, prompt: torch.Tensor, new: int, no_cache: bool,
            static_compiled: bool = False) -> dict[str, Run]:
    """HF's rows: eager with its dynamic cache; without cache (no_cache); its compiled static cache."""
    runs = {"hf-transformers|kv cache, eager": functools.partial(hf_generate_timed, peer, prompt, new, True)}
    if no_cache:
        runs["hf-transformers|no cache, eager"] = functools.partial(hf_generate_timed, peer, prompt, new, False)
    if static_compiled:
        runs["hf-transformers|static cache, compiled"] = hf_static_compiled_run(peer, prompt, new)
    return runs


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab bench infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a model TOML (default: the d=256 GQA shapes above)")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,8", help="comma separated (no-cache rows at the first only)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default=None,
                   help="comma-separated intra-op CPU thread counts; every row runs at each (default: 1 and torch's)")
    p.add_argument("--verbose", action="store_true", help="show inductor's max-autotune tables")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    p.add_argument("--no-peers", action="store_true", help="skip Hugging Face transformers")
    p.add_argument("--skip-no-cache", action="store_true",
                   help="skip the no-cache rows (each token recomputes the whole prefix: minutes on a busy machine)")
    p.add_argument("--quick", action="store_true", help="32 + 32 tokens, 1 repeat: a smoke run")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    try:
        args.threads = sorted({int(t) for t in (args.threads or f"1,{torch.get_num_threads()}").split(",")})
    except ValueError:
        raise ConfigError(f"--threads must be comma-separated integers, got {args.threads!r}") from None
    if min(args.threads) < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if min(args.batch_sizes) < 1 or args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1:
        raise ConfigError("--batch-sizes, --prompt-len and --repeats must be >= 1, --new-tokens >= 2")
    if args.quick:
        args.prompt_len, args.new_tokens, args.repeats = 32, 32, 1
    return args


def measure_batch(model: GPT, peer: torch.nn.Module | None, args: argparse.Namespace, batch: int,
                  first: bool) -> list[dict[str, Any]]:
    """Rows for one batch size, at each thread count: every case interleaved round-robin in one loop.
    first: the smallest batch, which also gets the no-cache and HF-static rows."""
    prompt = random_prompt(model.config.vocab_size, batch, args.prompt_len, args.device, seed=batch)
    new = args.new_tokens
    runs: dict[str, Run] = {}
    for threads in args.threads:
        no_cache = first and not args.skip_no_cache
        cases = llmlab_runs(model, prompt, new, compile=not args.no_compile, no_cache=no_cache, verbose=args.verbose)
        if peer is not None:
            cases |= hf_runs(peer, prompt, new, no_cache, static_compiled=first and not args.no_compile)
        runs |= at_threads(cases, threads)
    figures, ids = time_interleaved(runs, args.repeats)
    wbytes = weight_bytes_per_token(model)
    kv = kv_bytes_per_step(model.config, batch, args.prompt_len, new, model.lm_head.weight.element_size())
    rows = []
    for name, fig in figures.items():
        impl, mode, threads = name.split("|")
        step_bytes = wbytes + (kv if "cache" in mode and "no cache" not in mode else 0)  # no cache: K/V recomputed
        rows.append({"impl": impl, "mode": mode, "batch_size": batch, "threads": int(threads),
                     "decode_threads": fig.get("decode_threads"), "prefill_ms": fig["prefill_s"] * 1e3,
                     "decode_tokens_per_s": fig["decode_tokens_per_s"], "tokens_per_s": fig["tokens_per_s"],
                     "compile_s": fig.get("compile_s"), "thread_trial_ms": fig.get("thread_trial_ms"),
                     "bytes_per_step": step_bytes, "read_gb_s": step_bytes * fig["decode_tokens_per_s"] / batch / 1e9,
                     "same_tokens": torch.equal(ids[name], ids[f"llmlab|kv cache, eager|{threads}"])})
    return rows


RATIOS = {
    "llmlab_cache_speedup": ("llmlab|kv cache, eager", "llmlab|no cache, eager"),
    "hf_cache_speedup": ("hf-transformers|kv cache, eager", "hf-transformers|no cache, eager"),
    "llmlab_vs_hf_no_cache": ("llmlab|no cache, eager", "hf-transformers|no cache, eager"),
    "llmlab_vs_hf_cached": ("llmlab|kv cache, eager", "hf-transformers|kv cache, eager"),
    "compiled_vs_hf_cached": ("llmlab|kv cache, compiled", "hf-transformers|kv cache, eager"),
    "compiled_vs_eager_cached": ("llmlab|kv cache, compiled", "llmlab|kv cache, eager"),
    "autotuned_vs_hf_cached": ("llmlab|kv cache, compiled, max-autotune", "hf-transformers|kv cache, eager"),
    "autotuned_vs_eager_cached": ("llmlab|kv cache, compiled, max-autotune", "llmlab|kv cache, eager"),
    "hf_static_compiled_vs_hf_cached": ("hf-transformers|static cache, compiled", "hf-transformers|kv cache, eager"),
    "compiled_vs_hf_static_compiled": ("llmlab|kv cache, compiled", "hf-transformers|static cache, compiled"),
    "autotuned_vs_hf_static_compiled": ("llmlab|kv cache, compiled, max-autotune",
                                        "hf-transformers|static cache, compiled"),
    "compiled_inference_mode_vs_plain": ("llmlab|kv cache, compiled, called in inference_mode",
                                         "llmlab|kv cache, compiled"),
    "autotuned_inference_mode_vs_plain": ("llmlab|kv cache, compiled, max-autotune, called in inference_mode",
                                          "llmlab|kv cache, compiled, max-autotune"),
}
"""The issue's targets: decode tokens/s of the first row over the second."""


def ratios(rows: list[dict[str, Any]], threads: int) -> dict[str, float]:
    """The issue's targets from the batch-1 rows at one thread count: decode tokens/s ratios."""
    b1 = min(r["batch_size"] for r in rows)
    tps = {f"{r['impl']}|{r['mode']}": r["decode_tokens_per_s"] for r in rows
           if r["batch_size"] == b1 and r["threads"] == threads}
    return {k: tps[a] / tps[b] for k, (a, b) in RATIOS.items() if a in tps and b in tps}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    cfg = load_model_config(args.config) if args.config else default_config(args.prompt_len + args.new_tokens)
    torch.manual_seed(0)
    model = GPT(cfg).to(args.device).eval()
    peer = None
    if not args.no_peers:  # to_transformers builds the peer on the model's device
        peer = hf_peer(model, random_prompt(cfg.vocab_size, 1, args.prompt_len, args.device, seed=0))
    wbytes = weight_bytes_per_token(model)
    load = [os.getloadavg()[0]]  # the machine's load, before and after: other jobs share the cores
    before = measure_bandwidths(wbytes, args.device)
    rows: list[dict[str, Any]] = []
    for i, batch in enumerate(args.batch_sizes):
        rows += measure_batch(model, peer, args, batch, first=i == 0)
    # The read rate is itself noisy (the first reads of a run come in low): measured before and
    # after the rows, the higher of the two is the bound each row is compared with.
    after = measure_bandwidths(wbytes, args.device)
    load.append(os.getloadavg()[0])
    bandwidth = {name: max(before[name], after[name], key=lambda bw: bw["gb_s"]) for name in before}
    for row in rows:
        for name, bw in bandwidth.items():
            row[f"frac_{name}"] = row["read_gb_s"] / bw["gb_s"]
    report(args, cfg, wbytes, bandwidth, rows, load)
    return 0


def report(args: argparse.Namespace, cfg: ModelConfig, wbytes: int, bandwidth: dict[str, dict[str, float]],
           rows: list[dict[str, Any]], load: list[float]) -> None:
    """The human table, then the one JSON line."""
    env = machine(args.device)
    bw = bandwidth["weights_sized"]["gb_s"], bandwidth["larger_than_cache"]["gb_s"]
    print(f"prompt {args.prompt_len} + {args.new_tokens} new tokens, {args.device}, rows at "
          f"{', '.join(map(str, args.threads))} threads; weights {wbytes / 1e6:.1f} MB; read bandwidth {bw[0]:.1f} "
          f"GB/s (weights-sized buffer), {bw[1]:.1f} GB/s "
          f"({bandwidth['larger_than_cache']['bytes'] / 2**20:.0f} MiB buffer); load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after")
    print_table(rows, [("impl", "impl", ""), ("mode", "mode", ""), ("batch_size", "batch", "d"),
                       ("threads", "threads", "d"), ("decode_threads", "decode threads", "d"),
                       ("prefill_ms", "prefill ms", ".1f"), ("decode_tokens_per_s", "decode tok/s", ".1f"),
                       ("read_gb_s", "read GB/s", ".2f"), ("frac_weights_sized", "of bw (weights)", ".1%"),
                       ("frac_larger_than_cache", "of bw (DRAM)", ".1%"), ("compile_s", "compile s", ".1f"),
                       ("same_tokens", "same tokens", "")])
    found = {str(t): ratios(rows, t) for t in args.threads}
    for t, rs in found.items():
        print(f"{t} thread(s): " + "  ".join(f"{k} {v:.2f}x" for k, v in rs.items()))
    emit_json({"bench": "infer", "config": to_dict(cfg), "prompt_len": args.prompt_len,
               "new_tokens": args.new_tokens, "batch_sizes": args.batch_sizes, "threads": args.threads,
               "weight_bytes_per_token": wbytes, "bandwidth": bandwidth, "rows": rows, "ratios": found,
               "load_average": {"before": load[0], "after": load[1]}, "env": env})
