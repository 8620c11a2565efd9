"""Hugging Face parity: small random GPT-2 and Llama models converted to MiniGPT give the same logits.

The reference side is ``transformers`` with its plain "eager" attention. Weights are re-drawn with a large
standard deviation (norm scales and biases too), so a transposed or swapped tensor cannot hide behind
near-zero logits.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.package.hf import CONTEXT_LENGTH_KEY, config_from_hf, from_hf_model, hf_config_from, to_hf_model

transformers = pytest.importorskip("transformers")

VOCAB, B, T = 61, 3, 12
ATOL = 1e-4


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            is_norm_scale = p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.2 * noise if is_norm_scale else 0.2 * noise)


def _gpt2(**overrides) -> torch.nn.Module:
    kwargs = dict(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs))
    _randomize(model)
    return model.eval()


def _llama(**overrides) -> torch.nn.Module:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    _randomize(model)
    return model.eval()


FAMILIES = {
    "gpt2": _gpt2,
    "gpt2-exact-gelu-untied": lambda: _gpt2(activation_function="gelu", tie_word_embeddings=False),
    "llama-gqa": _llama,
    "llama-mqa-tied": lambda: _llama(num_key_value_heads=1, tie_word_embeddings=True),
    "llama-mha-bias": lambda: _llama(num_key_value_heads=4, attention_bias=True, mlp_bias=True),
}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def pair(request):
    hf = FAMILIES[request.param]()
    return hf, from_hf_model(hf)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids).logits


def test_logits_match_without_mask(pair):
    hf, ours = pair
    ids = _ids()
    expected = _hf_logits(hf, ids)
    assert expected.std() > 0.5  # the comparison is not between near-zero numbers
    with torch.no_grad():
        got, _ = ours(ids)
    assert (got - expected).abs().max().item() <= ATOL


def test_logits_match_with_left_and_right_padding(pair):
    """Row 0 left-padded by 4, row 1 right-padded by 3: real positions match HF on each sequence alone."""
    hf, ours = pair
    ids = _ids()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, -3:] = 0
    with torch.no_grad():
        got, _ = ours(ids, attention_mask=mask)
    assert (got[0, 4:] - _hf_logits(hf, ids[:1, 4:])[0]).abs().max().item() <= ATOL
    assert (got[1, :-3] - _hf_logits(hf, ids[1:2, :-3])[0]).abs().max().item() <= ATOL
    assert (got[2] - _hf_logits(hf, ids[2:3])[0]).abs().max().item() <= ATOL


def test_logits_match_with_the_same_padded_batch_in_hf(pair):
    """Both libraries given the padded batch and the mask (HF with explicit positions from the mask)."""
    hf, ours = pair
    ids = _ids(2)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0
    mask[2, -2:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got, _ = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= ATOL


def test_kv_cache_decoding_matches_hf_full_forward(pair):
    """Prefill 5 tokens with a left-padded row, then decode one token at a time with the growing mask."""
    hf, ours = pair
    ids = _ids(3)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        step, cache = ours(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        pieces = [step]
        for t in range(5, T):
            step, cache = ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache)
            pieces.append(step)
        got = torch.cat(pieces, dim=1)
    for row in range(B):
        start = int((mask[row] == 0).sum())
        expected = _hf_logits(hf, ids[row : row + 1, start:])[0]
        assert (got[row, start:] - expected).abs().max().item() <= ATOL


def test_hf_cache_and_ours_agree_token_by_token(pair):
    """HF's own incremental decoding (its cache classes) against ours, no padding."""
    hf, ours = pair
    ids = _ids(4)
    with torch.no_grad():
        out = hf(input_ids=ids[:, :4], use_cache=True)
        hf_steps, hf_past = [out.logits], out.cache
        logits, past = ours(ids[:, :4], use_cache=True)
        ours_steps = [logits]
        for t in range(4, 8):
            out = hf(input_ids=ids[:, t : t + 1], cache=hf_past, use_cache=True)
            hf_steps.append(out.logits)
            hf_past = out.cache
            logits, past = ours(ids[:, t : t + 1], past_key_values=past)
            ours_steps.append(logits)
    assert (torch.cat(ours_steps, 1) - torch.cat(hf_steps, 1)).abs().max().item() <= ATOL


def test_round_trip_is_lossless(pair):
    hf, ours = pair
    back = from_hf_model(to_hf_model(ours))
    assert back.config == ours.config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "config",
    [
        MiniGPTConfig(vocab_size=VOCAB, context_length=16, n_layer=2, n_head=4, n_embd=32, mlp="relu2"),
        MiniGPTConfig(
            vocab_size=VOCAB,
            context_length=16,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            n_embd=32,
            pos_encoding="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            tie_embeddings=False,
            max_seq_len=24,
        ),
        # Init rules change only the starting weights: such a model exports like any other.
        MiniGPTConfig(
            vocab_size=VOCAB,
            context_length=16,
            n_layer=2,
            n_head=4,
            n_embd=32,
            tie_embeddings=False,
            zero_init_residual=True,
            zero_init_head=True,
        ),
    ],
    ids=["gpt2-relu2", "llama", "gpt2-zero-init"],
)
def test_minigpt_to_hf_matches(config):
    """The export direction: a trained-from-scratch MiniGPT gives the same logits as its HF copy."""
    ours = MiniGPT(config).eval()
    _randomize(ours, seed=5)
    hf = to_hf_model(ours)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert (ours(ids)[0] - hf(input_ids=ids).logits).abs().max().item() <= ATOL
    if config.pos_encoding == "rope":  # Llama has one length, the longest; the training context rides along
        assert hf.config.max_position_embeddings == config.max_positions
        back = config_from_hf(hf.config)
        assert (back.context_length, back.max_seq_len) == (config.context_length, config.max_seq_len)


def test_config_mapping_round_trips():
    gpt2 = MiniGPTConfig(vocab_size=VOCAB, context_length=16, n_layer=2, n_head=4, n_embd=32, mlp="gelu_tanh")
    assert config_from_hf(hf_config_from(gpt2)) == gpt2
    llama = MiniGPTConfig(
        vocab_size=VOCAB,
        context_length=16,
        n_layer=2,
        n_head=4,
        n_kv_head=1,
        n_embd=32,
        pos_encoding="rope",
        rope_theta=1e6,
        norm="rmsnorm",
        norm_eps=1e-6,
        mlp="swiglu",
        bias=False,
        mlp_hidden=40,
    )
    assert config_from_hf(hf_config_from(llama)) == llama
    assert hf_config_from(llama).rope_parameters["rope_theta"] == 1e6
    longer = dataclasses.replace(llama, max_seq_len=64)
    assert config_from_hf(hf_config_from(longer)) == longer


def test_a_plain_llama_config_has_one_length():
    """A Llama config from elsewhere (no recorded training context): its one length is the context."""
    llama = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, max_seq_len=32)
    hf = hf_config_from(MiniGPTConfig(**BASE, **llama))
    delattr(hf, CONTEXT_LENGTH_KEY)
    ours = config_from_hf(hf)
    assert (ours.context_length, ours.max_seq_len) == (32, None)


BASE = dict(vocab_size=VOCAB, context_length=16, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(pos_encoding="alibi"), r"pos_encoding='alibi' has no Hugging Face counterpart"),
        (dict(pos_encoding="sinusoidal"), r"pos_encoding='sinusoidal' has no Hugging Face counterpart"),
        (dict(pos_encoding="none"), r"pos_encoding='none'"),
        (dict(qk_norm=True), r"qk_norm=True has no counterpart"),
        (dict(bigram_embedding=True), r"bigram_embedding=True has no counterpart in GPT-2 or Llama"),
        (dict(value_embeddings=True), r"value_embeddings=True has no counterpart in GPT-2 or Llama"),
        (dict(norm="rmsnorm"), r"norm='rmsnorm': the GPT-2 family needs norm='layernorm'"),
        (dict(bias=False), r"bias=False: the GPT-2 family has biases"),
        (dict(mlp="swiglu"), r"mlp='swiglu': the GPT-2 family supports mlp in gelu, gelu_tanh, relu2"),
        (dict(n_kv_head=1), r"n_kv_head=1: the GPT-2 family is multi-head only"),
        (dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2"), r"mlp='relu2': the Llama family needs mlp='swiglu'"),
        (dict(pos_encoding="rope", mlp="swiglu"), r"norm='layernorm': the Llama family needs norm='rmsnorm'"),
    ],
)
def test_unsupported_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hf_config_from(MiniGPTConfig(**{**BASE, **kwargs}))


def test_the_export_asks_the_variant_classes(monkeypatch):
    """What HF can hold is declared by each class, not listed in hf.py: a registered variant with no declaration is
    refused by name (also a subclass of an exportable one: declarations are not inherited); declaring the family
    makes it exportable, with the logits of the HF model."""
    import torch.nn.functional as F

    from llm_lab.core.model.mlp import MLPS, SwiGLUMLP
    from llm_lab.core.model.norms import NORMS, LayerNorm

    class GeGLU(SwiGLUMLP):
        def forward(self, x):
            gate, up = self.project_gate_up(x)
            return self.dropout(self.down_proj(F.gelu(gate) * up))

    class SameLayerNorm(LayerNorm):
        pass

    class DeclaredLayerNorm(LayerNorm):
        hf_families = frozenset({"gpt2"})

    monkeypatch.setitem(MLPS, "geglu", GeGLU)
    monkeypatch.setitem(NORMS, "same_ln", SameLayerNorm)
    monkeypatch.setitem(NORMS, "declared_ln", DeclaredLayerNorm)
    llama = dict(pos_encoding="rope", norm="rmsnorm", bias=False)
    with pytest.raises(ValueError, match=r"mlp='geglu': the Llama family needs mlp='swiglu'"):
        hf_config_from(MiniGPTConfig(**BASE, **llama, mlp="geglu"))
    with pytest.raises(ValueError, match=r"norm='same_ln': the GPT-2 family supports norm in layernorm, declared_ln"):
        hf_config_from(MiniGPTConfig(**BASE, norm="same_ln"))
    ours = MiniGPT(MiniGPTConfig(**BASE, norm="declared_ln")).eval()
    _randomize(ours, seed=2)
    hf = to_hf_model(ours)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids)[0] - hf(input_ids=ids).logits).abs().max().item() <= ATOL
    with pytest.raises(ValueError, match=r"the GPT-2 family maps to 2 norm values \(\['layernorm', 'declared_ln'\]\)"):
        config_from_hf(hf.config)  # importing needs one norm per family


def test_unsupported_hf_settings_are_named():
    with pytest.raises(ValueError, match=r"Llama rope_type='linear' is not supported"):
        config_from_hf(
            transformers.LlamaConfig(
                hidden_size=16,
                num_attention_heads=2,
                rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            )
        )
    with pytest.raises(ValueError, match=r"GPT-2 activation_function='tanh' has no MiniGPT counterpart"):
        config_from_hf(transformers.GPT2Config(n_embd=16, n_head=2, activation_function="tanh"))
    with pytest.raises(ValueError, match=r"unsupported Hugging Face model_type='bert'; supported: gpt2, llama"):
        config_from_hf(transformers.BertConfig())


def test_dropout_is_carried_and_llama_warns_about_residual_dropout():
    gpt2 = hf_config_from(MiniGPTConfig(**BASE, dropout=0.1))
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop) == (0.1, 0.1, 0.1)
    with pytest.warns(UserWarning, match=r"Llama has attention dropout only"):
        hf_config_from(MiniGPTConfig(**BASE, dropout=0.1, pos_encoding="rope", norm="rmsnorm", mlp="swiglu"))
