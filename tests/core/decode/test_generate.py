"""generate(): parity with Hugging Face, batched == per prompt, cached == uncached, stopping, overflow, errors."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.decode import generate, stream
from llm_lab.core.decode.generate import GenerationConfig
from llm_lab.core.decode.processors import min_p_filter, occurrence_flags, penalize_seen, top_k_filter, top_p_filter
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15]]


def tiny(**overrides) -> MiniGPT:
    """A random tiny model with well-separated logits (a large init std), so greedy choices are not near-ties."""
    settings = dict(vocab_size=61, context_length=32, n_layer=2, n_head=4, n_embd=32, init_std=0.3)
    settings.update(overrides)
    return MiniGPT(MiniGPTConfig(**settings)).eval()


VARIANTS = {
    "gpt2": {},
    "rope-gqa": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2),
    "alibi-mqa": dict(pos_encoding="alibi", n_kv_head=1),
    "sinusoidal": dict(pos_encoding="sinusoidal", tie_embeddings=False),
}


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face parity


def hf_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=61,
        n_positions=48,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=48,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(2)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("make_hf", [hf_gpt2, hf_llama], ids=["gpt2", "llama"])
def test_greedy_equals_hugging_face_generate(make_hf):
    from llm_lab.core.package.hf import from_hf_model

    hf = make_hf()
    ours = from_hf_model(hf)
    n_new = 12

    # One prompt, no end token: every step must agree.
    ids = torch.tensor([PROMPTS[0]])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False)
    out = generate(ours, ids, n_new, temperature=0)
    assert torch.equal(out.sequences, expected)

    # Left-padded batch; pick an end token that one row really produces mid-way so per-row stopping is exercised.
    ids, mask = left_pad(PROMPTS)
    free = generate(ours, ids, n_new, temperature=0, attention_mask=mask)
    eos = free.token_ids[1][4]
    expected = hf.generate(
        ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    out = generate(ours, ids, n_new, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out.sequences, expected)
    assert out.finish_reasons[1] == "eos"
    assert out.token_ids[1] == free.token_ids[1][: free.token_ids[1].index(eos)]


# ----------------------------------------------------------------------------------------------------------------
# Batched == per prompt; cached == uncached


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_greedy_equals_one_prompt_at_a_time(variant):
    model = tiny(**VARIANTS[variant])
    batched = generate(model, PROMPTS, 10, temperature=0)
    for row, prompt in enumerate(PROMPTS):
        single = generate(model, prompt, 10, temperature=0)
        assert batched.token_ids[row] == single.token_ids[0]
    assert batched.prompt_lengths == [7, 3, 5]
    # A padded tensor with its mask is the same request as the list.
    ids, mask = left_pad(PROMPTS, pad=9)
    as_tensor = generate(model, ids, 10, temperature=0, attention_mask=mask)
    assert as_tensor.token_ids == batched.token_ids


def naive_generate(
    model, prompt, n_new, *, temperature=0.0, top_k=None, top_p=None, min_p=None, penalty=1.0, generator=None
):
    """The reference loop: no cache, the whole (window of the) sequence recomputed for every token."""
    window = model.config.max_positions
    seq = list(prompt)
    for _ in range(n_new):
        with torch.no_grad():
            logits = model(torch.tensor([seq[-window:]]))[0][:, -1, :]
        if penalty != 1.0:
            logits = penalize_seen(logits, occurrence_flags(torch.tensor([seq]), logits.shape[-1]), penalty)
        if temperature == 0:
            seq.append(int(logits.argmax()))
            continue
        logits = logits / temperature
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None:
            logits = top_p_filter(logits, top_p)
        if min_p is not None:
            logits = min_p_filter(logits, min_p)
        seq.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)))
    return seq[len(prompt) :]


@pytest.mark.parametrize("batched", [False, True])
def test_prefill_once_then_one_token_per_forward_pass(batched):
    """The prompt runs through the model once; every later pass sees only the newest token (no recomputation)."""
    model = tiny()
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(args[0].shape[1]), with_kwargs=True)
    if batched:
        ids, mask = left_pad(PROMPTS)
        out = generate(model, ids, 6, temperature=0, attention_mask=mask)
    else:
        out = generate(model, PROMPTS[0], 6, temperature=0.8, top_k=5, seed=0)
    assert widths == [len(PROMPTS[0])] + [1] * 5  # 6 tokens: the prefill gives the first, 5 single-token steps
    assert all(len(row) == 6 for row in out.token_ids)


@pytest.mark.parametrize("window", ["cached", "sliding"])
def test_decode_steps_skip_the_model_s_per_call_value_checks(window):
    """The prompt's ids and mask are checked once, up front; each step then tells the model to skip its id-range
    check and hands it a boolean mask (no 0/1 value check), so on a GPU a step reads nothing back for them."""
    model = tiny(context_length=8 if window == "sliding" else 32)  # sliding: learned positions past the context
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    ids, mask = left_pad(PROMPTS)
    generate(model, ids, 6, temperature=0, attention_mask=mask)
    assert len(calls) == 6
    assert all(kw["check_id_range"] is False and kw["logits_to_keep"] == 1 for kw in calls)
    assert all(kw["attention_mask"].dtype == torch.bool for kw in calls)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=61\); got 61"):
        generate(model, [[1, 61]], 3)
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1 \(real token\)"):
        generate(model, ids, 3, attention_mask=mask * 2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_greedy_equals_the_uncached_reference(variant):
    model = tiny(**VARIANTS[variant])
    out = generate(model, PROMPTS[0], 20, temperature=0)
    assert out.token_ids[0] == naive_generate(model, PROMPTS[0], 20)


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.8),
        dict(temperature=1.3, top_k=5),
        dict(temperature=1.0, top_p=0.7),
        dict(temperature=1.0, min_p=0.05, penalty=1.5),
    ],
)
def test_cached_sampling_equals_the_uncached_reference(settings):
    """Same generator seed, same processors: the cached engine draws exactly the reference's tokens."""
    model = tiny(init_std=0.05)  # flatter logits, so sampling really varies
    penalty = settings.pop("penalty", 1.0)
    expected = naive_generate(
        model, PROMPTS[2], 15, generator=torch.Generator().manual_seed(7), penalty=penalty, **settings
    )
    out = generate(
        model, PROMPTS[2], 15, generator=torch.Generator().manual_seed(7), repetition_penalty=penalty, **settings
    )
    assert out.token_ids[0] == expected


def test_learned_positions_slide_the_window_past_the_context():
    """context_length 12, prompt 7, 20 new tokens: after 6 tokens the window slides (uncached recomputation of the
    last 12 tokens), exactly like the reference loop's seq[-12:]."""
    model = tiny(context_length=12)
    out = generate(model, PROMPTS[0], 20, temperature=0)
    assert len(out.token_ids[0]) == 20
    assert out.token_ids[0] == naive_generate(model, PROMPTS[0], 20)
    # A prompt longer than the window is cut to its last 12 tokens.
    long_prompt = list(range(1, 19))
    assert generate(model, long_prompt, 5, temperature=0).token_ids[0] == naive_generate(model, long_prompt, 5)
    # Padded rows slide too.
    batched = generate(model, PROMPTS, 20, temperature=0)
    assert batched.token_ids[1] == naive_generate(model, PROMPTS[1], 20)


def test_extrapolating_positions_stop_at_max_positions_or_raise():
    """RoPE with max_positions 12 and a 7-token prompt fits 12 - 7 + 1 = 6 new tokens (the last is never fed)."""
    model = tiny(context_length=12, pos_encoding="rope")
    out = generate(model, PROMPTS[0], 20, temperature=0)
    assert len(out.token_ids[0]) == 6 and out.finish_reasons == ["length"]
    assert out.token_ids[0] == naive_generate(model, PROMPTS[0], 6)
    with pytest.raises(ValueError, match=r"7 prompt tokens \+ 20 new tokens do not fit in max_positions=12"):
        generate(model, PROMPTS[0], 20, on_overflow="error")
    assert len(generate(model, PROMPTS[0], 6, on_overflow="error").token_ids[0]) == 6
    # Asked for, sliding works for RoPE as well.
    slid = generate(model, PROMPTS[0], 15, temperature=0, on_overflow="slide")
    assert slid.token_ids[0] == naive_generate(model, PROMPTS[0], 15)
    with pytest.raises(ValueError, match="the prompt has 13 tokens but the model takes at most max_positions=12"):
        generate(model, list(range(13)), 1)


# ----------------------------------------------------------------------------------------------------------------
# Stopping, padding, reproducibility


def test_each_row_stops_on_its_own_end_token_and_is_padded_after():
    model = tiny()
    free = generate(model, PROMPTS, 10, temperature=0)
    eos = free.token_ids[0][3]
    out = generate(model, PROMPTS, 10, temperature=0, eos_token_id=eos, pad_token_id=60)
    for row, tokens in enumerate(free.token_ids):
        cut = tokens.index(eos) if eos in tokens else None
        assert out.token_ids[row] == tokens[:cut]
        assert out.finish_reasons[row] == ("length" if cut is None else "eos")
        if cut is not None and cut + 1 < out.sequences.shape[1] - 7:
            new = out.sequences[row, 7:].tolist()
            assert new[cut] == eos and set(new[cut + 1 :]) == {60}
    # Several end ids: the first one produced ends the row.
    ends = {free.token_ids[1][2], eos}
    two = generate(model, PROMPTS, 10, temperature=0, eos_token_id=sorted(ends))
    cut = next(i for i, t in enumerate(free.token_ids[1]) if t in ends)
    assert two.token_ids[1] == free.token_ids[1][:cut] and two.finish_reasons[1] == "eos"


def test_generation_ends_early_when_every_row_is_finished():
    model = tiny()
    first = generate(model, PROMPTS[1], 1, temperature=0).token_ids[0][0]
    out = generate(model, PROMPTS[1], 50, temperature=0, eos_token_id=first)
    assert out.token_ids == [[]] and out.finish_reasons == ["eos"]
    assert out.sequences.shape == (1, len(PROMPTS[1]) + 1)


def test_same_seed_same_tokens():
    model = tiny(init_std=0.05)
    a = generate(model, PROMPTS, 12, temperature=1.0, top_k=20, seed=123)
    b = generate(model, PROMPTS, 12, temperature=1.0, top_k=20, seed=123)
    c = generate(model, PROMPTS, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(123))
    d = generate(model, PROMPTS, 12, temperature=1.0, top_k=20, seed=124)
    assert a.token_ids == b.token_ids == c.token_ids
    assert d.token_ids != a.token_ids


def test_zero_new_tokens_and_model_mode_is_restored():
    model = tiny(dropout=0.5)
    model.train()
    out = generate(model, PROMPTS, 0)
    assert out.token_ids == [[], [], []] and out.finish_reasons == ["length"] * 3
    assert out.sequences.shape == (3, 7)
    # Dropout is off during generation (greedy is deterministic) and training mode comes back.
    assert (
        generate(model, PROMPTS[0], 5, temperature=0).token_ids
        == generate(model, PROMPTS[0], 5, temperature=0).token_ids
    )
    assert model.training


def test_texts_with_a_tokenizer():
    from llm_lab.core.tokenization import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh ")
    model = tiny(vocab_size=tok.vocab_size)
    out = generate(model, tok.encode("abc"), 8, temperature=0, tokenizer=tok)
    assert out.texts == [tok.decode(out.token_ids[0])]


# ----------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([],), {}, "empty prompt: input_ids is an empty list"),
        (([[1, 2], []],), {}, "empty prompt: prompt 1 has no tokens"),
        ((torch.zeros(1, 0, dtype=torch.long),), {}, r"empty prompt: input_ids has shape \(1, 0\)"),
        (([1, 2],), {"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        (([1, 2],), {"temperature": -1.0}, "temperature must be >= 0"),
        (([1, 2],), {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        (([1, 2],), {"top_p": 1.01}, r"top_p must be in \(0, 1\]"),
        (([1, 2],), {"top_k": 0}, "top_k must be an integer >= 1"),
        (([1, 2],), {"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        (([1, 2],), {"repetition_penalty": 0.0}, r"repetition_penalty must be a number in \[0.01, 100\]"),
        (([1, 2],), {"repetition_penalty": 1e-300}, r"repetition_penalty must be a number in \[0.01, 100\]"),
        (([1, 61],), {}, r"token ids must lie in \[0, vocab_size=61\); got 61"),
        (([[1, -1]],), {}, r"token ids must lie in \[0, vocab_size=61\); got -1"),
        ((torch.tensor([[1.0, 2.0]]),), {}, "input_ids must hold integer token ids"),
        (
            (torch.tensor([[1, 2, 3]]),),
            {"attention_mask": torch.ones(1, 2, dtype=torch.long)},
            r"attention_mask shape \(1, 2\) does not match input_ids shape \(1, 3\)",
        ),
        (
            (torch.tensor([[1, 2, 3]]),),
            {"attention_mask": torch.tensor([[1, 1, 0]])},
            "attention_mask must describe left padding",
        ),
        (
            (torch.tensor([[1, 2, 3]]),),
            {"attention_mask": torch.tensor([[0, 2, 1]])},
            "attention_mask must hold only 0",
        ),
        (
            (torch.tensor([[1, 2], [3, 4]]),),
            {"attention_mask": torch.tensor([[0, 0], [1, 1]])},
            "empty prompt: row 0 of attention_mask has no real token",
        ),
        (([[1, 2]],), {"attention_mask": torch.ones(1, 2)}, "attention_mask is only accepted with a tensor"),
        (([1, 2],), {"eos_token_id": 99}, r"eos_token_id=99 is outside the vocabulary \[0, 61\)"),
        (([1, 2],), {"pad_token_id": -3}, r"pad_token_id=-3 is outside the vocabulary"),
        (([1, 2],), {"stop": "x"}, "stop strings are matched on decoded text: pass tokenizer="),
        (([1, 2],), {"seed": 1, "generator": torch.Generator()}, "either generator= or seed="),
        (([1, 2],), {"on_overflow": "wrap"}, "on_overflow='wrap' is not supported; choose one of: slide, stop, error"),
        (("hello",), {}, "input_ids must be a list of ints"),
    ],
)
def test_bad_input_is_a_value_error(args, kwargs, match):
    model = tiny()
    max_new = kwargs.pop("max_new_tokens", 3)
    with pytest.raises(ValueError, match=match):
        generate(model, *args, max_new, **kwargs)


def test_a_tiny_temperature_generates_the_greedy_text():
    """``temperature=1e-300`` used to end in torch's "probability tensor contains inf/nan"; it is greedy now."""
    model = tiny()
    greedy = generate(model, [[1, 2, 3], [4, 5]], 12, temperature=0)
    assert generate(model, [[1, 2, 3], [4, 5]], 12, temperature=1e-300, seed=3).token_ids == greedy.token_ids
    penalized = generate(model, [[1, 2, 3], [4, 5]], 12, temperature=1e-300, repetition_penalty=0.01)
    plain = generate(model, [[1, 2, 3], [4, 5]], 12, temperature=0, repetition_penalty=0.01)
    assert penalized.token_ids == plain.token_ids


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_model_with_nan_weights_is_a_value_error(temperature):
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")  # one NaN weight: every row's logit for token 3 is NaN
    with pytest.raises(ValueError, match=r"the model produced non-finite logits \(NaN or inf\) for row 0"):
        generate(model, [1, 2], 5, temperature=temperature, seed=0)
    chunks = stream(model, [1, 2], 5, temperature=temperature, seed=0)
    with pytest.raises(ValueError, match=r"non-finite logits"):
        next(chunks)


def test_one_generation_config_passed_whole_gives_what_its_keywords_give():
    """``generation=GenerationConfig(...)`` and the same settings as keywords are one call; keywords replace fields."""
    model = tiny()
    settings = GenerationConfig.from_kwargs(temperature=0.9, top_k=5, seed=7, eos_token_id=3, on_overflow="stop")
    by_keywords = generate(model, PROMPTS, 12, temperature=0.9, top_k=5, seed=7, eos_token_id=3, on_overflow="stop")
    by_object = generate(model, PROMPTS, 12, generation=settings)
    assert by_object.token_ids == by_keywords.token_ids
    assert by_object.finish_reasons == by_keywords.finish_reasons
    streamed = [[] for _ in PROMPTS]
    for chunk in stream(model, PROMPTS, 12, generation=settings):
        if chunk.token_id is not None:
            streamed[chunk.row].append(chunk.token_id)
    assert streamed == by_object.token_ids
    replaced = generate(model, PROMPTS, 12, generation=settings, seed=8, top_k=None)
    assert replaced.token_ids == generate(model, PROMPTS, 12, temperature=0.9, seed=8, eos_token_id=3).token_ids
    assert settings.sampling.top_k == 5 and settings.seed == 7  # passed whole, never changed


def test_a_generation_config_is_checked_when_built():
    with pytest.raises(ValueError, match="either generator= or seed="):
        GenerationConfig(seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="on_overflow='wrap' is not supported"):
        GenerationConfig.from_kwargs(on_overflow="wrap")
    with pytest.raises(ValueError, match="generation must be a GenerationConfig, got dict"):
        generate(tiny(), PROMPTS, 2, generation={"seed": 1})
    with pytest.raises(TypeError, match="unknown sampling setting 'sed'"):
        GenerationConfig.from_kwargs(sed=1)
