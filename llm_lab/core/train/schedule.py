"""Learning-rate schedules (a small registry) and Muon's momentum warm-up.

Every schedule is linear warm-up from ``lr / warmup_steps`` to ``lr``, then a shape that ends at ``min_lr`` at
``decay_steps`` and stays there:

==========  ====================================================================================================
``cosine``  half a cosine from ``lr`` to ``min_lr`` over the whole post-warm-up span (GPT-2/3, nanoGPT)
``wsd``     warm-up, stable at ``lr``, then linear decay to ``min_lr`` over the last ``decay_fraction`` of the
            run (Hu et al., 2024, "MiniCPM"; Hägele et al., 2024): most steps at the peak, a short cool-down
``linear``  a straight line from ``lr`` to ``min_lr`` (with ``min_lr=0``: linear decay to zero, which Defazio
            et al., 2023, find matches or beats cosine)
==========  ====================================================================================================

Schedules are pure functions of the step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math
from typing import ClassVar

__all__ = ["SCHEDULES", "CosineSchedule", "LinearSchedule", "WSDSchedule", "lr_at", "muon_momentum_at"]


def _warmup(step: int, lr: float, warmup_steps: int) -> float | None:
    """The warm-up value, or ``None`` once warm-up is over. Never 0, so step 0 already learns."""
    return lr * (step + 1) / warmup_steps if step < warmup_steps else None


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """The cosine schedule's learning rate at optimizer step ``step`` (0-based).

    * ``step < warmup_steps``: ``lr * (step + 1) / warmup_steps``;
    * ``warmup_steps <= step < decay_steps``: ``min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2`` with
      ``progress = (step - warmup_steps) / (decay_steps - warmup_steps)`` going from 0 to 1;
    * ``step >= decay_steps``: ``min_lr``.
    """
    warm = _warmup(step, lr, warmup_steps)
    if warm is not None:
        return warm
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear_decay(step: int, *, lr: float, min_lr: float, start: int, end: int) -> float:
    """A straight line from ``lr`` at ``start`` to ``min_lr`` at ``end`` (``start <= step < end``): the decay of
    both the linear and the WSD schedule, which differ only in where it starts."""
    progress = (step - start) / (end - start)
    return lr + (min_lr - lr) * progress


class CosineSchedule:
    """Warm-up, then cosine decay to ``min_lr`` at ``decay_steps`` (:func:`lr_at`)."""

    name: ClassVar[str] = "cosine"

    @staticmethod
    def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, decay_fraction: float):
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, decay_steps=decay_steps)


class LinearSchedule:
    """Warm-up, then a straight line from ``lr`` (at ``warmup_steps``) to ``min_lr`` (at ``decay_steps``)."""

    name: ClassVar[str] = "linear"

    @staticmethod
    def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, decay_fraction: float):
        warm = _warmup(step, lr, warmup_steps)
        if warm is not None:
            return warm
        if step >= decay_steps:
            return min_lr
        return _linear_decay(step, lr=lr, min_lr=min_lr, start=warmup_steps, end=decay_steps)


class WSDSchedule:
    """Warm-up, stable at ``lr``, then linear decay to ``min_lr`` over the last ``decay_fraction`` of the steps.

    The decay starts at ``decay_start = decay_steps - round(decay_fraction * decay_steps)`` (never before the end
    of warm-up): ``lr`` there, ``min_lr`` at ``decay_steps``.
    """

    name: ClassVar[str] = "wsd"

    @staticmethod
    def decay_start(*, warmup_steps: int, decay_steps: int, decay_fraction: float) -> int:
        return max(warmup_steps, decay_steps - round(decay_fraction * decay_steps))

    @classmethod
    def lr_at(cls, step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, decay_fraction: float):
        warm = _warmup(step, lr, warmup_steps)
        if warm is not None:
            return warm
        if step >= decay_steps:
            return min_lr
        start = cls.decay_start(warmup_steps=warmup_steps, decay_steps=decay_steps, decay_fraction=decay_fraction)
        if step < start:
            return lr
        return _linear_decay(step, lr=lr, min_lr=min_lr, start=start, end=decay_steps)


SCHEDULES = {cls.name: cls for cls in (CosineSchedule, WSDSchedule, LinearSchedule)}
"""The only list of schedule names: ``train.schedule`` picks one."""


MUON_MOMENTUM_START = 0.85
"""Muon's momentum at step 0 when it warms up (the modded-nanogpt speedrun's value): a short memory while the
gradients change fast at the start, the full ``muon_momentum`` once they settle."""


def muon_momentum_at(step: int, *, momentum: float, warmup_steps: int) -> float:
    """Muon's momentum at step ``step``: linear from ``min(0.85, momentum)`` to ``momentum`` over ``warmup_steps``
    (0: ``momentum`` from the start)."""
    if warmup_steps == 0 or step >= warmup_steps:
        return momentum
    start = min(MUON_MOMENTUM_START, momentum)
    return start + (momentum - start) * step / warmup_steps
