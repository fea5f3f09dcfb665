"""Decode speed of one model with and without the KV cache (and compiled), measured side by side.

The one measuring function that `llmlab bench infer`, `llmlab generate --json` and the campaign
share, so that their figures mean the same thing: prefill (time to first token) apart from decode
(tokens/s after the first token), compilation apart from both, and the cases interleaved
round-robin so that a shared machine's noise falls on all of them alike.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any, Callable, Iterable

import torch

from llmlab.errors import ConfigError
from llmlab.infer.generate import GenerationTimes, generate_timed
from llmlab.infer.step import parse_compile_mode
from llmlab.model import GPT

CASES = ("kv_cache", "no_cache", "compiled")
"""kv_cache: eager with the static KV cache; no_cache: the whole prefix recomputed every token
(the head on the last position only: equal work); compiled: the cached decode step compiled."""


def case_kwargs(case: str, compile_mode: str = "default") -> dict[str, Any]:
    """`generate` keyword arguments of a case name (compile_mode: the compiled case's mode)."""
    if case not in CASES:
        raise ConfigError(f"unknown decode case {case!r}; choose from {', '.join(CASES)}")
    return {"use_kv_cache": case != "no_cache", "compile": compile_mode if case == "compiled" else False}


def random_prompt(vocab_size: int, batch_size: int, length: int, device: torch.device | str, seed: int
                  ) -> torch.Tensor:
    """(batch_size, length) token ids, uniform over the vocabulary, reproducible from seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length), generator=gen).to(device)


def measure_decode(model: GPT, *, batch_size: int, context: int, new_tokens: int,
                   cases: Iterable[str] = CASES, repeats: int = 3, seed: int = 0,
                   prompt: torch.Tensor | None = None, compile_mode: str = "default"
                   ) -> dict[str, dict[str, Any]]:
    """Greedy generation timed per case; returns {case: figures}.

    Contract:
    - `context` is the sequence length reached at the end: a random prompt of
      `context - new_tokens` tokens (seeded by `seed`; or `prompt`, of that shape) is extended by
      `new_tokens` tokens, so the KV cache holds `context` positions and the last token is decoded
      at position context - 1. Needs 1 <= new_tokens < context <= model.config.max_seq_len.
    - Runs on the model's device and dtype, in eval mode, under `torch.no_grad`.
    - `compiled` runs `generate(compile=compile_mode)` ("default" or "max-autotune").
    - Each case gets one untimed warm-up call (it compiles the `compiled` case: compile_s), then
      `repeats` timed calls, interleaved round-robin across cases; figures are medians.
    - Figures per case: prefill_s (prompt forward + first token = time to first token), decode_s
      (the other new_tokens - 1 tokens), decode_tokens_per_s = batch_size x (new_tokens - 1) /
      decode_s, tokens_per_s = batch_size x new_tokens / (prefill_s + decode_s) end to end,
      compile_s (compiled only, seconds of the warm-up call), and same_tokens_as_kv_cache (when
      kv_cache is measured too): whether the case's greedy tokens equal the cached path's (always
      in fp32; bf16 rounding may legitimately flip a near-tie).
    - The result is plain JSON-serialisable data.
    """
    cases = tuple(cases)
    for case in cases:
        case_kwargs(case)
    parse_compile_mode(compile_mode)
    if not 1 <= new_tokens < context <= model.config.max_seq_len:
        raise ConfigError(f"need 1 <= new_tokens ({new_tokens}) < context ({context}) <= "
                          f"model.max_seq_len ({model.config.max_seq_len})")
    if batch_size < 1 or repeats < 1:
        raise ConfigError(f"batch_size ({batch_size}) and repeats ({repeats}) must be >= 1")
    device = model.lm_head.weight.device
    if prompt is None:
        prompt = random_prompt(model.config.vocab_size, batch_size, context - new_tokens, device, seed)
    elif tuple(prompt.shape) != (batch_size, context - new_tokens):
        raise ConfigError(f"prompt shape {tuple(prompt.shape)} != (batch_size, context - new_tokens)")
    model.eval()
    runs = {case: functools.partial(generate_timed, model, prompt, new_tokens, **case_kwargs(case, compile_mode))
            for case in cases}
    out, ids = time_interleaved(runs, repeats)
    if "kv_cache" in cases:
        for case in cases:
            out[case]["same_tokens_as_kv_cache"] = torch.equal(ids[case], ids["kv_cache"])
    return out


Run = Callable[[], tuple[torch.Tensor, GenerationTimes]]
"""One generation call: (ids, its GenerationTimes)."""


def time_interleaved(runs: dict[str, Run], repeats: int
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """One untimed warm-up call per case (compilation happens there), then `repeats` calls per case
    interleaved round-robin (a, b, c, a, b, c, ...). Returns ({case: summarize(...)}, {case: the
    ids of its last call}). Peers (e.g. Hugging Face in `bench infer`) join as further runs."""
    warm = {case: run() for case, run in runs.items()}
    ids = {case: out for case, (out, _) in warm.items()}
    timed: dict[str, list[GenerationTimes]] = {case: [] for case in runs}
    for _ in range(repeats):
        for case, run in runs.items():
            ids[case], times = run()
            timed[case].append(times)
    return {case: summarize(timed[case], warm[case][1], ids[case].shape[0]) for case in runs}, ids


def summarize(runs: list[GenerationTimes], warmup: GenerationTimes, batch: int) -> dict[str, Any]:
    """Medians of several GenerationTimes of one case."""
    prefill = statistics.median(t.prefill_s for t in runs)
    decode = statistics.median(t.decode_s for t in runs)
    tokens = runs[0].decode_tokens
    out: dict[str, Any] = {
        "prefill_s": prefill,
        "decode_s": decode,
        "decode_tokens_per_s": tokens / decode if decode > 0 else float("nan"),
        "tokens_per_s": (tokens + batch) / (prefill + decode),
        "repeats": len(runs),
    }
    if warmup.compile_s is not None:
        out["compile_s"] = warmup.compile_s
    if runs[0].decode_threads is not None:
        out["decode_threads"] = runs[0].decode_threads
    if warmup.thread_trial_ms is not None:
        out["thread_trial_ms"] = warmup.thread_trial_ms
    return out
