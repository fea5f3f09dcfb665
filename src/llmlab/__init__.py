"""llmlab: what do KV caching, GQA and MoE buy a small GPT, at equal active parameters?"""

__version__ = "0.1.0"
