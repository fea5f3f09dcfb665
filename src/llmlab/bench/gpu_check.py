"""The GPU proof in one run (issue 10), driven by `benchmarks/gpu_check.sh`; one JSON file out.

On one GPU, in about 8 minutes:
1. `pytest -m gpu` (bf16 against fp32 on the same weights, CUDA decode, bf16 compile-check);
2. `compile-check` of the three 125M models in bf16 (zero graph breaks, one compilation);
3. 30 compiled training steps of each 125M variant at seq 1024: tokens/s, peak memory, MFU (active
   FLOPs per token, `llmlab.model.accounting`, against the GPU's bf16 peak);
4. decode of each 125M model, eager vs compiled (CUDA graphs), batch 1 and 8 (`measure_decode`);
5. MoE training tokens/s with grouped (dropless `torch._grouped_mm`) vs capacity dispatch.
`--dry-run` runs every part on the CPU with tiny shapes and few steps, to check the script itself
where no GPU is at hand; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmlab.bench.common import environment, print_table
from llmlab.errors import ConfigError
from llmlab.runs import write_json
from llmlab.timing import sync

VARIANTS = {"base": "base-125m", "gqa": "gqa-125m", "gqa+moe": "gqa-moe-125m"}
DRY_VARIANTS = {"base": "tiny", "gqa+moe": "tiny-moe"}  # the GQA path is the base path: one less compile
# grouped dispatch compiles in bf16 only: the CPU dry run compiles the MoE with capacity (fp32)
DRY_MOE_OVERRIDES = ("model.moe.dispatch=capacity",)


@dataclass
class Plan:
    """Sizes of one check run: the real one on a GPU, or the dry run's on a CPU."""

    device: str
    dtype: str
    variants: dict[str, str]
    train_steps: int
    warmup_steps: int
    seq_len: int
    batch_size: int | None  # None: the run config's micro_batch_size
    context: int
    new_tokens: int
    decode_batches: tuple[int, ...]
    compile_seq_len: int
    decode_repeats: int = 3
    compile_backend: str = "inductor"
    train_compiled: bool = True
    model_overrides: tuple[str, ...] = ()
    moe_overrides: tuple[str, ...] = ()

    def overrides(self, variant: str) -> list[str]:
        """--set overrides of a variant's model (the dry run's shrinking, its MoE dispatch)."""
        return [*self.model_overrides, *(self.moe_overrides if "moe" in variant else ())]


def plan(dry_run: bool) -> Plan:
    if dry_run:
        # Every part runs, on shrunken models; compile-check traces without code generation and the
        # training steps run eager (compile-check covers their compilation), to stay under a minute.
        return Plan("cpu", "fp32", DRY_VARIANTS, train_steps=2, warmup_steps=1, seq_len=32, batch_size=2,
                    context=24, new_tokens=8, decode_batches=(1,), compile_seq_len=32, decode_repeats=1,
                    compile_backend="aot_eager", train_compiled=False,
                    model_overrides=("model.n_layers=1", "model.vocab_size=512"), moe_overrides=DRY_MOE_OVERRIDES)
    if not torch.cuda.is_available():
        raise ConfigError("gpu_check needs a CUDA device; use --dry-run to check the script on a CPU")
    return Plan("cuda", "bf16", VARIANTS, train_steps=30, warmup_steps=3, seq_len=1024, batch_size=None,
                context=512, new_tokens=128, decode_batches=(1, 8), compile_seq_len=256)


def gpu_tests(dry_run: bool) -> dict[str, Any]:
    """`pytest -m gpu` in a child process (every GPU-marked test; the dry run collects only
    tests/model/test_gpu.py, to stay short); its exit code and summary line."""
    where = "tests/model/test_gpu.py" if dry_run else "tests"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", where, "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    return {"check": "pytest -m gpu", "ok": proc.returncode == 0, "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr[-300:], "seconds": time.perf_counter() - t0}


def compile_checks(p: Plan) -> list[dict[str, Any]]:
    from llmlab.bench.compile_check import compile_check
    from llmlab.config import load_model_config

    rows = []
    for name, model in p.variants.items():
        cfg = load_model_config(f"configs/models/{model}.toml", p.overrides(name))
        out = compile_check(cfg, device=p.device, dtype=p.dtype, steps=3, decode_steps=16,
                            seq_len=p.compile_seq_len, backend=p.compile_backend)
        rows.append({"check": f"compile-check {model} ({p.dtype})", "ok": out["ok"], "rows": out["rows"]})
    return rows


def train_rate(run_config: str, p: Plan, overrides: list[str] = ()) -> dict[str, Any]:
    """Compiled training steps (fwd + bwd + clip + AdamW, `llmlab bench train`'s step): tokens/s,
    peak memory, MFU. The warm-up steps (compilation) are timed apart."""
    from llmlab.bench.train import _our_step, warm_up
    from llmlab.config import load_run_config
    from llmlab.model.accounting import count
    from llmlab.train.metrics import mfu, peak_flops
    from llmlab.train.setup import autocast_dtype

    sets = [f"train.seq_len={p.seq_len}", f"train.dtype={p.dtype}", "train.tokens_per_update=0",
            *p.overrides(run_config), *overrides]
    if p.batch_size:
        sets.append(f"train.micro_batch_size={p.batch_size}")
    cfg = load_run_config(f"configs/runs/{run_config}.toml", sets)
    device = torch.device(p.device)
    amp = autocast_dtype(cfg.train, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = _our_step(cfg, device, amp, compiled=p.train_compiled)
    warmup_s = warm_up(step, device, p.warmup_steps)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(p.train_steps):
        step()
    sync(device)
    rate = p.train_steps * cfg.train.micro_batch_size * cfg.train.seq_len / (time.perf_counter() - t0)
    flops = count(cfg.model, seq_len=cfg.train.seq_len)["flops_per_token"]
    peak = peak_flops(device) if amp == torch.bfloat16 else None
    return {"config": run_config, "overrides": list(overrides), "compiled": p.train_compiled,
            "batch_size": cfg.train.micro_batch_size,
            "seq_len": cfg.train.seq_len, "tokens_per_s": rate, "mfu": mfu(flops, rate, peak),
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": warmup_s}


def decode_rates(p: Plan) -> list[dict[str, Any]]:
    """Eager vs compiled (CUDA graphs on a GPU) cached decode of each model, per batch size."""
    from torch._dynamo.utils import counters

    from llmlab.config import load_model_config
    from llmlab.device import resolve_dtype
    from llmlab.infer.measure import measure_decode
    from llmlab.model import GPT

    rows = []
    for name, model_name in p.variants.items():
        torch.manual_seed(0)
        cfg = load_model_config(f"configs/models/{model_name}.toml", p.overrides(name))
        model = GPT(cfg).to(p.device).to(resolve_dtype(p.dtype, p.device)).eval()
        for batch in p.decode_batches:
            skips = counters["inductor"]["cudagraph_skips"]
            out = measure_decode(model, batch_size=batch, context=p.context, new_tokens=p.new_tokens,
                                 cases=("kv_cache", "compiled"), repeats=p.decode_repeats)
            eager, compiled = out["kv_cache"], out["compiled"]
            rows.append({"variant": name, "batch_size": batch, "eager_tokens_per_s": eager["decode_tokens_per_s"],
                         "compiled_tokens_per_s": compiled["decode_tokens_per_s"],
                         "speedup": compiled["decode_tokens_per_s"] / eager["decode_tokens_per_s"],
                         "prefill_ms": eager["prefill_s"] * 1e3, "compile_s": compiled.get("compile_s"),
                         "same_tokens": compiled["same_tokens_as_kv_cache"],
                         # inductor falls back from CUDA graphs with only a log line: count it
                         "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips})
        del model
    return rows


def moe_dispatch_rates(p: Plan) -> list[dict[str, Any]]:
    moe = p.variants["gqa+moe"]
    return [train_rate(moe, p, ["model.moe.dispatch=grouped"]),
            train_rate(moe, p, ["model.moe.dispatch=capacity", "model.moe.capacity_factor=1.25"])]


def gpu_slug(dry_run: bool) -> str:
    name = "dry-run-cpu" if dry_run else torch.cuda.get_device_name()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(p: Plan, dry_run: bool) -> dict[str, Any]:
    parts = {"tests": lambda: gpu_tests(dry_run), "compile_check": lambda: compile_checks(p),
             "train": lambda: [{"variant": name, **train_rate(cfg, p)} for name, cfg in p.variants.items()],
             "decode": lambda: decode_rates(p), "moe_dispatch": lambda: moe_dispatch_rates(p)}
    result: dict[str, Any] = {"bench": "gpu_check", "dry_run": dry_run, "seconds": {}}
    for name, part in parts.items():
        t0 = time.perf_counter()
        result[name] = part()
        result["seconds"][name] = time.perf_counter() - t0
        print(f"gpu_check: {name} done in {result['seconds'][name]:.0f} s", flush=True)
    result["ok"] = result["tests"]["ok"] and all(r["ok"] for r in result["compile_check"])
    result["env"] = environment(p.device)
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, not the GPU")
    ap.add_argument("--out-dir", default="benchmarks/results", help="writes gpu-<gpu name>.json here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    p = plan(args.dry_run)
    result = run(p, args.dry_run)
    print_table(result["train"], [("variant", "train", ""), ("tokens_per_s", "tokens/s", ",.0f"),
                                  ("mfu", "MFU", ".1%"), ("peak_memory_gb", "peak GB", ".1f")])
    print_table(result["decode"], [("variant", "decode", ""), ("batch_size", "batch", "d"),
                                   ("eager_tokens_per_s", "eager tok/s", ",.0f"),
                                   ("compiled_tokens_per_s", "compiled tok/s", ",.0f"), ("speedup", "x", ".2f")])
    print_table(result["moe_dispatch"], [("overrides", "MoE dispatch", ""), ("tokens_per_s", "tokens/s", ",.0f")])
    out = Path(args.out_dir) / f"gpu-{gpu_slug(args.dry_run)}.json"
    write_json(out, result)
    print(f"tests: {result['tests']['summary']}; compile-check: "
          f"{'OK' if all(r['ok'] for r in result['compile_check']) else 'FAILED'}; "
          f"{sum(result['seconds'].values()):.0f} s -> {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
