"""Every variant (positional encoding x norm x MLP x attention type) runs, learns, and decodes consistently.

The default suite covers every pair of values (``PAIRWISE``, about 20 models); the full product of 120 runs
behind ``slow``.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_variants import (
    ATTN_IMPLS,
    FULL_PRODUCT,
    PAIRWISE,
    SPEEDRUN_OPTIONS,
    incremental_logits,
    tiny_config,
    variant_id,
)

from llm_lab.core.model import MiniGPT, lm_loss

B, T = 3, 16


def _batch(vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T + 1), generator=g)


def _check_variant(variant: tuple[str, ...], **overrides) -> None:
    config = tiny_config(*variant, **overrides)
    model = MiniGPT(config)
    data = _batch(config.vocab_size)
    x, y = data[:, :-1], data[:, 1:]

    # Shapes, no cache unless asked, and a loss near ln(vocab) at init (small init -> near-uniform predictions).
    logits, past = model(x)
    assert logits.shape == (B, T, config.vocab_size) and past is None
    loss0 = lm_loss(logits, y)
    assert math.isfinite(loss0.item())
    assert abs(loss0.item() - math.log(config.vocab_size)) < 0.5

    # Incremental decoding through the KV cache equals the full forward pass.
    model.eval()
    with torch.no_grad():
        full, _ = model(x)
    cached, cache = incremental_logits(model, x, prefix=5)
    assert cache.length == T
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)

    # A few AdamW steps overfit one batch.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        loss = lm_loss(model(x)[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.35 * loss0.item(), f"loss only fell from {loss0.item():.3f} to {loss.item():.3f}"


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_variant_pairwise(variant):
    _check_variant(variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in FULL_PRODUCT if v not in PAIRWISE], ids=variant_id)
def test_variant_full_product(variant):
    _check_variant(variant)


def test_pairwise_subset_covers_every_pair():
    """Every value pair of every two factors appears in the default-suite subset."""
    for i in range(4):
        for j in range(i + 1, 4):
            wanted = {(a[i], a[j]) for a in FULL_PRODUCT}
            assert {(a[i], a[j]) for a in PAIRWISE} == wanted
    assert len(PAIRWISE) < len(FULL_PRODUCT) / 4


@pytest.mark.parametrize("impl", [name for name in ATTN_IMPLS if name != "reference"])
@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_sdpa_matches_reference_with_padding(variant, impl):
    """The fused path (each attention implementation) and the written-out softmax give the same logits, also with a
    padded batch."""
    sdpa = MiniGPT(tiny_config(*variant, attn_impl=impl)).eval()
    ref = MiniGPT(tiny_config(*variant, attn_impl="reference")).eval()
    ref.load_state_dict(sdpa.state_dict())
    x = _batch(sdpa.config.vocab_size)[:, :-1]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
        padded_sdpa, padded_ref = sdpa(x, attention_mask=mask)[0], ref(x, attention_mask=mask)[0]
        torch.testing.assert_close(padded_sdpa, padded_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_padding_invariance(variant):
    """Left- and right-padded rows give, at real positions, the logits of the sequence run alone."""
    _check_padding(variant)


# QK-norm is a switch on top of any variant: one row per norm and positional family is enough.
QK_NORM_VARIANTS = [("rope", "rmsnorm", "swiglu", "gqa"), ("learned", "layernorm", "gelu", "mha"),
                    ("alibi", "layernorm", "relu2", "mqa")]


@pytest.mark.parametrize("variant", QK_NORM_VARIANTS, ids=variant_id)
def test_qk_norm_variants(variant):
    """With qk_norm: shapes, loss, KV cache == full forward, overfitting, and padding invariance."""
    _check_variant(variant, qk_norm=True)
    _check_padding(variant, qk_norm=True)


def _check_padding(variant: tuple[str, ...], **overrides) -> None:
    model = MiniGPT(tiny_config(*variant, **overrides)).eval()
    x = _batch(model.config.vocab_size)[:, :-1]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, -6:] = 0
    padded = x.clone()
    padded[mask == 0] = 0  # what sits under padding must not matter
    with torch.no_grad():
        logits, _ = model(padded, attention_mask=mask)
        assert torch.isfinite(logits).all()  # also at padded positions: NaN there would spread
        torch.testing.assert_close(logits[0, 5:], model(x[:1, 5:])[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1, :-6], model(x[1:2, :-6])[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[2], model(x[2:3])[0][0], atol=1e-5, rtol=1e-5)


# Each speedrun option over two unlike variants: GPT-2-like MHA and Llama-like GQA (value embeddings are per kv head).
SPEEDRUN_BASES = [("learned", "layernorm", "gelu", "mha"), ("rope", "rmsnorm", "swiglu", "gqa")]


@pytest.mark.parametrize("base", SPEEDRUN_BASES, ids=variant_id)
@pytest.mark.parametrize("option", SPEEDRUN_OPTIONS)
def test_speedrun_option_through_the_variant_checks(option, base):
    _check_variant(base, **SPEEDRUN_OPTIONS[option])


def _randomized(config):
    """The zero-initialised tables would make cache checks trivial: give every weight random values."""
    model = MiniGPT(config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("base", SPEEDRUN_BASES, ids=variant_id)
@pytest.mark.parametrize("option", ["bigram_embedding", "value_embeddings"])
def test_embedding_options_decode_like_the_full_forward_with_and_without_padding(option, base):
    """Random weights (tables non-zero); one token at a time and a left-padded batch both equal the full forward.
    The previous-token embedding of the first new token comes from the cache; that of a left-padded row's first
    real token is "none", as in the row alone."""
    model = _randomized(tiny_config(*base, **SPEEDRUN_OPTIONS[option]))
    x = _batch(model.config.vocab_size)[:, :T]
    with torch.no_grad():
        full, _ = model(x)
        step, cache = model(x[:, :3], use_cache=True)
        pieces = [step] + [model(x[:, t : t + 1], past_key_values=cache)[0] for t in range(3, T)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)

        short = x[1:2, :5]
        padded = torch.cat([torch.full((1, 3), 7), short], dim=1)  # pad id 7 is a real id: only the mask hides it
        mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
        logits, cache = model(padded[:, :6], attention_mask=mask[:, :6], use_cache=True)
        last, _ = model(padded[:, 6:], attention_mask=mask, past_key_values=cache)
        alone, _ = model(short)
        torch.testing.assert_close(torch.cat([logits[:, 3:], last], 1), alone, atol=1e-5, rtol=1e-5)


def test_previous_token_embedding_by_hand():
    """ids [[5, 2, 9]]: the previous ids are [none, 5, 2] (none = vocab_size = 37); with the first position
    masked as padding, position 1 has no previous token either: [none, none, 2]."""
    from llm_lab.core.model.embeddings import previous_tokens

    ids = torch.tensor([[5, 2, 9]])
    assert previous_tokens(ids, 3, None, 37).tolist() == [[37, 5, 2]]
    assert previous_tokens(ids, 1, None, 37).tolist() == [[2]]
    assert previous_tokens(ids, 3, torch.tensor([[False, True, True]]), 37).tolist() == [[37, 37, 2]]
    model = _randomized(tiny_config(*SPEEDRUN_BASES[0], bigram_embedding=True))
    torch.testing.assert_close(model.prev_emb(ids, 3, None)[0], model.prev_emb.weight[[37, 5, 2]])


def test_zero_init_rules_and_zero_tables():
    config = tiny_config(*SPEEDRUN_BASES[0], zero_init_residual=True, zero_init_head=True, tie_embeddings=False,
                         bigram_embedding=True, value_embeddings=True)  # fmt: skip
    model = MiniGPT(config)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.o_proj.weight) == torch.count_nonzero(block.mlp.down_proj.weight) == 0
        assert torch.count_nonzero(block.attn.q_proj.weight) > 0
    assert torch.count_nonzero(model.lm_head.weight) == 0 and torch.count_nonzero(model.tok_emb.weight) > 0
    assert torch.count_nonzero(model.prev_emb.weight) == torch.count_nonzero(model.value_embeds.weight) == 0
    logits, _ = model(_batch(config.vocab_size)[:, :T])
    assert torch.count_nonzero(logits) == 0  # zero head: uniform predictions, loss exactly ln(vocab)
    # The lookup tables are not matmuls: flops_per_token leaves them out, as it does the untied input table.
    plain = MiniGPT(tiny_config(*SPEEDRUN_BASES[0], tie_embeddings=False))
    assert model.flops_per_token() == plain.flops_per_token()
    with pytest.raises(ValueError, match=r"zero_init_head=True needs tie_embeddings=False"):
        tiny_config(*SPEEDRUN_BASES[0], zero_init_head=True, tie_embeddings=True)
