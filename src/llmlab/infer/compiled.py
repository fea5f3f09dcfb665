"""The decode step through `torch.compile`, built once per (model, batch, cache length) and reused.

The static KV cache gives the step the same shapes at every position (`input_pos` is a tensor), so
one compilation serves the whole generation (`fullgraph=True, dynamic=False`: a graph break or a
recompile is a bug, not a slowdown).

What the compiler is asked for depends on the device (`settings`):
- CUDA: the step is replayed as a CUDA graph (`mode="reduce-overhead"`; "max-autotune" adds Triton
  GEMM autotuning): a decode step is a few hundred small kernels, and launching them one by one
  from Python costs more than running them at small batch. CUDA graphs replay fixed addresses, so
  each compiled step owns its KV cache and every `generate` call reuses it (a fresh cache per call
  would re-record the graph).
- CPU: inductor's fused C++ kernels remove eager PyTorch's per-op dispatch, and weight *freezing*
  folds the weights into the graph as constants, prepacked for the matmul library: at batch 1 a
  decode step is a chain of matrix-vector products, and how they are done is most of its time.
  "max-autotune" also times inductor's C++ GEMM templates against the library kernels for each
  matmul shape and keeps the fastest, for a longer first compile (`llmlab bench infer` measures
  both; the README gives the figures).

Frozen weights are copies: a step compiled before the weights change would silently decode with the
old ones. A frozen step therefore records the parameters' storage and version counters when it is
compiled, and a later call that finds them changed (an optimizer step, `load_state_dict`, an
in-place op on a parameter) compiles again. A write through `.data` bumps neither and is not seen:
compile again after one by hand (`llmlab.infer.compiled.release(model)`). Each step compiles its own
copy of `decode_step`'s code object, so that dynamo's code cache (kept per code object) can never
hand one step's frozen graph to another. Inductor keeps each frozen graph's weights for the life of
the process (its generated module holds them), so on CPU every compilation costs a weights-sized
copy that is never freed; a model keeps only the steps of its latest (batch, cache length), so a
sweep does not also pile up KV caches.

The step gives the same graph whatever the caller's grad context: its warm-up and every call run in
`decode_context` (gradients off, inference mode off; why there). Dynamo also guards on the intra-op
thread count, so the count is part of a step's key: a step is never recompiled silently.

Threads (CPU). A batch-1 decode step of a small model is a few dozen kernels of microseconds each;
splitting each over several threads can cost more at the OpenMP barriers than it saves (issue 20: at
d=256, 519 tok/s at 1 thread against 419 at 2), while a large model's matrix-vector products do
gain. So when the caller runs at more than one thread, the step is compiled at the caller's count and
at 1, each timed over a few interleaved rounds of steps, and the faster one is kept; only the decode
loop runs at its count (`llmlab.timing.intra_op_threads`, the caller's count put back after).
`generate(decode_threads=N)` fixes the count instead. The choice and its timings are recorded
(`CompiledStep.threads`, `thread_trial_ms`; `GenerationTimes.decode_threads`).

Autotuning is quiet: inductor's per-matmul tables ("AUTOTUNE packed_linear(...)", choice stats)
are switched off around the compiling call through its own config, and one line on stderr says how
many kernels were tuned and how long that took; `verbose=True` shows the tables.

Compilation (and the thread trial) happens in an untimed warm-up, so `generate_timed` reports it
apart (compile_s).
"""

from __future__ import annotations

import statistics
import sys
import types
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch._inductor.config
from torch._dynamo.utils import compilation_time_metrics, counters

from llmlab.infer.step import DecodeFn, check_threads, decode_context, decode_step, parse_compile_mode
from llmlab.model import GPT
from llmlab.model.kv_cache import KVCache
from llmlab.model.moe_advice import check_compilable
from llmlab.timing import clock, intra_op_threads, sync, time_round_robin

TRIAL_ROUNDS, TRIAL_STEPS = 5, 8
"""The thread trial: rounds (interleaved across thread counts; the median counts) of steps each."""


@dataclass
class CompiledStep:
    step: DecodeFn
    caches: list[KVCache]
    """The KV caches the step was compiled (and, on CUDA, graph-recorded) with: reused by every call."""
    weights: tuple[tuple[int, int], ...] | None
    """(storage pointer, version counter) of each parameter when compiled, for a frozen step (its
    constants are copies); None when the graph reads the parameters themselves (CUDA)."""
    threads: int
    """Intra-op threads the step was compiled at; the decode loop runs at this count."""
    thread_trial_ms: dict[int, float] | None = None
    """Median ms per step at each thread count tried, when this call chose the count by timing."""


@dataclass
class ModelSteps:
    """One model's compiled steps, keyed (batch, cache length, device, dtype, mode, threads), and
    which thread count each (..., mode, caller's threads, decode_threads) decodes at. Device and dtype
    are in the key so that a model moved or cast after a first compile is compiled (and timed)
    again, not recompiled silently inside the timed decode loop."""

    steps: dict[tuple, CompiledStep] = field(default_factory=dict)
    chosen: dict[tuple, int] = field(default_factory=dict)


# Weak keys: a dropped model frees its steps' KV caches (not, on CPU, inductor's frozen copy of its
# weights: see above).
_STEPS: "weakref.WeakKeyDictionary[GPT, ModelSteps]" = weakref.WeakKeyDictionary()


def settings(device: torch.device, mode: str = "default") -> tuple[dict[str, Any], dict[str, Any]]:
    """(torch.compile keyword arguments, inductor config patched while compiling) for this device.

    Freezing is an inductor config read before `torch.compile(options=...)` is applied, so it is
    patched around the compiling call instead of passed as an option.
    """
    if device.type == "cuda":
        return {"mode": "reduce-overhead" if mode == "default" else "max-autotune"}, {}
    kwargs = {"mode": "max-autotune-no-cudagraphs"} if mode == "max-autotune" else {}
    return kwargs, {"freezing": True}


QUIET_AUTOTUNE = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
"""Inductor's own switches for the tables it writes to stderr while autotuning (torch 2.13,
`select_algorithm.AlgorithmSelectorCache.log_results` and `_log_autotune_choices_stats`)."""


def weights_stamp(model: GPT) -> tuple[tuple[int, int], ...]:
    """Each parameter's (storage pointer, version counter): any in-place write or swap changes it."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def thread_candidates(device: torch.device, decode_threads: int | None) -> list[int]:
    """Thread counts to compile at: the one asked for; else the caller's and, on a CPU run at
    several threads, 1 as well (see the module docstring)."""
    if decode_threads is not None:
        return [decode_threads]
    caller = torch.get_num_threads()
    return [caller, 1] if device.type == "cpu" and caller > 1 else [caller]


def compiled_decode_step(model: GPT, batch_size: int, cache_len: int, warm_pos: int,
                         mode: bool | str = "default", decode_threads: int | None = None,
                         verbose: bool = False) -> tuple[CompiledStep, float | None]:
    """(compiled step, seconds spent compiling it now -- thread trial included -- or None when it
    was reused). Run its step at `step.threads` threads (`intra_op_threads`).

    Installs the step's own KV caches on the model (zeroed), for (batch_size, cache_len). The
    warm-up writes one dummy key/value at warm_pos, the first position decode will write anyway, so
    nothing it leaves is ever read. decode_threads: compile at this count only (None: chosen by
    timing on a CPU, see the module docstring). verbose: show inductor's autotuning tables.
    """
    mode = parse_compile_mode(mode) or "default"
    check_threads(decode_threads)
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    base = (batch_size, cache_len, str(device), dtype, mode)
    ask = base + (torch.get_num_threads(), decode_threads)
    entry = forget_stale(model, base)
    found = entry.steps.get(base + (entry.chosen.get(ask),))
    if found is not None:
        model.install_kv_caches(found.caches)
        return replace(found, thread_trial_ms=None), None
    check_compilable(model.config.moe, compile=True, dtype=dtype, use="decode", device=device)  # before any work
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    pos = torch.tensor([warm_pos], device=device)
    t0 = clock(device)
    tuned = autotune_tally()
    candidates = thread_candidates(device, decode_threads)
    missing = [n for n in candidates if base + (n,) not in entry.steps]  # another call's step is reused
    for n in missing:
        entry.steps[base + (n,)] = compile_at(model, batch_size, cache_len, mode, n, token, pos, verbose)
    built = [entry.steps[base + (n,)] for n in candidates]
    best = built[0] if len(built) == 1 else fastest(model, built, token, pos)
    seconds = clock(device) - t0  # compile_at syncs after each warm-up
    if mode == "max-autotune" and missing:
        autotune_summary(autotune_tally(tuned), seconds, best.threads)
    entry.chosen[ask] = best.threads
    model.install_kv_caches(best.caches)  # zeroed: the warm-up's dummy entries are gone
    return best, seconds


def forget_stale(model: GPT, base: tuple) -> ModelSteps:
    """The model's ModelSteps without the steps of another (batch, cache length) -- a sweep must not
    pile up KV caches; both modes of one shape stay, `bench infer` interleaves them -- nor the
    frozen steps whose weights changed since they were compiled."""
    entry = _STEPS.setdefault(model, ModelSteps())
    stamp = weights_stamp(model)
    stale = [k for k, c in entry.steps.items() if k[:2] != base[:2] or c.weights not in (None, stamp)]
    if stale:
        for k in stale:
            del entry.steps[k]
        entry.chosen = {k: n for k, n in entry.chosen.items() if k[:5] + (n,) in entry.steps}
    return entry


def compile_at(model: GPT, batch_size: int, cache_len: int, mode: str, threads: int,
               token: torch.Tensor, pos: torch.Tensor, verbose: bool) -> CompiledStep:
    """One step compiled (and warmed up) at `threads` intra-op threads, with KV caches of its own."""
    device = token.device
    model.setup_kv_cache(batch_size, cache_len)
    kwargs, inductor = settings(device, mode)
    if not verbose:
        inductor = {**inductor, **QUIET_AUTOTUNE}
    fresh = types.FunctionType(decode_step.__code__.replace(), decode_step.__globals__, decode_step.__name__)
    step = torch.compile(fresh, fullgraph=True, dynamic=False, **kwargs)
    with (intra_op_threads(threads), decode_context(), torch._inductor.config.patch(inductor),
          warnings.catch_warnings()):
        if not verbose:  # inductor's autotuner calls the deprecated Tensor.storage() (torch 2.13)
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        for _ in range(3 if device.type == "cuda" else 1):  # cudagraph trees: warm up, record, replay
            step(model, token, pos)
        sync(device)
    stamp = weights_stamp(model) if inductor.get("freezing") else None
    return CompiledStep(step, [block.attn.kv_cache for block in model.blocks], stamp, threads)


def fastest(model: GPT, built: list[CompiledStep], token: torch.Tensor, pos: torch.Tensor) -> CompiledStep:
    """The step with the lowest median time per step, the candidates interleaved round-robin (a
    shared machine's noise falls on all alike); the others' KV caches are dropped."""

    def trial(c: CompiledStep):
        def run() -> None:
            with intra_op_threads(c.threads), decode_context():
                model.install_kv_caches(c.caches)
                for _ in range(TRIAL_STEPS):  # every step rewrites position warm_pos: nothing is read
                    c.step(model, token, pos)

        return run

    times, _ = time_round_robin({i: trial(c) for i, c in enumerate(built)}, token.device, repeats=TRIAL_ROUNDS)
    ms = {built[i].threads: statistics.median(t) / TRIAL_STEPS * 1e3 for i, t in times.items()}
    return replace(min(built, key=lambda c: ms[c.threads]), thread_trial_ms=ms)


def autotune_tally(since: tuple[int, float] = (0, 0.0)) -> tuple[int, float]:
    """(kernels autotuned, seconds spent autotuning) in this process, minus `since`: inductor
    counts each autotuned kernel and times each under "<name>_template_autotuning"."""
    kernels = counters["inductor"]["select_algorithm_autotune"]
    seconds = sum(sum(v) for k, v in compilation_time_metrics.items() if k.endswith("_template_autotuning"))
    return kernels - since[0], seconds - since[1]


def autotune_summary(tuned: tuple[int, float], compile_s: float, threads: int) -> None:
    """max-autotune's one line on stderr, in place of inductor's tables."""
    kernels, seconds = tuned
    what = (f"autotuned {kernels} matmul kernel{'s' * (kernels != 1)} in {seconds:.1f} s" if kernels
            else "no kernel autotuned (inductor's cache held the choices)")
    print(f"llmlab: max-autotune decode step: {what}; compiled in {compile_s:.1f} s, decodes at "
          f"{threads} thread{'s' * (threads != 1)} (verbose=True shows the tables)", file=sys.stderr)


def release(model: GPT) -> None:
    """Forget the model's compiled steps (and their KV caches): the next compiled call compiles
    again. Needed after writing weights through `.data`, which the stamp cannot see."""
    _STEPS.pop(model, None)
