"""Inference: prefill / decode with or without the static KV cache, eager or compiled, and its
measurement (`llmlab.infer.measure`)."""

from llmlab.infer.generate import GenerationTimes, generate, generate_timed
from llmlab.infer.step import decode_step, prefill, sample

__all__ = ["generate", "generate_timed", "GenerationTimes", "decode_step", "prefill", "sample"]
