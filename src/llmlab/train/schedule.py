"""Learning-rate schedules as pure functions of the optimizer step (no state to checkpoint).

`lr_at(step, cfg, total_steps)` is the rate used for update number `step` (0-based). Resuming at
step s needs nothing but s: the schedule position is the step counter.
"""

from __future__ import annotations

import math

from llmlab.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of update `step` in [0, total_steps): linear warm-up, then cfg.schedule."""
    if step < cfg.warmup:
        # (step + 1): the first update already moves, at lr / warmup (as in nanoGPT / GPT-3).
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return _cosine(step, cfg, total_steps)
    return _wsd(step, cfg, total_steps)


def _cosine(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Half-cosine from lr to min_lr over the post-warm-up steps (Loshchilov & Hutter 2017)."""
    span = max(1, total_steps - cfg.warmup - 1)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def _wsd(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): flat at lr, then a linear decay to min_lr
    over the last `decay_frac` of the steps. The flat phase lets a run be extended cheaply."""
    decay_start = wsd_decay_start(cfg, total_steps)
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    return cfg.lr + (cfg.min_lr - cfg.lr) * progress


def wsd_decay_start(cfg: TrainConfig, total_steps: int) -> int:
    """The first update of a WSD run's decay (the last `decay_frac` of its steps, after warm-up).
    Before it the rate depends on the step alone, not on total_steps: a decay branch starts here."""
    decay_steps = max(1, round(cfg.decay_frac * total_steps))
    return max(cfg.warmup, total_steps - decay_steps)
