"""One optimizer update (`train_step`) and one evaluation pass (`evaluate`), over explicit state.

The compiled region is `LossHead.forward`: model forward + cross-entropy, fixed (B, T) shapes,
no `.item()`. Everything that syncs with the host (finite checks, logging) happens after it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.data.loader import IGNORE_INDEX  # targets that carry no loss (the eval loader pads with it)
from llmlab.runs import WindowLosses
from llmlab.train.distributed import all_reduce_mean, no_sync

Batch = tuple[torch.Tensor, torch.Tensor]
EvalFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(x, y) -> (summed cross-entropy, number of targets), each of shape (B,): one per window."""


class LossHead(nn.Module):
    """model(x) -> (cross-entropy, MoE aux loss, routing stats), under autocast when asked.

    The cross-entropy is taken on fp32 logits (bf16 log-softmax over 50k classes loses digits).
    The aux loss stays apart so the reported loss is comparable between dense and MoE models."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            out = self.model(x)
        logits = out.logits.float()  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return ce, out.aux_loss.float(), out.moe_stats


@dataclass
class StepResult:
    loss: float
    """Mean cross-entropy over the update's tokens (all micro-steps, all ranks)."""
    aux_loss: float
    grad_norm: float
    """Global gradient norm before clipping."""
    moe_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    applied: bool = True
    """False when the loss or gradient norm was not finite and the update was skipped."""


def train_step(
    train_module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], Batch],
    grad_accum: int,
    grad_clip: float,
    device: torch.device,
) -> StepResult:
    """Accumulate gradients over `grad_accum` micro-batches, clip, then step -- unless the loss or
    the gradient norm is not finite, in which case the weights are left untouched."""
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    stats_sum: dict[str, torch.Tensor] = {}
    for micro in range(grad_accum):
        x, y = (t.to(device, non_blocking=True) for t in next_batch())
        # Gradients are all-reduced once, on the last micro-step (DDP no_sync / FSDP2).
        with no_sync(train_module, model, sync=micro == grad_accum - 1):
            ce, aux, stats = train_module(x, y)
            ((ce + aux) / grad_accum).backward()
        loss_sum += ce.detach()
        aux_sum += aux.detach()
        for name, value in stats.items():
            stats_sum[name] = stats_sum.get(name, 0) + value.detach()
    grad_norm = _grad_norm(model, grad_clip)
    loss, aux, *stat_means = _mean_over_update([loss_sum, aux_sum, *stats_sum.values()], grad_accum)
    # One host sync per update: a NaN must be caught before it reaches the weights.
    loss_f, grad_f = loss.item(), grad_norm.item()
    applied = math.isfinite(loss_f) and math.isfinite(grad_f)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_f, aux.item(), grad_f, dict(zip(stats_sum, stat_means)), applied)


def _mean_over_update(sums: list[torch.Tensor], grad_accum: int) -> list[torch.Tensor]:
    """Each sum over this rank's micro-steps -> its mean over the update's micro-steps on all
    ranks, in one all-reduce. The MoE aux loss and routing statistics too: each rank routes other
    tokens, so rank 0's figures alone would describe only its share of the batch."""
    flat = all_reduce_mean(torch.cat([s.reshape(-1).float() for s in sums]) / grad_accum)
    return [mean.view(s.shape) for mean, s in zip(flat.split([s.numel() for s in sums]), sums)]


def _grad_norm(model: nn.Module, grad_clip: float) -> torch.Tensor:
    """Global L2 norm of the gradients; clipped in place when grad_clip > 0 (a no-op on NaN:
    clip_grad_norm_ then scales by NaN, but the caller skips the step anyway)."""
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


@torch.no_grad()
def evaluate(loss_fn: EvalFn, batches: Iterable[Batch], device: torch.device) -> tuple[float, int]:
    """(mean cross-entropy per predicted token, tokens predicted) over fixed-shape batches, where
    padding targets are IGNORE_INDEX. Every rank evaluates all of them, so the figure is the same
    at any world size; one host sync at the end."""
    windows = evaluate_windows(loss_fn, batches, device)
    return windows.mean, windows.n_tokens


@torch.no_grad()
def evaluate_windows(loss_fn: EvalFn, batches: Iterable[Batch], device: torch.device) -> WindowLosses:
    """Per-window summed cross-entropy and target counts, kept on the device until one host sync
    at the end. Rows with no target (the last batch's padding) are dropped."""
    sums: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        batch_sums, batch_counts = loss_fn(x, y)  # (B,), (B,)
        sums.append(batch_sums.double())
        counts.append(batch_counts)
    if not sums:
        return WindowLosses([], [])
    loss_sum, tokens = torch.cat(sums).tolist(), torch.cat(counts).tolist()
    keep = [i for i, n in enumerate(tokens) if n > 0]
    return WindowLosses([loss_sum[i] for i in keep], [int(tokens[i]) for i in keep])


def eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of targets) of each window (row) of one batch, both (B,);
    targets equal to IGNORE_INDEX (the padding of the last eval batch) count for nothing. This is
    the function compiled for evaluation: a separate code object from LossHead.forward, so
    evaluating never counts as a recompile of the train step."""
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(x).logits
    per_target = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none")  # (B*T,), 0 where ignored
    return per_target.view(y.shape).sum(-1), (y != IGNORE_INDEX).sum(-1)


def bind_eval_loss(model: nn.Module, autocast_dtype: torch.dtype | None) -> EvalFn:
    """eval_loss bound to a model: the (x, y) callable that gets compiled for evaluation."""

    def loss_of_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return eval_loss(model, x, y, autocast_dtype)

    return loss_of_batch


@contextlib.contextmanager
def eval_context(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) for the duration, then back to train mode."""
    model.eval()
    try:
        yield
    finally:
        model.train()
