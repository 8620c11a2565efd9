"""The registries are the only lists of variant names, and what depends on a variant is declared by its class.

The config's choices, its messages and JSON loading follow the registries; the variant matrix runs every entry;
init, length extrapolation and the HF export ask the class (see also ``tests/core/package/test_hf.py``).
"""

from __future__ import annotations

import re
import typing

import pytest
import torch
from model_variants import ATTN, ATTN_IMPLS, MLP, NORM, PAIRWISE, POS, tiny_config
from torch import nn

from llm_lab.core.decode.decoder import default_overflow_policy
from llm_lab.core.model import MiniGPT, init_weights
from llm_lab.core.model.attention import ATTENTION_IMPLS, ATTENTION_TYPES, CausalSelfAttention
from llm_lab.core.model.config import EXTRAPOLATING_POS_ENCODINGS, MiniGPTConfig
from llm_lab.core.model.mlp import MLPS, SwiGLUMLP, build_mlp
from llm_lab.core.model.norms import NORMS, LayerNorm, Norm, build_norm
from llm_lab.core.model.positional import POSITIONAL_ENCODINGS, LearnedPositions, RotaryPositions
from llm_lab.utils.config_loader import config_from_dict

REGISTRIES = {
    "pos_encoding": POSITIONAL_ENCODINGS,
    "norm": NORMS,
    "mlp": MLPS,
    "attn_impl": ATTENTION_IMPLS,
    "attention_type": ATTENTION_TYPES,
}


def _valid(field: str, name: str) -> dict:
    """A small config's keyword arguments with ``field=name`` (an attention type needs its head count)."""
    kwargs = dict(vocab_size=11, context_length=8, n_layer=1, n_head=4, n_embd=16, **{field: name})
    if field == "attention_type":
        kwargs["n_kv_head"] = ATTN[name]
    return kwargs


@pytest.mark.parametrize("field", REGISTRIES)
def test_the_config_accepts_exactly_the_registry_names(field):
    """The field's Literal (what JSON loading checks), the accepted values and the refusal all list the registry."""
    registry = REGISTRIES[field]
    hint = typing.get_type_hints(MiniGPTConfig)[field]
    literal = next((a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal), hint)
    assert typing.get_args(literal) == tuple(registry)
    for name in registry:
        assert getattr(MiniGPTConfig(**_valid(field, name)), field) == name
        assert getattr(config_from_dict(MiniGPTConfig, _valid(field, name)), field) == name
    listed = re.escape(", ".join(registry))
    with pytest.raises(ValueError, match=rf"^{field}='nope' is not supported; choose one of: {listed}$"):
        MiniGPTConfig(**{field: "nope"})
    with pytest.raises(ValueError, match=rf"^MiniGPTConfig\.{field}: 'nope' (is not one of|does not match) '"):
        config_from_dict(MiniGPTConfig, {field: "nope"})


def test_the_builders_refuse_in_the_config_s_words():
    config = MiniGPTConfig(n_embd=8, n_head=2)
    config.mlp = "nope"  # a dataclass field can be changed after validation: the builder checks again
    with pytest.raises(ValueError, match=rf"^mlp='nope' is not supported; choose one of: {', '.join(MLPS)}$"):
        build_mlp(config)
    with pytest.raises(ValueError, match=rf"^norm='nope' is not supported; choose one of: {', '.join(NORMS)}$"):
        build_norm("nope", 8, 1e-5, True)


def test_every_registry_entry_is_in_the_variant_matrix():
    """The matrix's axes are the registries, and the default suite's all-pairs subset runs every entry."""
    axes = (POS, NORM, MLP, tuple(ATTN))
    registries = (POSITIONAL_ENCODINGS, NORMS, MLPS, ATTENTION_TYPES)
    for i, (axis, registry) in enumerate(zip(axes, registries, strict=True)):
        assert axis == tuple(registry)
        assert {variant[i] for variant in PAIRWISE} == set(registry)
    assert tuple(ATTENTION_IMPLS) == ATTN_IMPLS and "reference" in ATTN_IMPLS  # each is compared with reference


# --- What depends on a variant is declared by its class -----------------------------------------------------------


@pytest.mark.parametrize("name", MLPS)
def test_each_mlp_declares_its_residual_output_projection(name):
    config = tiny_config("learned", "layernorm", name, "mha")
    mlp = build_mlp(config)
    assert mlp.residual_projections
    for projection in mlp.residual_projections:
        layer = getattr(mlp, projection)
        assert isinstance(layer, nn.Linear) and layer.out_features == config.n_embd
    attention = CausalSelfAttention(config, 0)
    assert [getattr(attention, p) for p in attention.residual_projections] == [attention.o_proj]


@pytest.mark.parametrize("name", NORMS)
def test_each_norm_resets_itself_to_its_starting_values(name):
    """Gains back to 1 and shifts to 0, whatever training did: exactly the norm as built."""
    norm, fresh = build_norm(name, 6, 1e-5, bias=True), build_norm(name, 6, 1e-5, bias=True)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    norm.reset_parameters()
    for key, value in fresh.state_dict().items():
        assert torch.equal(norm.state_dict()[key], value), key
    x = torch.randn(3, 6)
    torch.testing.assert_close(norm(x), fresh(x))


@pytest.mark.parametrize("name", POSITIONAL_ENCODINGS)
def test_extrapolates_is_what_the_encoding_can_do(name):
    """An encoding that declares ``extrapolates`` runs a model past its context; one that does not is refused that
    length, and generation slides its window instead of stopping at ``max_positions``."""
    base = tiny_config(name, "layernorm", "gelu", "mha", context_length=8)
    assert base.extrapolates is POSITIONAL_ENCODINGS[name].extrapolates
    assert (name in EXTRAPOLATING_POS_ENCODINGS) is base.extrapolates
    if base.extrapolates:
        model = MiniGPT(tiny_config(name, "layernorm", "gelu", "mha", context_length=8, max_seq_len=16)).eval()
        with torch.no_grad():
            logits, _ = model(torch.arange(16)[None] % base.vocab_size)
        assert logits.shape == (1, 16, base.vocab_size) and torch.isfinite(logits).all()
        assert default_overflow_policy(base) == "stop"
    else:
        listed = re.escape(", ".join(EXTRAPOLATING_POS_ENCODINGS))
        with pytest.raises(ValueError, match=rf"needs a position encoding that extrapolates \({listed}\)"):
            tiny_config(name, "layernorm", "gelu", "mha", context_length=8, max_seq_len=16)
        assert default_overflow_policy(base) == "slide"


@pytest.mark.parametrize("name", POSITIONAL_ENCODINGS)
def test_an_encoding_s_lookup_parameters_are_counted_as_embeddings(name):
    """``lookup_parameters`` (a position table read by index) leaves ``non_embedding`` counts and FLOPs alike."""
    model = MiniGPT(tiny_config(name, "layernorm", "gelu", "mha"))
    own = sum(p.numel() for p in model.positions.parameters())
    lookups = model.positions.lookup_parameters()
    assert lookups == (own if isinstance(model.positions, LearnedPositions) else 0)
    assert model.num_parameters() - model.num_parameters(non_embedding=True) == model.tok_emb.weight.numel() + lookups
    config = model.config
    matmul = model.num_parameters() - lookups  # tied embedding: the head's matmul counts it
    assert model.flops_per_token() == 6.0 * matmul + 12.0 * config.n_layer * config.n_embd * config.context_length


def test_hugging_face_declarations_are_not_inherited():
    """A subclass computes something else: it is exportable only if it says so itself. What it still is (an
    encoding without a table extrapolates) is inherited."""

    class GeGLU(SwiGLUMLP):
        pass

    class ScaledRoPE(RotaryPositions):
        pass

    class CenteredLayerNorm(LayerNorm):
        pass

    assert SwiGLUMLP.hf_activation == {"llama": "silu"} and GeGLU.hf_activation == {}
    assert RotaryPositions.hf_family == "llama" and ScaledRoPE.hf_family is None and ScaledRoPE.extrapolates
    assert LayerNorm.hf_families == {"gpt2"} and CenteredLayerNorm.hf_families == frozenset()
    assert LearnedPositions.hf_family == "gpt2" and not LearnedPositions.extrapolates


class ScaleNorm(Norm):
    """ScaleNorm (Nguyen & Salazar, 2019), as CONTRIBUTING.md adds it: one learned gain over ``x / rms(x)``."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def test_a_norm_added_to_the_registry_needs_no_other_edit(monkeypatch):
    """Registered, a new norm is accepted by the config, built in every block and for QK-norm, reset by
    ``init_weights`` and refused by the Hugging Face export (it declares no family)."""
    monkeypatch.setitem(NORMS, "scalenorm", ScaleNorm)
    config = tiny_config("rope", "scalenorm", "swiglu", "gqa", qk_norm=True)
    model = MiniGPT(config)
    norms = [m for m in model.modules() if isinstance(m, ScaleNorm)]
    assert len(norms) == 2 * config.n_layer + 1 + 2 * config.n_layer  # two per block, the final one, QK-norm
    with torch.no_grad():
        for norm in norms:
            norm.weight.fill_(3.0)
    init_weights(model)
    assert all(torch.equal(norm.weight, torch.ones(1)) for norm in norms)
    logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"choose one of: .*, scalenorm$"):
        MiniGPTConfig(norm="batch")

