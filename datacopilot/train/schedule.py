"""The learning-rate schedule: linear warmup from 0, then cosine or linear decay (or a constant rate).

>>> [round(lr_at(s, 1.0, warmup_steps=2, max_steps=6, decay="linear"), 3) for s in range(6)]
[0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

import math

# the config keys that fix the learning rate of every step: a resumed run must agree with its checkpoint on them
SCHEDULE_KEYS = ("lr", "warmup_steps", "decay", "min_lr_ratio", "max_steps")


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int, decay: str = "cosine",
          min_lr_ratio: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    Warmup: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the first step already
    moves. Then ``decay`` from ``lr`` down to ``lr * min_lr_ratio`` at the last step: ``"cosine"`` (half a cosine),
    ``"linear"``, or ``"constant"`` (no decay).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    floor = lr * min_lr_ratio
    if decay == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(cfg, start: int = 0):
    """A Paddle ``LambdaDecay`` following :func:`lr_at` for the config, at the learning rate of step ``start``
    (0-based); ``scheduler.step()`` once per optimizer step.

    The schedule is a function of the configured run (``max_steps`` included) and the step only: a run stopped
    early and resumed gets the rates the uninterrupted run had. Call :func:`set_step` after restoring a checkpoint,
    whose saved scheduler state would otherwise set the rate.
    """
    from paddle.optimizer.lr import LambdaDecay

    def factor(step: int) -> float:
        return lr_at(step, 1.0, cfg.warmup_steps, cfg.max_steps, cfg.decay, cfg.min_lr_ratio)

    scheduler = LambdaDecay(learning_rate=cfg.lr, lr_lambda=factor)
    if start:
        set_step(scheduler, start)
    return scheduler


def set_step(scheduler, step: int) -> None:
    """Put ``scheduler`` at the learning rate of optimizer step ``step`` (0-based: the next step to run)."""
    scheduler.step(step)
