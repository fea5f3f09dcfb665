"""The decode step through `torch.compile`, built once per (model, batch, cache length) and reused.

The static KV cache gives the step the same shapes at every position (`input_pos` is a tensor), so
one compilation serves the whole generation (`fullgraph=True, dynamic=False`: a graph break or a
recompile is a bug, not a slowdown). On CUDA the step is replayed as a CUDA graph
(`mode="reduce-overhead"`): a decode step is a few hundred small kernels, and launching them one by
one from Python costs more than running them at small batch. On CPU, inductor's fused C++ kernels
remove most of eager PyTorch's per-op dispatch, which is what bounds a small model's decode there.

Compilation happens in an untimed warm-up call, so `generate_timed` reports it apart (compile_s).
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import torch
import torch._dynamo

from llmlab.infer.generate import DecodeFn, decode_step
from llmlab.model import GPT

# model -> {(batch, cache length, device, dtype): compiled step}. Weak keys: a dropped model frees
# its steps. Device and dtype are in the key so that a model moved or cast after a first compile is
# compiled (and timed) again, not recompiled silently inside the timed decode loop.
_STEPS: "weakref.WeakKeyDictionary[GPT, dict[tuple, DecodeFn]]" = weakref.WeakKeyDictionary()

# Dynamo keeps every compiled shape of `decode_step` in one code cache, 8 entries by default; a
# campaign sweeping batch sizes and context lengths over several models needs more, and past the
# limit dynamo would silently run eager.
RECOMPILE_LIMIT = 256


def compile_options(device: torch.device) -> dict[str, Any]:
    """torch.compile keyword arguments for the decode step on this device."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}  # CUDA graphs (cudagraph trees)
    return {}


def compiled_decode_step(model: GPT, batch_size: int, cache_len: int, warm_pos: int
                         ) -> tuple[DecodeFn, float | None]:
    """(compiled step, seconds spent compiling it now or None when it was cached).

    Needs the model's KV cache set up for (batch_size, cache_len). The warm-up writes one dummy
    key/value at warm_pos, the first position decode will write anyway, so nothing it leaves is
    ever read.
    """
    steps = _STEPS.setdefault(model, {})
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    key = (batch_size, cache_len, str(device), dtype)
    if key in steps:
        return steps[key], None
    step = torch.compile(decode_step, fullgraph=True, dynamic=False, **compile_options(device))
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    pos = torch.tensor([warm_pos], device=device)
    t0 = time.perf_counter()
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for _ in range(3 if device.type == "cuda" else 1):  # cudagraph trees: warm up, record, replay
            step(model, token, pos)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    steps[key] = step
    return step, time.perf_counter() - t0
