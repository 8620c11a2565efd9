"""`llm-lab import-hf` checks a directory's config against its weights before building anything, and `export-hf`
writes every file with the umask's mode: each bad directory is one line, nothing written."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import test_hf_cli
from package_helpers import GPT2_LIKE, bpe_tokenizer, make_package
from test_hf_cli import hf_model_dir, one_line_error, run_cli

from llm_lab.core.package.io import load_model_package

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
hf_tokenizer_files = test_hf_cli.hf_tokenizer_files  # the fixture: a byte-level BPE trained by HF tokenizers


def _edit_config(hf_dir, **changes) -> None:
    path = hf_dir / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _import(capsys, tmp_path) -> str:
    capsys.readouterr()  # transformers' progress output while the fixture was saved
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 2 and not (tmp_path / "pkg").exists()
    return one_line_error(err)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_config_asking_for_more_layers_than_the_weights_hold_is_refused_at_once(
    capsys, tmp_path, hf_tokenizer_files, family
):
    """Before: n_layer 1e7 beside two blocks of weights built that model until killed."""
    hf_model_dir(tmp_path / "hf", family, hf_tokenizer_files)
    _edit_config(tmp_path / "hf", **{"n_layer" if family == "gpt2" else "num_hidden_layers": 10_000_000})
    assert "config.json: the config asks for 10000000 layers, but the weights hold 2 blocks" in _import(
        capsys, tmp_path
    )


def test_a_config_of_other_sizes_than_the_weights_is_refused(capsys, tmp_path, hf_tokenizer_files):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    _edit_config(tmp_path / "hf", n_positions=1_000_000_000)
    assert "weights do not match config.json (transformer.wpe.weight is (32, 32) but config.json implies " \
        "(1000000000, 32))" in _import(capsys, tmp_path)


def test_an_untied_gpt2_without_its_output_head_is_refused(capsys, tmp_path, hf_tokenizer_files):
    """Before: imported with exit 0 and a randomly initialised lm_head."""
    hf = tmp_path / "hf"
    hf_model_dir(hf, "gpt2", hf_tokenizer_files)
    _edit_config(hf, tie_word_embeddings=False)
    weights = safetensors_torch.load_file(hf / "model.safetensors")
    assert "lm_head.weight" not in weights  # saved tied: the head is the embedding, stored once
    assert (
        "the weights lack lm_head.weight, which config.json needs (tie_word_embeddings is false: the output head is "
        "a tensor of its own); refusing to import a model with randomly initialised tensors"
    ) in _import(capsys, tmp_path)


def test_any_missing_block_tensor_is_named(capsys, tmp_path, hf_tokenizer_files):
    hf = tmp_path / "hf"
    hf_model_dir(hf, "llama", hf_tokenizer_files)
    weights = safetensors_torch.load_file(hf / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    safetensors_torch.save_file(weights, hf / "model.safetensors", metadata={"format": "pt"})
    assert "the weights lack model.layers.1.mlp.up_proj.weight, which config.json needs;" in _import(capsys, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x00\x10garbage" * 100, "header too large"), (b"xyz", "header too small")],
    ids=["garbage", "truncated"],
)
def test_a_garbage_safetensors_file_is_one_line(capsys, tmp_path, hf_tokenizer_files, content, message):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    (tmp_path / "hf" / "model.safetensors").write_bytes(content)
    err = _import(capsys, tmp_path)
    assert "model.safetensors: not a readable safetensors file (" in err and message in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"config.json: transformers rejects this config: .*'layer_norm_epsilon' expected float, got int"),
        (0.0, r"cannot import .*: norm_eps must be positive, got 0.0"),
    ],
)
def test_a_config_transformers_or_minigpt_rejects_is_one_line(capsys, tmp_path, hf_tokenizer_files, value, message):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    _edit_config(tmp_path / "hf", layer_norm_epsilon=value)
    err = _import(capsys, tmp_path)
    assert re.search(message, err), err


def test_a_good_directory_still_imports(capsys, tmp_path, hf_tokenizer_files):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    capsys.readouterr()
    code, out, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 0 and "wrote package" in out and err == ""  # transformers' log lines are kept quiet
    load_model_package(tmp_path / "pkg")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_export_writes_every_file_with_the_umask_mode(capsys, tmp_path, umask):
    """Before: model.safetensors came out 0600 while every other file followed the umask."""
    make_package(tmp_path / "pkg", bpe_tokenizer(), **GPT2_LIKE)
    old = os.umask(umask)
    try:
        code, _, _ = run_cli(capsys, "export-hf", str(tmp_path / "pkg"), str(tmp_path / "hf"))
    finally:
        os.umask(old)
    assert code == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes
