"""The GPU proof in one run, driven by `benchmarks/gpu_check.sh`: a JSON record that is never empty.

Made for a lent GPU with a hard time limit: parts run in order of value, each under its own `try`;
the JSON is rewritten after every row and part, each part marked `ok`, `failed` (with the error) or
`skipped` (the budget was spent before it started), so a time-out or one error still returns
everything measured before it. Parts:
1. `tests`: `pytest -m gpu` (full log and junit XML kept beside the JSON);
2. `train`: compiled bf16 training of the three 125M arms at seq 1024: tokens/s, MFU (model FLOPs,
   `llmlab.model.accounting`) and HFU (the FLOPs the kernels execute, capacity slots included),
   peak memory, steps skipped as non-finite;
3. `decode`: eager vs compiled (CUDA graphs) cached decode at batch 1 and 8, Hugging Face `generate`
   on the same weights; compiled logits checked against eager's, teacher-forced, within half of
   what a mask bug changes; CUDA-graph skips counted;
4. `sdpa`: which SDPA kernel each attention shape gets (training, prefill, masked MHA / GQA decode);
5. `moe_dispatch`: MoE training tokens/s on torch._grouped_mm, on the Triton grouped GEMM (the
   path a GPU below sm90 takes, forced here) and with capacity 1.25;
6. `compile_check`: the three 125M models in bf16 (zero graph breaks, one compilation).
The closing table states each target and whether it was met. `--parts` reruns some parts into the
existing record (of the same code). `--dry-run` runs every part on the CPU with tiny shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import inspect
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch._dynamo.utils import counters
from torch._inductor import cudagraph_utils
from torch.profiler import ProfilerActivity, profile

import llmlab
from llmlab.audit.compile_check import compile_check
from llmlab.bench.infer import hf_peer, hf_static_compiled_run
from llmlab.bench.train import our_step, warm_up
from llmlab.config import ModelConfig, load_model_config, load_run_config
from llmlab.device import autocast_dtype, resolve_dtype
from llmlab.environment import machine
from llmlab.errors import ConfigError
from llmlab.files import read_json, write_json
from llmlab.infer import generate
from llmlab.infer.compiled import compiled_decode_step
from llmlab.infer.measure import measure_decode, random_prompt, time_interleaved
from llmlab.infer.step import decode_context, decode_step, prefill
from llmlab.model import GPT
from llmlab.model.accounting import count
from llmlab.model.kv_cache import KVCache
from llmlab.model.mlp import mlp_params
from llmlab.model.moe import expert_capacity
from llmlab.tables import print_table
from llmlab.timing import clock, intra_op_threads
from llmlab.train.metrics import mfu, peak_flops

VARIANTS = {"base": "base-125m", "gqa": "gqa-125m", "gqa+moe": "gqa-moe-125m"}
DRY_VARIANTS = {"base": "tiny", "gqa": "tiny-gqa", "gqa+moe": "tiny-moe"}
PARTS = ("tests", "train", "decode", "sdpa", "moe_dispatch", "compile_check")
REPO = Path(llmlab.__file__).resolve().parents[2]  # the tree this llmlab was imported from (src/llmlab/..)


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
    hf_variants: tuple[str, ...] = ("base", "gqa", "gqa+moe")
    """Variants whose decode rows also time Hugging Face's compiled static-cache generate."""

    def overrides(self, variant: str) -> list[str]:
        """--set overrides of a variant's model (the dry run's shrinking, its MoE dispatch)."""
        return [*self.model_overrides, *(self.moe_overrides if "moe" in variant else ())]


def plan(dry_run: bool) -> Plan:
    if dry_run:
        # Every part runs, on shrunken models; compile-check traces without code generation and the
        # training steps run eager (compile-check covers their compilation), to stay near a minute.
        # grouped dispatch compiles in bf16 only: the CPU dry run compiles the MoE with capacity (fp32).
        return Plan("cpu", "fp32", DRY_VARIANTS, train_steps=2, warmup_steps=1, seq_len=32, batch_size=2,
                    context=24, new_tokens=8, decode_batches=(1,), compile_seq_len=32, decode_repeats=1,
                    compile_backend="aot_eager", train_compiled=False,
                    model_overrides=("model.n_layers=1", "model.vocab_size=512"),
                    moe_overrides=("model.moe.dispatch=capacity",), hf_variants=("base",))
    if not torch.cuda.is_available():
        raise ConfigError("gpu_check needs a CUDA device; use --dry-run to check the script on a CPU")
    return Plan("cuda", "bf16", VARIANTS, train_steps=20, warmup_steps=3, seq_len=1024, batch_size=None,
                context=512, new_tokens=128, decode_batches=(1, 8), compile_seq_len=256)


Emit = Callable[[dict[str, Any]], None]
"""Adds one row to the running part (and rewrites the JSON): what is measured is kept at once."""


# -- 1. pytest -m gpu ------------------------------------------------------------------------------


def gpu_tests(p: Plan, emit: Emit, *, out: Path) -> None:
    """`pytest -m gpu` in a child process, with the copy's src first on its path; the whole log and
    a junit XML beside the JSON. Only the files that hold GPU tests are collected: the others import
    CPU-side dependencies (tiktoken, matplotlib) a bare GPU machine may lack. (On a CPU all skip.)"""
    files = sorted(str(f.relative_to(REPO)) for f in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in f.read_text())
    log, junit = out.with_name(out.stem + "-pytest.log"), out.with_name(out.stem + "-junit.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-m", "gpu", *files, "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    log.write_text(proc.stdout + proc.stderr)
    lines = proc.stdout.strip().splitlines()
    emit({"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-300:],
          "log": log.name, "junit": junit.name})
    if proc.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {lines[-1] if lines else ''}")


# -- 2. training -----------------------------------------------------------------------------------


def executed_flops_per_token(cfg: ModelConfig, seq_len: int, tokens: int) -> float:
    """The FLOPs a training step's kernels execute per token: the model's (6 N_active + attention)
    plus the expert slots that do no useful work: capacity dispatch computes E x C rows a layer for
    top_k x N assignments (C = ceil(cf * top_k * N / E), or N without a factor). `tokens`: per
    micro-batch. (Not counted: the Triton grouped GEMM's masked rows in each expert's last tile,
    which depend on the routing; at most 1.5 % of its rows at the 125M shapes, llmlab.model.grouped_gemm.)"""
    flops = count(cfg, seq_len=seq_len)["flops_per_token"]
    moe = cfg.moe
    if moe is None or moe.dispatch != "capacity":
        return flops
    slots_per_assignment = moe.n_experts * expert_capacity(moe, tokens) / (moe.top_k * tokens)
    routed = moe.top_k * mlp_params(cfg.d_model, moe.d_ff_expert, cfg.mlp, cfg.bias)  # per token and layer
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    return flops + 6 * n_moe * routed * (slots_per_assignment - 1)


def train_rate(run_config: str, p: Plan, variant: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Compiled training steps (fwd + bwd + clip + AdamW, `llmlab bench train`'s step): tokens/s,
    MFU / HFU, peak memory, non-finite steps. The warm-up steps (compilation) are timed apart."""
    sets = [f"train.seq_len={p.seq_len}", f"train.dtype={p.dtype}", "train.tokens_per_update=0",
            *p.overrides(variant), *overrides]
    if p.batch_size:
        sets.append(f"train.micro_batch_size={p.batch_size}")
    cfg = load_run_config(f"configs/runs/{run_config}.toml", sets)
    device = torch.device(p.device)
    amp = autocast_dtype(cfg.train.dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = our_step(cfg, device, amp, compiled=p.train_compiled)
    warmup_s = warm_up(step, device, p.warmup_steps)
    t0 = clock(device)
    skipped = sum(not step().applied for _ in range(p.train_steps))
    seconds = clock(device) - t0
    tokens = cfg.train.micro_batch_size * cfg.train.seq_len
    rate = p.train_steps * tokens / seconds
    peak = peak_flops(device) if amp == torch.bfloat16 else None
    moe = cfg.model.moe
    return {"variant": variant, "config": run_config, "overrides": list(overrides), "compiled": p.train_compiled,
            "dispatch": moe and moe.dispatch, "grouped_kernel": moe and moe.grouped_kernel,
            "batch_size": cfg.train.micro_batch_size, "seq_len": cfg.train.seq_len, "tokens_per_s": rate,
            "step_ms": 1e3 * tokens / rate,
            "mfu": mfu(count(cfg.model, seq_len=cfg.train.seq_len)["flops_per_token"], rate, peak),
            "hfu": mfu(executed_flops_per_token(cfg.model, cfg.train.seq_len, tokens), rate, peak),
            "peak_flops": peak, "nonfinite_steps": skipped,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": warmup_s}


def train_rates(p: Plan, emit: Emit) -> None:
    for name, model in p.variants.items():
        row = train_rate(model, p, name)
        emit(row)
        if row["nonfinite_steps"]:
            raise RuntimeError(f"{name}: {row['nonfinite_steps']} of {p.train_steps} steps were not finite")


# -- 3. decode -------------------------------------------------------------------------------------


def teacher_forced_logits(model: GPT, ids: torch.Tensor, prompt_len: int, compiled: bool) -> torch.Tensor:
    """Logits (B, L - 1 - prompt_len, V) of cached decoding forced along ids (B, L): prefill the
    prompt, then one decode step per position p = prompt_len .. L - 2, fed ids[:, p]; through the
    compiled step (CUDA graphs on a GPU) or eager. Both paths see the same tokens, so their logits
    compare position by position even where a near-tie would make their greedy tokens differ."""
    B, L = ids.shape
    step, threads = decode_step, None
    if compiled:
        built, _ = compiled_decode_step(model, B, L, prompt_len)
        step, threads = built.step, built.threads
    else:
        model.setup_kv_cache(B, L)
    pos = torch.tensor([prompt_len], device=ids.device)
    out = []
    with decode_context(), intra_op_threads(threads):  # as generate runs the step
        prefill(model, ids[:, :prompt_len])
        for p in range(prompt_len, L - 1):
            out.append(step(model, ids[:, p : p + 1], pos).float())
            pos += 1
    model.clear_kv_cache()
    return torch.stack(out, dim=1)


@contextlib.contextmanager
def planted_mask_bug() -> Iterator[None]:
    """The bug a decode check must catch: every cache slot visible, unwritten (zero) ones too."""
    def see_every_slot(self: KVCache, input_pos: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(input_pos), self.max_seq_len, dtype=torch.bool, device=input_pos.device)

    real = KVCache.mask
    KVCache.mask = see_every_slot
    try:
        yield
    finally:
        KVCache.mask = real


def compiled_decode_error(model: GPT, ids: torch.Tensor, prompt_len: int) -> dict[str, float]:
    """How far the compiled decode step's logits are from eager cached decoding (teacher-forced on
    the same tokens), against what a wrong mask changes on the same model. The check passes when
    the error is under half the bug's effect: rounding (inductor keeps fp32 intermediates where
    eager rounds to bf16) stays far below it; a real bug does not."""
    eager = teacher_forced_logits(model, ids, prompt_len, compiled=False)
    with planted_mask_bug():
        bug = (teacher_forced_logits(model, ids, prompt_len, compiled=False) - eager).abs().max().item()
    error = (teacher_forced_logits(model, ids, prompt_len, compiled=True) - eager).abs().max().item()
    return {"logit_error": error, "mask_bug_effect": bug, "within_tolerance": error < bug / 2}


def cudagraph_skips() -> int:
    """Inductor's count of decode graphs it ran without CUDA graphs (it only logs them). A renamed
    counter would read 0 forever from the defaultdict: refuse to trust one inductor no longer writes."""
    if '"cudagraph_skips"' not in inspect.getsource(cudagraph_utils):
        raise RuntimeError("inductor no longer counts counters['inductor']['cudagraph_skips']: update gpu_check")
    return counters["inductor"]["cudagraph_skips"]


def hf_static_rate(peer: Any, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Decode tokens/s of Hugging Face's compiled static-cache `generate` (its greedy tokens checked
    against its eager generate first), or the reason it could not be measured."""
    if peer is None:
        return {"hf_static_error": "transformers is not installed"}
    try:
        out, _ = time_interleaved({"hf": hf_static_compiled_run(peer, prompt, new_tokens)}, repeats)
    except Exception as e:  # a peer that does not run or does not agree is a finding, not a crash
        return {"hf_static_error": f"{type(e).__name__}: {e}"}
    return {"hf_static_tokens_per_s": out["hf"]["decode_tokens_per_s"], "hf_static_compile_s": out["hf"].get("compile_s")}


def decode_rates(p: Plan, emit: Emit) -> None:
    """Eager vs compiled (CUDA graphs on a GPU) cached decode of each model, per batch size, and
    Hugging Face's compiled static-cache decode of the same weights (for `p.hf_variants`)."""
    dtype = resolve_dtype(p.dtype, p.device)
    for name, model_name in p.variants.items():
        torch.manual_seed(0)
        cfg = load_model_config(f"configs/models/{model_name}.toml", p.overrides(name))
        model = GPT(cfg).to(p.device).eval()
        peer = None
        if name in p.hf_variants:  # our weights in transformers, checked in fp32 (bf16 would round the check away)
            peer = hf_peer(model, random_prompt(cfg.vocab_size, 1, p.context - p.new_tokens, p.device, seed=1))
            peer = peer and peer.to(dtype)
        model.to(dtype)
        for batch in p.decode_batches:
            skips = cudagraph_skips()
            out = measure_decode(model, batch_size=batch, context=p.context, new_tokens=p.new_tokens,
                                 cases=("kv_cache", "compiled"), repeats=p.decode_repeats)
            prompt = random_prompt(cfg.vocab_size, batch, p.context - p.new_tokens, p.device, seed=0)
            ids = generate(model, prompt, p.new_tokens)
            check = compiled_decode_error(model, ids, prompt.shape[1])  # the step just measured, replayed
            eager, compiled = out["kv_cache"], out["compiled"]
            row = {"variant": name, "batch_size": batch, "eager_tokens_per_s": eager["decode_tokens_per_s"],
                   "compiled_tokens_per_s": compiled["decode_tokens_per_s"],
                   "speedup": compiled["decode_tokens_per_s"] / eager["decode_tokens_per_s"],
                   "prefill_ms": eager["prefill_s"] * 1e3, "compile_s": compiled.get("compile_s"),
                   "same_tokens": compiled["same_tokens_as_kv_cache"], **check,
                   "cudagraph_skips": cudagraph_skips() - skips}
            if name in p.hf_variants:
                row.update(hf_static_rate(peer, prompt, p.new_tokens, p.decode_repeats))
                hf = row.get("hf_static_tokens_per_s")
                row["vs_hf_static"] = row["compiled_tokens_per_s"] / hf if hf else None
            emit(row)
            if not check["within_tolerance"] or row["cudagraph_skips"]:
                raise RuntimeError(f"{name} batch {batch}: compiled logits {check['logit_error']:.3g} from eager "
                                   f"(a mask bug moves them {check['mask_bug_effect']:.3g}); "
                                   f"{row['cudagraph_skips']} CUDA-graph skips")
        del model, peer


# -- 4. SDPA kernels -------------------------------------------------------------------------------

SDPA_KERNELS = {  # aten op -> kernel name
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (other)",
}


def sdpa_kernels(fn: Callable[[], Any]) -> list[str]:
    """The SDPA kernels one call runs, read from the profiler's op names (what ran, not a prediction)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({SDPA_KERNELS[e.key] for e in prof.key_averages() if e.key in SDPA_KERNELS})


def attention_shapes(p: Plan) -> dict[str, tuple[ModelConfig, int, int, int | None]]:
    """name -> (model config, batch, new tokens T, first position; None = training forward, no cache)."""
    base = load_model_config(f"configs/models/{p.variants['base']}.toml", p.overrides("base"))
    gqa = load_model_config(f"configs/models/{p.variants['gqa']}.toml", p.overrides("gqa"))
    seq, ctx = p.seq_len, p.context
    return {"train MHA": (base, 2, seq, None), "train GQA": (gqa, 2, seq, None),
            "prefill GQA": (gqa, 1, ctx - p.new_tokens, 0),
            "prefill chunk GQA, mid-cache (masked)": (gqa, 1, p.new_tokens, (ctx - p.new_tokens) // 2),
            "decode MHA (masked)": (base, 1, 1, ctx - 1), "decode GQA (masked)": (gqa, 1, 1, ctx - 1),
            "decode GQA batch 8 (masked)": (gqa, 8, 1, ctx - 1)}


def sdpa_backends(p: Plan, emit: Emit) -> None:
    dtype = resolve_dtype(p.dtype, p.device)
    for name, (cfg, batch, T, start) in attention_shapes(p).items():
        torch.manual_seed(0)
        model = GPT(cfg).to(p.device).to(dtype).eval()
        idx = torch.randint(0, cfg.vocab_size, (batch, T), device=p.device)
        with torch.no_grad():
            if start is None:
                kernels = sdpa_kernels(lambda: model(idx))
            else:
                model.setup_kv_cache(batch, p.context)
                pos = torch.arange(start, start + T, device=p.device)
                kv_len = T if start == 0 else None  # a prefill from 0 attends over its own slots
                kernels = sdpa_kernels(lambda: model(idx, input_pos=pos, kv_len=kv_len))
        emit({"shape": name, "batch": batch, "tokens": T, "heads": f"{cfg.n_heads} q / {cfg.n_kv_heads} kv",
              "kernels": kernels, "fused": bool(kernels) and "math" not in kernels})
        del model


# -- 5. MoE dispatch -------------------------------------------------------------------------------


def moe_dispatch_rates(p: Plan, emit: Emit) -> None:
    moe = p.variants["gqa+moe"]
    arms = {"grouped, torch._grouped_mm": ["model.moe.dispatch=grouped", "model.moe.grouped_kernel=torch"],
            "grouped, Triton (the sm80 path)": ["model.moe.dispatch=grouped", "model.moe.grouped_kernel=triton"],
            "capacity 1.25": ["model.moe.dispatch=capacity", "model.moe.capacity_factor=1.25"]}
    for arm, sets in arms.items():
        emit({"arm": arm, **train_rate(moe, p, "gqa+moe", sets)})


# -- 6. compile-check ------------------------------------------------------------------------------


def compile_checks(p: Plan, emit: Emit) -> None:
    failed = []
    for name, model in p.variants.items():
        cfg = load_model_config(f"configs/models/{model}.toml", p.overrides(name))
        out = compile_check(cfg, device=p.device, dtype=p.dtype, steps=3, decode_steps=16,
                            seq_len=p.compile_seq_len, backend=p.compile_backend)
        emit({"model": model, "dtype": p.dtype, "ok": out["ok"], "rows": out["rows"]})
        failed += [] if out["ok"] else [model]
    if failed:
        raise RuntimeError(f"compile-check failed for {', '.join(failed)}")


PART_FNS = {"tests": gpu_tests, "train": train_rates, "decode": decode_rates, "sdpa": sdpa_backends,
            "moe_dispatch": moe_dispatch_rates, "compile_check": compile_checks}


# -- the record ------------------------------------------------------------------------------------


def source_identity() -> dict[str, Any]:
    """Which llmlab ran: its path (the copy's, not one installed elsewhere), the commit when the
    copy has git, and a hash of its sources either way."""
    src = Path(llmlab.__file__).resolve().parent
    digest = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = proc.stdout.strip() if proc.returncode == 0 else os.environ.get("LLMLAB_COMMIT")
    return {"path": str(src), "commit": commit, "src_sha256": digest.hexdigest()}


def gpu_identity(dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return {"name": "dry-run-cpu", "slug": "dry-run-cpu", "capability": None}
    name = torch.cuda.get_device_name()
    return {"name": name, "slug": gpu_slug(name), "capability": "sm%d%d" % torch.cuda.get_device_capability()}


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def new_record(p: Plan, dry_run: bool, budget_s: float) -> dict[str, Any]:
    return {"bench": "gpu_check", "dry_run": dry_run, "budget_s": budget_s,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "llmlab": source_identity(), "gpu": gpu_identity(dry_run), "env": machine(p.device),
            "parts": {name: {"status": "pending", "rows": []} for name in PARTS}}


def previous_record(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """For --parts: the record at `out` when the same code wrote it (its other parts are kept);
    else the fresh one (parts measured by other code never sit in one record)."""
    if not out.exists():
        return fresh
    old = read_json(out)
    if old.get("llmlab", {}).get("src_sha256") != fresh["llmlab"]["src_sha256"] or old.get("dry_run") != fresh["dry_run"]:
        print(f"gpu_check: {out} was written by other code: starting a new record", flush=True)
        return fresh
    return old


def run_parts(record: dict[str, Any], fns: dict[str, Callable[[Emit], None]], budget_s: float,
              out: Path) -> dict[str, Any]:
    """Run each part unless `budget_s` is spent before it starts; its rows and status written to
    `out` as they come. A part that raises is `failed`, with the error; the next part still runs."""
    t_start = time.perf_counter()
    for name, fn in fns.items():
        part = record["parts"][name] = {"status": "running", "rows": []}
        elapsed = time.perf_counter() - t_start
        if elapsed >= budget_s:
            part.update(status="skipped", reason=f"budget of {budget_s:g} s spent ({elapsed:.0f} s)")
            write_json(out, record)
            continue

        def emit(row: dict[str, Any], part: dict[str, Any] = part) -> None:
            part["rows"].append(row)
            write_json(out, record)

        write_json(out, record)
        t0 = time.perf_counter()
        try:
            fn(emit)
            part["status"] = "ok"
        except Exception as e:  # one part's failure must not lose the others' results
            part.update(status="failed", error=f"{type(e).__name__}: {e}",
                        traceback=traceback.format_exc(limit=8)[-3000:])
        part["seconds"] = time.perf_counter() - t0
        print(f"gpu_check: {name} {part['status']} in {part['seconds']:.0f} s", flush=True)
        record["targets"] = targets(record)
        record["ok"] = all(p["status"] == "ok" for p in record["parts"].values())
        write_json(out, record)
    return record


# -- targets ---------------------------------------------------------------------------------------


def _rows(record: dict[str, Any], part: str) -> list[dict[str, Any]]:
    return record["parts"].get(part, {}).get("rows", [])


def targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each benchmark target of the GPU issues against what this record measured (met: None when the
    part did not measure it)."""
    train = {r["variant"]: r for r in _rows(record, "train")}
    decode = {(r["variant"], r["batch_size"]): r for r in _rows(record, "decode")}
    moe = {r["arm"]: r for r in _rows(record, "moe_dispatch")}
    sdpa = {r["shape"]: r for r in _rows(record, "sdpa")}
    base_mfu = train.get("base", {}).get("mfu")
    speedup = decode.get(("base", 1), {}).get("speedup")
    vs_hf = decode.get(("base", 1), {}).get("vs_hf_static")
    torch_ms = moe.get("grouped, torch._grouped_mm", {}).get("step_ms")
    triton_ms = moe.get("grouped, Triton (the sm80 path)", {}).get("step_ms")
    ratio = triton_ms / torch_ms if triton_ms and torch_ms else None
    gqa_decode = sdpa.get("decode GQA (masked)")
    return [
        _target("dense 125M bf16 compiled MFU (seq 1024)", base_mfu, ">=", 0.45, "goal 0.50"),
        _target("CUDA-graph decode / eager, base, batch 1", speedup, ">=", 3.0),
        _target("CUDA-graph decode / HF static-cache compiled generate, base, batch 1", vs_hf, ">=", 1.5),
        _target("sm80 MoE path (Triton) step time / torch._grouped_mm", ratio, "<=", 1.3),
        {"target": "masked GQA decode on a fused SDPA kernel",
         "measured": gqa_decode and gqa_decode["kernels"], "met": gqa_decode and gqa_decode["fused"]},
    ]


def _target(name: str, value: float | None, op: str, bound: float, note: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"target": f"{name} {op} {bound:g}" + (f" ({note})" if note else ""), "measured": value, "met": met}


# -- CLI -------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, not the GPU")
    ap.add_argument("--out-dir", default="benchmarks/results", help="writes gpu-<gpu name>.json here (created)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="no part starts after this many seconds (default 480: under a 10-minute command)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to run, in this order ({','.join(PARTS)}); the others of "
                         "an existing record of the same code are kept")
    args = ap.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in args.parts if s not in PARTS]
    if unknown:
        raise ConfigError(f"unknown --parts {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    return args


def print_summary(record: dict[str, Any], out: Path) -> None:
    print_table(_rows(record, "train"), [("variant", "train", ""), ("tokens_per_s", "tokens/s", ",.0f"),
                                         ("mfu", "MFU", ".1%"), ("peak_memory_gb", "peak GB", ".1f")])
    print_table(_rows(record, "decode"), [("variant", "decode", ""), ("batch_size", "batch", "d"),
                                          ("eager_tokens_per_s", "eager tok/s", ",.0f"),
                                          ("compiled_tokens_per_s", "graphs tok/s", ",.0f"), ("speedup", "x", ".2f"),
                                          ("hf_static_tokens_per_s", "HF static tok/s", ",.0f"),
                                          ("vs_hf_static", "x HF", ".2f")])
    print_table(_rows(record, "sdpa"), [("shape", "attention", ""), ("heads", "heads", ""), ("kernels", "SDPA kernel", "")])
    print_table(_rows(record, "moe_dispatch"), [("arm", "MoE dispatch", ""), ("tokens_per_s", "tokens/s", ",.0f"),
                                                ("step_ms", "step ms", ".1f")])
    print_table(record.get("targets", []), [("target", "target", ""), ("measured", "measured", ""), ("met", "met", "")])
    for row in _rows(record, "decode"):
        if row.get("hf_static_error"):  # kept in the row; said here too, so a missing peer row is never silent
            print(f"  decode {row['variant']} batch {row['batch_size']}: no HF row: {row['hf_static_error']}")
    for name, part in record["parts"].items():
        print(f"  {name}: {part['status']}" + (f" ({part['error']})" if part.get("error") else ""))
    print(f"gpu_check: {'OK' if record.get('ok') else 'NOT OK'} -> {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    p = plan(args.dry_run)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = gpu_identity(args.dry_run)
    out = (out_dir / f"gpu-{gpu['slug']}.json").resolve()
    fresh = new_record(p, args.dry_run, args.budget_s)
    record = fresh if args.parts == list(PARTS) else previous_record(out, fresh)
    fns = {name: functools.partial(PART_FNS[name], p) for name in args.parts}
    if "tests" in fns:
        fns["tests"] = functools.partial(gpu_tests, p, out=out)
    os.chdir(REPO)  # configs/ and tests/ are read from the tree this llmlab came from
    record = run_parts(record, fns, args.budget_s, out)
    print_summary(record, out)
    return 0 if record.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
