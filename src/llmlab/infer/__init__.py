"""Inference: prefill / decode with or without the static KV cache."""

from llmlab.infer.generate import decode_step, generate, prefill, sample

__all__ = ["generate", "decode_step", "prefill", "sample"]
