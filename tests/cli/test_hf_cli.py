"""`llm-lab export-hf` / `llm-lab import-hf`: transformers loads the export with no custom code and agrees with
the package (logits, greedy text, tokenizer ids); local GPT-2 / Llama directories import into packages."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from package_helpers import GPT2_LIKE, LLAMA_LIKE, TEXT, bpe_tokenizer, char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.core.decode import generate
from llm_lab.core.package.io import load_model_package

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PROMPT = "to be, or not"
PROBE = "the lazy dog: to be, or not to be.\nthe quick brown fox"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-lab: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("arch", [GPT2_LIKE, LLAMA_LIKE], ids=["gpt2-like", "llama-like-untied-mqa"])
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_export_loads_in_transformers_and_agrees(capsys, tmp_path, kind, arch):
    tok = bpe_tokenizer() if kind == "bpe" else char_tokenizer()
    path, model = make_package(tmp_path / "pkg", tok, **arch)
    code, out, _ = run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))
    assert code == 0 and "wrote Hugging Face model directory" in out
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    expected_class = "GPT2LMHeadModel" if arch is GPT2_LIKE else "LlamaForCausalLM"
    assert type(hf_model).__name__ == expected_class

    # Same ids from the HF tokenizer, and the same text back.
    ids = tok.encode(PROBE)
    assert hf_tok(PROBE, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == PROBE

    x = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, model(x)[0], atol=1e-5, rtol=1e-5)

    # Same greedy continuation: HF's generate with its generation_config.json (EOS = end-of-text) vs ours.
    eot = tok.eot_token_id
    ours = generate(model, x[0].tolist(), 12, temperature=0, eos_token_id=eot, tokenizer=tok)
    theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
    assert theirs[0].tolist() == ours.sequences[0].tolist()
    new = theirs[0, x.shape[1] :].tolist()
    assert hf_tok.decode(new, skip_special_tokens=True) == ours.texts[0]
    if eot is not None:
        assert hf_model.generation_config.eos_token_id == eot


@pytest.mark.parametrize(
    "arch, reason",
    [
        (dict(pos_encoding="sinusoidal"), "pos_encoding='sinusoidal' has no Hugging Face counterpart"),
        (dict(pos_encoding="alibi"), "pos_encoding='alibi' has no Hugging Face counterpart"),
        (dict(qk_norm=True), "qk_norm=True has no counterpart in GPT-2 or Llama"),
        (dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2"), "mlp='relu2': the Llama family needs mlp='swiglu'"),
        (dict(bias=False), "bias=False: the GPT-2 family has biases"),
    ],
)
def test_export_refuses_configs_without_a_counterpart(capsys, tmp_path, arch, reason):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer(), **arch)
    code, _, err = run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))
    assert code == 2
    line = one_line_error(err)
    assert f"cannot export {path} to Hugging Face format" in line and reason in line
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temporary directory left


def test_export_target_checks(capsys, tmp_path):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "export-hf", str(path), str(tmp_path / "notes"))
    assert code == 2 and "exists and is not empty" in one_line_error(err)
    code, _, err = run_cli(capsys, "export-hf", str(path), str(tmp_path / "notes"), "--force")
    assert code == 2 and "is not a Hugging Face model directory; refusing" in one_line_error(err)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "x"
    assert run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))[0] == 0
    assert run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))[0] == 2
    assert run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"), "--force")[0] == 0
    code, _, err = run_cli(capsys, "export-hf", str(tmp_path / "nopkg"), str(tmp_path / "hf2"))
    assert code == 2 and "package not found" in one_line_error(err)


# ------------------------------------------------------------------------------------------ import


@pytest.fixture(scope="module")
def hf_tokenizer_files(tmp_path_factory) -> Path:
    """A byte-level BPE trained by HF `tokenizers` (not by llm-lab), saved by transformers."""
    root = tmp_path_factory.mktemp("hf_tok")
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator([TEXT], vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save(str(root / "raw.json"))
    trainer.save_model(str(root))  # GPT-2's slow-tokenizer files: vocab.json + merges.txt
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(root / "raw.json"), eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.save_pretrained(root / "saved")
    return root


def hf_model_dir(root: Path, family: str, tokenizer_files: Path, *, safetensors: bool = True, seed: int = 0):
    """A small random GPT-2 or Llama (GQA, untied) saved by transformers, with the tokenizer beside it."""
    V = 300
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    else:
        config = transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(root)
    if not safetensors:  # the older format (transformers now always writes safetensors): a pickled state dict
        (root / "model.safetensors").unlink()
        torch.save(model.state_dict(), root / "pytorch_model.bin")
    for p in (tokenizer_files / "saved").iterdir():
        shutil.copy2(p, root / p.name)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_import_hf(capsys, tmp_path, hf_tokenizer_files, family):
    hf_model = hf_model_dir(tmp_path / "hf", family, hf_tokenizer_files)
    code, out, _ = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 0 and "wrote package" in out
    cfg, tok, model = load_model_package(tmp_path / "pkg")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode(PROBE) == hf_tok(PROBE, add_special_tokens=False)["input_ids"]
    assert tok.eot_token_id == hf_tok.convert_tokens_to_ids("<|endoftext|>")
    x = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf_model(x).logits, atol=1e-5, rtol=1e-5)
    manifest = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert manifest["source"]["kind"] == "hf" and manifest["source"]["model_type"] == family
    assert (cfg.pos_encoding, cfg.n_kv_head) == (("learned", 4) if family == "gpt2" else ("rope", 2))


def test_import_bin_weights_and_gpt2_slow_tokenizer_files(capsys, tmp_path, hf_tokenizer_files):
    hf_model = hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files, safetensors=False)
    assert (tmp_path / "hf" / "pytorch_model.bin").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf" / name).unlink(missing_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy2(hf_tokenizer_files / name, tmp_path / "hf" / name)
    assert run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))[0] == 0
    _, tok, model = load_model_package(tmp_path / "pkg")
    reference = tokenizers.Tokenizer.from_file(str(hf_tokenizer_files / "raw.json"))
    assert tok.encode(PROBE) == reference.encode(PROBE).ids
    x = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf_model(x).logits, atol=1e-5, rtol=1e-5)


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_import_refuses_a_malicious_bin(capsys, tmp_path, hf_tokenizer_files):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files, safetensors=False)
    marker = tmp_path / "pwned"
    state = torch.load(tmp_path / "hf" / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": RunsACommand(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 2
    line = one_line_error(err)
    assert "refusing to load" in line and "pytorch_model.bin" in line and "unsupported GLOBAL posix.system" in line
    assert not marker.exists() and not (tmp_path / "pkg").exists()


def test_export_import_round_trip(capsys, tmp_path):
    path, model = make_package(tmp_path / "pkg", bpe_tokenizer(), **LLAMA_LIKE)
    assert run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))[0] == 0
    assert run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "back"))[0] == 0
    cfg, tok, back = load_model_package(tmp_path / "back")
    # The same architecture; the import spells the MLP width out (None means 4 * n_embd).
    assert cfg == dataclasses.replace(model.config, mlp_hidden=model.config.hidden_dim)
    assert tok.encode(PROBE) == bpe_tokenizer().encode(PROBE)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_import_misuse(capsys, tmp_path, hf_tokenizer_files):
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "nothing"), str(tmp_path / "pkg"))
    assert code == 2 and "Hugging Face directory not found" in one_line_error(err)

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "bert"), str(tmp_path / "pkg"))
    assert code == 2 and "model_type 'bert' is not supported; supported: gpt2, llama" in one_line_error(err)
    (tmp_path / "bert" / "config.json").write_text('{"model_type": ')
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "bert"), str(tmp_path / "pkg"))
    assert code == 2 and "config.json: not valid JSON" in one_line_error(err)
    (tmp_path / "bert" / "config.json").write_text('["gpt2"]')
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "bert"), str(tmp_path / "pkg"))
    assert code == 2 and "config.json: expected a JSON object" in one_line_error(err)

    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    capsys.readouterr()  # transformers' own progress output while saving the fixture
    spec = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps({**spec, "pre_tokenizer": {"type": "Whitespace"}}))
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 2 and "only byte-level BPE tokenizers (GPT-2 style) can be imported" in one_line_error(err)

    (tmp_path / "hf" / "tokenizer.json").unlink()
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 2 and "no tokenizer.json or vocab.json + merges.txt" in one_line_error(err)

    (tmp_path / "hf" / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "pkg"))
    assert code == 2 and "no weights found" in one_line_error(err)
    assert not (tmp_path / "pkg").exists()


def test_char_tokenizer_with_unknown_id_exports(capsys, tmp_path):
    """unknown="unk": HF maps an unseen character to the same id, which decodes to U+FFFD as ours does."""
    from llm_lab.core.tokenization import CharTokenizer

    tok = CharTokenizer.from_text(TEXT, unknown="unk")
    path, _ = make_package(tmp_path / "pkg", tok)
    assert run_cli(capsys, "export-hf", str(path), str(tmp_path / "hf"))[0] == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok.encode("to be€")
    assert ids[-1] == tok.unk_token_id
    assert hf_tok("to be€", add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == "to be\ufffd"


# ------------------------------------------------------------------------------------------ what --force replaces


def test_export_force_replaces_only_its_own_export(capsys, tmp_path):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer())
    # A directory with a config.json that export-hf did not write (someone's Python project).
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"debug": true}')
    (project / "main.py").write_text("print('hi')")
    code, _, err = run_cli(capsys, "export-hf", str(path), str(project), "--force")
    assert code == 2
    line = one_line_error(err)
    assert "is not a Hugging Face model directory; refusing" in line and "config.json, main.py" in line
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "main.py"]

    out = tmp_path / "hf"
    assert run_cli(capsys, "export-hf", str(path), str(out))[0] == 0
    marker = json.loads((out / "llm_lab_export.json").read_text())
    assert marker["format"] == "llm-lab-hf-export"
    assert set(marker["files"]) == {p.name for p in out.iterdir()} - {"llm_lab_export.json"}
    (out / "README.md").write_text("my model card")  # something the export did not write
    code, _, err = run_cli(capsys, "export-hf", str(path), str(out), "--force")
    assert code == 2 and "holds files llm-lab export-hf did not write (README.md)" in one_line_error(err)
    assert (out / "README.md").read_text() == "my model card"
    (out / "README.md").unlink()
    assert run_cli(capsys, "export-hf", str(path), str(out), "--force")[0] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_import_force_leaves_a_foreign_folder_alone(capsys, tmp_path, hf_tokenizer_files):
    hf_model_dir(tmp_path / "hf", "gpt2", hf_tokenizer_files)
    node = tmp_path / "node"
    node.mkdir()
    (node / "package.json").write_text('{"name": "site", "version": "1.0.0"}')
    (node / "index.js").write_text("module.exports = 1")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "import-hf", str(tmp_path / "hf"), str(node), "--force")
    assert code == 2
    line = one_line_error(err)
    assert "is not an llm-lab package; refusing to replace it" in line and "not an llm-lab manifest" in line
    assert (node / "package.json").read_text() == '{"name": "site", "version": "1.0.0"}'
    assert (node / "index.js").exists()


# ------------------------------------------------------------------------------------------ hostile indexes


def _sharded_bin_dir(root: Path, hf_tokenizer_files: Path, shard_name: str, payload=None) -> Path:
    """A GPT-2 directory whose weights are one pickle shard named by pytorch_model.bin.index.json."""
    model = hf_model_dir(root, "gpt2", hf_tokenizer_files, safetensors=False)
    (root / "pytorch_model.bin").unlink()
    state = model.state_dict()
    shard = root / shard_name
    shard.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, **({"payload": payload} if payload is not None else {})}, shard)
    index = {"metadata": {}, "weight_map": {name: shard_name for name in state}}
    (root / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize("shard_name", ["sub/shard-00001.bin", "weights.pt"])
def test_import_refuses_a_malicious_shard_named_by_an_index(capsys, tmp_path, hf_tokenizer_files, shard_name):
    marker = tmp_path / "pwned"
    hf = _sharded_bin_dir(tmp_path / "hf", hf_tokenizer_files, shard_name, RunsACommand(marker))
    capsys.readouterr()
    code, _, err = run_cli(capsys, "import-hf", str(hf), str(tmp_path / "pkg"))
    assert code == 2
    line = one_line_error(err)
    assert "refusing to load" in line and Path(shard_name).name in line and "posix.system" in line
    assert "weights_only=False" not in line
    assert not marker.exists() and not (tmp_path / "pkg").exists()


def test_import_refuses_index_entries_outside_the_directory(capsys, tmp_path, hf_tokenizer_files):
    hf = _sharded_bin_dir(tmp_path / "hf", hf_tokenizer_files, "shard.bin")
    outside = tmp_path / "outside.bin"
    shutil.copy2(hf / "shard.bin", outside)
    capsys.readouterr()
    index_path = hf / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    for entry in ("../outside.bin", str(outside)):
        index["weight_map"] = {name: entry for name in index["weight_map"]}
        index_path.write_text(json.dumps(index))
        code, _, err = run_cli(capsys, "import-hf", str(hf), str(tmp_path / "pkg"))
        assert code == 2
        assert f"{entry!r} is not a path inside the directory; refusing it" in one_line_error(err)
    os.symlink(outside, hf / "link.bin")
    index["weight_map"] = {name: "link.bin" for name in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    code, _, err = run_cli(capsys, "import-hf", str(hf), str(tmp_path / "pkg"))
    assert code == 2 and "'link.bin' is not a path inside the directory" in one_line_error(err)
    assert not (tmp_path / "pkg").exists()


def test_import_refuses_a_safetensors_index_naming_a_pickle(capsys, tmp_path, hf_tokenizer_files):
    hf = _sharded_bin_dir(tmp_path / "hf", hf_tokenizer_files, "shard.bin")
    (hf / "pytorch_model.bin.index.json").rename(hf / "model.safetensors.index.json")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "import-hf", str(hf), str(tmp_path / "pkg"))
    assert code == 2
    assert "names 'shard.bin'; a safetensors index must name .safetensors files only" in one_line_error(err)
