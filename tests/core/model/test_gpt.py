"""MiniGPT: the forward contract, the KV-cache and mask semantics, bad input, init, counts, loss."""

from __future__ import annotations

import math

import pytest
import torch
from model_variants import PAIRWISE, tiny_config, variant_id

import llm_lab.core.model.gpt as gpt_module
from llm_lab.core.model import KVCache, MiniGPT, MiniGPTConfig, init_weights, lm_loss


def small(**overrides) -> MiniGPTConfig:
    kwargs = dict(vocab_size=40, context_length=16, n_layer=2, n_head=4, n_embd=32)
    kwargs.update(overrides)
    return MiniGPTConfig(**kwargs)


def test_public_names_are_re_exported_from_gpt_module():
    for name in ("MiniGPT", "MiniGPTConfig", "KVCache", "lm_loss"):
        assert getattr(gpt_module, name) is getattr(__import__("llm_lab.core.model", fromlist=[name]), name)


def test_model_keeps_its_config_and_returns_no_cache_by_default():
    config = small()
    model = MiniGPT(config)
    assert model.config is config
    logits, past = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 40) and past is None


# --- KV cache semantics ----------------------------------------------------------------------------------------


def test_use_cache_allocates_a_cache_of_max_positions_and_returns_the_same_object():
    model = MiniGPT(small(pos_encoding="rope", max_seq_len=24)).eval()
    x = torch.randint(0, 40, (2, 6))
    _, cache = model(x, use_cache=True)
    assert isinstance(cache, KVCache)
    assert (cache.batch_size, cache.max_len, cache.length) == (2, 24, 6)
    _, again = model(x[:, :1], past_key_values=cache)  # a passed cache comes back even without use_cache
    assert again is cache and cache.length == 7


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_prefill_through_the_cache_is_bitwise_equal_to_the_uncached_forward(pos_encoding):
    model = MiniGPT(small(n_kv_head=2, pos_encoding=pos_encoding)).eval()
    x = torch.randint(0, 40, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.equal(model(x, use_cache=True)[0], model(x)[0])
        assert torch.equal(model(x, attention_mask=mask, use_cache=True)[0], model(x, attention_mask=mask)[0])


def test_cache_follows_model_dtype_and_can_be_reset_and_reused():
    model = MiniGPT(small()).eval().to(torch.float64)
    x = torch.randint(0, 40, (1, 8))
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config, batch_size=1)
        assert cache.dtype is None  # not allocated until the first write
        model(x[:, :4], past_key_values=cache)
        assert cache.dtype == torch.float64
        cache.reset()
        assert cache.length == 0
        first, _ = model(x[:, :3], past_key_values=cache)
        rest, _ = model(x[:, 3:], past_key_values=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-12, rtol=1e-12)


def test_left_padded_batch_decodes_like_each_row_alone():
    """Prompts of different lengths, left-padded, then three decoding steps with the growing mask."""
    model = MiniGPT(small(pos_encoding="alibi", n_kv_head=1)).eval()
    long, short = torch.randint(0, 40, (1, 7)), torch.randint(0, 40, (1, 4))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    new = torch.randint(0, 40, (2, 3))
    with torch.no_grad():
        logits, cache = model(batch, attention_mask=mask, use_cache=True)
        steps = [logits[:, -1]]
        for t in range(3):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            logits, cache = model(new[:, t : t + 1], attention_mask=mask, past_key_values=cache)
            steps.append(logits[:, -1])
        got = torch.stack(steps, 1)  # (2, 4, vocab)
        for row, prompt in enumerate((long, short)):
            alone, _ = model(torch.cat([prompt, new[row : row + 1]], 1))
            torch.testing.assert_close(got[row], alone[0, prompt.shape[1] - 1 :], atol=1e-5, rtol=1e-5)


def test_default_positions_count_real_tokens_only():
    """With a mask, positions are clamp(cumsum(mask) - 1, 0): a learned table makes this visible."""
    model = MiniGPT(small()).eval()
    x = torch.randint(0, 40, (1, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        implicit, _ = model(x, attention_mask=mask)
        explicit, _ = model(x, attention_mask=mask, position_ids=torch.tensor([[0, 0, 0, 1, 2]]))
    assert torch.equal(implicit, explicit)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "alibi"])
def test_bfloat16_model_and_autocast_keep_the_cache_in_step(pos_encoding):
    """The cache takes the dtype of the keys (bf16 under autocast or for a bf16 model); padded runs stay finite."""
    config = small(pos_encoding=pos_encoding, n_kv_head=2)
    x = torch.randint(0, 40, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    model = MiniGPT(config).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(x, attention_mask=mask)
        first, cache = model(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
        rest, _ = model(x[:, 6:], attention_mask=mask, past_key_values=cache)
    assert cache.dtype == torch.bfloat16 and torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat([first, rest], 1)[mask.bool()], full[mask.bool()], atol=0.05, rtol=0.05)
    half = MiniGPT(config).eval().to(torch.bfloat16)
    with torch.no_grad():
        logits, cache = half(x, attention_mask=mask, use_cache=True)
    assert logits.dtype == cache.dtype == torch.bfloat16 and torch.isfinite(logits).all()


# --- Bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: torch.zeros(2, 4), r"input_ids must be an integer tensor .* got dtype torch.float32"),
        (
            lambda: torch.zeros(4, dtype=torch.long),
            r"must be 2-D \(batch, seq_len\), got shape \(4,\).*input_ids\[None\]",
        ),
        (lambda: torch.zeros(1, 2, 3, dtype=torch.long), r"must be 2-D \(batch, seq_len\), got shape \(1, 2, 3\)"),
        (lambda: torch.zeros(1, 0, dtype=torch.long), r"at least one token"),
        (lambda: torch.tensor([[1, 40]]), r"input_ids must lie in \[0, vocab_size=40\); got values in \[1, 40\]"),
        (lambda: torch.tensor([[-1, 3]]), r"got values in \[-1, 3\]"),
        (
            lambda: torch.zeros(1, 17, dtype=torch.long),
            r"sequence too long: 0 cached \+ 17 new = 17 positions > max_positions=16",
        ),
        ([1, 2, 3], r"input_ids must be a torch.Tensor"),
    ],
)
def test_bad_input_ids_raise_clear_errors(make_input, message):
    model = MiniGPT(small())
    with pytest.raises(ValueError, match=message):
        model(make_input() if callable(make_input) else make_input)


def test_wrong_mask_shape_is_rejected_with_the_expected_shape():
    model = MiniGPT(small())
    x = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"attention_mask must have shape \(batch, past_len \+ seq_len\) = \(2, 4\), got \(2, 3\)"
    ):
        model(x, attention_mask=torch.ones(2, 3))
    _, cache = model(x, use_cache=True)
    with pytest.raises(ValueError, match=r"= \(2, 5\), got \(2, 1\)"):  # with a cache the mask covers the prefix too
        model(x[:, :1], attention_mask=torch.ones(2, 1), past_key_values=cache)


def test_mask_values_other_than_zero_and_one_are_rejected():
    """An additive mask (0 for real, -inf for padding) must not be read as 1/0: it would invert the padding."""
    model = MiniGPT(small())
    x = torch.zeros(1, 4, dtype=torch.long)
    additive = torch.tensor([[float("-inf"), 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"attention_mask must hold only 1 \(real token\) and 0 \(padding\), got the "
                                         r"value -inf; an additive mask"):
        model(x, attention_mask=additive)
    with pytest.raises(ValueError, match=r"got the value 2"):
        model(x, attention_mask=torch.tensor([[0, 1, 2, 1]]))
    # 0/1 in any dtype, and bools, are the same mask.
    with torch.no_grad():
        expected, _ = model(x, attention_mask=torch.tensor([[0, 1, 1, 1]]))
        for mask in (torch.tensor([[0.0, 1.0, 1.0, 1.0]]), torch.tensor([[False, True, True, True]])):
            assert torch.equal(model(x, attention_mask=mask)[0], expected)


def test_small_integer_ids_are_accepted():
    model = MiniGPT(small()).eval()
    x = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        expected, _ = model(x)
        for dtype in (torch.uint8, torch.int16, torch.int32):
            assert torch.equal(model(x.to(dtype))[0], expected)


def test_cache_from_another_model_or_batch_is_rejected():
    model = MiniGPT(small())
    x = torch.zeros(2, 3, dtype=torch.long)
    other = KVCache(small(n_kv_head=2), batch_size=2)
    with pytest.raises(
        ValueError,
        match=r"another model shape: \(n_layer, n_kv_head, head_dim\) = \(2, 2, 8\) in the cache, \(2, 4, 8\)",
    ):
        model(x, past_key_values=other)
    with pytest.raises(ValueError, match=r"built for batch size 3, but input_ids has batch size 2"):
        model(x, past_key_values=KVCache(model.config, batch_size=3))
    with pytest.raises(ValueError, match=r"past_key_values must be a KVCache"):
        model(x, past_key_values=((torch.zeros(1), torch.zeros(1)),))


def test_cache_filled_by_another_model_of_the_same_shape_is_rejected():
    """Same config, other weights: the shapes fit, so only the owner check stops a silently wrong answer."""
    model, other = MiniGPT(small()).eval(), MiniGPT(small()).eval()
    x = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        _, cache = model(x[:, :4], use_cache=True)
        with pytest.raises(ValueError, match=r"past_key_values was filled by another model .*reset\(\) this one"):
            other(x[:, 4:5], past_key_values=cache)
        model(x[:, 4:5], past_key_values=cache)  # its own model may go on
        cache.reset()  # an emptied cache may be filled by any model
        full, _ = other(x)
        first, _ = other(x[:, :4], past_key_values=cache)
        rest, _ = other(x[:, 4:], past_key_values=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)


def test_cache_of_another_dtype_is_rejected():
    model = MiniGPT(small()).eval()
    cache = KVCache(model.config, batch_size=1, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"holds torch.float16 keys on cpu, but the model computed torch.float32 "):
        model(torch.zeros(1, 3, dtype=torch.long), past_key_values=cache)


def test_running_past_the_cache_or_the_context_is_an_error():
    model = MiniGPT(small()).eval()
    x = torch.zeros(1, 6, dtype=torch.long)
    _, cache = model(x, past_key_values=KVCache(model.config, batch_size=1, max_len=8))
    with pytest.raises(ValueError, match=r"KV cache is full: 6 positions cached \+ 3 new > max_len 8"):
        model(x[:, :3], past_key_values=cache)
    _, cache = model(torch.zeros(1, 16, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match=r"16 cached \+ 1 new = 17 positions > max_positions=16"):
        model(x[:, :1], past_key_values=cache)


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "rope", "alibi", "none"])
def test_running_past_the_context_needs_max_seq_len(pos_encoding):
    """Encodings without a learned table may run past context_length, but only when the config says so
    (max_seq_len); then the cache decodes past the context like the full forward. Learned positions cannot:
    the config rejects max_seq_len for them (tests/core/model/test_config.py)."""
    x = torch.randint(0, 40, (1, 24))
    with pytest.raises(
        ValueError, match=r"17 positions > max_positions=16 \(context_length=16, max_seq_len=None\); crop the input"
    ):
        MiniGPT(small(pos_encoding=pos_encoding))(x[:, :17])
    model = MiniGPT(small(pos_encoding=pos_encoding, max_seq_len=24)).eval()
    with torch.no_grad():
        full, _ = model(x)
        first, cache = model(x[:, :10], use_cache=True)
        pieces = [first] + [model(x[:, t : t + 1], past_key_values=cache)[0] for t in range(10, 24)]
    assert full.shape == (1, 24, 40) and cache.max_len == 24
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"25 positions > max_positions=24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_explicit_position_ids_are_checked():
    model = MiniGPT(small())
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"position_ids must have shape \(1, 3\)"):
        model(x, position_ids=torch.arange(4))
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, max_positions=16\)"):
        model(x, position_ids=torch.tensor([[14, 15, 16]]))


# --- Dropout ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
def test_dropout_is_random_in_training_and_off_in_eval(attn_impl):
    model = MiniGPT(small(dropout=0.3, attn_impl=attn_impl))
    x = torch.randint(0, 40, (2, 8))
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])
        no_dropout = MiniGPT(small(dropout=0.0, attn_impl=attn_impl)).eval()
        no_dropout.load_state_dict(model.state_dict())
        assert torch.equal(model(x)[0], no_dropout(x)[0])


# --- Init, counts, FLOPs ----------------------------------------------------------------------------------------


def test_init_follows_the_documented_table():
    config = small(n_layer=8, n_embd=256, n_head=4, vocab_size=512, bias=True, tie_embeddings=False)
    model = MiniGPT(config)
    block = model.blocks[3]
    std = config.init_std
    assert block.attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    assert block.mlp.up_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    residual = std / math.sqrt(2 * config.n_layer)
    assert block.attn.o_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.count_nonzero(block.attn.q_proj.bias) == 0
    assert torch.equal(block.attn_norm.weight, torch.ones(256)) and torch.count_nonzero(block.attn_norm.bias) == 0


def _init_by_names(model: MiniGPT) -> None:
    """``init_weights`` as it was written before the variants declared their own rules: the residual projections
    found by name (``attn.o_proj``, ``mlp.down_proj``), the norms and the learned table by a list of classes."""
    from llm_lab.core.model.embeddings import PreviousTokenEmbedding, ValueEmbeddings
    from llm_lab.core.model.norms import LayerNorm, RMSNorm
    from llm_lab.core.model.positional import LearnedPositions

    config = model.config
    std = config.init_std
    residual_std = std / math.sqrt(2 * config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            is_residual = name.endswith("attn.o_proj") or name.endswith("mlp.down_proj")
            if (is_residual and config.zero_init_residual) or (name == "lm_head" and config.zero_init_head):
                torch.nn.init.zeros_(module.weight)
            else:
                torch.nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding | LearnedPositions):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, PreviousTokenEmbedding | ValueEmbeddings):
            torch.nn.init.zeros_(module.weight)
        elif isinstance(module, LayerNorm | RMSNorm):
            torch.nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


INIT_OPTIONS = {
    "plain": {},
    "zero-init": {"zero_init_residual": True, "zero_init_head": True, "tie_embeddings": False},
    "qk-norm-tables": {"qk_norm": True, "bigram_embedding": True, "value_embeddings": True},
}


@pytest.mark.parametrize("options", INIT_OPTIONS)
@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_init_is_bitwise_the_rule_it_replaced(variant, options):
    """Asking the modules (``residual_projections``, ``reset_parameters``) draws the same numbers, in the same
    order, as matching names did: every tensor of the state dict is equal after both, from the same seed."""
    model = MiniGPT(tiny_config(*variant, **INIT_OPTIONS[options]))
    torch.manual_seed(11)
    init_weights(model)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    _init_by_names(model)
    for key, value in model.state_dict().items():
        assert torch.equal(ours[key], value), key
    # Not vacuous: the residual projections did get the smaller std (or zeros).
    block = model.blocks[0]
    assert block.attn.o_proj.weight.std() < block.attn.q_proj.weight.std()


def test_tied_embedding_is_one_tensor():
    model = MiniGPT(small())
    assert model.lm_head.weight is model.tok_emb.weight
    untied = MiniGPT(small(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - model.num_parameters() == 40 * 32  # one more (vocab, n_embd) matrix


def test_parameter_count_by_hand():
    """GPT-2 style, V=40, T=16, L=2, C=32, H=4*C=128, biases, tied head:

    embeddings 40*32 + 16*32 = 1792; per block: 2 LayerNorms 2*64, attention 4*(32*32+32) = 4224,
    MLP 32*128+128 + 128*32+32 = 8352 -> 12704; two blocks 25408; final norm 64. Total 27264.
    Non-embedding: 27264 - 1280 - 512 = 25472.
    """
    model = MiniGPT(small())
    assert model.num_parameters() == 27264
    assert model.num_parameters(non_embedding=True) == 25472


def test_flops_per_token_formula():
    """6N + 12 L C T with N = matmul parameters = 27264 - 512 (position table) = 26752 (tied head counted)."""
    model = MiniGPT(small())
    assert model.flops_per_token() == 6 * 26752 + 12 * 2 * 32 * 16
    assert model.flops_per_token(seq_len=4) == 6 * 26752 + 12 * 2 * 32 * 4
    untied = MiniGPT(small(tie_embeddings=False, pos_encoding="rope"))  # untied: the input table is a lookup
    assert untied.flops_per_token(seq_len=1) == 6 * (untied.num_parameters() - 40 * 32) + 12 * 2 * 32


# --- Loss ---------------------------------------------------------------------------------------------------------


def test_lm_loss_ignores_padded_targets():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, -100], [4, -100, -100]])
    kept = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    torch.testing.assert_close(lm_loss(logits, targets), kept)
    assert lm_loss(logits, torch.full((2, 3), -100)).item() == 0.0  # nothing to count: 0, not NaN
    torch.testing.assert_close(lm_loss(logits, torch.where(targets < 0, 7, targets), ignore_index=7), kept)


def test_lm_loss_checks_shapes():
    with pytest.raises(ValueError, match=r"logits \(B, T, vocab\) and targets \(B, T\); got \(2, 3, 5\) and \(2, 4\)"):
        lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be integer token ids, got dtype torch.float32"):
        lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3))
