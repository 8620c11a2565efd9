"""Log-probabilities from ``generate``, ``stream`` and ``score_tokens`` are ``log_softmax`` of the model's raw
logits, recomputed here with a plain uncached forward pass over each row's own tokens (no padding, no cache)."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.decode import generate, score_tokens, stream
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.model.gpt import lm_loss

VOCAB = 37
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> MiniGPT:
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=VOCAB, context_length=32, n_layer=2, n_head=2, n_embd=32)
    model = MiniGPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)  # a peaked distribution, so top-k alternatives are well separated
    return model


def reference_logprobs(model: MiniGPT, ids: list[int]) -> torch.Tensor:
    """``(len(ids) - 1, V)``: row t is the raw next-token distribution after ``ids[: t + 1]``."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0, :-1].double(), dim=-1)


def check_row(model: MiniGPT, prompt: list[int], new: list[int], scored, n: int) -> None:
    assert [s.token_id for s in scored] == new
    expected = reference_logprobs(model, prompt + new)[len(prompt) - 1 :]
    for step, item in enumerate(scored):
        assert abs(item.logprob - float(expected[step, new[step]])) <= ATOL
        assert len(item.top) == n
        best = expected[step].topk(n)
        assert [i for i, _ in item.top] == best.indices.tolist()
        assert max(abs(lp - float(want)) for (_, lp), want in zip(item.top, best.values, strict=True)) <= ATOL


PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
SETTINGS = [
    dict(temperature=0),
    dict(temperature=1.3, top_k=4, top_p=0.8),  # the reported distribution is the raw one, not the filtered one
    dict(temperature=0.7, min_p=0.1, repetition_penalty=1.5),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "filtered", "penalty"])
def test_generate_logprobs_are_log_softmax_of_the_raw_logits(model, settings):
    out = generate(model, PROMPTS, 8, logprobs=3, seed=5, **settings)
    assert out.logprobs is not None and len(out.logprobs) == len(PROMPTS)
    for prompt, new, scored in zip(PROMPTS, out.token_ids, out.logprobs, strict=True):
        check_row(model, prompt, new, scored, 3)
    plain = generate(model, PROMPTS, 8, seed=5, **settings)
    assert plain.logprobs is None
    assert plain.token_ids == out.token_ids  # asking for log-probabilities changes no token


def test_greedy_tokens_are_the_top_alternative(model):
    out = generate(model, PROMPTS, 6, logprobs=1, temperature=0)
    for scored in out.logprobs:
        assert all(item.top[0][0] == item.token_id and item.top[0][1] == item.logprob for item in scored)


def test_stream_logprobs_match_generate_including_end_tokens_and_stop_strings(model):
    kwargs = dict(max_new_tokens=10, logprobs=2, seed=3, temperature=1.0, eos_token_id=[4, 11])
    out = generate(model, PROMPTS, **kwargs)
    per_row = {r: [] for r in range(len(PROMPTS))}
    for chunk in stream(model, PROMPTS, **kwargs):
        if chunk.token_id is None:
            assert chunk.logprob is None
        else:
            assert chunk.logprob.token_id == chunk.token_id
            per_row[chunk.row].append(chunk.logprob)
    assert [per_row[r] for r in range(len(PROMPTS))] == out.logprobs
    for prompt, new, scored in zip(PROMPTS, out.token_ids, out.logprobs, strict=True):
        check_row(model, prompt, new, scored, 2)  # the end token itself is not reported, as in token_ids


def test_zero_alternatives_and_bad_values(model):
    out = generate(model, [1, 2], 3, logprobs=0, temperature=0)
    assert all(item.top == () for item in out.logprobs[0])
    for bad in (-1, VOCAB + 1, 1.5, True):
        with pytest.raises(ValueError, match=r"logprobs must be an integer in \[0, vocab_size=37\]"):
            generate(model, [1, 2], 3, logprobs=bad)


def test_score_tokens_batched_and_padded(model):
    rows = [[3, 1, 4, 1, 5, 9], [2, 6], [5]]
    scored = score_tokens(model, rows, top_n=2)
    assert [len(r) for r in scored] == [6, 2, 1]
    for ids, row in zip(rows, scored, strict=True):
        assert row[0] is None
        if len(ids) > 1:
            check_row(model, ids[:1], ids[1:], row[1:], 2)
    # The mean negative log-probability is the language-model loss of the text.
    ids = torch.tensor([rows[0]])
    with torch.no_grad():
        logits, _ = model(ids)
    loss = lm_loss(logits[:, :-1], ids[:, 1:])
    mean = -sum(item.logprob for item in scored[0][1:]) / 5
    assert abs(mean - float(loss)) <= ATOL


def test_score_tokens_refuses_too_long_text(model):
    with pytest.raises(ValueError, match="cannot score 33 tokens: the model sees at most max_positions=32"):
        score_tokens(model, [1] * 33)
