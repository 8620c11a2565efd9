"""A package as one GGUF file that llama.cpp (and Ollama, LM Studio) runs: :func:`export_gguf`.

GGUF holds the weights, the hyperparameters and the tokenizer in one file, under the tensor names and keys of a
llama.cpp architecture. Which packages fit is decided where the Hugging Face export decides it
(:func:`llm_lab.core.package.hf.hf_family`), plus what llama.cpp's graphs need on top:

=============  ==================================================  ===============================================
architecture   our model                                           tensors per block
=============  ==================================================  ===============================================
``llama``      RoPE, RMSNorm, SwiGLU, MHA/GQA/MQA, biases or none  ``attn_norm``, ``attn_q``/``k``/``v``,
                                                                   ``attn_output``, ``ffn_norm``, ``ffn_gate``,
                                                                   ``ffn_up``, ``ffn_down``
``gpt2``       learned positions, LayerNorm, tanh GELU, biases     ``attn_norm``, ``attn_qkv``, ``attn_output``,
                                                                   ``ffn_norm``, ``ffn_up``, ``ffn_down``
=============  ==================================================  ===============================================

plus ``token_embd``, ``output_norm``, ``output`` (left out when the head is tied: llama.cpp then reads
``token_embd``) and, for ``gpt2``, ``position_embd``. Two conversions matter:

* RoPE layout. Our RoPE (like Hugging Face's Llama) rotates the two halves of each head; llama.cpp's ``llama``
  graph rotates adjacent pairs. So the rows of ``attn_q`` and ``attn_k`` (and their biases) are reordered within
  each head, first half and second half interleaved, which makes the two rotations the same function.
* Weights keep ``nn.Linear``'s ``(out, in)`` order: GGUF lists dimensions innermost first, so a numpy ``(out, in)``
  array is llama.cpp's ``{in, out}`` matrix. GPT-2's ``attn_qkv`` is our q, k and v stacked.

The tokenizer goes in as llama.cpp's ``gpt2`` BPE model with the ``gpt-2`` pre-tokenizer: each token in GPT-2's
byte-to-unicode spelling, the merges in rank order as ``"left right"``, special tokens as control tokens, the
end-of-text token as BOS and EOS, and no BOS added to prompts (as the lab encodes them). Only a byte-level BPE
tokenizer with the GPT-2 pattern fits; a character tokenizer or another pattern is refused.

Weight dtypes (:data:`GGUF_DTYPES`): ``f32``, ``f16`` and ``q8_0`` (blocks of 32 weights with one f16 scale,
gguf's own quantiser). Norms, biases and other one-dimensional tensors always stay f32, and a q8_0 matrix whose
rows are not a multiple of 32 long is written as f16, as llama.cpp's own converter does.

The file is written with the ``gguf`` package (``pip install gguf``, imported only here) beside its target and
renamed into place; an existing file is replaced only with ``overwrite`` and only when it is a GGUF file this
export wrote (it carries the ``llm_lab.export_format`` key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_lab.core.package.hf import GPT2, LLAMA, hf_activation, hf_family
from llm_lab.core.package.layout import PackageError
from llm_lab.utils.io import atomic_output_path

__all__ = ["GGUF_DTYPES", "GGUFDtype", "export_gguf", "gguf_tensors"]

#: The key that marks a file as written by this export (its value is the format version).
EXPORT_KEY = "llm_lab.export_format"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class GGUFDtype:
    """One weight dtype of the export: its name, llama.cpp's ``general.file_type`` and the matrices' ggml type."""

    name: str
    file_type: str  # a gguf.LlamaFileType member name
    matrix_type: str  # a gguf.GGMLQuantizationType member name


#: The export's weight dtypes by name (the CLI's ``--dtype`` choices).
GGUF_DTYPES: dict[str, GGUFDtype] = {
    d.name: d
    for d in (
        GGUFDtype("f32", "ALL_F32", "F32"),
        GGUFDtype("f16", "MOSTLY_F16", "F16"),
        GGUFDtype("q8_0", "MOSTLY_Q8_0", "Q8_0"),
    )
}


def _import_gguf() -> Any:
    try:
        import gguf
    except ModuleNotFoundError:
        raise ValueError("the GGUF export needs the gguf package: pip install gguf") from None
    return gguf


def _check_llama_cpp_fits(config: Any, tokenizer: Any) -> str:
    """The llama.cpp architecture for the package, or ``ValueError`` saying why it has none."""
    family = hf_family(config)  # the checks the Hugging Face export makes, in one place
    if family == GPT2 and hf_activation(config) != "gelu_new":
        raise ValueError(
            f"mlp={config.mlp!r}: llama.cpp's gpt2 graph uses the tanh GELU; train with mlp='gelu_tanh' to export"
        )
    from llm_lab.core.tokenization import SubwordTokenizer

    if not isinstance(tokenizer, SubwordTokenizer):
        raise ValueError(
            f"the {type(tokenizer).__name__} has no llama.cpp counterpart; llama.cpp reads byte-level BPE "
            "vocabularies (train with the 'bpe' tokenizer)"
        )
    if tokenizer.pattern_name != "gpt2":
        raise ValueError(
            f"the tokenizer's pre-tokenisation pattern is {tokenizer.pattern_name!r}; the export writes llama.cpp's "
            "gpt-2 pre-tokenizer, which splits text with the GPT-2 pattern (train with pattern 'gpt2')"
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    return {GPT2: "gpt2", LLAMA: "llama"}[family]


def _interleave_rope_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half order (``x0..x(d/2-1), y0..``) to pairs (``x0, y0, x1, y1..``)."""
    head_dim = weight.shape[0] // n_head
    rest = weight.shape[1:]
    return weight.reshape(n_head, 2, head_dim // 2, *rest).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(config: Any, state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor name -> float32 tensor, from our state dict (``(out, in)`` matrices, see the module docs).

    Args:
        config: the model's ``MiniGPTConfig``.
        state: the model's state dict.
        arch: ``"llama"`` or ``"gpt2"``.
    """
    out = {"token_embd.weight": state["tok_emb.weight"], "output_norm.weight": state["final_norm.weight"]}
    if not config.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    kinds = ("weight", "bias") if config.bias else ("weight",)
    if arch == "gpt2":
        out["position_embd.weight"] = state["positions.weight"]
        out["output_norm.bias"] = state["final_norm.bias"]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        norms = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm"}
        for our_norm, their_norm in norms.items():
            for kind in ("weight", "bias") if arch == "gpt2" else ("weight",):
                out[f"{theirs}{their_norm}.{kind}"] = state[f"{ours}{our_norm}.{kind}"]
        if arch == "gpt2":
            linears = {"attn.o_proj": "attn_output", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
            for kind in kinds:
                qkv = [state[f"{ours}attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{theirs}attn_qkv.{kind}"] = torch.cat(qkv)
        else:
            linears = {
                "attn.q_proj": "attn_q",
                "attn.k_proj": "attn_k",
                "attn.v_proj": "attn_v",
                "attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate",
                "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down",
            }
        for our_linear, their_linear in linears.items():
            for kind in kinds:
                tensor = state[f"{ours}{our_linear}.{kind}"]
                if our_linear in ("attn.q_proj", "attn.k_proj"):
                    heads = config.n_head if our_linear == "attn.q_proj" else config.n_kv_head
                    tensor = _interleave_rope_rows(tensor, heads)
                out[f"{theirs}{their_linear}.{kind}"] = tensor
    return {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in out.items()}


def _encode(gguf: Any, tensor: torch.Tensor, dtype: GGUFDtype) -> tuple[np.ndarray, Any]:
    """``(array, ggml type)`` for one tensor: f32 for vectors, the dtype's type for matrices (see the module docs)."""
    array = tensor.numpy()
    types = gguf.GGMLQuantizationType
    kind = types[dtype.matrix_type] if array.ndim == 2 else types.F32
    if kind == types.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0]:
        kind = types.F16
    if kind == types.F32:
        return array, kind
    if kind == types.F16:
        return array.astype(np.float16), kind
    return gguf.quants.quantize(array, kind), kind


def _token_table(gguf: Any, tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """``(tokens, token types, merges)`` in GPT-2's byte-to-unicode spelling (padding ids become unused tokens)."""
    from llm_lab.core.tokenization.byte_level import bytes_to_unicode

    to_unicode = bytes_to_unicode()

    def spell(data: bytes) -> str:
        return "".join(to_unicode[b] for b in data)

    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for data, i in tokenizer.vocab.items():
        tokens[i], types[i] = spell(data), int(gguf.TokenType.NORMAL)
    for text, i in tokenizer.special_tokens.items():
        tokens[i], types[i] = text, int(gguf.TokenType.CONTROL)
    merges = [f"{spell(left)} {spell(right)}" for left, right in tokenizer.merges]
    return tokens, types, merges


def _check_target(gguf: Any, out: Path, overwrite: bool) -> None:
    """Refuse a target that is not a GGUF file this export wrote (or that exists, without ``overwrite``)."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out} exists and is not a regular file; the export writes one .gguf file")
    if not overwrite:
        raise FileExistsError(f"{out} exists; choose another path or pass --force to replace an earlier export")
    try:
        with out.open("rb") as f:
            magic = f.read(4)
        ours = magic == b"GGUF" and EXPORT_KEY in gguf.GGUFReader(out).fields
    except (OSError, ValueError, IndexError, KeyError):
        ours = False
    if not ours:
        raise FileExistsError(f"{out} is not a GGUF file written by llm-lab export-gguf; refusing to replace it")


def export_gguf(package: str | Path, out: str | Path, *, dtype: str = "f32", overwrite: bool = False) -> Path:
    """Write a package as one GGUF file for llama.cpp (see the module docs for what fits and how it maps).

    Args:
        package: the package directory.
        out: the ``.gguf`` file to write (written beside and renamed into place).
        dtype: the matrices' dtype, a key of :data:`GGUF_DTYPES` (``f32``, ``f16``, ``q8_0``).
        overwrite: replace an existing file at ``out``, only if this export wrote it.

    Returns:
        ``out``.

    Raises:
        PackageError: a package llama.cpp cannot run (the message names the setting and why), or one that does
            not load.
        ValueError: an unknown dtype, or no ``gguf`` package.
        FileExistsError: ``out`` exists (without ``overwrite``), or is not an export of this command.
    """
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of: {', '.join(GGUF_DTYPES)}")
    gguf = _import_gguf()
    from llm_lab.core.package.io import load_model_package

    package, out = Path(package), Path(out)
    config, tokenizer, model = load_model_package(package)
    try:
        arch = _check_llama_cpp_fits(config, tokenizer)
    except ValueError as e:
        raise PackageError(f"cannot export {package} to GGUF: {e}") from None
    _check_target(gguf, out, overwrite)
    chosen = GGUF_DTYPES[dtype]
    tensors = gguf_tensors(config, model.state_dict(), arch)
    tokens, token_types, merges = _token_table(gguf, tokenizer, config.vocab_size)
    eot = tokenizer.eot_token_id

    writer = gguf.GGUFWriter(None, arch)
    writer.add_name(package.resolve().name)
    writer.add_uint32(EXPORT_KEY, EXPORT_VERSION)
    writer.add_file_type(int(gguf.LlamaFileType[chosen.file_type]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_head)
    if arch == "llama":
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_vocab_size(config.vocab_size)
    else:
        writer.add_layer_norm_eps(config.norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    for name, tensor in tensors.items():
        array, kind = _encode(gguf, tensor, chosen)
        writer.add_tensor(name, array, raw_dtype=kind)
    with atomic_output_path(out) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
