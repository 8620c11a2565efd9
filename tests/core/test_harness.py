"""LabLM, the lm-evaluation-harness model class: every answer checked against a plain forward of the same model.

The harness's own ``Instance`` objects are the requests, so the class is driven exactly as ``simple_evaluate``
drives it; the end-to-end runs against the harness's ``hf`` backend and the server are in
``tests/serve/test_harness_routes.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from package_helpers import TEXT, bpe_tokenizer, char_tokenizer  # noqa: E402

from llm_lab.core.decode import generate  # noqa: E402
from llm_lab.core.evaluation import evaluate_text  # noqa: E402
from llm_lab.core.harness import LabLM  # noqa: E402
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig  # noqa: E402

ARCHS = {
    "gpt2-like": {},
    "rope-rmsnorm-bigram": dict(pos_encoding="rope", norm="rmsnorm", bigram_embedding=True, n_kv_head=2),
}


def tiny_model(tokenizer, context_length: int = 24, seed: int = 0, **overrides) -> MiniGPT:
    config = MiniGPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=context_length, n_layer=2, n_head=4, n_embd=32, **overrides
    )
    torch.manual_seed(seed)
    model = MiniGPT(config).eval()
    with torch.no_grad():  # a wider init, so that log-probabilities and greedy choices differ between tokens
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    return model


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def reference_loglikelihood(model: MiniGPT, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One unbatched, uncached forward over the request (cut from the left to the context, as the harness does)."""
    window = model.config.context_length
    whole = (context + continuation)[-(window + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([whole[:-1]]))
    logp = torch.log_softmax(logits[0, -len(continuation) :].float(), dim=-1)
    target = torch.tensor(continuation)
    return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_loglikelihood_equals_one_forward_per_request(arch, batch_size):
    """Shared contexts (each run once, several of them left-padded into one batch, then the choices on copies of
    their caches, batch_size at a time, shortest first, mixing questions), lone requests (left-padded batches)
    and a request longer than the context (cut from the left) all give what a plain forward of each request gives."""
    tok = bpe_tokenizer()
    model = tiny_model(tok, **arch)
    lm = LabLM(model, tok, batch_size=batch_size)
    question = "the quick brown fox jumps over"
    args = [(question, " the lazy dog."), (question, " a"), (question, " the question."), (question, " to be")]
    args += [("to be, or", " not to be"), ("to be, or", " the lazy dog"), ("to be, or", ".")]
    args += [("a small", " model"), ("the lazy dog", ".")]
    args += [(TEXT[:200], " the quick brown fox")]  # longer than the 24-token context
    got = lm.loglikelihood(instances("loglikelihood", args))
    for (context, continuation), (logprob, greedy) in zip(args, got, strict=True):
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        expected, expected_greedy = reference_loglikelihood(model, context_ids, continuation_ids)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_questions_that_fit_alone_but_not_together_are_scored_apart():
    """A long context with short choices and a short context with long choices each fit the 24-token context,
    but not in one shared cache (longest context + longest choice): they are batched apart, not refused."""
    tok = bpe_tokenizer()
    model = tiny_model(tok)
    lm = LabLM(model, tok, batch_size=8)
    ids = tok.encode(TEXT)
    long_context, short_context = ids[:20], ids[40:42]
    requests = [(None, long_context, [ids[20 + k]]) for k in range(3)]
    requests += [(None, short_context, ids[50 + k : 65 + k]) for k in range(3)]
    got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (_, context, continuation), (logprob, greedy) in zip(requests, got, strict=True):
        expected, expected_greedy = reference_loglikelihood(model, context, continuation)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_greedy_flag_is_true_for_the_models_own_greedy_continuation():
    tok = bpe_tokenizer()
    model = tiny_model(tok)
    context = "to be, or not"
    ids = tok.encode(context)
    greedy_ids = generate(model, ids, 4, temperature=0.0).token_ids[0]
    lm = LabLM(model, tok)
    [(_, greedy)] = lm._loglikelihood_tokens([(None, ids, greedy_ids)])
    [(_, other)] = lm._loglikelihood_tokens([(None, ids, [(greedy_ids[0] + 1) % tok.vocab_size])])
    assert greedy and not other


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_rolling_loglikelihood_equals_the_windowed_loss_of_evaluate_text(arch):
    """The harness's windows (context_len=1, the end-of-text token in front) are the non-overlapping windows of
    ``evaluate_text`` for a text of whole windows (the harness's last window of a longer text keeps a full context,
    where ``evaluate_text`` starts a short one), so the two totals agree for a text several contexts long."""
    tok = bpe_tokenizer()
    model = tiny_model(tok, context_length=16, **arch)
    lm = LabLM(model, tok, batch_size=2)
    three_windows = tok.decode(tok.encode(TEXT)[: 3 * 16])
    assert len(tok.encode(three_windows)) == 3 * 16
    texts = [three_windows, "to be, or not to be"]
    got = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    for text, total in zip(texts, got, strict=True):
        assert -total == pytest.approx(evaluate_text(model, tok, text).total_nll, rel=1e-5)


def test_char_package_rolling_loglikelihood_is_one_clear_error():
    tok = char_tokenizer()
    assert tok.eot_token_id is None
    lm = LabLM(tiny_model(tok), tok)
    with pytest.raises(ValueError, match="no end-of-text token, so nothing can predict the first token"):
        lm.loglikelihood_rolling(instances("loglikelihood_rolling", [("to be, or not",)]))
    # Multiple choice and generation need no end-of-text token.
    [(logprob, _)] = lm.loglikelihood(instances("loglikelihood", [("to be, or", " not")]))
    assert math.isfinite(logprob) and logprob < 0
    [text] = lm.generate_until(instances("generate_until", [("to be", {"until": ["\n"], "max_gen_toks": 5})]))
    assert isinstance(text, str)


def test_generate_until_is_greedy_text_cut_before_the_first_stop():
    tok = char_tokenizer()
    model = tiny_model(tok, context_length=32)
    lm = LabLM(model, tok, batch_size=2)
    prompts = ["the quick", "to be, or not", "a"]
    free = [generate(model, tok.encode(p), 12, temperature=0.0, tokenizer=tok).texts[0] for p in prompts]
    stop = next(ch for ch in free[0][1:] if ch.strip())  # a character the first answer contains
    got = lm.generate_until(instances("generate_until", [(p, {"until": [stop], "max_gen_toks": 12}) for p in prompts]))
    assert got == [text.split(stop)[0] for text in free]


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning(caplog):
    tok = bpe_tokenizer()
    model = tiny_model(tok)
    lm = LabLM(model, tok)
    with caplog.at_level("WARNING", logger="llm_lab.core.harness"):
        [(logprob, _)] = lm.loglikelihood(instances("loglikelihood", [(TEXT, " the end")]))
    assert "1 request(s) were longer than the model's context (24 tokens) and were cut from the left" in caplog.text
    context_ids, continuation_ids = lm._encode_pair(TEXT, " the end")
    assert logprob == pytest.approx(reference_loglikelihood(model, context_ids, continuation_ids)[0], abs=1e-4)


def test_bad_batch_size_is_refused():
    tok = char_tokenizer()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        LabLM(tiny_model(tok), tok, batch_size=0)
