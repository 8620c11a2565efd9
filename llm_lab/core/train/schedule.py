"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

The schedule is a pure function of the step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    * ``step < warmup_steps``: ``lr * (step + 1) / warmup_steps`` (never 0, so step 0 already learns);
    * ``warmup_steps <= step < decay_steps``: ``min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2`` with
      ``progress = (step - warmup_steps) / (decay_steps - warmup_steps)`` going from 0 to 1;
    * ``step >= decay_steps``: ``min_lr``.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
