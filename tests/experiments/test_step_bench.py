"""The training-step benchmark (llm_lab/experiments/step_bench.py) on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train import precision as precision_module
from llm_lab.core.train.optim import muon_ns_dtype
from llm_lab.experiments import step_bench
from llm_lab.experiments.step_bench import (
    CSV_COLUMNS,
    PlainGPT,
    StepBenchConfig,
    default_10m_config,
    load_step_model_config,
    quick_step_config,
    run_step_benchmark,
    write_step_results,
)
from llm_lab.experiments.tables import read_csv

from .conftest import as_float


def test_baseline_has_the_same_shape_as_our_model():
    config = MiniGPTConfig(vocab_size=65, context_length=16, n_layer=2, n_head=2, n_embd=32)
    assert sum(p.numel() for p in PlainGPT(config).parameters()) == MiniGPT(config).num_parameters()
    assert default_10m_config().n_embd == 384 and MiniGPT(default_10m_config()).num_parameters() > 10e6


def test_quick_step_benchmark_rows_are_consistent(tmp_path, monkeypatch):
    # As on a CPU with bf16 units, where both precisions are the default (a CPU without them: see below).
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda *args: frozenset({"avx512_bf16"}))
    config = quick_step_config()
    result = run_step_benchmark(config, progress=False)
    settings = [(r["setting"], r["precision"], r["compile"]) for r in result.rows]
    assert settings == [("baseline", "fp32", False), ("ours", "fp32", False), ("ours", "bf16", False)]
    assert result.tokens_per_step == 4 * 32
    assert set(result.peak_gflops) == {"fp32", "bf16"}
    for row in result.rows:
        assert row["tokens_per_second"] == pytest.approx(result.tokens_per_step / (row["ms_per_step"] / 1e3))
        # Against the peak of the precision that ran, and never above it.
        achieved = row["tokens_per_second"] * result.flops_per_token
        assert 0 < row["mfu"] == pytest.approx(min(1.0, achieved / (result.peak_gflops[row["precision"]] * 1e9)))
        # A random init predicts about uniformly over 65 characters, and training steps do not blow it up.
        assert abs(row["loss_first"] - math.log(65)) < 0.3
        assert math.isfinite(row["loss_last"])
    assert result.rows[0]["vs_baseline"] == 1.0

    paths = write_step_results(result, tmp_path)
    csv_rows = read_csv(paths["csv"])
    assert list(csv_rows[0]) == list(CSV_COLUMNS)
    assert all(as_float(r["ms_per_step"]) > 0 and as_float(r["vs_baseline"]) > 0 for r in csv_rows)
    md = paths["md"].read_text()
    assert "matmul peak measured in this run" in md and "| x baseline |" in md


def test_muon_settings_time_the_trainer_step_with_muon():
    config = quick_step_config()
    config.optimizers, config.precisions, config.baseline = ("adamw", "muon"), ("fp32",), False
    result = run_step_benchmark(config, progress=False)
    muon = "Muon, NS in " + str(muon_ns_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    rows = [(r["precision"], r["optimizer"]) for r in result.rows]
    assert rows == [("fp32", "AdamW fused"), ("fp32", muon)]
    # Both start from the same init and batch, and each keeps training (the step is real, not a no-op).
    first = {r["optimizer"]: r["loss_first"] for r in result.rows}
    assert first["AdamW fused"] == pytest.approx(first[muon], abs=1e-5)
    assert all(r["loss_last"] < r["loss_first"] for r in result.rows)


def test_config_loading_and_overrides(tmp_path):
    model, batch = load_step_model_config(None)
    assert (model.n_layer, model.n_head, model.n_embd, model.context_length, batch) == (6, 6, 384, 256, 16)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"n_layer": 2, "n_embd": 64, "n_head": 2}, "train": {"batch_size": 8}}))
    model, batch = load_step_model_config(path, ["model.n_layer=3", "train.batch_size=4"])
    assert (model.n_layer, model.n_embd, batch) == (3, 64, 4)
    with pytest.raises(ValueError, match="lr"):
        load_step_model_config(None, ["train.lr=0.1"])  # a step's speed does not depend on it: not accepted
    with pytest.raises(FileNotFoundError, match="config file .*nope.json does not exist"):
        load_step_model_config(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"model": ', r"run.json is not valid JSON: Expecting value"),
        ('{"model": {"n_layer": 2}, "train": [8]}', r"run.json: the train section must be a JSON object, got list"),
        ('{"model": {"n_layer": 2}, "train": {"batch_size": "8"}}', "train.batch_size must be a positive integer"),
        ('{"model": {"n_layer": 2}, "train": {"batch_size": 0}}', "train.batch_size must be a positive integer"),
    ],
)
def test_a_bad_config_file_is_named(tmp_path, text, message):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_step_model_config(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precisions": ("fp8",)}, "unknown precision"),
        ({"compile_modes": ()}, "compile_modes must hold"),
        ({"optimizers": ("sgd",)}, r"unknown optimizer\(s\) \['sgd'\]; choose from: adamw, muon"),
        ({"optimizers": ()}, r"unknown optimizer\(s\) \[\]"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"warmup": -1}, "warmup must be a non-negative integer"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"peak_repeats": 0}, "peak_repeats must be a positive integer"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepBenchConfig(**kwargs)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """This machine has avx512_bf16: inject what an AVX2-only CPU reports (no flag, bf16 products 18x slower)."""
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda *args: frozenset())
    monkeypatch.setattr(precision_module, "probe_bf16_speedup", lambda *args, **kwargs: 1 / 18)
    monkeypatch.setattr(precision_module, "_warned", False)


def test_bf16_is_left_out_of_the_defaults_on_a_cpu_without_bf16_units(cpu_without_bf16, recwarn):
    config = quick_step_config()
    result = run_step_benchmark(config, progress=False)
    assert [(r["setting"], r["precision"]) for r in result.rows] == [("baseline", "fp32"), ("ours", "fp32")]
    assert list(result.peak_gflops) == ["fp32"]
    assert any("bf16 left out" in note and "18.0x slower than fp32" in note for note in result.notes)
    assert all(0 < r["mfu"] <= 1 for r in result.rows)
    assert not [w for w in recwarn if "bf16" in str(w.message)]  # nothing asked for bf16: no warning


def test_bf16_asked_for_on_such_a_cpu_runs_after_one_warning(cpu_without_bf16):
    config = quick_step_config()
    config.precisions, config.baseline = ("bf16",), False
    with pytest.warns(UserWarning, match=r"bench step --precisions bf16 on a CPU without bf16 units .* 18\.0x "
                                         r"slower than fp32 here; use fp32"):  # fmt: skip
        result = run_step_benchmark(config, progress=False)
    assert [r["precision"] for r in result.rows] == ["bf16"] and set(result.peak_gflops) == {"fp32", "bf16"}


def test_mfu_is_never_above_one(monkeypatch):
    monkeypatch.setattr(step_bench, "measure_matmul_peak", lambda *args, **kwargs: 1e3)  # an absurdly low peak
    config = quick_step_config()
    config.precisions = ("fp32",)
    result = run_step_benchmark(config, progress=False)
    assert [r["mfu"] for r in result.rows] == [1.0, 1.0]
    assert sum("MFU shown as 1.0" in note for note in result.notes) == 2


def test_sft_batches_have_the_plain_shape_with_the_prompt_masked():
    model = MiniGPTConfig(vocab_size=65, context_length=32, n_layer=2, n_head=2, n_embd=32)
    data = step_bench.sft_bench_data(model, seed=0, n_chats=8)
    x, y = data.get_batch(4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 32)
    for chat in data.chats:
        assert len(chat.ids) == 33 and 1 <= chat.mask.count(0) <= 16 and chat.mask == sorted(chat.mask)
    # The targets are the ids after each position, -100 where the prompt is (mask[1:] == 0).
    masked = sum(chat.mask[1:].count(0) for chat in data.chats)
    _, all_y = next(data.eval_batches(8))
    assert int((all_y == -100).sum()) == masked


def test_the_sft_setting_times_the_same_step_on_masked_batches():
    config = quick_step_config()
    config.precisions, config.baseline, config.sft = ("fp32",), False, True
    result = run_step_benchmark(config, progress=False)
    assert [(r["setting"], r["precision"]) for r in result.rows] == [("ours", "fp32"), ("ours SFT", "fp32")]
    plain, sft = result.rows
    key = ("fp32", False, plain["optimizer"])
    assert result.sft_ratios == {key: pytest.approx(sft["tokens_per_second"] / plain["tokens_per_second"])}
    assert any(note.startswith("SFT (masked loss) / plain tokens/s, fp32") for note in result.notes)
    assert abs(sft["loss_first"] - math.log(65)) < 0.3 and math.isfinite(sft["loss_last"])
