"""Autoregressive generation: prefill the prompt, then decode one token at a time.

With the KV cache, prefill writes the prompt's keys/values once and each decode step feeds only
the newest token (input_pos = its position): O(T) work per token instead of O(T^2), and the step has
the same shapes at every position, so `torch.compile` builds it once (compile `decode_step`).
Without the cache, every step re-runs the model on the whole sequence (the baseline the cache is
measured against).
"""

from __future__ import annotations

from typing import Callable

import torch

from llmlab.errors import ConfigError
from llmlab.model import GPT

DecodeFn = Callable[[GPT, torch.Tensor, torch.Tensor], torch.Tensor]


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


def decode_step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One cached step: token (B, 1) at position input_pos (1,) -> logits (B, V). Compile this."""
    return model(token, input_pos=input_pos).logits[:, -1]


def prefill(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Write the prompt (B, T) into the cache; return the last position's logits (B, V)."""
    input_pos = torch.arange(idx.shape[1], device=idx.device)
    return model(idx, input_pos=input_pos).logits[:, -1]


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


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, use_kv_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
             decode_fn: DecodeFn = decode_step) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens; returns (B, T + max_new_tokens).

    seed fixes sampling (a private generator, so global RNG state is untouched). decode_fn lets
    the caller pass a compiled `decode_step`. The cache is set up for this call and cleared after.
    """
    check_lengths(model, idx, max_new_tokens)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    if not use_kv_cache:
        return _generate_uncached(model, idx, max_new_tokens, temperature, top_k, generator)
    B, T = idx.shape
    model.setup_kv_cache(B, T + max_new_tokens)
    try:
        out = torch.empty(B, T + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :T] = idx
        if max_new_tokens == 0:
            return out
        token = sample(prefill(model, idx), temperature, top_k, generator)
        out[:, T : T + 1] = token
        for pos in range(T, T + max_new_tokens - 1):
            input_pos = torch.tensor([pos], device=idx.device)
            token = sample(decode_fn(model, token, input_pos), temperature, top_k, generator)
            out[:, pos + 1 : pos + 2] = token
        return out
    finally:
        model.clear_kv_cache()


def _generate_uncached(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float,
                       top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    for _ in range(max_new_tokens):
        logits = model(idx).logits[:, -1]  # the whole prefix, every step
        idx = torch.cat([idx, sample(logits, temperature, top_k, generator)], dim=1)
    return idx
