"""`llm-lab package inspect` and `llm-lab package create`, with a real Trainer run, and their bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from package_helpers import TEXT, char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.package.io import load_model_package
from llm_lab.core.train import TrainerConfig
from llm_lab.core.train.run import RunConfig, TokenizerSpec, prepare_run


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llm-lab: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def package(tmp_path):
    return make_package(tmp_path / "pkg", char_tokenizer())


def test_inspect(capsys, package):
    path, model = package
    code, out, _ = run_cli(capsys, "package", "inspect", str(path))
    assert code == 0
    assert f"{model.num_parameters():,} parameters" in out
    assert "n_layer=2" in out and "n_embd=32" in out
    assert f"tokenizer char, {model.config.vocab_size} tokens" in out
    assert "steps=3, tokens=300, best val loss=3.0000 (perplexity 20.09)" in out

    code, out, _ = run_cli(capsys, "package", "inspect", str(path), "--json")
    info = json.loads(out)
    assert info["num_parameters"] == model.num_parameters()
    assert info["config"]["n_head"] == 4
    assert info["training"] == {"steps": 3, "tokens": 300, "best_val_loss": 3.0}


def trainer_run(tmp_path, steps: int = 4):
    """A real (tiny) Trainer run directory."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    config = RunConfig(
        model=MiniGPTConfig(context_length=16, n_layer=1, n_head=2, n_embd=16),
        train=TrainerConfig(
            batch_size=4,
            max_steps=steps,
            eval_interval=2,
            eval_batches=2,
            warmup_steps=1,
            device="cpu",
            peak_flops=1e12,
        ),
        tokenizer=TokenizerSpec(type="char"),
    )
    prepared = prepare_run(config, data, tmp_path / "run")
    result = prepared.start(progress=False).train()
    return tmp_path / "run", prepared, result


def test_create_from_a_trainer_run(capsys, tmp_path):
    run, prepared, result = trainer_run(tmp_path)
    code, out, _ = run_cli(capsys, "package", "create", str(run), str(tmp_path / "pkg"))
    assert code == 0 and "wrote package" in out
    manifest = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert manifest["training"]["steps"] == result.step == 4
    assert manifest["training"]["tokens"] == result.tokens_seen
    assert manifest["training"]["best_val_loss"] == pytest.approx(result.best_val_loss)
    cfg, tok, model = load_model_package(tmp_path / "pkg")
    assert cfg == prepared.model.config
    best = torch.load(run / "checkpoints" / "best_val.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert tok.encode("to be") == prepared.tokenizer.encode("to be")

    # An existing package is replaced only with --force.
    code, _, err = run_cli(capsys, "package", "create", str(run), str(tmp_path / "pkg"))
    assert code == 2
    assert_one_line_error(err, "already holds a package", "--force")
    assert run_cli(capsys, "package", "create", str(run), str(tmp_path / "pkg"), "--force")[0] == 0


def test_misuse_is_one_line_exit_2(capsys, tmp_path, package):
    path, _ = package
    code, _, err = run_cli(capsys, "package", "inspect", str(tmp_path / "missing"))
    assert code == 2
    assert_one_line_error(err, "package not found", "missing")

    manifest = json.loads((path / "package.json").read_text())
    manifest["complete"] = False
    (path / "package.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "package", "inspect", str(path))
    assert code == 2
    assert_one_line_error(err, "package.json", "not marked complete")

    code, _, err = run_cli(capsys, "package", "create", str(tmp_path / "norun"), str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "run directory not found")

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    run, _, _ = trainer_run(tmp_path / "r", steps=2)
    code, _, err = run_cli(capsys, "package", "create", str(run), str(tmp_path / "notes"), "--force")
    assert code == 2
    assert_one_line_error(err, "is not an llm-lab package; refusing to replace it")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "x"

    with pytest.raises(SystemExit) as exc:
        main(["package"])  # no action: argparse's usage error
    assert exc.value.code == 2


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llm_lab", "package", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"llm-lab: error: package not found: {tmp_path / 'nope'}"


def p2_train_bpe(tmp_path, data, *extra: str) -> int:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "p2_train_bpe.py"
    main_fn = runpy.run_path(str(script), run_name="script_under_test")["main"]
    args = ["--data", str(data), "--out", str(tmp_path / "pkg"), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    return main_fn([*args, *extra])


def test_p2_train_bpe_script(capsys, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT * 3)
    tiny = ["--vocab-size", "300", "--context-length", "16", "--n-layer", "1", "--n-embd", "16", "--max-steps", "4"]
    tiny += ["--eval-interval", "2", "--eval-batches", "2", "--batch-size", "4", "--sample-tokens", "5"]
    assert p2_train_bpe(tmp_path, data, *tiny) == 0
    out = capsys.readouterr().out
    assert "trained 4 steps" in out and "sample:" in out
    cfg, tok, model = load_model_package(tmp_path / "pkg")
    assert type(tok).__name__ == "SubwordTokenizer" and tok.vocab_size == cfg.vocab_size <= 300
    assert (cfg.n_layer, cfg.n_embd, cfg.context_length) == (1, 16, 16)
    assert json.loads((tmp_path / "pkg" / "package.json").read_text())["training"]["steps"] == 4
    # A second run refuses to clobber the first without --overwrite, before training anything.
    assert p2_train_bpe(tmp_path, data, *tiny) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert p2_train_bpe(tmp_path, data, *tiny, "--overwrite") == 0
    assert p2_train_bpe(tmp_path / "x", tmp_path / "missing.txt") == 2
    assert "llm-lab data download tiny_shakespeare" in capsys.readouterr().err


@pytest.mark.slow
def test_p2_train_bpe_on_shakespeare(capsys, tmp_path, shakespeare_path):
    """The default pipeline on the real corpus (shortened): the loss falls well below a uniform guess."""
    if shakespeare_path is None:
        pytest.skip("tiny_shakespeare.txt is not available here")
    assert p2_train_bpe(tmp_path, shakespeare_path, "--max-steps", "60", "--eval-interval", "30") == 0
    manifest = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert manifest["training"]["best_val_loss"] < 0.85 * math.log(512)


class SimulatedKill(BaseException):
    """Stands for a SIGKILL in-process: nothing after it runs, no cleanup code catches it."""


def test_kill_between_last_and_best_at_the_final_evaluation(capsys, tmp_path, monkeypatch):
    """The kill leaves last.pt from the final step (naming itself the best) and best_val.pt from an earlier
    evaluation; package create repairs best_val.pt first, so the package's best weights and best loss agree."""
    import llm_lab.core.train.trainer as trainer_module
    from llm_lab.core.train.checkpoint import load_checkpoint, load_resume_checkpoint

    real_save = trainer_module.save_checkpoint
    killed = []

    def save_then_die(state, path):
        if path.name == "best_val.pt" and state["step"] == 4:
            killed.append(state["step"])
            raise SimulatedKill
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(SimulatedKill):
        trainer_run(tmp_path)
    assert killed == [4]
    run = tmp_path / "run"
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    stale = load_checkpoint(run / "checkpoints" / "best_val.pt")
    assert last["best_step"] == 4 and stale["step"] == 2 and stale["best_val_loss"] > last["best_val_loss"]

    code, _, err = run_cli(capsys, "package", "create", str(run), str(tmp_path / "pkg"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "pkg" / "package.json").read_text())
    best_info = manifest["checkpoint_info"]["checkpoints/best_val.pt"]
    assert best_info["step"] == 4 and best_info["best_val_loss"] == manifest["training"]["best_val_loss"]
    _, _, model = load_model_package(tmp_path / "pkg")
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    repaired = load_checkpoint(run / "checkpoints" / "best_val.pt")
    assert repaired["step"] == 4 and repaired["best_val_loss"] == last["best_val_loss"]

    # Resuming repairs it the same way.
    torch.save(stale, run / "checkpoints" / "best_val.pt")
    assert load_resume_checkpoint(run)["step"] == 4
    assert load_checkpoint(run / "checkpoints" / "best_val.pt")["step"] == 4


@pytest.mark.parametrize(
    "files",
    [{"package.json": '{"name": "web", "private": true}', "src/index.js": "x"}, {"config.json": "{}", "a.py": "1"}],
    ids=["node-project", "python-project"],
)
def test_create_force_leaves_a_foreign_folder_alone(capsys, tmp_path, files):
    run, _, _ = trainer_run(tmp_path / "r", steps=2)
    target = tmp_path / "project"
    for name, text in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    code, _, err = run_cli(capsys, "package", "create", str(run), str(target), "--force")
    assert code == 2
    assert_one_line_error(err, "is not an llm-lab package; refusing to replace it")
    assert {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*") if p.is_file()} == files


def test_inspect_reports_each_bad_package_in_one_line(capsys, tmp_path, package):
    import hashlib
    import os

    from safetensors.torch import load_file, save_file

    path, _ = package

    def rehash():
        manifest = json.loads((path / "package.json").read_text())
        for name in manifest["files"]:
            data = (path / name).read_bytes()
            manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (path / "package.json").write_text(json.dumps(manifest))

    original = load_file(path / "model.safetensors")
    cases = {
        "wrong dtypes: tok_emb.weight is int32": {**original, "tok_emb.weight": original["tok_emb.weight"].int()},
        "hold NaN or infinite values": {**original, "final_norm.weight": original["final_norm.weight"] / 0},
    }
    for fragment, tensors in cases.items():
        save_file(tensors, path / "model.safetensors")
        rehash()
        code, _, err = run_cli(capsys, "package", "inspect", str(path))
        assert code == 2
        assert_one_line_error(err, "model.safetensors", fragment)
    save_file(original, path / "model.safetensors")
    rehash()
    assert run_cli(capsys, "package", "inspect", str(path))[0] == 0

    good = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:])  # same size
    code, _, err = run_cli(capsys, "sample", str(path), "--max-new-tokens", "2")
    assert code == 2
    assert_one_line_error(err, "model.safetensors: its sha256 differs from the one package.json records")
    (path / "model.safetensors").write_bytes(good)

    vocab_path = path / "tokenizer" / "vocab.json"
    vocab_text = vocab_path.read_text()
    vocab = json.loads(vocab_text)
    first, second = list(vocab)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    vocab_path.write_text(json.dumps(vocab))
    rehash()
    code, _, err = run_cli(capsys, "package", "inspect", str(path))
    assert code == 2
    assert_one_line_error(err, "not the tokenizer this package was written with")
    vocab_path.write_text(vocab_text)

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"w": torch.zeros(1), "x": RunsACommand()}, path / "checkpoints" / "best_val.pt")
    rehash()
    code, _, err = run_cli(capsys, "package", "inspect", str(path))
    assert code == 2
    assert_one_line_error(err, "refusing to load", "best_val.pt", "posix.system")
    assert not (tmp_path / "pwned").exists()


def test_spec_layout_package_works_with_every_command(capsys, tmp_path):
    """config.json + tokenizer/vocab.json + merges.txt + checkpoints/best_val.pt (a plain state dict), as the spec
    lays a package out: inspect, sample, eval, export-hf, the serving engine and scripts/p2_sample_bpe.py load it."""
    import dataclasses
    import runpy
    from pathlib import Path

    from package_helpers import bpe_tokenizer

    from llm_lab.core.model.gpt import MiniGPT

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    model = MiniGPT(MiniGPTConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=1, n_head=2, n_embd=16))
    spec = tmp_path / "spec"
    (spec / "checkpoints").mkdir(parents=True)
    (spec / "config.json").write_text(json.dumps(dataclasses.asdict(model.config)))
    tok.save(spec / "tokenizer")
    (spec / "tokenizer" / "tokenizer_config.json").unlink()
    torch.save(model.state_dict(), spec / "checkpoints" / "best_val.pt")

    code, out, _ = run_cli(capsys, "package", "inspect", str(spec))
    assert code == 0 and "spec layout without a manifest" in out and "weights   checkpoints/best_val.pt" in out
    args = ["--prompt", "to be", "--temperature", "0", "--max-new-tokens", "5"]
    code, sampled, _ = run_cli(capsys, "sample", str(spec), *args)
    assert code == 0 and sampled.startswith("to be")
    script = Path(__file__).resolve().parents[2] / "scripts" / "p2_sample_bpe.py"
    assert runpy.run_path(str(script), run_name="script_under_test")["main"]([str(spec), *args]) == 0
    assert capsys.readouterr().out == sampled
    (tmp_path / "held.txt").write_text(TEXT)
    assert run_cli(capsys, "eval", str(spec), "--data", str(tmp_path / "held.txt"))[0] == 0
    pytest.importorskip("transformers")
    code, _, err = run_cli(capsys, "export-hf", str(spec), str(tmp_path / "hf"))
    assert code == 0, err
    from llm_lab.serve.engine import CompletionEngine

    assert CompletionEngine.from_package(spec).eot_token_id == tok.eot_token_id
