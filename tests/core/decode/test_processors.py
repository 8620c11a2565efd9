"""Logits processors: hand-computed kept sets on fixed logits, formulas, composition and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from llm_lab.core.decode.processors import (
    MIN_SAMPLING_TEMPERATURE,
    NonFiniteScoresError,
    apply_repetition_penalty,
    apply_temperature,
    check_next_token_scores,
    check_sampling_args,
    is_greedy,
    min_p_filter,
    occurrence_flags,
    process_logits,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)


def kept(logits: torch.Tensor) -> list[set[int]]:
    """Per row, the token ids that are still drawable (finite score)."""
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in logits]


def logits_of(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probabilities (each row sums to 1)."""
    return torch.tensor([[math.log(p) for p in row] for row in rows], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# top-k


def test_top_k_keeps_the_k_best_and_ties_at_the_boundary():
    """Row 0: scores [1, 5, 3, 5, 2]; k=2 keeps the two 5s (ids 1, 3), k=3 adds the 3 (id 2).
    Row 1: [1, 4, 4, 4, 0]; k=2: the 2nd best score is 4, shared by ids 1, 2, 3, so all three stay."""
    logits = torch.tensor([[1.0, 5.0, 3.0, 5.0, 2.0], [1.0, 4.0, 4.0, 4.0, 0.0]])
    assert kept(top_k_filter(logits, 2)) == [{1, 3}, {1, 2, 3}]
    assert kept(top_k_filter(logits, 3)) == [{1, 2, 3}, {1, 2, 3}]
    assert kept(top_k_filter(logits, 1)) == [{1, 3}, {1, 2, 3}]
    assert kept(top_k_filter(logits, 5)) == [set(range(5))] * 2
    assert kept(top_k_filter(logits, 99)) == [set(range(5))] * 2
    # Kept scores are untouched.
    out = top_k_filter(logits, 2)
    assert out[0, 1] == 5.0 and out[0, 3] == 5.0


# ----------------------------------------------------------------------------------------------------------------
# top-p


def test_top_p_keeps_the_smallest_set_reaching_p():
    """Probabilities by id: [0.15, 0.5, 0.05, 0.3] (ranking: id1 0.5, id3 0.3, id0 0.15, id2 0.05).

    Mass before each in ranking order: 0, 0.5, 0.8, 0.95. A token stays while the mass before it is < p:
    p=0.45 -> {1} (0.5 alone reaches it); p=0.79 -> {1, 3}; p=0.81 -> {1, 3, 0}; p=0.96 -> all four.
    """
    logits = logits_of([0.15, 0.5, 0.05, 0.3])
    assert kept(top_p_filter(logits, 0.45)) == [{1}]
    assert kept(top_p_filter(logits, 0.79)) == [{1, 3}]
    assert kept(top_p_filter(logits, 0.81)) == [{0, 1, 3}]
    assert kept(top_p_filter(logits, 0.96)) == [{0, 1, 2, 3}]
    assert kept(top_p_filter(logits, 1.0)) == [{0, 1, 2, 3}]


def test_top_p_always_keeps_at_least_one_token():
    """The top token alone (0.5 or 0.9) already exceeds p=0.01: exactly one token per row survives."""
    logits = logits_of([0.5, 0.3, 0.2], [0.05, 0.05, 0.9])
    assert kept(top_p_filter(logits, 0.01)) == [{0}, {2}]


def test_top_p_rows_are_independent_and_order_of_ids_does_not_matter():
    """Row 0 = [0.6, 0.3, 0.1] and row 1 = the same probabilities permuted ([0.1, 0.6, 0.3]); p=0.85 keeps the
    two largest in each (0.6 < 0.85, 0.9 reaches it)."""
    logits = logits_of([0.6, 0.3, 0.1], [0.1, 0.6, 0.3])
    assert kept(top_p_filter(logits, 0.85)) == [{0, 1}, {1, 2}]


def test_top_p_after_top_k_renormalises_over_the_kept_tokens():
    """[0.4, 0.3, 0.2, 0.1] with top_k=2 leaves {0, 1} renormalised to [4/7, 3/7]; top_p=0.5 then keeps only
    id 0 (4/7 > 0.5). Without top-k, p=0.5 keeps {0, 1} (0.4 < 0.5)."""
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    assert kept(process_logits(logits, top_k=2, top_p=0.5)) == [{0}]
    assert kept(process_logits(logits, top_p=0.5)) == [{0, 1}]


# ----------------------------------------------------------------------------------------------------------------
# min-p


def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability():
    """[0.6, 0.25, 0.1, 0.05]: min_p=0.2 -> threshold 0.12 keeps {0, 1}; min_p=0.1 -> 0.06 keeps {0, 1, 2};
    min_p=0.05 -> 0.03 keeps all; min_p=1 keeps only the top token; min_p=0 keeps all."""
    logits = logits_of([0.6, 0.25, 0.1, 0.05])
    assert kept(min_p_filter(logits, 0.2)) == [{0, 1}]
    assert kept(min_p_filter(logits, 0.1)) == [{0, 1, 2}]
    assert kept(min_p_filter(logits, 0.05)) == [{0, 1, 2, 3}]
    assert kept(min_p_filter(logits, 1.0)) == [{0}]
    assert kept(min_p_filter(logits, 0.0)) == [{0, 1, 2, 3}]


def test_min_p_is_relative_to_each_rows_top_token():
    """min_p=0.6: row 0 = [0.7, 0.2, 0.05, 0.05] has threshold 0.42 and keeps {0}; the flatter row 1 =
    [0.4, 0.3, 0.2, 0.1] has threshold 0.24 and keeps {0, 1}."""
    logits = logits_of([0.7, 0.2, 0.05, 0.05], [0.4, 0.3, 0.2, 0.1])
    assert kept(min_p_filter(logits, 0.6)) == [{0}, {0, 1}]


# ----------------------------------------------------------------------------------------------------------------
# repetition penalty and temperature


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    """Seen ids {0, 1, 4} (4 twice counts once), penalty 2: 2.0 -> 1.0, -1.0 -> -2.0, 0.0 stays 0.0;
    unseen ids 2 (0.5) and 3 (-3.0) are unchanged."""
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0]])
    previous = torch.tensor([[0, 1, 4, 4]])
    out = apply_repetition_penalty(logits, previous, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, -3.0, 0.0]]))
    # A penalty below 1 rewards repetition with the same rule.
    out = apply_repetition_penalty(logits, previous, 0.5)
    assert torch.equal(out, torch.tensor([[4.0, -0.5, 0.5, -3.0, 0.0]]))


def test_repetition_penalty_ignores_padding():
    """Position 0 holds a pad (id 0, mask 0): id 0 is not penalised, id 1 is."""
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0, attention_mask=torch.tensor([[0, 1]]))
    assert torch.equal(out, torch.tensor([[2.0, -2.0, 0.5]]))


def test_repetition_penalty_matches_hugging_face():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(3, 50)
    previous = torch.randint(0, 50, (3, 12))
    ours = apply_repetition_penalty(logits, previous, 1.3)
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.3)(previous, logits.clone())
    assert torch.equal(ours, theirs)


def test_occurrence_flags():
    flags = occurrence_flags(torch.tensor([[3, 1, 3], [0, 0, 2]]), 5, torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert flags.tolist() == [[False, True, False, True, False], [True, False, True, False, False]]


def test_temperature_divides_and_one_is_identity():
    logits = torch.tensor([[2.0, -4.0]])
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[4.0, -8.0]]))
    assert apply_temperature(logits, 1.0) is logits
    with pytest.raises(ValueError, match=r"temperature >= 1e-05, got 0.0; smaller temperatures mean greedy"):
        apply_temperature(logits, 0.0)
    with pytest.raises(ValueError, match=r"temperature >= 1e-05, got 1e-300"):
        apply_temperature(logits, 1e-300)


def test_filters_match_hugging_face_warpers_on_random_logits():
    """On random logits (no boundary ties) the kept sets agree with transformers' warpers."""
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(4, 100) * 3
    ids = torch.zeros(4, 1, dtype=torch.long)
    for ours, theirs in [
        (top_k_filter(logits, 7), transformers.TopKLogitsWarper(7)(ids, logits.clone())),
        (top_p_filter(logits, 0.7), transformers.TopPLogitsWarper(0.7)(ids, logits.clone())),
        (min_p_filter(logits, 0.1), transformers.MinPLogitsWarper(0.1)(ids, logits.clone())),
    ]:
        assert kept(ours) == kept(theirs)


# ----------------------------------------------------------------------------------------------------------------
# composition and sampling


def test_process_logits_greedy_only_applies_the_penalty():
    logits = torch.tensor([[3.0, 2.5, -1.0]])
    seen = torch.tensor([[True, False, False]])
    out = process_logits(logits, temperature=0, top_k=1, repetition_penalty=2.0, seen=seen)
    assert torch.equal(out, torch.tensor([[1.5, 2.5, -1.0]]))
    with pytest.raises(ValueError, match="needs `seen`"):
        process_logits(logits, repetition_penalty=2.0)


def test_sampling_draws_only_kept_tokens_and_is_reproducible():
    logits = top_k_filter(logits_of([0.4, 0.3, 0.2, 0.1]).expand(2000, 4).contiguous(), 2)
    draws = sample_next_token(logits, 1.0, torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {0, 1}
    again = sample_next_token(logits, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    # 0.4 / 0.7 of the draws should be id 0 (binomial sd ~ 0.011 at n=2000).
    assert abs((draws == 0).float().mean().item() - 4 / 7) < 0.05
    assert sample_next_token(torch.tensor([[0.0, 1.0, 1.0]]), 0).tolist() == [1]  # greedy ties: lowest id


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\]"),
        ({"min_p": 1.1}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be a number in \[0.01, 100\]"),
        ({"repetition_penalty": 1e-300}, r"repetition_penalty must be a number in \[0.01, 100\] .* got 1e-300"),
        ({"repetition_penalty": 101.0}, r"repetition_penalty must be a number in \[0.01, 100\]"),
        ({"repetition_penalty": float("inf")}, r"repetition_penalty must be a number in \[0.01, 100\]"),
    ],
)
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_sampling_args(**kwargs)


def test_filters_reject_bad_arguments():
    logits = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\]"):
        min_p_filter(logits, 2.0)
    with pytest.raises(ValueError, match=r"repetition_penalty must be a number in \[0.01, 100\]"):
        apply_repetition_penalty(logits, torch.zeros(1, 1, dtype=torch.long), -1.0)


@pytest.mark.parametrize("temperature", [0.0, 1e-300, 5e-324, MIN_SAMPLING_TEMPERATURE / 2])
def test_a_temperature_below_the_floor_is_greedy(temperature):
    """1e-300 rounds to 0 in float32 and dividing by it gave NaN scores; below the floor it is an exact argmax."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.4]])
    assert is_greedy(temperature)
    scores = process_logits(logits, temperature=temperature, top_k=2, top_p=0.5)
    assert torch.equal(scores, logits)  # greedy: the filters cannot change an argmax, so they are skipped
    generator = torch.Generator().manual_seed(0)
    assert sample_next_token(scores, temperature, generator).tolist() == [1, 0]
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # no draw was made


def test_the_floor_itself_samples():
    assert not is_greedy(MIN_SAMPLING_TEMPERATURE)
    scores = process_logits(torch.tensor([[0.0, 1e-4]]), temperature=MIN_SAMPLING_TEMPERATURE)
    assert torch.isfinite(scores).all() and scores[0, 1] - scores[0, 0] == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize(
    ("scores", "logits", "match"),
    [
        ([[float("nan"), 1.0]], [[float("nan"), 1.0]], r"the model produced non-finite logits .* for row 0"),
        ([[1.0, 2.0], [float("inf"), 1.0]], [[1.0, 2.0], [1e38, 1.0]], r"scores of row 1 overflowed to NaN or inf"),
        ([[float("-inf"), float("-inf")]], None, r"scores of row 0 overflowed"),
    ],
)
def test_non_finite_scores_are_a_value_error(scores, logits, match):
    logits_tensor = None if logits is None else torch.tensor(logits)
    with pytest.raises(NonFiniteScoresError, match=match) as caught:
        check_next_token_scores(torch.tensor(scores), logits_tensor)
    assert isinstance(caught.value, ValueError)


def test_finite_scores_and_filtered_tokens_pass():
    check_next_token_scores(torch.tensor([[float("-inf"), 0.5, -3.0]]))  # -inf is a token a filter removed
