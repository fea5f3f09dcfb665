"""The fixed examples compute what the flawed ones do: the fix changes how, not what."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "audit"))
import nanogpt_fixed  # noqa: E402
import nanogpt_flawed  # noqa: E402
import stats_fixed  # noqa: E402
import stats_flawed  # noqa: E402
import student_fixed  # noqa: E402
import student_flawed  # noqa: E402


@torch.no_grad()
def test_static_cache_decodes_like_the_grown_cache_and_the_full_forward() -> None:
    flawed, idx, flawed_step = nanogpt_flawed.build()
    fixed, _, fixed_step = nanogpt_fixed.build()
    fixed.load_state_dict(flawed.state_dict())
    flawed.eval(), fixed.eval()
    full = fixed(idx)
    torch.testing.assert_close(full, flawed(idx)[0])
    for pos in range(8):
        token, position = idx[:, pos:pos + 1], torch.tensor([pos])
        torch.testing.assert_close(fixed_step(fixed, token, position), full[:, pos])
        torch.testing.assert_close(flawed_step(flawed, token, position), full[:, pos])


@torch.no_grad()
def test_statistics_as_tensors_give_the_same_logits_and_balance() -> None:
    flawed, idx = stats_flawed.build()
    fixed, _ = stats_fixed.build()
    fixed.load_state_dict(flawed.state_dict())
    flawed.ffns[0].verbose = flawed.ffns[1].verbose = False
    logits, stats = fixed(idx)
    torch.testing.assert_close(logits, flawed(idx))
    torch.testing.assert_close(stats["balance"].tolist(), [m.last_balance for m in flawed.ffns], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_student_fixed_computes_what_the_flawed_student_model_does() -> None:
    """Same state dict: same logits and loss through the targets path, the same tokens per expert
    (returned, where the flawed model adds bincount into a buffer), the static cache decodes like
    the tuple cache grown by cat, and both like the full forward."""
    flawed, idx, flawed_step = student_flawed.build()
    fixed, _, fixed_step = student_fixed.build()
    fixed.load_state_dict(flawed.state_dict())
    targets = idx.roll(-1, dims=-1)
    logits, loss = flawed(idx, targets)
    fixed_logits, fixed_loss, load_LE = fixed(idx, targets)
    torch.testing.assert_close(fixed_logits, logits)
    torch.testing.assert_close(fixed_loss, loss)
    torch.testing.assert_close(load_LE, torch.stack([b.moe.tokens_per_expert for b in flawed.blocks]))
    flawed.eval(), fixed.eval()
    for pos in range(8):
        token, position = idx[:, pos:pos + 1], torch.tensor([pos])
        expected = fixed(idx[:, :pos + 1], targets[:, :pos + 1].contiguous())[0][:, -1]  # full forward, the prefix
        torch.testing.assert_close(fixed_step(fixed, token, position), expected)
        torch.testing.assert_close(flawed_step(flawed, token, position), expected)
