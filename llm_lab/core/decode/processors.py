"""Logits processors: small functions that reshape next-token scores before sampling.

Each function takes ``logits`` of shape ``(B, V)`` (one row per sequence, one column per token id) and
returns a tensor of the same shape; tokens that may no longer be drawn get ``-inf``. They compose in the
order :func:`process_logits` applies them, which is also Hugging Face's order:

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> sample (or argmax when greedy)

The filters read the *current* scores, so the order matters: top-p after top-k renormalises over the
``k`` kept tokens, min-p after top-p compares with the most likely token (which every filter keeps).

Each function has a small :class:`~llm_lab.core.decode.sampling.LogitsProcessor` class below that declares its
setting(s) (name, range, default, help) and its place in the chain; ``@register_processor`` puts it in the one
registry from which :class:`~llm_lab.core.decode.sampling.SamplingConfig`, ``generate``, the server's schema, the
``llm-lab sample`` flags and the playground's controls are derived. A new sampler is a function and a class here
(see "Add a sampler" in ``CONTRIBUTING.md``).

Every filter keeps at least one token per row (the most likely one), so sampling never sees a row of only
``-inf``. Rows that are already all ``-inf`` are returned unchanged.

Numerics (one rule, used by the library, ``llm-lab sample`` and the server):

* A temperature below :data:`MIN_SAMPLING_TEMPERATURE` (``1e-5``) is greedy, exactly like ``0``. Dividing by a
  tinier temperature overflows float32 to ``inf`` (``1e-300`` rounds to ``0`` in float32 altogether) and the
  softmax turns that into NaN. Nothing is lost: at ``T = 1e-5`` a token whose logit is ``1e-3`` below the best
  has relative probability ``exp(-100)``, below float32's resolution, so sampling already *is* the argmax
  except between near-exact ties.
* The repetition penalty lies in :data:`REPETITION_PENALTY_RANGE` (``[0.01, 100]``): it scales a logit by at most
  100, so finite logits stay finite. Values outside are refused.
* Scores that are NaN or ``+inf`` (a model with NaN weights, an overflow) are never sampled from:
  :func:`~llm_lab.core.decode.sampler.check_next_token_scores` raises
  :class:`~llm_lab.core.decode.sampler.NonFiniteScoresError`, a ``ValueError`` that names the cause.

Running the chain for a generation (the per-row seen flags, the pick) is :mod:`llm_lab.core.decode.sampler`.

References: nucleus sampling (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration");
min-p sampling (Nguyen et al., 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
Outputs"); repetition penalty (Keskar et al., 2019, "CTRL").
"""

from __future__ import annotations

import torch

# The sampler's names stay importable from here, where they were first defined.
from llm_lab.core.decode.sampler import (
    NonFiniteScoresError,
    Sampler,
    check_next_token_scores,
    occurrence_flags,
    process_logits,
    sample_next_token,
)
from llm_lab.core.decode.sampling import (
    MIN_SAMPLING_TEMPERATURE,
    LogitsProcessor,
    SamplingConfig,
    SamplingParam,
    is_greedy,
    register_processor,
)

__all__ = [
    "MIN_SAMPLING_TEMPERATURE",
    "REPETITION_PENALTY_RANGE",
    "MinP",
    "NonFiniteScoresError",
    "RepetitionPenalty",
    "Sampler",
    "Temperature",
    "TopK",
    "TopP",
    "apply_repetition_penalty",
    "apply_temperature",
    "check_next_token_scores",
    "check_sampling_args",
    "is_greedy",
    "min_p_filter",
    "occurrence_flags",
    "penalize_seen",
    "process_logits",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]


# The repetition penalty scales a seen token's logit by at most max(p, 1/p) = 100 inside this range.
REPETITION_PENALTY_RANGE = (0.01, 100.0)


def check_sampling_args(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> None:
    """Raise ``ValueError`` for sampling settings outside their documented ranges.

    Kept for callers of the keyword form; the rules themselves live on each processor's
    :class:`~llm_lab.core.decode.sampling.SamplingParam` and :class:`~llm_lab.core.decode.sampling.SamplingConfig`
    applies them (a temperature ``>= 0``, ``top_k >= 1``, ``top_p`` in ``(0, 1]``, ``min_p`` in ``[0, 1]``, the
    repetition penalty in :data:`REPETITION_PENALTY_RANGE`).
    """

    SamplingConfig(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty
    )


def _check_repetition_penalty(penalty: float) -> None:
    RepetitionPenalty.params[0].check(penalty)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` (``> 0``).

    Below 1 the distribution sharpens, above 1 it flattens. A greedy temperature (``0`` or below
    :data:`MIN_SAMPLING_TEMPERATURE`) is not a division: :func:`sample_next_token` handles it with an argmax, so it
    is rejected here.

    Args:
        logits: ``(B, V)`` scores.
        temperature: at least :data:`MIN_SAMPLING_TEMPERATURE`.

    Returns:
        ``logits / temperature`` (the input itself when ``temperature == 1``).
    """
    if is_greedy(temperature):
        raise ValueError(
            f"apply_temperature needs temperature >= {MIN_SAMPLING_TEMPERATURE:g}, got {temperature}; "
            "smaller temperatures mean greedy decoding (argmax)"
        )
    if temperature == 1.0:
        return logits
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest-scoring tokens of each row; the rest get ``-inf``.

    Ties are kept together: every token whose score equals the ``k``-th highest score survives, so a row can
    keep more than ``k`` tokens when scores tie at the boundary (Hugging Face does the same). ``k`` at least
    the vocabulary size keeps everything.

    Args:
        logits: ``(B, V)`` scores.
        k: how many tokens to keep, ``>= 1``.

    Returns:
        A new ``(B, V)`` tensor.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Tokens are ranked by probability (``softmax(logits)``), highest first; a token is kept when the total
    probability of the tokens ranked *before* it is still below ``p``. So the most likely token is always kept
    (at least one token, even for a tiny ``p``), and the kept set is the shortest prefix of the ranking whose
    total reaches ``p``. Example: probabilities ``[0.5, 0.3, 0.2]`` and ``p = 0.8`` keep the first two (0.5 < 0.8,
    then 0.5 + 0.3 = 0.8 reaches it); ``p = 0.81`` keeps all three. Tokens tied in probability are ranked by id.
    ``p == 1`` keeps everything.

    Args:
        logits: ``(B, V)`` scores.
        p: probability mass to cover, in ``(0, 1]``.

    Returns:
        A new ``(B, V)`` tensor.
    """
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    # A stable sort ranks tied tokens by id, so the kept set does not depend on the sort implementation.
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # exclusive cumulative sum
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the most likely token always stays
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``min_p`` times that of the most likely token.

    With ``probs = softmax(logits)``, token ``i`` survives when ``probs[i] >= min_p * max(probs)``. The most
    likely token always survives (``min_p <= 1``); ``min_p == 0`` keeps everything. Example: probabilities
    ``[0.6, 0.25, 0.1, 0.05]`` and ``min_p = 0.2`` give the threshold ``0.12`` and keep the first two.

    Args:
        logits: ``(B, V)`` scores.
        min_p: relative threshold in ``[0, 1]``.

    Returns:
        A new ``(B, V)`` tensor.
    """
    if isinstance(min_p, bool) or not isinstance(min_p, int | float) or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    if min_p == 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def penalize_seen(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Apply the repetition penalty to the tokens flagged in ``seen``.

    For each flagged token, a positive score is divided by ``penalty`` and a negative score multiplied by it
    (Hugging Face's convention), so ``penalty > 1`` always makes a seen token less likely and ``penalty < 1``
    more likely. A score of exactly 0 stays 0. Unflagged tokens are untouched.

    Args:
        logits: ``(B, V)`` scores.
        seen: ``(B, V)`` boolean tensor, ``True`` where the token occurred in the row's context.
        penalty: ``> 0``; 1 changes nothing.

    Returns:
        A new ``(B, V)`` tensor (the input itself when ``penalty == 1``).
    """
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_repetition_penalty(
    logits: torch.Tensor,
    previous_ids: torch.Tensor,
    penalty: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Repetition penalty (CTRL) on every token id that occurs in ``previous_ids``.

    ``score -> score / penalty`` if ``score > 0`` else ``score * penalty``, once per distinct token id, however
    often it occurred. Positions where ``attention_mask`` is 0 (padding) do not count as occurrences.

    Args:
        logits: ``(B, V)`` scores.
        previous_ids: ``(B, T)`` token ids of the context so far (prompt and generated tokens).
        penalty: ``> 0``; 1 changes nothing.
        attention_mask: optional ``(B, T)`` mask, 1 for real tokens and 0 for padding.

    Returns:
        A new ``(B, V)`` tensor.
    """
    _check_repetition_penalty(penalty)
    if previous_ids.dim() != 2 or previous_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"previous_ids must be (B, T) with B = {logits.shape[0]} rows like logits, got {tuple(previous_ids.shape)}"
        )
    seen = occurrence_flags(previous_ids, logits.shape[-1], attention_mask)
    return penalize_seen(logits, seen, float(penalty))


# ----------------------------------------------------------------------------------------------------------------
# The registered processors: each owns its settings (declared once, here) and applies one function above.


@register_processor
class RepetitionPenalty(LogitsProcessor):
    """CTRL's repetition penalty on every token already in the row (see :func:`penalize_seen`)."""

    params = (
        SamplingParam(
            "repetition_penalty",
            float,
            1.0,
            low=REPETITION_PENALTY_RANGE[0],
            high=REPETITION_PENALTY_RANGE[1],
            neutral=1.0,
            note="1 disables it; outside that range the scores overflow",
            requirement=f"a number in [{REPETITION_PENALTY_RANGE[0]:g}, {REPETITION_PENALTY_RANGE[1]:g}]",
            help="penalise tokens already in the text (> 1 repeats less)",
            control=(0.5, 2.0, 0.05, 1.0),
        ),
    )
    order = 10
    runs_when_greedy = True  # it can change an argmax
    needs_seen = True

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        if seen is None:
            raise ValueError("repetition_penalty != 1 needs `seen`, the (B, V) flags of tokens already in context")
        return penalize_seen(logits, seen, self.config.repetition_penalty)


@register_processor
class Temperature(LogitsProcessor):
    """Divide by the temperature (below :data:`MIN_SAMPLING_TEMPERATURE` decoding is greedy and this is skipped)."""

    params = (
        SamplingParam(
            "temperature",
            float,
            1.0,
            low=0.0,
            neutral=1.0,
            note="0 means greedy",
            help="divide the logits by it: higher flattens the distribution, 0 (or below 1e-5) is greedy",
            api_high=2.0,  # OpenAI's range
            control=(0.0, 2.0, 0.05, 0.8),
        ),
    )
    order = 20

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        return apply_temperature(logits, self.config.temperature)


@register_processor
class TopK(LogitsProcessor):
    """Keep the ``top_k`` most likely tokens (see :func:`top_k_filter`)."""

    params = (
        SamplingParam(
            "top_k",
            int,
            None,
            low=1,
            help="keep only the K most likely tokens",
            api_off=0,  # 0 and null both mean "no top-k", as in most OpenAI-compatible servers
            control=(0, "vocab_size", 1, 0),  # the slider reaches the model's vocabulary size
        ),
    )
    order = 30

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        return top_k_filter(logits, self.config.top_k)


@register_processor
class TopP(LogitsProcessor):
    """Nucleus sampling (see :func:`top_p_filter`)."""

    params = (
        SamplingParam(
            "top_p",
            float,
            None,
            low=0.0,
            high=1.0,
            low_open=True,
            neutral=1.0,
            help="nucleus sampling: keep the most likely tokens up to this probability mass",
            control=(0.05, 1.0, 0.05, 1.0),
        ),
    )
    order = 40

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        return top_p_filter(logits, self.config.top_p)


@register_processor
class MinP(LogitsProcessor):
    """Min-p sampling (see :func:`min_p_filter`)."""

    params = (
        SamplingParam(
            "min_p",
            float,
            None,
            low=0.0,
            high=1.0,
            neutral=0.0,
            help="drop tokens below this fraction of the top token's probability",
            control=(0.0, 1.0, 0.01, 0.0),
        ),
    )
    order = 50

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        return min_p_filter(logits, self.config.min_p)
