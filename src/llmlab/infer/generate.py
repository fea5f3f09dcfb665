"""Autoregressive generation: prefill the prompt, then decode one token at a time.

With the KV cache, prefill writes the prompt's keys/values once and each decode step feeds only
the newest token (input_pos = its position): O(T) work per token instead of O(T^2), and the step has
the same shapes at every position, so `torch.compile` builds it once (`compile=True`, see
`llmlab.infer.compiled`). Without the cache, every step re-runs the model on the whole sequence (the
baseline the cache is measured against) -- but, like the cached path, computes the output head for
the last position only: equal work but for what the cache saves.

Prefill (the prompt's forward and the first token: time to first token) and decode (every later
token) are timed apart by `generate_timed`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from llmlab.errors import ConfigError
from llmlab.infer.step import (DecodeFn, check_sampling, check_threads, decode_context, decode_step,
                               parse_compile_mode, prefill, sample)
from llmlab.model import GPT
from llmlab.timing import clock, intra_op_threads  # at timing boundaries only, never per token


def check_lengths(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> None:
    limit = model.config.max_seq_len
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ConfigError(f"prompt must be a non-empty (batch, tokens) tensor, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.shape[1] + max_new_tokens > limit:
        raise ConfigError(
            f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context (model.max_seq_len = {limit}); shorten the prompt or ask for fewer tokens"
        )


@dataclass
class GenerationTimes:
    """Wall-clock seconds of one `generate_timed` call, device-synchronised at each boundary."""

    prefill_s: float
    """The prompt's forward and the first new token: time to first token."""
    decode_s: float
    """The remaining max_new_tokens - 1 tokens of each sequence."""
    decode_tokens: int
    """Tokens produced in decode_s: (max_new_tokens - 1) x batch."""
    compile_s: float | None = None
    """Compiling the decode step for this (batch, cache length), when this call did it (else None)."""
    decode_threads: int | None = None
    """Intra-op CPU threads the decode loop ran at (a compiled step's may differ from the caller's:
    see `llmlab.infer.compiled`)."""
    thread_trial_ms: dict[int, float] | None = None
    """When this call chose the compiled step's thread count by timing: ms per step at each count."""

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("nan")


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, use_kv_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
             decode_fn: DecodeFn | None = None, compile: bool | str = False, decode_threads: int | None = None,
             verbose: bool = False) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens; returns (B, T + max_new_tokens).

    seed fixes sampling (a private generator, so global RNG state is untouched). compile=True (or a
    mode of COMPILE_MODES) runs the decode step through `torch.compile` (compiled once per model,
    batch, cache length, mode and thread count, and reused while the weights are unchanged; see
    `llmlab.infer.compiled`); decode_fn lets a caller pass its own step instead. decode_threads:
    intra-op threads of the decode loop (None: the caller's count, or for a compiled step on a CPU
    the faster of it and 1, timed when compiling); the caller's count is put back after. verbose:
    show inductor's autotuning tables (max-autotune), not just one summary line.
    Runs with gradients and inference mode off whatever the caller's context (`decode_context`).
    The cache is set up for this call and cleared after.
    """
    return generate_timed(model, idx, max_new_tokens, use_kv_cache=use_kv_cache, temperature=temperature,
                          top_k=top_k, seed=seed, decode_fn=decode_fn, compile=compile,
                          decode_threads=decode_threads, verbose=verbose)[0]


@decode_context()
def generate_timed(model: GPT, idx: torch.Tensor, max_new_tokens: int, use_kv_cache: bool = True,
                   temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
                   decode_fn: DecodeFn | None = None, compile: bool | str = False,
                   decode_threads: int | None = None, verbose: bool = False
                   ) -> tuple[torch.Tensor, GenerationTimes]:
    """`generate`, returning also its prefill / decode / compile seconds (see GenerationTimes)."""
    check_lengths(model, idx, max_new_tokens)
    check_sampling(temperature, top_k)
    check_threads(decode_threads)
    mode = parse_compile_mode(compile)
    if mode and (decode_fn is not None or not use_kv_cache):
        raise ConfigError("compile=True compiles the cached decode step: it needs use_kv_cache=True and no decode_fn")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    pick = lambda logits: sample(logits, temperature, top_k, generator)  # noqa: E731
    if not use_kv_cache:
        with intra_op_threads(decode_threads):
            return _generate_uncached(model, idx, max_new_tokens, pick)
    B, T = idx.shape
    try:
        compile_s = trial = None
        if mode:
            # Imported here: compiled.py loads torch.compile's machinery (dynamo, inductor's config),
            # ~2 s of start-up that eager generation -- and every `import llmlab.infer` -- would pay.
            from llmlab.infer.compiled import compiled_decode_step

            # Compiling (reported apart) installs the step's own caches, kept across calls.
            compiled, compile_s = compiled_decode_step(model, B, T + max_new_tokens, warm_pos=T, mode=mode,
                                                       decode_threads=decode_threads, verbose=verbose)
            decode_fn, decode_threads, trial = compiled.step, compiled.threads, compiled.thread_trial_ms
            t0 = clock(idx.device)
        else:
            t0 = clock(idx.device)  # allocating the cache is part of prefill, as in HF's generate()
            model.setup_kv_cache(B, T + max_new_tokens)
        ids, times = _generate_cached(model, idx, max_new_tokens, pick, decode_fn or decode_step, compile_s, t0,
                                      decode_threads or torch.get_num_threads())
        return ids, replace(times, thread_trial_ms=trial)
    finally:
        model.clear_kv_cache()


def _generate_cached(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                     pick: Callable[[torch.Tensor], torch.Tensor], decode_fn: DecodeFn,
                     compile_s: float | None, t0: float, threads: int) -> tuple[torch.Tensor, GenerationTimes]:
    """t0: when prefill's clock started (before the cache was set up). Prefill runs at the caller's
    thread count, the decode loop at `threads`."""
    T, device = idx.shape[1], idx.device
    tokens = [idx]
    if max_new_tokens > 0:
        tokens.append(pick(prefill(model, idx)))
    t1 = clock(device)
    # One position tensor, advanced in place: no per-step allocation, and the same input to a
    # compiled step at every position.
    input_pos = torch.tensor([T], device=device)
    with intra_op_threads(threads):
        for _ in range(max_new_tokens - 1):
            tokens.append(pick(decode_fn(model, tokens[-1], input_pos)))
            input_pos += 1
        t2 = clock(device)
    times = GenerationTimes(t1 - t0, t2 - t1, max(max_new_tokens - 1, 0) * idx.shape[0], compile_s, threads)
    return torch.cat(tokens, dim=1), times


def _generate_uncached(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                       pick: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, GenerationTimes]:
    t0 = t1 = clock(idx.device)
    for i in range(max_new_tokens):
        logits = model(idx, logits_to_keep=1).logits[:, -1]  # the whole prefix, the head on one position
        idx = torch.cat([idx, pick(logits)], dim=1)
        if i == 0:
            t1 = clock(idx.device)  # after the first token: prefill
    t2 = clock(idx.device)
    return idx, GenerationTimes(t1 - t0, t2 - t1, max(max_new_tokens - 1, 0) * idx.shape[0],
                                decode_threads=torch.get_num_threads())
