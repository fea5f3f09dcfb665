"""The model: GPT with MHA/GQA/MQA attention, a static KV cache, dense or MoE feed-forward."""

from llmlab.model.gpt import GPT, GPTOutput

__all__ = ["GPT", "GPTOutput"]
