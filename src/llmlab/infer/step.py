"""One step of generation, apart from the loop that runs it (generate.py) and from its compiled
form (compiled.py): prefill the prompt into the KV cache, decode one token at position
`input_pos`, sample, and the checks on what a caller asks for. Both generate.py and compiled.py
import it; it imports neither.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

from llmlab.config import COMPILE_MODES
from llmlab.errors import ConfigError
from llmlab.model import GPT

DecodeFn = Callable[[GPT, torch.Tensor, torch.Tensor], torch.Tensor]


def check_sampling(temperature: float, top_k: int | None) -> None:
    """Reject sampling arguments that would silently mean something else."""
    if not math.isfinite(temperature) or temperature < 0.0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 (or None: the whole vocabulary), got {top_k!r}")


def parse_compile_mode(compile: bool | str) -> str | None:
    """compile=False -> None (eager), True -> "default", or one of COMPILE_MODES."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ConfigError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    return compile


def check_threads(decode_threads: int | None) -> None:
    if decode_threads is not None and (not isinstance(decode_threads, int) or isinstance(decode_threads, bool)
                                       or decode_threads < 1):
        raise ConfigError(f"decode_threads must be an integer >= 1 (or None: the caller's count, or for a "
                          f"compiled CPU step the faster of it and 1), got {decode_threads!r}")


@contextlib.contextmanager
def decode_context() -> Iterator[None]:
    """Gradients off and inference mode off, whatever the caller's context (`torch.no_grad`,
    `torch.inference_mode`, neither): `generate` and the compiled step's warm-up run in it.

    Why one fixed context: dynamo guards a compiled graph on the grad mode and on the dispatch keys
    of its inputs, and inside `inference_mode` every tensor -- ordinary ones too -- shows other keys.
    A step compiled in one context and called in another would be recompiled silently, inside the
    timed loop and without the frozen weights `compiled_decode_step` patches in (issue 20 measured
    311 against 1,224-1,522 tok/s). Why inference mode *off* rather than on: what generation keeps
    and returns stays ordinary tensors -- a compiled step's KV caches live across calls and are
    written in place, which inference tensors refuse outside inference mode, and the returned ids
    can feed autograd. A caller's inference tensors (a prompt) are only read, which is allowed.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


def decode_step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One cached step: token (B, 1) at position input_pos (1,) -> logits (B, V). Compile this."""
    return model(token, input_pos=input_pos, logits_to_keep=1).logits[:, -1]


def prefill(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Write the prompt (B, T) into the cache; return the last position's logits (B, V). The prompt
    starts at position 0, so it attends over its own T slots only (kv_len), not the whole cache."""
    T = idx.shape[1]
    input_pos = torch.arange(T, device=idx.device)
    return model(idx, input_pos=input_pos, logits_to_keep=1, kv_len=T).logits[:, -1]


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B, 1). temperature 0 = greedy (argmax)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
