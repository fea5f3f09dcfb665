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

Compilation happens in an untimed warm-up call, so `generate_timed` reports it apart (compile_s).
"""

from __future__ import annotations

import time
import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch._inductor.config

from llmlab.infer.generate import DecodeFn, check_compile, decode_context, decode_step
from llmlab.model import GPT
from llmlab.model.kv_cache import KVCache
from llmlab.model.moe import check_compilable


@dataclass
class CompiledStep:
    step: DecodeFn
    caches: list[KVCache]
    """The KV caches the step was compiled (and, on CUDA, graph-recorded) with: reused by every call."""
    weights: tuple[tuple[int, int], ...] | None
    """(storage pointer, version counter) of each parameter when compiled, for a frozen step (its
    constants are copies); None when the graph reads the parameters themselves (CUDA)."""


# model -> {(batch, cache length, device, dtype, mode, threads): step}. Weak keys: a dropped model frees its
# steps' KV caches (not, on CPU, inductor's frozen copy of its weights: see above). Device and dtype are in the key so that a model moved or cast after a first compile is
# compiled (and timed) again, not recompiled silently inside the timed decode loop.
_STEPS: "weakref.WeakKeyDictionary[GPT, dict[tuple, CompiledStep]]" = weakref.WeakKeyDictionary()


def settings(device: torch.device, mode: str = "default") -> tuple[dict[str, Any], dict[str, Any]]:
    """(torch.compile keyword arguments, inductor config patched while compiling) for this device.

    Freezing is an inductor config read before `torch.compile(options=...)` is applied, so it is
    patched around the compiling call instead of passed as an option.
    """
    if device.type == "cuda":
        return {"mode": "reduce-overhead" if mode == "default" else "max-autotune"}, {}
    kwargs = {"mode": "max-autotune-no-cudagraphs"} if mode == "max-autotune" else {}
    return kwargs, {"freezing": True}


def weights_stamp(model: GPT) -> tuple[tuple[int, int], ...]:
    """Each parameter's (storage pointer, version counter): any in-place write or swap changes it."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def compiled_decode_step(model: GPT, batch_size: int, cache_len: int, warm_pos: int,
                         mode: bool | str = "default") -> tuple[DecodeFn, float | None]:
    """(compiled step, seconds spent compiling it now or None when it was reused).

    Installs the step's own KV caches on the model (zeroed), for (batch_size, cache_len). The
    warm-up writes one dummy key/value at warm_pos, the first position decode will write anyway, so
    nothing it leaves is ever read.
    """
    mode = check_compile(mode) or "default"
    steps = _STEPS.setdefault(model, {})
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    # The thread count is in dynamo's global-state guard: a step compiled at one count and called at
    # another would recompile silently (unfrozen); keyed on it, it is compiled again here, reported.
    key = (batch_size, cache_len, str(device), dtype, mode, torch.get_num_threads())
    found = steps.get(key)
    if found is not None and found.weights in (None, weights_stamp(model)):
        model.install_kv_caches(found.caches)
        return found.step, None
    check_compilable(model.config.moe, compile=True, dtype=dtype, use="decode")  # one line, before any work
    for old in [k for k in steps if k == key or k[:2] != key[:2]]:  # stale, or another shape: drop
        del steps[old]  # (both modes of one shape stay: `bench infer` interleaves them)
    model.setup_kv_cache(batch_size, cache_len)
    kwargs, inductor = settings(device, mode)
    fresh = types.FunctionType(decode_step.__code__.replace(), decode_step.__globals__, decode_step.__name__)
    step = torch.compile(fresh, fullgraph=True, dynamic=False, **kwargs)
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    pos = torch.tensor([warm_pos], device=device)
    t0 = time.perf_counter()
    with decode_context(), torch._inductor.config.patch(inductor):
        for _ in range(3 if device.type == "cuda" else 1):  # cudagraph trees: warm up, record, replay
            step(model, token, pos)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    caches = [block.attn.kv_cache for block in model.blocks]
    steps[key] = CompiledStep(step, caches, weights_stamp(model) if inductor.get("freezing") else None)
    model.install_kv_caches(caches)  # zeroed: the warm-up's dummy entry is gone
    return step, seconds


def release(model: GPT) -> None:
    """Forget the model's compiled steps (and their KV caches): the next compiled call compiles
    again. Needed after writing weights through `.data`, which the stamp cannot see."""
    _STEPS.pop(model, None)
