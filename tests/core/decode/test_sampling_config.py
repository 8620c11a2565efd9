"""SamplingConfig: one validated object for the sampling settings, built from the processor registry."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.decode import SamplingConfig, generate, stream
from llm_lab.core.decode.processors import (
    MinP,
    RepetitionPenalty,
    Sampler,
    Temperature,
    TopK,
    TopP,
    min_p_filter,
    penalize_seen,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from llm_lab.core.decode.sampling import PROCESSORS, LogitsProcessor, SamplingParam, register_processor
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]


def tiny() -> MiniGPT:
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=61, context_length=32, n_layer=2, n_head=4, n_embd=32, init_std=0.3)
    return MiniGPT(config).eval()


def test_defaults_and_attribute_access():
    config = SamplingConfig()
    assert dict(config) == {
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": None,
        "top_p": None,
        "min_p": None,
    }
    assert config.processors() == []  # temperature 1 and no filters: nothing to do
    changed = config.replace(temperature=0.5, top_k=3)
    assert (changed.temperature, changed.top_k, config.top_k) == (0.5, 3, None)
    assert changed == SamplingConfig(top_k=3, temperature=0.5) and hash(changed) == hash(
        SamplingConfig(top_k=3, temperature=0.5)
    )
    assert isinstance(SamplingConfig(temperature=1).temperature, float)  # an int is a valid float, stored as one


def test_processors_run_in_the_documented_order_and_greedy_keeps_only_the_penalty():
    config = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.3)
    assert [type(p) for p in config.processors()] == [RepetitionPenalty, Temperature, TopK, TopP, MinP]
    assert [type(p) for p in config.replace(temperature=0).processors()] == [RepetitionPenalty]
    assert config.replace(temperature=1e-6).greedy and not config.greedy


def test_the_chain_equals_the_functions_applied_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(3, 40)
    seen = torch.rand(3, 40) < 0.2
    by_hand = min_p_filter(top_p_filter(top_k_filter(penalize_seen(logits, seen, 1.3) / 0.7, 12), 0.9), 0.05)
    config = SamplingConfig(temperature=0.7, top_k=12, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    assert torch.equal(process_logits(logits, sampling=config, seen=seen), by_hand)
    assert torch.equal(process_logits(logits, seen=seen, **config), by_hand)  # the keyword form


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"top_k": 0}, ValueError, "top_k must be an integer >= 1 (or None to disable it), got 0"),
        ({"top_k": True}, ValueError, "top_k must be an integer >= 1 (or None to disable it), got True"),
        ({"temperature": -1}, ValueError, "temperature must be >= 0 (0 means greedy), got -1"),
        ({"temperature": "hot"}, ValueError, "temperature must be a finite number >= 0 (0 means greedy), got 'hot'"),
        ({"temperature": None}, ValueError, "temperature must be a finite number >= 0 (0 means greedy), got None"),
        ({"top_p": 0}, ValueError, "top_p must be in (0, 1] (or None to disable it), got 0"),
        ({"min_p": 1.5}, ValueError, "min_p must be in [0, 1] (or None to disable it), got 1.5"),
        (
            {"repetition_penalty": 200},
            ValueError,
            "repetition_penalty must be a number in [0.01, 100] (1 disables it; outside that range the scores "
            "overflow), got 200",
        ),
        (
            {"temprature": 0.5},
            TypeError,
            "unknown sampling setting 'temprature'; the settings are: min_p, repetition_penalty, temperature, top_k, "
            "top_p",
        ),
    ],
)
def test_validation_messages(settings, error, message):
    with pytest.raises(error) as caught:
        SamplingConfig(**settings)
    assert str(caught.value) == message


def test_immutable_and_replace_validates():
    config = SamplingConfig(top_k=4)
    with pytest.raises(AttributeError, match="immutable; use .replace"):
        config.top_k = 5
    with pytest.raises(ValueError, match="top_p must be in"):
        config.replace(top_p=2.0)
    with pytest.raises(ValueError, match="sampling must be a SamplingConfig, got dict"):
        SamplingConfig.from_kwargs({"top_k": 4})
    with pytest.raises(AttributeError, match="no setting 'top_q'"):
        _ = config.top_q


def test_keyword_calls_equal_a_sampling_config():
    model = tiny()
    settings = dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.1)
    by_keywords = generate(model, PROMPTS, 20, seed=3, **settings)
    config = SamplingConfig(**settings)
    by_config = generate(model, PROMPTS, 20, seed=3, sampling=config)
    assert by_keywords.token_ids == by_config.token_ids
    assert torch.equal(by_keywords.sequences, by_config.sequences)
    streamed = [[] for _ in PROMPTS]
    for chunk in stream(model, PROMPTS, 20, seed=3, sampling=config):
        if chunk.token_id is not None:
            streamed[chunk.row].append(chunk.token_id)
    assert streamed == by_config.token_ids
    # Keywords replace the config's values: top_k=2 with the config equals every keyword written out.
    overridden = generate(model, PROMPTS, 20, seed=3, sampling=config, top_k=2)
    assert overridden.token_ids == generate(model, PROMPTS, 20, seed=3, **{**settings, "top_k": 2}).token_ids
    assert overridden.token_ids != by_config.token_ids


def test_generate_refuses_bad_settings_before_running():
    model = tiny()
    with pytest.raises(TypeError, match="unknown sampling setting 'top_kk'"):
        generate(model, PROMPTS, 5, top_kk=3)
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\]"):
        stream(model, PROMPTS, 5, sampling=SamplingConfig(), min_p=3.0)


def test_a_registered_processor_is_a_setting_of_generate(monkeypatch):
    """A new sampler is one class: registering it makes its setting part of SamplingConfig and of generate."""

    class BanToken(LogitsProcessor):
        params = (SamplingParam("ban_token", int, None, low=0, help="never produce this token id"),)
        order = 60
        runs_when_greedy = True  # it can change an argmax

        def __call__(self, logits, seen=None):
            return logits.index_fill(-1, torch.tensor([self.config.ban_token]), float("-inf"))

    monkeypatch.setattr("llm_lab.core.decode.sampling.PROCESSORS", dict(PROCESSORS))
    register_processor(BanToken)
    model = tiny()
    greedy = generate(model, PROMPTS, 12, temperature=0).token_ids
    banned = greedy[0][0]
    out = generate(model, PROMPTS, 12, temperature=0, ban_token=banned).token_ids
    assert all(banned not in row for row in out) and out != greedy
    with pytest.raises(ValueError, match=r"ban_token must be an integer >= 0 \(or None to disable it\), got -1"):
        SamplingConfig(ban_token=-1)
    with pytest.raises(ValueError, match="setting 'ban_token' of Again is already owned by BanToken"):

        @register_processor
        class Again(LogitsProcessor):
            params = (SamplingParam("ban_token", int, None),)


def test_sampler_tracks_seen_tokens():
    ids = torch.tensor([[1, 2], [3, 3]])
    sampler = Sampler(SamplingConfig(repetition_penalty=2.0), ids, vocab_size=5)
    sampler.advance(torch.tensor([4, 0]))
    assert sampler.seen.tolist() == [[False, True, True, False, True], [True, False, False, True, False]]
    assert Sampler(SamplingConfig(), ids, vocab_size=5).seen is None  # nothing needs it


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: SamplingParam("top-a", float, None), "must be a public Python identifier, got 'top-a'"),
        (lambda: SamplingParam("top_a", str, None), "kind must be int or float"),
        (lambda: SamplingParam("top_a", float, 2.0, low=0.0, high=1.0), r"top_a must be in \[0, 1\]"),
    ],
)
def test_a_bad_declaration_is_refused(declare, message):
    with pytest.raises(ValueError, match=message):
        declare()


def test_a_setting_cannot_hide_a_config_method(monkeypatch):
    monkeypatch.setattr("llm_lab.core.decode.sampling.PROCESSORS", dict(PROCESSORS))

    class Shadow(LogitsProcessor):
        params = (SamplingParam("replace", float, None),)

    with pytest.raises(ValueError, match="'replace' of Shadow would hide SamplingConfig.replace"):
        register_processor(Shadow)
