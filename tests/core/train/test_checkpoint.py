import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from llm_lab.core.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_state_dict,
    load_checkpoint,
    load_resume_checkpoint,
    pickle_globals,
    reconcile_best,
    restore_rng_state,
    save_checkpoint,
)


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    state = capture_rng_state()
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")
    _draws()  # move every stream on
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def _minimal(**extra):
    return {"format_version": 1, "model_config": {"n_layer": 1}, "model": {"w": torch.ones(2)}, "step": 3} | extra


def test_save_and_load(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(_minimal(), path)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert load_checkpoint(tmp_path)["step"] == 3  # a run directory reads checkpoints/last.pt
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_minimal(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last.pt: cannot read the checkpoint \(truncated, corrupted"):
        load_checkpoint(path)


def test_foreign_and_future_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError, match=r"plain.pt: not an llm-lab training checkpoint \(no format_version\)"):
        load_checkpoint(plain)
    future = tmp_path / "future.pt"
    torch.save(_minimal(format_version=2), future)
    with pytest.raises(CheckpointError, match=r"format_version 2 is not supported; this llm-lab reads version 1"):
        load_checkpoint(future)
    with pytest.raises(CheckpointError, match=r"not a complete llm-lab training checkpoint \(missing optimizer"):
        load_checkpoint(_save(tmp_path, _minimal()), training_state=True)
    with pytest.raises(CheckpointError, match=r"checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def _save(tmp_path, obj):
    path = tmp_path / "partial.pt"
    torch.save(obj, path)
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save(_minimal(extra=_Evil()), path)
    with pytest.raises(CheckpointError, match=r"evil.pt: refusing to load, it holds pickled Python objects"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ best and last agree


def _training_state() -> dict:
    """What resuming needs beside the weights, in the form the trainer writes it (one process, a fresh AdamW)."""
    return {
        "optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict(),
        "tokens_seen": 0,
        "train_config": {},
        "rng": {"world_size": 1, "states": [capture_rng_state()]},
        "data_state": {"generators": [torch.Generator().get_state()]},
    }


def _run_checkpoint(step: int, best_step: int | None, best_val_loss: float, weight: float) -> dict:
    ckpt = _minimal(step=step, best_val_loss=best_val_loss, model={"w": torch.full((2,), weight)}) | _training_state()
    return ckpt if best_step is None else ckpt | {"best_step": best_step}


def test_reconcile_repairs_a_best_checkpoint_left_behind_by_a_kill(tmp_path):
    """A kill after last.pt and before best_val.pt at the final evaluation: last.pt says its own step is the best,
    best_val.pt is from an earlier evaluation. last.pt's weights are the best ones, so best_val.pt is rewritten."""
    save_checkpoint(_run_checkpoint(4, 4, 1.0, weight=4.0), tmp_path / "checkpoints" / "last.pt")
    save_checkpoint(_run_checkpoint(2, 2, 1.5, weight=2.0), tmp_path / "checkpoints" / "best_val.pt")
    (actions,) = reconcile_best(tmp_path)
    assert "best_val.pt: rewritten from last.pt" in actions
    best = load_checkpoint(tmp_path / "checkpoints" / "best_val.pt")
    assert best["step"] == 4 and best["best_val_loss"] == 1.0 and torch.equal(best["model"]["w"], torch.full((2,), 4.0))
    assert reconcile_best(tmp_path) == []  # now they agree


def test_reconcile_refuses_what_no_kill_can_leave_and_keeps_older_runs(tmp_path):
    save_checkpoint(_run_checkpoint(6, 4, 1.0, weight=6.0), tmp_path / "checkpoints" / "last.pt")
    save_checkpoint(_run_checkpoint(2, 2, 1.5, weight=2.0), tmp_path / "checkpoints" / "best_val.pt")
    with pytest.raises(CheckpointError, match=r"best_val\.pt: from step 2, but .*last\.pt records the best weights at"):
        reconcile_best(tmp_path)
    with pytest.raises(CheckpointError, match=r"best_val\.pt: from step 2, but"):
        load_resume_checkpoint(tmp_path)
    # Checkpoints written before best_step existed are left as they are.
    save_checkpoint(_run_checkpoint(6, None, 1.0, weight=6.0), tmp_path / "checkpoints" / "last.pt")
    assert reconcile_best(tmp_path) == []


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    stale = checkpoints / f".last.pt.{pid}.abcd1234.tmp"
    stale.write_bytes(b"x" * 100)
    live = checkpoints / f".last.pt.{os.getpid()}.abcd1234.tmp"  # a write in progress (this process)
    live.write_bytes(b"y")
    save_checkpoint(_minimal(), checkpoints / "last.pt")
    assert not stale.exists() and live.exists()


def test_pickle_globals_names_what_a_file_would_import_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save(_minimal(extra=_Evil()), path)
    # torch.save pickles with protocol 2, which spells the builtins module the Python 2 way.
    assert "__builtin__.print" in pickle_globals(path)
    assert all(name.startswith(("torch.", "collections.")) for name in pickle_globals(_save(tmp_path, _minimal())))
    with pytest.raises(CheckpointError, match=r"it would import __builtin__\.print"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


# --------------------------------------------------------------------------------- contents checked before use


def test_resume_checks_the_whole_checkpoint_before_restoring_any_of_it(tmp_path, char_data, tiny_model, tiny_config):
    """A damaged last.pt is refused by Trainer.resume with the file and the fault named, and the trainer's model,
    step and RNG are untouched (before: an int64 weight was cast and used, an empty RNG list an IndexError)."""
    from llm_lab.core.train import Trainer

    train, val, vocab = char_data
    source = Trainer(tiny_model(vocab), tiny_config(max_steps=4), train, val, out_dir=tmp_path / "run", progress=False)
    source.train()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    good = torch.load(last, weights_only=True)
    damage = {
        "final_norm.weight stored as int64": (
            lambda c: c["model"].__setitem__("final_norm.weight", torch.ones(32, dtype=torch.int64)),
            r"wrong dtypes: final_norm.weight is int64 but the model expects floating point",
        ),
        "empty RNG states": (lambda c: c["rng"].__setitem__("states", []), r"damaged checkpoint: rng is not"),
        "negative step": (lambda c: c.__setitem__("step", -5), r"step is -5, expected a non-negative integer"),
    }
    for change, message in damage.values():
        checkpoint = torch.load(last, weights_only=True)
        change(checkpoint)
        damaged = tmp_path / "damaged.pt"
        torch.save(checkpoint, damaged)
        target = Trainer(tiny_model(vocab, seed=1), tiny_config(max_steps=4), train, val, progress=False)
        before = {k: v.clone() for k, v in target.model.state_dict().items()}
        rng = torch.get_rng_state()
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(damaged))}: .*{message}"):
            target.resume(damaged)
        assert target.step == 0 and torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(v, before[k]) for k, v in target.model.state_dict().items())
    target = Trainer(tiny_model(vocab, seed=1), tiny_config(max_steps=4), train, val, progress=False)
    target.resume(last)  # the undamaged file resumes
    assert target.step == good["step"] == 4


def test_check_state_dict_reads_only_shapes_and_dtypes(tiny_model):
    with torch.device("meta"):
        expected = tiny_model(10).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in expected.items()}
    check_state_dict(state, expected, "w.pt")  # float32 weights for a meta model: fine
    check_state_dict({k: v.bfloat16() for k, v in state.items()}, expected, "w.pt")  # any float precision
    with pytest.raises(CheckpointError, match=r"^w.pt: weights do not match the model config \(missing tensors: "):
        check_state_dict(dict(list(state.items())[1:]), expected, "w.pt")
    with pytest.raises(CheckpointError, match=r"^w.pt: the model weights are not a mapping of names to tensors"):
        check_state_dict({"tok_emb.weight": [1, 2]}, expected, "w.pt")
