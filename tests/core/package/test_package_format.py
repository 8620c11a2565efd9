"""Package format 2: spec-layout packages, format-1 packages, portability, checksums, fingerprints, what may be
replaced, and bad packages refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import (
    PackageError,
    describe_package,
    load_model_package,
    load_package_or_run,
    save_model_package,
)
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. to be, or not to be.\n" * 20


def tiny_config(vocab_size: int) -> MiniGPTConfig:
    return MiniGPTConfig(vocab_size=vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=16)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


@pytest.fixture
def char_tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def bpe_tok() -> SubwordTokenizer:
    return SubwordTokenizer.train(TEXT, 280, show_progress=False)


@pytest.fixture
def package(tmp_path, char_tok) -> tuple[Path, MiniGPT]:
    model = MiniGPT(tiny_config(char_tok.vocab_size)).eval()
    path = save_model_package(tmp_path / "pkg", model.config, char_tok, model, step=7, best_val_loss=2.5)
    return path, model


def rehash(pkg: Path) -> None:
    """Make package.json agree with the files again, as a hand-edited or crafted package would."""
    manifest = json.loads((pkg / "package.json").read_text())
    for name in manifest["files"]:
        data = (pkg / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (pkg / "package.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------------ the spec's layout


def write_spec_package(path: Path, tokenizer, model: MiniGPT) -> Path:
    """A package exactly as the spec describes it: config.json, tokenizer files, checkpoints/best_val.pt holding a
    plain state dict saved with torch.save; no manifest, no tokenizer_config.json."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(model.config)))
    tokenizer.save(path / "tokenizer")
    (path / "tokenizer" / "tokenizer_config.json").unlink()
    torch.save(model.state_dict(), path / "checkpoints" / "best_val.pt")
    return path


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_spec_layout_package_loads(tmp_path, kind, char_tok, bpe_tok):
    tok = bpe_tok if kind == "bpe" else char_tok
    model = MiniGPT(tiny_config(tok.vocab_size)).eval()
    path = write_spec_package(tmp_path / "spec", tok, model)
    assert sorted(p.name for p in (path / "tokenizer").iterdir()) == (
        ["merges.txt", "vocab.json"] if kind == "bpe" else ["vocab.json"]
    )
    ids = tok.encode("to be")
    for loader in (load_model_package, load_package_or_run):
        cfg, loaded_tok, loaded = loader(path)
        assert cfg == model.config and loaded_tok.encode("to be") == ids
        assert torch.equal(logits(loaded, ids), logits(model, ids))
    info = describe_package(path)
    assert info["layout"] == "spec" and info["format_version"] is None
    assert info["checkpoints"] == ["checkpoints/best_val.pt"] and info["num_parameters"] == model.num_parameters()


def test_spec_layout_is_checked_like_any_package(tmp_path, char_tok):
    model = MiniGPT(tiny_config(char_tok.vocab_size)).eval()
    path = write_spec_package(tmp_path / "spec", char_tok, model)
    state = model.state_dict()
    state["tok_emb.weight"] = torch.full_like(state["tok_emb.weight"], float("nan"))
    torch.save(state, path / "checkpoints" / "best_val.pt")
    with pytest.raises(PackageError, match=r"best_val\.pt: bad weights, tok_emb\.weight.* NaN or infinite"):
        load_model_package(path)
    (path / "tokenizer" / "vocab.json").write_text(json.dumps({"ab": 0}))
    with pytest.raises(PackageError, match=r"vocab\.json: without merges\.txt .* a character vocabulary"):
        load_model_package(path)


def test_project_packages_follow_the_spec_habit(package):
    """`model.load_state_dict(torch.load(best_val.pt, weights_only=True))` works on what the project writes."""
    path, model = package
    fresh = MiniGPT(model.config)
    fresh.load_state_dict(torch.load(path / "checkpoints" / "best_val.pt", weights_only=True))
    assert torch.equal(logits(fresh, [1, 2, 3]), logits(model, [1, 2, 3]))


# ------------------------------------------------------------------------------------------ format 1


def downgrade_to_format_1(pkg: Path, **info) -> None:
    """Rewrite a package as llm-lab's format 1 wrote it: checkpoint dicts, sizes only, no fingerprint."""
    manifest = json.loads((pkg / "package.json").read_text())
    config = json.loads((pkg / "config.json").read_text())
    for rel in manifest["checkpoints"]:
        state = torch.load(pkg / rel, weights_only=True)
        meta = manifest["checkpoint_info"][rel]
        torch.save({"format_version": 1, "model_config": config, "model": state, **meta}, pkg / rel)
    for key in ("checkpoint_info", "tokenizer_fingerprint"):
        del manifest[key]
    manifest["format_version"] = 1
    manifest["source"] = {"kind": "run", "run_dir": "/home/someone/runs/x"}
    manifest["files"] = {name: (pkg / name).stat().st_size for name in manifest["files"]}
    (pkg / "package.json").write_text(json.dumps(manifest))


def test_format_1_packages_still_load_and_upgrade(tmp_path, package, char_tok):
    path, model = package
    downgrade_to_format_1(path)
    assert isinstance(torch.load(path / "checkpoints" / "best_val.pt", weights_only=True)["model"], dict)
    _, _, loaded = load_model_package(path, checkpoint="best")
    assert torch.equal(logits(loaded, [1, 2]), logits(model, [1, 2]))
    assert describe_package(path)["format_version"] == 1
    # Saving the last weights over it keeps its best checkpoint, converted to format 2 with its metadata.
    last = MiniGPT(model.config).eval()
    save_model_package(path, model.config, char_tok, last, is_best=False, step=9)
    manifest = json.loads((path / "package.json").read_text())
    assert manifest["format_version"] == 2 and manifest["weights_from"] == "best"
    assert manifest["checkpoint_info"]["checkpoints/best_val.pt"]["step"] == 7
    best = torch.load(path / "checkpoints" / "best_val.pt", weights_only=True)
    assert set(best) == set(model.state_dict())  # a plain state dict now
    assert torch.equal(logits(load_model_package(path)[2], [1, 2]), logits(model, [1, 2]))
    assert torch.equal(logits(load_model_package(path, checkpoint="last")[2], [1, 2]), logits(last, [1, 2]))


# ------------------------------------------------------------------------------------------ portability


def test_package_names_no_place_on_this_machine(tmp_path, package, char_tok):
    path, model = package
    source = {"kind": "run", "run_dir": str(tmp_path / "run"), "run_config": {"data_source": {"path": "/data/x"}}}
    save_model_package(path, model.config, char_tok, model, source=source)
    text = (path / "package.json").read_text()
    assert str(tmp_path) not in text and "/data/x" not in text
    assert json.loads(text)["source"] == {"kind": "run", "run_config": {"data_source": {}}}


# ------------------------------------------------------------------------------------------ what may be replaced


@pytest.mark.parametrize(
    "files",
    [
        {"package.json": '{"name": "my-web-app", "version": "1.0.0"}', "index.js": "console.log(1)"},
        {"config.json": "{}", "setup.py": "print(1)"},
        {"package.json": '{"format": "llm-lab-package", "format_version": 7}', "thesis.tex": "chapter 1"},
    ],
    ids=["node-project", "python-project", "unknown-version"],
)
def test_foreign_directories_survive_overwrite(tmp_path, char_tok, files):
    target = tmp_path / "target"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    model = MiniGPT(tiny_config(char_tok.vocab_size))
    with pytest.raises(FileExistsError, match=r"is not an llm-lab package; refusing to replace it \((it holds|its)"):
        save_model_package(target, model.config, char_tok, model, overwrite=True)
    assert {p.name: p.read_text() for p in target.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_package_with_added_files_is_not_replaced(package, char_tok):
    path, model = package
    (path / "notes.md").write_text("my notes")
    (path / "tokenizer" / "extra.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files its package\.json does not list \(notes\.md, tokenizer/"):
        save_model_package(path, model.config, char_tok, model, overwrite=True)
    assert (path / "notes.md").read_text() == "my notes"
    (path / "notes.md").unlink()
    (path / "tokenizer" / "extra.txt").unlink()
    save_model_package(path, model.config, char_tok, model, overwrite=True)  # only its own files: replaced


# ------------------------------------------------------------------------------------------ bad packages


def test_integer_weights_are_refused(package):
    path, _ = package
    tensors = load_file(path / "model.safetensors")
    tensors["tok_emb.weight"] = tensors["tok_emb.weight"].to(torch.int64)
    save_file(tensors, path / "model.safetensors")
    rehash(path)
    with pytest.raises(PackageError, match=r"wrong dtypes: tok_emb\.weight is int64 but the model expects floating"):
        load_model_package(path)


def test_flipped_bytes_are_caught_by_the_checksum(package):
    path, _ = package
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor: the file still parses and has the same size
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.safetensors: its sha256 differs from the one package\.json"):
        load_model_package(path)


def test_non_finite_weights_are_a_bad_package(package):
    path, _ = package
    tensors = load_file(path / "model.safetensors")
    tensors["blocks.0.attn.q_proj.weight"] = tensors["blocks.0.attn.q_proj.weight"] * float("inf")
    save_file(tensors, path / "model.safetensors")
    rehash(path)
    with pytest.raises(PackageError, match=r"model\.safetensors: bad weights, blocks\.0\.attn\.q_proj\.weight hold"):
        load_model_package(path)


def test_permuted_tokenizer_is_caught_by_the_fingerprint(package):
    path, _ = package
    vocab_path = path / "tokenizer" / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    a, b = list(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=True, indent=0) + "\n")
    rehash(path)  # the checksums agree again: only the fingerprint can tell
    with pytest.raises(PackageError, match=r"tokenizer: not the tokenizer this package was written with"):
        load_model_package(path)


def test_manifest_paths_outside_the_package_reveal_nothing(tmp_path, package):
    path, _ = package
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 1234)
    manifest = json.loads((path / "package.json").read_text())
    manifest["checkpoints"] = []
    for name in ("../secret.txt", str(secret)):
        manifest["files"] = {name: {"size": 1, "sha256": "0" * 64}}
        (path / "package.json").write_text(json.dumps(manifest))
        with pytest.raises(PackageError, match=r"is not a path inside the directory; refusing it") as info:
            load_model_package(path)
        assert "1234" not in str(info.value)
    os.symlink(secret, path / "link.txt")
    manifest["files"] = {"link.txt": {"size": 1, "sha256": "0" * 64}}
    (path / "package.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"link\.txt: a symbolic link .* a package holds only regular files") as info:
        load_model_package(path)
    assert "1234" not in str(info.value)


def test_inspect_finds_a_malicious_checkpoint_that_loading_skips(tmp_path, package):
    path, _ = package
    marker = tmp_path / "pwned"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(1), "payload": RunsACommand()}, path / "checkpoints" / "best_val.pt")
    rehash(path)
    load_model_package(path)  # model.safetensors holds the weights: the pickle is never opened
    with pytest.raises(PackageError, match=r"refusing to load .*best_val\.pt: .*it would import posix\.system"):
        describe_package(path)
    assert not marker.exists()


def test_checkpoint_entries_must_be_files_the_manifest_lists(tmp_path, package):
    path, _ = package
    manifest = json.loads((path / "package.json").read_text())
    manifest["checkpoints"] = [*manifest["checkpoints"], "../elsewhere.pt"]
    (path / "package.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"'checkpoints' must list files that 'files' holds"):
        describe_package(path)
