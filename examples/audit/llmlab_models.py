"""Factories for `llmlab audit` on llmlab's own models: dense (MHA), GQA, and GQA + MoE.

    llmlab audit examples/audit/llmlab_models.py:build_dense
    llmlab audit examples/audit/llmlab_models.py:build_gqa
    llmlab audit examples/audit/llmlab_models.py:build_moe

Each returns (model, idx, decode_step), with the KV cache set up for the audit's 32 decode
positions. The configs are the tiny CPU presets with 2 layers and a 512-token vocabulary (the
audit compiles the graphs: fewer layers trace faster, and the vocabulary only changes the size of
a matmul). The MoE uses `capacity` dispatch, which compiles in fp32 on a CPU.
"""

from pathlib import Path

import torch

from llmlab.config import load_model_config
from llmlab.infer import decode_step
from llmlab.model import GPT

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"


def _build(name: str, *overrides: str):
    cfg = load_model_config(CONFIGS / name, ["model.vocab_size=512", "model.n_layers=2", *overrides])
    torch.manual_seed(0)
    model = GPT(cfg)
    model.setup_kv_cache(batch_size=2, max_seq_len=64)
    idx = torch.randint(0, cfg.vocab_size, (2, 32))
    return model, idx, decode_step


def build_dense():
    return _build("tiny.toml")


def build_gqa():
    return _build("tiny-gqa.toml")


def build_moe():
    return _build("tiny-moe.toml", "model.moe.dispatch=capacity")


build = build_dense


def build_moe_triton():
    """The MoE on the Triton grouped GEMM, the path a GPU below sm90 (an A100) takes: dropless.
    On a CPU it runs only in Triton's interpreter (TRITON_INTERPRET=1)."""
    return _build("tiny-moe.toml", "model.moe.grouped_kernel=triton")
