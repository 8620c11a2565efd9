"""export_gguf: the file read back with gguf's own GGUFReader has every tensor llama.cpp's architecture expects
(names from gguf's constants, shapes, dtypes, values), the tokenizer (tokens and merges as HF ``tokenizers``
spells them), and refuses what llama.cpp cannot run. That llama.cpp itself decodes it as we do is checked by
``make llama-cpp-check`` (llama-cpp-python builds from source, minutes)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from llm_lab.cli import main
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.gguf_io import export_gguf, gguf_tensors
from llm_lab.core.package.io import save_model_package
from llm_lab.core.package.layout import PackageError
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

TEXT = "the quick brown fox jumps over the lazy dog.\nto be, or not to be: that is the question.\n" * 12
LLAMA = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False)
GPT2 = dict(mlp="gelu_tanh")
ARCHES = {"llama": (LLAMA, gguf.MODEL_ARCH.LLAMA), "gpt2": (GPT2, gguf.MODEL_ARCH.GPT2)}


@pytest.fixture(scope="module")
def bpe():
    return SubwordTokenizer.train(TEXT, 300, show_progress=False)


def package(path, tokenizer, **overrides):
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size + 4, context_length=32, n_layer=2, n_head=4, n_embd=64,
                           **overrides)  # fmt: skip
    torch.manual_seed(0)
    model = MiniGPT(config).eval()
    return save_model_package(path, config, tokenizer, model), model


def read(path) -> tuple[gguf.GGUFReader, dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_tensors_are_named_shaped_and_typed_as_llama_cpp_expects(tmp_path, bpe, arch, dtype):
    overrides, model_arch = ARCHES[arch]
    path, model = package(tmp_path / "pkg", bpe, **overrides)
    out = export_gguf(path, tmp_path / "m.gguf", dtype=dtype)
    reader, tensors = read(out)
    config = model.config
    assert field(reader, "general.architecture") == arch
    # Every name is one gguf declares for this architecture (its MODEL_TENSORS table), each block complete.
    allowed = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[model_arch] for i in range(2)}
    assert {name.rsplit(".", 1)[0] for name in tensors} <= allowed
    per_block = {"attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down"}
    per_block |= {"attn_q", "attn_k", "attn_v", "ffn_gate"} if arch == "llama" else {"attn_qkv"}
    for i in range(2):
        assert {n.split(".")[2] for n in tensors if n.startswith(f"blk.{i}.")} == per_block
    assert {"token_embd.weight", "output_norm.weight"} <= set(tensors)
    # A tied head is left out: llama.cpp then multiplies by token_embd.
    assert ("output.weight" in tensors) is not config.tie_embeddings
    expected = gguf_tensors(config, model.state_dict(), arch)
    assert set(tensors) == set(expected)
    matrix_type = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    for name, want in expected.items():
        got = tensors[name]
        assert list(got.shape) == list(reversed(want.shape)), name  # ggml lists the innermost dimension first
        assert got.tensor_type.name == (matrix_type if want.dim() == 2 else "F32"), name
        values = gguf.quants.dequantize(got.data, got.tensor_type).reshape(want.shape)
        if dtype == "f32":
            np.testing.assert_array_equal(values, want.numpy())
        elif dtype == "f16":
            np.testing.assert_array_equal(values, want.numpy().astype(np.float16).astype(np.float32))
        else:  # q8_0: blocks of 32, one f16 scale each: half a step, plus the scale's rounding times 127
            step = np.abs(want.numpy()).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            error = np.abs(values - want.numpy()).reshape(-1, 32)
            assert (error <= step * (0.5 + 127 * 2.0**-11) + 1e-7).all(), name  # the f16 scale: 2^-11 relative
    if arch == "llama":
        assert field(reader, "llama.attention.head_count_kv") == 2
        assert field(reader, "llama.rope.dimension_count") == config.head_dim
        assert field(reader, "llama.context_length") == config.max_positions
        assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 2 * config.head_dim]  # GQA: 2 key heads
    else:
        assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 3 * 64]
        assert list(tensors["position_embd.weight"].shape) == [64, 32]


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """llama.cpp's "normal" RoPE: channels (2i, 2i+1) rotated by angles[i]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def rotate_halves(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Our (and HF Llama's) RoPE: channels (i, i + d/2) rotated by angles[i]."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def test_query_rows_are_reordered_so_that_pair_rotation_equals_half_rotation(tmp_path, bpe):
    path, model = package(tmp_path / "pkg", bpe, **LLAMA)
    config = model.config
    tensors = gguf_tensors(config, model.state_dict(), "llama")
    x = torch.randn(config.n_embd)
    angles = torch.rand(config.head_dim // 2) * 3
    for ours, theirs, heads in (("q_proj", "attn_q", config.n_head), ("k_proj", "attn_k", config.n_kv_head)):
        weight = model.state_dict()[f"blocks.0.attn.{ours}.weight"]
        want = rotate_halves((weight @ x).view(heads, -1), angles)  # (heads, head_dim)
        got = rotate_pairs((tensors[f"blk.0.{theirs}.weight"] @ x).view(heads, -1), angles)
        # The same rotated vectors, channel i of ours at 2i (first half) and 2i+1 (second half) of theirs.
        half = config.head_dim // 2
        torch.testing.assert_close(got[:, 0::2], want[:, :half])
        torch.testing.assert_close(got[:, 1::2], want[:, half:])
        # Attention scores only see dot products, which the reordering keeps.
        torch.testing.assert_close(got @ got.T, want @ want.T)


def test_tokenizer_tokens_and_merges_are_those_of_the_hf_tokenizer(tmp_path, bpe):
    path, model = package(tmp_path / "pkg", bpe, **LLAMA)
    reader, _ = read(export_gguf(path, tmp_path / "m.gguf"))
    hf = json.loads(bpe.to_hf_tokenizer_json(tmp_path / "tokenizer.json").read_text())
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == model.config.vocab_size  # one per embedding row, padding included
    for text, i in hf["model"]["vocab"].items():
        assert tokens[i] == text and types[i] == gguf.TokenType.NORMAL
    for added in hf["added_tokens"]:
        assert tokens[added["id"]] == added["content"] and types[added["id"]] == gguf.TokenType.CONTROL
    assert tokens[-4:] == [f"[PAD{i}]" for i in range(bpe.vocab_size, bpe.vocab_size + 4)]
    assert set(types[-4:]) == {gguf.TokenType.UNUSED}
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.eos_token_id") == bpe.eot_token_id
    assert field(reader, "tokenizer.ggml.bos_token_id") == bpe.eot_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


@pytest.mark.parametrize(
    ("tokenizer", "overrides", "message"),
    [
        ("bpe", dict(pos_encoding="alibi"), "pos_encoding='alibi' has no Hugging Face counterpart"),
        ("bpe", dict(GPT2, qk_norm=True), "qk_norm=True has no counterpart in GPT-2 or Llama"),
        ("bpe", dict(mlp="gelu"), "mlp='gelu': llama.cpp's gpt2 graph uses the tanh GELU; train with mlp='gelu_tanh'"),
        ("char", GPT2, "the CharTokenizer has no llama.cpp counterpart; llama.cpp reads byte-level BPE"),
        ("gpt4", LLAMA, "the tokenizer's pre-tokenisation pattern is 'gpt4'; the export writes llama.cpp's gpt-2"),
    ],
)
def test_what_llama_cpp_cannot_run_is_refused_with_the_reason(tmp_path, bpe, tokenizer, overrides, message):
    tokenizers = {
        "bpe": lambda: bpe,
        "char": lambda: CharTokenizer.from_text(TEXT),
        "gpt4": lambda: SubwordTokenizer.train(TEXT, 300, pattern="gpt4", show_progress=False),
    }
    path, _ = package(tmp_path / "pkg", tokenizers[tokenizer](), **overrides)
    with pytest.raises(PackageError, match=f"cannot export .* to GGUF: {message}"):
        export_gguf(path, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_only_its_own_earlier_export_is_replaced(tmp_path, bpe):
    path, _ = package(tmp_path / "pkg", bpe, **LLAMA)
    out = tmp_path / "m.gguf"
    export_gguf(path, out, dtype="f16")
    with pytest.raises(FileExistsError, match="m.gguf exists; choose another path or pass --force"):
        export_gguf(path, out)
    export_gguf(path, out, dtype="q8_0", overwrite=True)
    reader, _ = read(out)
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    foreign = tmp_path / "theirs.gguf"
    foreign.write_bytes(b"GGUF not ours")
    with pytest.raises(FileExistsError, match="not a GGUF file written by llm-lab export-gguf; refusing"):
        export_gguf(path, foreign, overwrite=True)
    assert foreign.read_bytes() == b"GGUF not ours"
    with pytest.raises(ValueError, match="unknown GGUF dtype 'q4_0'; choose one of: f32, f16, q8_0"):
        export_gguf(path, tmp_path / "n.gguf", dtype="q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "pkg", "theirs.gguf"]  # no temporary left


def test_cli_writes_the_file_and_reports_mistakes_in_one_line(tmp_path, bpe, capsys):
    path, _ = package(tmp_path / "pkg", bpe, **GPT2)
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(path), str(out), "--dtype", "q8_0"]) == 0
    assert f"run it with: llama-cli -m {out}" in capsys.readouterr().out
    assert read(out)[0].fields["general.architecture"].contents() == "gpt2"
    assert main(["export-gguf", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"llm-lab: error: {out} exists; choose another path or pass --force to replace an earlier export"]
