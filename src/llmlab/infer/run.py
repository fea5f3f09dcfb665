"""`llmlab generate`: load weights (a run directory) or build random ones (a config), time generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmlab.config import load_model_config
from llmlab.device import resolve_dtype
from llmlab.errors import ConfigError
from llmlab.infer.generate import check_compile, generate_timed
from llmlab.model import GPT
from llmlab.runs import load_for_inference  # a run knows its tokenizer


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


def load_source(source: str, overrides: list[str], device: str, seed: int, dtype: str = "fp32"
                ) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer or None). A directory = a training run; a file = a config."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{source}: no such run directory or config file")
    if path.is_dir():
        if overrides:
            raise ConfigError(f"--set applies to a config file; {source} is a run directory, whose model is "
                              "the one it trained: drop --set")
        model, tokenizer = load_for_inference(path, device=device)
    else:
        torch.manual_seed(seed)
        model, tokenizer = GPT(load_model_config(path, overrides)).to(device), None
    return model.to(resolve_dtype(dtype, device)).eval(), tokenizer


def generate_from_source(source: str, *, prompt: str | None, prompt_ids: str | None, max_new_tokens: int,
                         use_kv_cache: bool, temperature: float, top_k: int | None, seed: int,
                         batch_size: int = 1, device: str = "cpu", dtype: str = "auto", compile: bool | str = False,
                         decode_threads: int | None = None, verbose: bool = False,
                         overrides: list[str] = ()) -> dict[str, Any]:
    model, tokenizer = load_source(source, list(overrides), device, seed, dtype)
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
        "compiled": check_compile(compile) is not None,
        "compile_mode": check_compile(compile),
    }
