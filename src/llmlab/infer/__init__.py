"""Inference: prefill / decode with or without the static KV cache, eager or compiled, and its
measurement (`llmlab.infer.measure`)."""

from llmlab.infer.generate import GenerationTimes, decode_step, generate, generate_timed, prefill, sample

__all__ = ["generate", "generate_timed", "GenerationTimes", "decode_step", "prefill", "sample"]
