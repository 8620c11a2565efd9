"""Small helpers for ``torch.nn.Module`` objects, shared by training, evaluation and decoding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (dropout off) inside the block, then give it back the mode it had.

    The mode is restored on the way out whatever happens (an exception, a closed generator), so a failed
    evaluation or an abandoned stream never leaves a training model with dropout switched off.

    Example::

        with eval_mode(model):
            logits, _ = model(x)
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
