"""``inspect_ids``/``inspect_text``: one traced pass gives the token scores, the attention maps and the logit lens."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.decode import score_tokens
from llm_lab.core.inspect import inspect_ids, inspect_text
from llm_lab.core.model import ForwardTrace, MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer

TEXT = "to be or not to be"


@pytest.fixture(scope="module")
def setup():
    tokenizer = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=24, n_layer=3, n_head=2, n_embd=16)
    return tokenizer, MiniGPT(config).eval()


def test_scores_attentions_and_lens_agree_with_their_references(setup):
    tokenizer, model = setup
    ins = inspect_text(model, tokenizer, TEXT, top_n=4, lens_top=2)
    ids = tokenizer.encode(TEXT)
    T = len(ids)
    assert ins.token_ids == ids and "".join(ins.tokens) == TEXT
    # The traced pass takes the written-out attention, the scoring pass the fused one: equal up to rounding.
    scored = score_tokens(model, ids, top_n=4)[0]
    assert ins.logprobs[0] is None and scored[0] is None
    for got, want in zip(ins.logprobs[1:], scored[1:], strict=True):
        assert got.token_id == want.token_id and got.logprob == pytest.approx(want.logprob, abs=1e-5)
        assert [i for i, _ in got.top] == [i for i, _ in want.top]
    trace = ForwardTrace()
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]), trace=trace)
    assert torch.equal(ins.attentions, torch.cat(trace.attentions))
    assert ins.attentions.shape == (3, 2, T, T)
    assert ins.lens_names == ["embeddings", "layer 1", "layer 2", "layer 3"]
    assert ins.lens_top_ids.shape == (4, T, 2) and ins.lens_next_logprobs.shape == (4, T - 1)
    # The last lens row is the model's own prediction: its next-token scores are the token scores.
    logp = torch.log_softmax(logits[0].float(), -1)
    assert torch.equal(ins.lens_top_ids[-1, :, 0], logp.argmax(-1))
    assert torch.allclose(ins.lens_next_logprobs[-1], torch.tensor([s.logprob for s in ins.logprobs[1:]]))
    # The embeddings row reads the token embedding (plus positions) straight through the head.
    with torch.no_grad():
        first = model.lm_head(model.final_norm(trace.hidden_states[0][0]))
    assert torch.equal(ins.lens_top_ids[0, :, 0], first.argmax(-1))
    rows = ins.token_rows()
    assert rows[0]["logprob"] is None and rows[1]["token"] == "'o'"
    assert rows[1]["prob"] == pytest.approx(float(torch.tensor(ins.logprobs[1].logprob).exp()))
    lens = ins.lens_rows()
    assert len(lens) == 4 * T and lens[-1]["next_token"] is None and lens[0]["next_token"] == "'o'"


def test_bad_input_is_named(setup):
    tokenizer, model = setup
    with pytest.raises(ValueError, match="nothing to inspect: the text is empty"):
        inspect_text(model, tokenizer, "")
    with pytest.raises(ValueError, match="cannot inspect 25 tokens: the model sees at most max_positions=24"):
        inspect_ids(model, [1] * 25)
    with pytest.raises(ValueError, match="lens_top must be at least 1"):
        inspect_ids(model, [1, 2], lens_top=0)
    single = inspect_ids(model, [3])
    assert single.logprobs == [None] and single.lens_next_logprobs.shape == (4, 0)
