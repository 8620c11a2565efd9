"""Packages: layout, exact round trips, atomic writes, and refusal of every kind of bad package."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
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
    load_run,
    load_weights_into,
    package_run,
    save_model_package,
)
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer


def tiny_config(vocab_size: int, **overrides) -> MiniGPTConfig:
    base = dict(vocab_size=vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=16)
    base.update(overrides)
    return MiniGPTConfig(**base)


@pytest.fixture
def char_tok(small_text) -> CharTokenizer:
    return CharTokenizer.from_text(small_text)


@pytest.fixture(scope="module")
def bpe_tok() -> SubwordTokenizer:
    text = "the quick brown fox jumps over the lazy dog. to be, or not to be.\n" * 20
    return SubwordTokenizer.train(text, 280, show_progress=False)


@pytest.fixture
def package(tmp_path, char_tok) -> tuple[Path, MiniGPTConfig, MiniGPT]:
    cfg = tiny_config(char_tok.vocab_size)
    model = MiniGPT(cfg)
    path = save_model_package(tmp_path / "pkg", cfg, char_tok, model, step=7, tokens_seen=700, best_val_loss=2.5)
    return path, cfg, model


def refresh_sizes(pkg: Path) -> None:
    """Record the current file sizes and checksums in package.json, as a crafted (malicious or hand-edited)
    package would."""
    manifest = json.loads((pkg / "package.json").read_text())
    manifest["files"] = {
        p.relative_to(pkg).as_posix(): {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(pkg.rglob("*"))
        if p.is_file() and p.name != "package.json"
    }
    (pkg / "package.json").write_text(json.dumps(manifest))


def edit_manifest(pkg: Path, **changes) -> None:
    manifest = json.loads((pkg / "package.json").read_text())
    manifest.update(changes)
    (pkg / "package.json").write_text(json.dumps(manifest))


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


# ------------------------------------------------------------------------------------------ round trips


def test_layout_and_manifest(package, char_tok):
    path, cfg, model = package
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [
        "checkpoints/best_val.pt",
        "config.json",
        "model.safetensors",
        "package.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
    ]
    assert json.loads((path / "config.json").read_text()) == json.loads(json.dumps(cfg.__dict__))
    manifest = json.loads((path / "package.json").read_text())
    assert manifest["format"] == "llm-lab-package"
    assert manifest["format_version"] == 2
    assert manifest["library_version"] == "0.1.0"
    assert manifest["tokenizer_type"] == "char"
    assert manifest["training"] == {"steps": 7, "tokens": 700, "best_val_loss": 2.5}
    assert manifest["num_parameters"] == model.num_parameters()
    assert manifest["complete"] is True
    assert list(manifest)[-1] == "complete"  # the marker is the last thing written
    # Tied embeddings are stored once in safetensors.
    stored = load_file(path / "model.safetensors")
    assert "tok_emb.weight" in stored and "lm_head.weight" not in stored
    # Format 2: the checkpoint is the plain state dict (the spec's habit works); its metadata is in the manifest.
    fresh = MiniGPT(cfg)
    fresh.load_state_dict(torch.load(path / "checkpoints/best_val.pt", weights_only=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    info = manifest["checkpoint_info"]["checkpoints/best_val.pt"]
    assert info == {"step": 7, "tokens_seen": 700, "best_val_loss": 2.5}
    # No temporary directories are left beside the package, and it has the permissions of a plain mkdir/open.
    assert [p.name for p in path.parent.iterdir()] == ["pkg"]
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o777 & ~umask
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1),
        dict(pos_encoding="alibi", qk_norm=True, mlp="relu2"),
    ],
    ids=["gpt2-like", "llama-like-untied-mqa", "alibi-qknorm"],
)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_round_trip_is_exact(tmp_path, kind, overrides, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    cfg = tiny_config(tok.vocab_size, **overrides)
    model = MiniGPT(cfg).eval()
    save_model_package(tmp_path / "pkg", cfg, tok, model)
    cfg2, tok2, model2 = load_model_package(tmp_path / "pkg")
    assert cfg2 == cfg
    assert type(tok2) is type(tok) and tok2.vocab_size == tok.vocab_size
    ids = tok.encode("to be, or not to be")
    assert tok2.encode("to be, or not to be") == ids
    assert not model2.training
    assert torch.equal(logits(model2, ids), logits(model, ids))
    assert model2.config.tie_embeddings == cfg.tie_embeddings
    if cfg.tie_embeddings:
        assert model2.lm_head.weight is model2.tok_emb.weight


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_package_under_a_non_utf8_path_loads_back(tmp_path, kind, char_tok, bpe_tok):
    """A folder named in Latin-1 ("café" from an old archive): safetensors refuses such a path; the package loads."""
    tok = char_tok if kind == "char" else bpe_tok
    cfg = tiny_config(tok.vocab_size)
    model = MiniGPT(cfg).eval()
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")) / "pkg"
    save_model_package(folder, cfg, tok, model)
    assert os.fsencode(folder).endswith(b"/caf\xe9/pkg") and (folder / "model.safetensors").is_file()
    cfg2, tok2, model2 = load_model_package(folder)
    ids = tok.encode("to be, or not to be")
    assert cfg2 == cfg and tok2.encode("to be, or not to be") == ids
    assert torch.equal(logits(model2, ids), logits(model, ids))


def test_bf16_weights_load_as_bf16(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    model = MiniGPT(cfg).to(torch.bfloat16)
    save_model_package(tmp_path / "pkg", cfg, char_tok, model)
    _, _, loaded = load_model_package(tmp_path / "pkg")
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)


def test_best_and_last_checkpoints(tmp_path, char_tok):
    """is_best=False writes last.pt and keeps the best weights as the package's weights."""
    cfg = tiny_config(char_tok.vocab_size)
    best, last = MiniGPT(cfg).eval(), MiniGPT(cfg).eval()
    path = tmp_path / "pkg"
    save_model_package(path, cfg, char_tok, best, is_best=True, step=10, best_val_loss=1.5)
    save_model_package(path, cfg, char_tok, last, is_best=False, step=20, best_val_loss=1.5)
    ids = char_tok.encode("to be")
    manifest = json.loads((path / "package.json").read_text())
    assert manifest["checkpoints"] == ["checkpoints/best_val.pt", "checkpoints/last.pt"]
    assert manifest["weights_from"] == "best" and manifest["training"]["steps"] == 20
    assert torch.equal(logits(load_model_package(path)[2], ids), logits(best, ids))
    assert torch.equal(logits(load_model_package(path, checkpoint="best")[2], ids), logits(best, ids))
    assert torch.equal(logits(load_model_package(path, checkpoint="last")[2], ids), logits(last, ids))
    # A new best keeps last.pt.
    newer = MiniGPT(cfg).eval()
    save_model_package(path, cfg, char_tok, newer, is_best=True, step=30)
    assert torch.equal(logits(load_model_package(path)[2], ids), logits(newer, ids))
    assert torch.equal(logits(load_model_package(path, checkpoint="last")[2], ids), logits(last, ids))


def test_only_last_checkpoint_gives_last_weights(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    model = MiniGPT(cfg).eval()
    path = save_model_package(tmp_path / "pkg", cfg, char_tok, model, is_best=False)
    assert json.loads((path / "package.json").read_text())["weights_from"] == "last"
    with pytest.raises(PackageError, match=r"best_val\.pt: missing"):
        load_model_package(path, checkpoint="best")


def test_compiled_wrapper_prefixes_are_stripped(char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    src, dst = MiniGPT(cfg), MiniGPT(cfg)
    prefixed = {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}
    load_weights_into(dst, prefixed, "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_describe_package(package):
    path, cfg, model = package
    info = describe_package(path)
    assert info["config"]["n_embd"] == 16
    # config.json keeps null for the derived head values; the description shows them resolved.
    assert (info["config"]["n_kv_head"], info["config"]["attention_type"]) == (cfg.n_kv_head, cfg.attention_type)
    assert info["config"]["n_kv_head"] is not None and info["config"]["attention_type"] in ("mha", "gqa", "mqa")
    assert info["num_parameters"] == model.num_parameters()
    assert info["num_non_embedding_parameters"] == model.num_parameters(non_embedding=True)
    assert info["tokenizer"]["type"] == "char" and info["tokenizer"]["vocab_size"] == cfg.vocab_size
    assert info["training"] == {"steps": 7, "tokens": 700, "best_val_loss": 2.5}


# ------------------------------------------------------------------------------------------ atomic writes


def test_crash_during_save_leaves_old_package(tmp_path, package, char_tok, monkeypatch):
    path, cfg, model = package
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr("llm_lab.core.package.io.atomic_write_bytes", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        save_model_package(path, cfg, char_tok, MiniGPT(cfg))
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temporary directory left behind

    with pytest.raises(RuntimeError, match="power cut"):
        save_model_package(tmp_path / "new", cfg, char_tok, MiniGPT(cfg))
    assert not (tmp_path / "new").exists()


def test_half_written_package_is_refused(package):
    path, _, _ = package
    edit_manifest(path, complete=False)
    with pytest.raises(PackageError, match=r"package\.json: the package is not marked complete"):
        load_model_package(path)
    # Format 2: without its manifest the directory is in the spec's layout (config, tokenizer, best_val.pt), which
    # loads; only a directory that is neither is refused, and the message does not blame a crash.
    (path / "package.json").unlink()
    load_model_package(path)
    (path / "checkpoints" / "best_val.pt").unlink()
    with pytest.raises(PackageError, match=r"package\.json: missing, so .* is not a complete package") as info:
        load_model_package(path)
    assert "missing checkpoints/best_val.pt" in str(info.value) and "crash" not in str(info.value)


def test_refuses_to_clobber_other_directories(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    model = MiniGPT(cfg)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not an llm-lab package; refusing to replace it"):
        save_model_package(other, cfg, char_tok, model)
    assert (other / "important.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        save_model_package(tmp_path / "file", cfg, char_tok, model)
    save_model_package(tmp_path / "pkg", cfg, char_tok, model)
    with pytest.raises(FileExistsError, match="already holds a package"):
        save_model_package(tmp_path / "pkg", cfg, char_tok, model, overwrite=False)


# ------------------------------------------------------------------------------------------ bad packages


class RunsACommand:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format_version": 1, "model": {"w": torch.zeros(1)}, "payload": RunsACommand(marker)}, path)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, package):
    path, _, _ = package
    marker = tmp_path / "pwned"
    # The payload is real: unpickling it without weights_only runs the command.
    probe = tmp_path / "probe.pt"
    write_malicious_checkpoint(probe, marker)
    torch.load(probe, weights_only=False)
    assert marker.exists()
    marker.unlink()

    # A crafted package: no safetensors, the checkpoint replaced, the manifest made consistent with both.
    (path / "model.safetensors").unlink()
    write_malicious_checkpoint(path / "checkpoints" / "best_val.pt", marker)
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"refusing to load .*best_val\.pt: it holds pickled Python objects"):
        load_model_package(path)
    with pytest.raises(PackageError, match=r"refusing to load .*best_val\.pt"):
        load_model_package(path, checkpoint="best")
    assert not marker.exists()


def test_malicious_checkpoint_is_not_read_when_safetensors_exist(tmp_path, package):
    path, _, model = package
    marker = tmp_path / "pwned"
    write_malicious_checkpoint(path / "checkpoints" / "best_val.pt", marker)
    refresh_sizes(path)
    _, _, loaded = load_model_package(path)  # model.safetensors holds the same weights: the pickle is not opened
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)
    assert not marker.exists()


def test_vocab_size_mismatch(tmp_path, package, char_tok):
    path, cfg, model = package
    bigger = CharTokenizer.from_text("".join(chr(c) for c in range(33, 33 + cfg.vocab_size + 5)))
    shutil.rmtree(path / "tokenizer")
    bigger.save(path / "tokenizer")
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"vocab-size mismatch: the tokenizer in .*tokenizer has \d+ tokens"):
        load_model_package(path)
    with pytest.raises(PackageError, match="vocab-size mismatch"):
        save_model_package(tmp_path / "other", cfg, bigger, model)


def test_unknown_format_version(package):
    path, _, _ = package
    edit_manifest(path, format_version=99)
    with pytest.raises(PackageError, match=r"package\.json: format_version 99 is newer than this llm-lab"):
        load_model_package(path)
    edit_manifest(path, format_version=0)
    with pytest.raises(PackageError, match=r"package\.json: unknown format_version 0"):
        load_model_package(path)
    edit_manifest(path, format_version="1")
    with pytest.raises(PackageError, match=r"package\.json: format_version must be an integer, got '1'"):
        load_model_package(path)


def test_unknown_checkpoint_format_version(package):
    """A checkpoint from a newer llm-lab is refused by name, not misread."""
    path, _, model = package
    (path / "model.safetensors").unlink()
    # Format 2 package checkpoints are plain state dicts; a checkpoint dict (format 1's shape) carries a version.
    state = torch.load(path / "checkpoints" / "best_val.pt", weights_only=True)
    torch.save({"format_version": 2, "model": state, "step": 1}, path / "checkpoints" / "best_val.pt")
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"best_val\.pt: checkpoint format_version 2 is not supported"):
        load_model_package(path)


def test_missing_and_truncated_files(package):
    path, _, _ = package
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match=r"model\.safetensors: \d+ bytes, but package\.json records \d+"):
        load_model_package(path)
    (path / "config.json").unlink()
    with pytest.raises(PackageError, match=r"config\.json: missing from the package"):
        load_model_package(path)
    with pytest.raises(FileNotFoundError, match="package not found"):
        load_model_package(path / "nope")


def test_config_with_unknown_key(package):
    path, _, _ = package
    data = json.loads((path / "config.json").read_text())
    data["n_layers"] = 3
    (path / "config.json").write_text(json.dumps(data))
    refresh_sizes(path)
    with pytest.raises(ValueError, match=r"config\.json: unknown key 'n_layers'"):
        load_model_package(path)
    (path / "config.json").write_text('{"vocab_size": 12,')
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"config\.json: not valid JSON"):
        load_model_package(path)
    (path / "package.json").write_bytes(b"\xff{")
    with pytest.raises(PackageError, match=r"package\.json: not valid JSON .*; the package is damaged"):
        load_model_package(path)


def test_wrong_missing_and_unexpected_tensors(package):
    path, _, _ = package
    weights = path / "model.safetensors"
    original = load_file(weights)

    def rewrite(tensors):
        save_file(tensors, weights)
        refresh_sizes(path)

    rewrite({**original, "tok_emb.weight": torch.zeros(3, 16)})
    with pytest.raises(PackageError, match=r"model\.safetensors: .*wrong shapes: tok_emb\.weight is \(3, 16\)"):
        load_model_package(path)
    rewrite({k: v for k, v in original.items() if not k.startswith("blocks.1.")})
    with pytest.raises(PackageError, match=r"model\.safetensors: .*missing tensors: blocks\.1\."):
        load_model_package(path)
    rewrite({**original, "extra.weight": torch.zeros(2)})
    with pytest.raises(PackageError, match=r"model\.safetensors: .*unexpected tensors: extra\.weight"):
        load_model_package(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_layer": 10_000_000}, r"missing tensors: blocks\.2\.\*, .*blocks\.7\.\* \(\+9,999,992 more\); "
         r"the config says n_layer=10000000, the weights hold 2 block\(s\)"),
        ({"vocab_size": 1_000_000_000}, r"wrong shapes: tok_emb\.weight is \(\d+, 16\) but the model expects "
         r"\(1000000000, 16\)"),
    ],
)  # fmt: skip
def test_a_config_larger_than_its_weights_is_refused_before_building(package, changes, message):
    """Before: the model the config describes was built first (n_layer=1e7: minutes, then out of memory)."""
    path, _, _ = package
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"model\.safetensors: weights do not match the model config \(.*" + message):
        load_model_package(path)


def test_corrupt_checkpoint_is_named(package):
    path, _, _ = package
    (path / "model.safetensors").unlink()
    (path / "checkpoints" / "best_val.pt").write_bytes(b"not a zip file at all")
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"best_val\.pt"):
        load_model_package(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_bare_object_checkpoint_refused(tmp_path, package):
    """A plain pickle (not torch.save) holding a command is refused too."""
    path, _, _ = package
    marker = tmp_path / "pwned"
    (path / "model.safetensors").unlink()
    (path / "checkpoints" / "best_val.pt").write_bytes(pickle.dumps(RunsACommand(marker)))
    refresh_sizes(path)
    with pytest.raises(PackageError, match=r"refusing to load .*best_val\.pt"):
        load_model_package(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ run directories


def make_run_dir(root: Path, tok, cfg: MiniGPTConfig, best: MiniGPT | None, last: MiniGPT) -> Path:
    """A run directory in the Trainer's layout (contracts.md), written by hand."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": cfg.__dict__, "train": {"max_steps": 20}}))
    tok.save(run / "tokenizer")
    for name, model, step in (("best_val.pt", best, 10), ("last.pt", last, 20)):
        if model is None:
            continue
        torch.save(
            {
                "format_version": 1,
                "model_config": cfg.__dict__,
                "model": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": []},
                "step": step,
                "tokens_seen": step * 100,
                "best_val_loss": 1.25,
                "train_config": {"max_steps": 20},
                "rng": {},
                "data_state": {},
            },
            run / "checkpoints" / name,
        )
    return run


def test_package_run(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    best, last = MiniGPT(cfg).eval(), MiniGPT(cfg).eval()
    run = make_run_dir(tmp_path, char_tok, cfg, best, last)
    ids = char_tok.encode("to be")

    out = package_run(run, tmp_path / "pkg")
    manifest = json.loads((out / "package.json").read_text())
    assert manifest["training"] == {"steps": 20, "tokens": 2000, "best_val_loss": 1.25}
    assert manifest["weights_from"] == "best" and manifest["source"]["kind"] == "run"
    assert manifest["checkpoints"] == ["checkpoints/best_val.pt", "checkpoints/last.pt"]
    assert torch.equal(logits(load_model_package(out)[2], ids), logits(best, ids))
    assert torch.equal(logits(load_model_package(out, checkpoint="last")[2], ids), logits(last, ids))
    # Package checkpoints carry weights, not optimizer state.
    assert "optimizer" not in torch.load(out / "checkpoints/last.pt", weights_only=True)

    # The run directory itself loads too, and load_package_or_run tells the two apart.
    assert torch.equal(logits(load_run(run)[2], ids), logits(best, ids))
    assert torch.equal(logits(load_run(run, checkpoint="last")[2], ids), logits(last, ids))
    assert torch.equal(logits(load_package_or_run(run)[2], ids), logits(best, ids))
    assert torch.equal(logits(load_package_or_run(out)[2], ids), logits(best, ids))

    with pytest.raises(FileExistsError, match="already holds a package"):
        package_run(run, out)
    package_run(run, out, overwrite=True)


def test_package_run_without_best_uses_last(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    last = MiniGPT(cfg).eval()
    run = make_run_dir(tmp_path, char_tok, cfg, None, last)
    out = package_run(run, tmp_path / "pkg")
    assert json.loads((out / "package.json").read_text())["weights_from"] == "last"
    ids = char_tok.encode("to be")
    assert torch.equal(logits(load_model_package(out)[2], ids), logits(last, ids))


def test_bad_run_directories(tmp_path, char_tok):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        package_run(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match=r"run\.json: missing"):
        package_run(tmp_path / "empty", tmp_path / "out")
    cfg = tiny_config(char_tok.vocab_size)
    run = make_run_dir(tmp_path, char_tok, cfg, None, MiniGPT(cfg))
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(PackageError, match="no best_val.pt or last.pt"):
        package_run(run, tmp_path / "out")
    (run / "run.json").write_text("[1, 2]")
    with pytest.raises(PackageError, match=r"run\.json: expected a JSON object"):
        package_run(run, tmp_path / "out")
    (run / "run.json").write_text("{")
    with pytest.raises(PackageError, match=r"run\.json: not valid JSON"):
        package_run(run, tmp_path / "out")
    # Loading a run directory as a package points at `package create`.
    with pytest.raises(PackageError, match="looks like a run directory"):
        load_model_package(run)


def test_malicious_run_checkpoint_is_refused(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    run = make_run_dir(tmp_path, char_tok, cfg, None, MiniGPT(cfg))
    marker = tmp_path / "pwned"
    write_malicious_checkpoint(run / "checkpoints" / "last.pt", marker)
    refused = r"last\.pt: refusing to load, it holds pickled Python objects"
    with pytest.raises(ValueError, match=refused):
        package_run(run, tmp_path / "out")
    with pytest.raises(ValueError, match=refused):
        load_run(run)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_run_checkpoint_from_another_format_version_is_refused(tmp_path, char_tok):
    cfg = tiny_config(char_tok.vocab_size)
    run = make_run_dir(tmp_path, char_tok, cfg, None, MiniGPT(cfg))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**ckpt, "format_version": 2}, run / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=r"last\.pt: checkpoint format_version 2 is not supported"):
        package_run(run, tmp_path / "out")
