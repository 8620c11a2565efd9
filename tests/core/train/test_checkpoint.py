import random

import numpy as np
import pytest
import torch

from llm_lab.core.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
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
