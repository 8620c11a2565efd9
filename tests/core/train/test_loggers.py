"""Run loggers (llm_lab/core/train/loggers.py): metrics.csv always, TensorBoard and W&B (offline) on request."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest

from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.loggers import LOGGERS, check_loggers
from llm_lab.core.train.metrics import read_metrics
from llm_lab.core.train.run import RunConfig, TokenizerSpec, prepare_run


def tiny_run(loggers, max_steps=4):
    return RunConfig(
        model=MiniGPTConfig(context_length=16, n_layer=1, n_head=2, n_embd=16),
        train=TrainerConfig(batch_size=4, max_steps=max_steps, warmup_steps=1, eval_interval=2, eval_batches=2,
                            log_interval=1, device="cpu", precision="fp32", peak_flops=1e12, loggers=loggers),
        tokenizer=TokenizerSpec(type="char"),
    )  # fmt: skip


@pytest.fixture
def corpus(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def test_default_is_csv_and_the_names_are_checked():
    assert TrainerConfig().loggers == ("csv",) and list(LOGGERS) == ["csv", "tensorboard", "wandb"]
    for loggers, message in [
        (("csv", "mlflow"), "unknown logger 'mlflow'; choose from: csv, tensorboard, wandb"),
        (("tensorboard",), "must include 'csv'"),
        (("csv", "csv"), "each logger may appear once"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainerConfig(loggers=loggers)
    with pytest.raises(ValueError, match="expected a list"):
        RunConfig.from_dict({"train": {"loggers": "csv"}})


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path, corpus):
    pytest.importorskip("tensorboard")  # pinned in requirements-dev.txt: present wherever the tests run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    prepared = prepare_run(tiny_run(("csv", "tensorboard")), corpus, run)
    prepared.start(progress=False).train()
    rows = read_metrics(run / "metrics.csv")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_loss", "lr", "tokens_per_second"} <= set(events.Tags()["scalars"])
    for column in ("train_loss", "val_loss", "lr", "grad_norm"):
        logged = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        read = [(e.step, e.value) for e in events.Scalars(column)]
        # TensorBoard stores float32: the same numbers, rounded once.
        assert read == [(step, float(np.float32(value))) for step, value in logged]
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4]


def test_a_missing_tracker_is_one_line_before_anything_is_written(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec finds nothing, as when it is not installed
    with pytest.raises(ValueError, match=r"asks for 'wandb' but the wandb package is not installed; "
                       r"pip install 'foundry-llm\[wandb\]'"):  # fmt: skip
        prepare_run(tiny_run(("csv", "wandb")), corpus, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="wandb package is not installed"):
        check_loggers(["csv", "wandb"])


class FakeWandb(types.ModuleType):
    """Records what the logger asks of the wandb API (init in offline mode, log by step, finish)."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, data, step):
        self.calls.append(("log", step, data))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_offline_gets_every_row_and_resumes_the_same_run(tmp_path, corpus, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "norm-rmsnorm-seed3"
    prepare_run(tiny_run(("csv", "wandb")), corpus, run).start(progress=False).train()
    (_, init), *logs, finish = fake.calls
    assert init["mode"] == "offline" and init["name"] == "norm-rmsnorm-seed3" and init["dir"] == str(run)
    assert init["config"]["loggers"] == ["csv", "wandb"] and finish == ("finish",)
    rows = read_metrics(run / "metrics.csv")
    assert [step for _, step, _ in logs] == [int(r["step"]) for r in rows]
    assert [data["train_loss"] for _, _, data in logs] == [float(r["train_loss"]) for r in rows]
    # A resumed segment continues the same W&B run (same id).
    fake.calls.clear()
    config = tiny_run(("csv", "wandb")).with_overrides(["train.max_steps=6"])
    prepare_run(config, corpus, run, resume=True).start(progress=False).train()
    assert fake.calls[0][1]["id"] == init["id"] and [c[1] for c in fake.calls[1:-1]] == [5, 6]


def test_tracker_files_count_as_run_files_for_overwrite():
    """`train --overwrite` may replace a run that logged to TensorBoard or W&B: their files are the run's own;
    a file beside them that no logger writes is still foreign."""
    from llm_lab.core.train.loggers import is_logger_file
    from llm_lab.core.train.run_directory import _is_run_file

    assert is_logger_file("tensorboard/events.out.tfevents.1700000000.host.123.0")
    assert is_logger_file("wandb/offline-run-20261130_120000-abc/files/config.yaml")
    assert not is_logger_file("tensorboard/notes.txt")
    assert not is_logger_file("tensorboard/sub/events.out.tfevents.1")
    assert not is_logger_file("metrics_backup.csv")
    assert _is_run_file("tensorboard/events.out.tfevents.1700000000.host.123.0", set())
    assert _is_run_file("runtime.json", set())
    assert not _is_run_file("thesis.tex", set())
