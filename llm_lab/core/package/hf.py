"""Convert MiniGPT to and from Hugging Face ``transformers`` models (GPT-2 and Llama families).

* GPT-2 family (``GPT2LMHeadModel``): learned positions, LayerNorm with bias, GELU MLP (tanh approximation,
  ``gelu_new``; exact ``gelu`` and ``relu2`` map too), biases everywhere, MHA, tied or untied head. GPT-2 stores
  its linear layers as ``Conv1D`` with weights ``(in, out)``: they are transposed, and the fused ``c_attn``
  is split into our ``q_proj``, ``k_proj``, ``v_proj``.
* Llama family (``LlamaForCausalLM``): RoPE (default rope type; same "rotate half" layout as ours), RMSNorm,
  SwiGLU, MHA/GQA/MQA, no bias (or bias on every linear layer), tied or untied head. Names map 1:1.

``config_from_hf`` and ``hf_config_from`` map the configs and raise ``ValueError`` naming the field that has
no counterpart on the other side (e.g. ``pos_encoding='alibi'``, ``qk_norm=True``, a Llama ``rope_type`` other
than ``default``). Which variants a family can hold is declared by the variant classes, never listed here: the
positional encoding's ``hf_family`` picks the family, a norm's ``hf_families`` and an MLP's ``hf_activation`` say
whether that family has it (and how the family names the MLP). So a new variant is refused by the export with no
edit here, and becomes exportable by declaring its family.

The tests in ``tests/core/package/test_hf.py`` prove the conversions on small random models: fp32 logits agree to
1e-4 with and without padding and through the KV cache, and a round trip is lossless.

``transformers`` is a development dependency, imported only inside these functions.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.gpt import MiniGPT
from llm_lab.core.model.mlp import MLPS
from llm_lab.core.model.norms import NORMS
from llm_lab.core.model.positional import POSITIONAL_ENCODINGS

__all__ = ["config_from_hf", "from_hf_model", "hf_activation", "hf_config_from", "hf_family", "to_hf_model"]

# The two families, as the variant classes name them, and as people do.
GPT2, LLAMA = "gpt2", "llama"
_FAMILY_TITLES = {GPT2: "GPT-2", LLAMA: "Llama"}
# Hugging Face names that mean the same function as another of theirs (GPT-2's tanh GELU has two spellings).
_HF_ACTIVATION_ALIASES = {"gelu_pytorch_tanh": "gelu_new"}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _family_of(config: MiniGPTConfig) -> str | None:
    """The HF family whose models use ``config``'s positional encoding (declared by its class), or None."""
    return POSITIONAL_ENCODINGS[config.pos_encoding].hf_family


def _hf_activations(family: str) -> dict[str, str]:
    """Our MLP name -> the family's name of it, for every MLP whose class declares one (registry order)."""
    return {name: mlp.hf_activation[family] for name, mlp in MLPS.items() if family in mlp.hf_activation}


def _only(names: list[str], what: str, family: str) -> str:
    """The one name of ``what`` that declares ``family``: the import needs exactly one."""
    if len(names) != 1:
        raise ValueError(f"the {_FAMILY_TITLES[family]} family maps to {len(names)} {what} values ({names}); need one")
    return names[0]


def _our_encoding(family: str) -> str:
    found = [name for name, encoding in POSITIONAL_ENCODINGS.items() if encoding.hf_family == family]
    return _only(found, "pos_encoding", family)


def _our_norm(family: str) -> str:
    return _only([name for name, norm in NORMS.items() if family in norm.hf_families], "norm", family)


def _require_in_family(field: str, value: str, accepted: list[str], family: str) -> None:
    """Refuse ``field=value`` unless it is one of the variants that declare ``family``, naming those."""
    if value in accepted:
        return
    title = _FAMILY_TITLES[family]
    if len(accepted) == 1:
        raise ValueError(f"{field}={value!r}: the {title} family needs {field}={accepted[0]!r}")
    raise ValueError(f"{field}={value!r}: the {title} family supports {field} in {', '.join(accepted)}")


# ------------------------------------------------------------------------------------------------------------
# Config mapping


def config_from_hf(hf_config: Any) -> MiniGPTConfig:
    """The :class:`MiniGPTConfig` of a Hugging Face ``GPT2Config`` or ``LlamaConfig``.

    Raises:
        ValueError: another model type, or a setting MiniGPT cannot express (the message names it).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type == GPT2:
        return _config_from_gpt2(hf_config)
    if model_type == LLAMA:
        return _config_from_llama(hf_config)
    raise ValueError(f"unsupported Hugging Face model_type={model_type!r}; supported: {', '.join(_FAMILY_TITLES)}")


def _our_mlp(family: str, hf_activation: str, field: str) -> str:
    """Our MLP whose class declares ``hf_activation`` for ``family``, or a ValueError naming HF's field."""
    theirs = {hf: ours for ours, hf in _hf_activations(family).items()}
    supported = list(theirs) + [alias for alias, name in _HF_ACTIVATION_ALIASES.items() if name in theirs]
    activation = _HF_ACTIVATION_ALIASES.get(hf_activation, hf_activation)
    _require(
        activation in theirs,
        f"{_FAMILY_TITLES[family]} {field}={hf_activation!r} has no MiniGPT counterpart; "
        f"supported: {', '.join(supported)}",
    )
    return theirs[activation]


def _config_from_gpt2(c: Any) -> MiniGPTConfig:
    mlp = _our_mlp(GPT2, c.activation_function, "activation_function")
    _require(c.scale_attn_weights, "GPT-2 scale_attn_weights=False is not supported (MiniGPT scales by 1/sqrt(d))")
    _require(not c.scale_attn_by_inverse_layer_idx, "GPT-2 scale_attn_by_inverse_layer_idx=True is not supported")
    _require(not getattr(c, "add_cross_attention", False), "GPT-2 add_cross_attention=True is not supported")
    return MiniGPTConfig(
        vocab_size=c.vocab_size,
        context_length=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        mlp_hidden=c.n_inner,  # both sides read None as 4 * n_embd
        dropout=float(c.resid_pdrop),
        bias=True,
        pos_encoding=_our_encoding(GPT2),
        norm=_our_norm(GPT2),
        norm_eps=c.layer_norm_epsilon,
        mlp=mlp,
        tie_embeddings=bool(c.tie_word_embeddings),
        init_std=c.initializer_range,
    )


# An extra field of an exported Llama config.json: our training context (``max_position_embeddings`` is the longest
# length, ``max_seq_len``). transformers keeps unknown fields as they are; other readers ignore it.
CONTEXT_LENGTH_KEY = "llm_lab_context_length"


def _config_from_llama(c: Any) -> MiniGPTConfig:
    rope = c.rope_parameters or {}
    rope_type = rope.get("rope_type", "default")
    _require(rope_type == "default", f"Llama rope_type={rope_type!r} is not supported (only 'default' RoPE)")
    _require(rope.get("partial_rotary_factor", 1.0) == 1.0, "Llama partial_rotary_factor != 1 is not supported")
    mlp = _our_mlp(LLAMA, c.hidden_act, "hidden_act")
    _require(
        c.head_dim == c.hidden_size // c.num_attention_heads,
        f"Llama head_dim={c.head_dim} != hidden_size / num_attention_heads is not supported",
    )
    _require(
        bool(c.attention_bias) == bool(c.mlp_bias),
        f"Llama attention_bias={c.attention_bias} with mlp_bias={c.mlp_bias} is not supported "
        "(MiniGPT has one bias switch)",
    )
    # Llama has one length; a config we exported also records the training context it was made with.
    longest = c.max_position_embeddings
    context = getattr(c, CONTEXT_LENGTH_KEY, None)
    if not isinstance(context, int) or isinstance(context, bool) or not 0 < context <= longest:
        context = longest
    return MiniGPTConfig(
        vocab_size=c.vocab_size,
        context_length=context,
        max_seq_len=longest if longest != context else None,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=c.num_key_value_heads,
        n_embd=c.hidden_size,
        mlp_hidden=c.intermediate_size,
        dropout=float(c.attention_dropout or 0.0),
        bias=bool(c.attention_bias),
        pos_encoding=_our_encoding(LLAMA),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm=_our_norm(LLAMA),
        norm_eps=c.rms_norm_eps,
        mlp=mlp,
        tie_embeddings=bool(c.tie_word_embeddings),
        init_std=c.initializer_range,
    )


def hf_family(config: MiniGPTConfig) -> str:
    """The Hugging Face family (``"gpt2"`` or ``"llama"``) that can hold ``config``, after checking that it can.

    The one place that decides what leaves the lab as a GPT-2 or a Llama: :func:`hf_config_from` (the HF export)
    and the GGUF export (:mod:`llm_lab.core.package.gguf_io`) both ask it. It imports nothing heavy.

    Raises:
        ValueError: a setting neither family can express, naming the field (``pos_encoding``, ``norm``, ``mlp``,
            ``bias``, ``qk_norm``, ``n_kv_head``, ``bigram_embedding``, ``value_embeddings``). The zero-init rules
            (``zero_init_residual``, ``zero_init_head``) change only the starting weights and export like any model.
    """
    _require(not config.qk_norm, "qk_norm=True has no counterpart in GPT-2 or Llama; set qk_norm=False")
    for name in ("bigram_embedding", "value_embeddings"):
        _require(not getattr(config, name), f"{name}=True has no counterpart in GPT-2 or Llama; set {name}=False")
    family = _family_of(config)
    if family is None:
        usable = [
            f"{name!r} ({_FAMILY_TITLES[encoding.hf_family]})"
            for name, encoding in POSITIONAL_ENCODINGS.items()
            if encoding.hf_family is not None
        ]
        raise ValueError(
            f"pos_encoding={config.pos_encoding!r} has no Hugging Face counterpart here; use "
            f"{' or '.join(usable)}"
        )
    norms = [name for name, norm in NORMS.items() if family in norm.hf_families]
    _require_in_family("norm", config.norm, norms, family)
    _require_in_family("mlp", config.mlp, list(_hf_activations(family)), family)
    if family == GPT2:
        _require(config.bias, "bias=False: the GPT-2 family has biases in every linear layer and LayerNorm")
        _require(
            config.n_kv_head == config.n_head,
            f"n_kv_head={config.n_kv_head}: the GPT-2 family is multi-head only (n_kv_head == n_head)",
        )
    elif family != LLAMA:
        raise ValueError(f"no export for the Hugging Face family {family!r} of pos_encoding={config.pos_encoding!r}")
    return family


def hf_activation(config: MiniGPTConfig) -> str:
    """How ``config``'s family names its MLP (``"gelu_new"``, ``"silu"``, ...); call :func:`hf_family` first."""
    return _hf_activations(_family_of(config))[config.mlp]


def hf_config_from(config: MiniGPTConfig) -> Any:
    """A Hugging Face ``GPT2Config`` (learned positions) or ``LlamaConfig`` (RoPE) for ``config``.

    Raises:
        ValueError: a setting neither family can express (see :func:`hf_family`).
    """
    import transformers

    family = hf_family(config)
    common = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "initializer_range": config.init_std}
    if family == GPT2:
        return transformers.GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.context_length,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.mlp_hidden,
            activation_function=hf_activation(config),
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=config.tie_embeddings,
            **common,
        )
    if config.dropout > 0:
        warnings.warn(
            f"dropout={config.dropout}: Llama has attention dropout only; residual and embedding dropout "
            "(training-time behaviour) are lost in the export",
            stacklevel=2,
        )
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        hidden_act=hf_activation(config),
        max_position_embeddings=config.max_positions,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=config.bias,
        mlp_bias=config.bias,
        attention_dropout=config.dropout,
        tie_word_embeddings=config.tie_embeddings,
        **{CONTEXT_LENGTH_KEY: config.context_length},
        **common,
    )


# ------------------------------------------------------------------------------------------------------------
# Weights. Each family is one table from our parameter names to theirs; GPT-2 needs the transposes and splits.

# Per block, ours -> GPT-2's: norms (weight and bias) and the Conv1D layers other than the fused c_attn.
_GPT2_NORMS = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}
_GPT2_CONV1D = {"attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}


def _gpt2_state_from_hf(sd: dict[str, torch.Tensor], config: MiniGPTConfig) -> dict[str, torch.Tensor]:
    C = config.n_embd
    out = {
        "tok_emb.weight": sd["transformer.wte.weight"],
        "positions.weight": sd["transformer.wpe.weight"],
        "final_norm.weight": sd["transformer.ln_f.weight"],
        "final_norm.bias": sd["transformer.ln_f.bias"],
        "lm_head.weight": sd.get("lm_head.weight", sd["transformer.wte.weight"]),
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        # Conv1D keeps (in, out); nn.Linear keeps (out, in). c_attn's output columns are [q | k | v].
        qkv_w, qkv_b = sd[h + "attn.c_attn.weight"].t(), sd[h + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[b + f"attn.{name}.weight"] = qkv_w[j * C : (j + 1) * C]
            out[b + f"attn.{name}.bias"] = qkv_b[j * C : (j + 1) * C]
        for ours, theirs in _GPT2_NORMS.items():
            out[b + f"{ours}.weight"] = sd[h + f"{theirs}.weight"]
            out[b + f"{ours}.bias"] = sd[h + f"{theirs}.bias"]
        for ours, theirs in _GPT2_CONV1D.items():
            out[b + f"{ours}.weight"] = sd[h + f"{theirs}.weight"].t()
            out[b + f"{ours}.bias"] = sd[h + f"{theirs}.bias"]
    return out


def _gpt2_state_to_hf(sd: dict[str, torch.Tensor], config: MiniGPTConfig) -> dict[str, torch.Tensor]:
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["positions.weight"],
        "transformer.ln_f.weight": sd["final_norm.weight"],
        "transformer.ln_f.bias": sd["final_norm.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        names = ("q_proj", "k_proj", "v_proj")
        out[h + "attn.c_attn.weight"] = torch.cat([sd[b + f"attn.{n}.weight"] for n in names]).t().contiguous()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[b + f"attn.{n}.bias"] for n in names])
        for ours, theirs in _GPT2_NORMS.items():
            out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"]
            out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
        for ours, theirs in _GPT2_CONV1D.items():
            out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"].t().contiguous()
            out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
    return out


def _llama_names(config: MiniGPTConfig) -> dict[str, str]:
    """Our parameter name -> Llama's (a pure renaming)."""
    names = {
        "tok_emb.weight": "model.embed_tokens.weight",
        "final_norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    linears = [f"attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    for i in range(config.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        names[b + "attn_norm.weight"] = h + "input_layernorm.weight"
        names[b + "mlp_norm.weight"] = h + "post_attention_layernorm.weight"
        for lin in linears:
            theirs = lin.replace("attn.", "self_attn.")
            names[b + lin + ".weight"] = h + theirs + ".weight"
            if config.bias:
                names[b + lin + ".bias"] = h + theirs + ".bias"
    return names


# ------------------------------------------------------------------------------------------------------------
# Models


def from_hf_model(hf_model: Any) -> MiniGPT:
    """A :class:`MiniGPT` with the weights of a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``.

    The returned model is in eval mode, with the dtype and device of ``hf_model``.

    Raises:
        ValueError: an unsupported model type or setting (see :func:`config_from_hf`).
    """
    config = config_from_hf(hf_model.config)
    sd = hf_model.state_dict()
    if _family_of(config) == GPT2:
        ours = _gpt2_state_from_hf(sd, config)
    else:
        names = _llama_names(config)
        if "lm_head.weight" not in sd:  # a tied checkpoint may store the shared matrix once, as the embedding
            sd = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"]}
        ours = {k: sd[v] for k, v in names.items()}
    ref = next(iter(sd.values()))
    model = MiniGPT(config).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def to_hf_model(model: MiniGPT) -> Any:
    """A ``GPT2LMHeadModel`` (learned positions) or ``LlamaForCausalLM`` (RoPE) with ``model``'s weights.

    The returned model is in eval mode, with the dtype and device of ``model``, using ``sdpa`` attention.

    Raises:
        ValueError: a config neither family can express (see :func:`hf_config_from`).
    """
    import transformers

    hf_config = hf_config_from(model.config)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if _family_of(model.config) == GPT2:
        hf_model = transformers.GPT2LMHeadModel(hf_config)
        theirs = _gpt2_state_to_hf(sd, model.config)
    else:
        hf_model = transformers.LlamaForCausalLM(hf_config)
        theirs = {v: sd[k] for k, v in _llama_names(model.config).items()}
    ref = next(iter(sd.values()))
    hf_model = hf_model.to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = hf_model.load_state_dict(theirs, strict=False)
    # Only non-persistent bookkeeping (e.g. GPT-2's causal "bias" buffer in older versions) may be left over.
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(f"weight mapping is incomplete: missing {missing}, unexpected {unexpected}")
    return hf_model.eval()
