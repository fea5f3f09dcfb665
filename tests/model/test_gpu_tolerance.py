"""The GPU proof's decode check (`compiled_decode_error`: the compiled step's logits, teacher-forced,
within half of what a wrong mask changes) has teeth. On the CPU, compiled decoding passes it, and the
same compiled step with a planted mask bug (every cache slot visible, unwritten ones too) fails it.
tests/model/test_gpu.py applies it to bf16 CUDA graphs, where exact tokens cannot be asked for."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlab import gpu_check
from llmlab.config import load_model_config
from llmlab.gpu_check import compiled_decode_error, planted_mask_bug
from llmlab.infer import generate
from llmlab.infer.compiled import CompiledStep, compiled_decode_step, release
from llmlab.model import GPT


def buggy_compiled_decode_step(model: GPT, *args: int) -> tuple[CompiledStep, float | None]:
    """The compiled step, compiled and run with the planted mask bug."""
    with planted_mask_bug():
        built, seconds = compiled_decode_step(model, *args)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with planted_mask_bug():
            return built.step(*inputs)

    return dataclasses.replace(built, step=run), seconds


@pytest.mark.slow
def test_compiled_decode_passes_and_a_planted_mask_bug_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = GPT(load_model_config("configs/models/tiny-gqa.toml", ["model.n_layers=2"])).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # as the GPU test: logits at a trained model's scale
    idx = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(1))
    ids = generate(model, idx, 12)
    good = compiled_decode_error(model, ids, idx.shape[1])
    assert good["within_tolerance"] and good["logit_error"] < 1e-3 * good["mask_bug_effect"], good
    release(model)
    monkeypatch.setattr(gpu_check, "compiled_decode_step", buggy_compiled_decode_step)
    bad = compiled_decode_error(model, ids, idx.shape[1])
    assert not bad["within_tolerance"], bad
    assert bad["mask_bug_effect"] == pytest.approx(good["mask_bug_effect"])  # the same calibration
