"""How many new tokens one generation call may ask for, from the model's limits alone.

``generate`` allocates its token buffer for ``prompt + max_new_tokens`` positions up front, and past the context
a sliding-window model recomputes a full window per token. So an unchecked ``max_new_tokens`` (``1e9``) means
gigabytes reserved and days of work with nothing to show. :func:`new_tokens_limit` is the bound the ``llm-lab
sample`` command applies; the server applies the stricter ``context - prompt + 1`` of every model
(``CompletionEngine.max_new_tokens_after``).
"""

from __future__ import annotations

from typing import Any

from llm_lab.core.decode.decoder import default_overflow_policy

__all__ = ["SLIDING_WINDOWS_LIMIT", "new_tokens_limit"]

# A sliding model may write this many context windows of new text in one call. Each token past the first window
# is an uncached forward over the whole window, so 100 windows are already minutes to hours of work for the models
# this lab trains (and a few MB of token buffer); longer texts are a loop over calls, not one call.
SLIDING_WINDOWS_LIMIT = 100


def new_tokens_limit(config: Any, prompt_length: int) -> int:
    """The most new tokens one call may generate after a prompt of ``prompt_length`` tokens.

    Args:
        config: the model's config (``max_positions``, ``pos_encoding``).
        prompt_length: tokens in the (longest) prompt.

    Returns:
        ``max_positions - prompt_length + 1`` for a model that stops at its context (the last new token is never
        fed back, so it needs no position); ``SLIDING_WINDOWS_LIMIT * max_positions`` for a model that slides its
        window (learned positions). At least 0.
    """
    window = int(config.max_positions)
    if default_overflow_policy(config) == "slide":
        return SLIDING_WINDOWS_LIMIT * window
    return max(window - prompt_length + 1, 0)
