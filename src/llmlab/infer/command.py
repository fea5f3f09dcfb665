"""`llmlab generate`: a prompt in, generated ids, text and timings out (the model from infer/load.py)."""

from __future__ import annotations

from typing import Any

import torch

from llmlab.errors import ConfigError
from llmlab.infer.generate import generate_timed
from llmlab.infer.load import load_run_or_config
from llmlab.infer.step import parse_compile_mode


def parse_prompt_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ConfigError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise ConfigError("--prompt-ids is empty")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"--prompt-ids: id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


def generate_from_source(source: str, *, prompt: str | None, prompt_ids: str | None, max_new_tokens: int,
                         use_kv_cache: bool, temperature: float, top_k: int | None, seed: int,
                         batch_size: int = 1, device: str = "cpu", dtype: str = "auto", compile: bool | str = False,
                         decode_threads: int | None = None, verbose: bool = False,
                         overrides: list[str] = ()) -> dict[str, Any]:
    model, tokenizer = load_run_or_config(source, list(overrides), device, seed, dtype)
    vocab = model.config.vocab_size
    if prompt is not None:
        if tokenizer is None:
            raise ConfigError("--prompt needs a tokenizer: pass a run directory, or use --prompt-ids with a config")
        ids = tokenizer.encode(prompt)
    else:
        ids = parse_prompt_ids(prompt_ids or "", vocab)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    idx = torch.tensor([ids] * batch_size, device=device)
    # compile=True compiles the decode step before the clock starts: compile_s is reported apart.
    out, times = generate_timed(model, idx, max_new_tokens, use_kv_cache=use_kv_cache, temperature=temperature,
                                top_k=top_k, seed=seed, compile=compile, decode_threads=decode_threads,
                                verbose=verbose)
    seconds = times.prefill_s + times.decode_s
    return {
        "ids": out.tolist(),
        "new_ids": out[:, len(ids):].tolist(),
        "text": [tokenizer.decode(row) for row in out.tolist()] if tokenizer is not None else None,
        "new_tokens": max_new_tokens * batch_size,
        "seconds": seconds,
        "tokens_per_s": max_new_tokens * batch_size / seconds if seconds > 0 else float("inf"),
        "prefill_s": times.prefill_s,
        "decode_s": times.decode_s,
        "decode_tokens_per_s": times.decode_tokens_per_s if times.decode_tokens else None,
        "compile_s": times.compile_s,
        "decode_threads": times.decode_threads,
        "thread_trial_ms": times.thread_trial_ms,
        "kv_cache": use_kv_cache,
        "compiled": parse_compile_mode(compile) is not None,
        "compile_mode": parse_compile_mode(compile),
    }
