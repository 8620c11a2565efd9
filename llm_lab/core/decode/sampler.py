"""Running the processors for one generation: the per-row "seen" flags, the chain, the pick, the check before it.

:mod:`~llm_lab.core.decode.sampling` declares the settings and the registry, :mod:`~llm_lab.core.decode.processors`
the processors themselves; this module applies them. One decoding step is::

    scores = sampler.process(logits)          # the enabled processors, in chain order
    check_next_token_scores(scores, logits)   # NaN or +inf: a NonFiniteScoresError, never a NaN draw
    token = sampler.pick(scores, generator)   # argmax when greedy, else one draw from the generator
    sampler.advance(token)                    # the new token now counts as seen (repetition penalty)

:func:`process_logits` and :func:`sample_next_token` are the same two steps for one batch of logits, outside a
generation.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_lab.core.decode.sampling import SamplingConfig, is_greedy

__all__ = [
    "NonFiniteScoresError",
    "Sampler",
    "check_next_token_scores",
    "occurrence_flags",
    "process_logits",
    "sample_next_token",
]


class NonFiniteScoresError(ValueError):
    """The next-token scores hold NaN or ``+inf``, so no token can be drawn (a broken model or an overflow)."""


def occurrence_flags(
    token_ids: torch.Tensor, vocab_size: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, vocab_size)`` booleans: ``True`` where the id occurs in the row (padding excluded).

    Args:
        token_ids: ``(B, T)`` ids in ``[0, vocab_size)``.
        vocab_size: number of columns.
        attention_mask: optional ``(B, T)``; positions where it is 0 are ignored.

    Returns:
        A new boolean tensor.
    """
    if attention_mask is not None:
        # Padding goes to a scratch column past the vocabulary that is cut off afterwards.
        token_ids = token_ids.masked_fill(attention_mask == 0, vocab_size)
    seen = torch.zeros(token_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=token_ids.device)
    seen.scatter_(-1, token_ids, True)
    return seen[:, :vocab_size]


class Sampler:
    """The chain of one generation: :class:`SamplingConfig`'s enabled processors plus the per-row ``seen`` flags.

    Args:
        config: the settings.
        context_ids: ``(B, T)`` prompt ids (for processors that look at the tokens already there).
        vocab_size: the number of columns of the logits.
        attention_mask: optional ``(B, T)``; padding does not count as a token already seen.
    """

    def __init__(
        self,
        config: SamplingConfig,
        context_ids: torch.Tensor,
        vocab_size: int,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        self.config = config
        self.greedy = config.greedy
        self.chain = config.processors()
        self.seen: torch.Tensor | None = None
        if any(processor.needs_seen for processor in self.chain):
            self.seen = occurrence_flags(context_ids, vocab_size, attention_mask)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the chain to ``(B, V)`` logits."""
        for processor in self.chain:
            logits = processor(logits, self.seen)
        return logits

    def pick(self, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One token per row from processed scores (argmax when greedy, else a draw from ``generator``)."""
        return sample_next_token(scores, 0.0 if self.greedy else 1.0, generator)

    def advance(self, tokens: torch.Tensor) -> None:
        """Record the ``(B,)`` new tokens (they now count as seen)."""
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)


def process_logits(
    logits: torch.Tensor,
    *,
    seen: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    **settings: Any,
) -> torch.Tensor:
    """Chain the registered processors in their order: penalty, temperature, top-k, top-p, min-p.

    With a greedy temperature (see :func:`is_greedy`) only the repetition penalty is applied: the filters never
    remove the most likely token, so they cannot change an argmax.

    Args:
        logits: ``(B, V)`` next-token scores.
        seen: ``(B, V)`` boolean occurrence flags, needed by the repetition penalty when it is not 1.
        sampling: a :class:`SamplingConfig`; ``settings`` (``temperature=``, ``top_k=``, ...) replace its values.

    Returns:
        The processed ``(B, V)`` scores.
    """
    config = SamplingConfig.from_kwargs(sampling, **settings)
    for processor in config.processors():
        logits = processor(logits, seen)
    return logits


def sample_next_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from processed scores: argmax for a greedy temperature, else a draw.

    The draw is ``torch.multinomial(softmax(logits), 1, generator=generator)``, so the same generator state
    gives the same tokens. Greedy ties go to the lowest token id (``torch.argmax``).

    Args:
        logits: ``(B, V)`` scores (already processed).
        temperature: only whether it is greedy (:func:`is_greedy`) matters here.
        generator: random source for sampling; ``None`` uses torch's global generator.

    Returns:
        ``(B,)`` int64 token ids.
    """
    if is_greedy(temperature):
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_next_token_scores(scores: torch.Tensor, logits: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteScoresError` unless every row of ``scores`` can be sampled from.

    A row can be sampled from when it holds no NaN and no ``+inf`` and at least one finite score (``-inf`` is a
    token the filters removed): exactly when its maximum is finite, since ``amax`` propagates NaN. So the happy
    path costs one reduction (and one host sync); the cause is worked out only when the check fails.

    Args:
        scores: ``(B, V)`` processed scores, about to be sampled (or argmaxed).
        logits: the model's raw ``(B, V)`` logits, to tell a broken model from an overflow in the message.

    Raises:
        NonFiniteScoresError: a row holds NaN or ``+inf``, or nothing finite.
    """
    row_is_fine = torch.isfinite(scores.amax(dim=-1))
    if bool(row_is_fine.all()):
        return
    bad_rows = ~row_is_fine
    row = int(bad_rows.nonzero()[0, 0])
    if logits is not None and not bool(torch.isfinite(logits[row]).all()):
        raise NonFiniteScoresError(
            f"the model produced non-finite logits (NaN or inf) for row {row}: its weights or its inputs are "
            "broken (a package with NaN weights, an fp16 overflow); check the package"
        )
    raise NonFiniteScoresError(
        f"the next-token scores of row {row} overflowed to NaN or inf after the repetition penalty and temperature; "
        "use a temperature closer to 1 or a repetition penalty closer to 1"
    )
