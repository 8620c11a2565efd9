"""The precision="auto" decision on CPU: bf16 only with bf16 matrix units, a wide enough model and a measured gain."""

import math
from types import SimpleNamespace

import pytest
import torch

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train import Trainer, TrainerConfig
from llm_lab.core.train import precision as precision_mod
from llm_lab.core.train.device import resolve_precision
from llm_lab.core.train.precision import (
    MIN_BF16_SPEEDUP,
    MIN_BF16_WIDTH,
    choose_cpu_precision,
    cpu_bf16_flags,
    has_bf16_matrix_units,
    model_width,
    probe_bf16_speedup,
    read_cpu_flags,
)

CPU = torch.device("cpu")


def _no_probe(*args, **kwargs):
    raise AssertionError("the matmul probe must not run when flags or width already decide")


@pytest.mark.parametrize(
    ("flags", "width", "speedup", "expected"),
    [
        ((), 1024, 10.0, "fp32"),  # no bf16 unit: emulated bf16 is slow, whatever the probe says
        (("avx2", "avx512f"), 1024, 10.0, "fp32"),  # wide vectors but no bf16 instructions
        (("avx512_bf16",), MIN_BF16_WIDTH - 1, 10.0, "fp32"),  # too narrow: the casts cost more than they save
        (("avx512_bf16",), None, 10.0, "fp32"),  # unknown shape: stay safe
        (("avx512_bf16",), MIN_BF16_WIDTH, MIN_BF16_SPEEDUP, "bf16"),
        (("amx_bf16",), 384, 2.5, "bf16"),
        (("avx512_bf16",), 384, MIN_BF16_SPEEDUP - 0.01, "fp32"),  # units present but kernels not faster
    ],
)
def test_choose_cpu_precision_table(flags, width, speedup, expected):
    assert choose_cpu_precision(width, flags=flags, speedup=speedup) == expected


def test_probe_runs_only_when_flags_and_width_allow_bf16(monkeypatch):
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", _no_probe)
    assert choose_cpu_precision(4096, flags=()) == "fp32"
    assert choose_cpu_precision(128, flags=("avx512_bf16",)) == "fp32"
    calls = []
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda width: calls.append(width) or 3.0)
    assert choose_cpu_precision(512, flags=("avx512_bf16",)) == "bf16"
    assert calls == [512]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "cpuinfo"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\n")
    assert cpu_bf16_flags(x86) == {"avx512_bf16"}
    arm = tmp_path / "cpuinfo_arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_bf16_flags(arm) == frozenset()  # ARM's bf16 is not one of the x86 matrix-unit flags named here
    assert cpu_bf16_flags(tmp_path / "missing") == frozenset()
    # The full flag sets come from the same reader (the first flags/Features line).
    assert read_cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_tile"}
    assert read_cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_bf16_matrix_units_are_named_by_either_flag():
    assert has_bf16_matrix_units({"avx2", "amx_bf16"})
    assert has_bf16_matrix_units(["avx512_bf16"])
    assert not has_bf16_matrix_units({"avx2", "avx512f", "bf16"})
    assert not has_bf16_matrix_units(())


def test_probe_measures_a_positive_ratio():
    ratio = probe_bf16_speedup(32, rows=16, repeats=1)
    assert math.isfinite(ratio) and ratio > 0


def test_model_width():
    assert model_width(SimpleNamespace(config=SimpleNamespace(n_embd=384))) == 384
    assert model_width(torch.nn.Linear(2, 2)) is None
    assert model_width(None) is None


def test_resolve_precision_auto_on_cpu_follows_the_decision(monkeypatch):
    wide = SimpleNamespace(config=SimpleNamespace(n_embd=512))
    narrow = SimpleNamespace(config=SimpleNamespace(n_embd=128))
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda width: 4.0)
    assert resolve_precision("auto", CPU, wide) == "bf16"
    assert resolve_precision("auto", CPU, narrow) == "fp32"
    assert resolve_precision("auto", CPU) == "fp32"  # no model: width unknown
    assert resolve_precision("fp32", CPU, wide) == "fp32"  # an explicit choice is obeyed
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: frozenset())
    assert resolve_precision("auto", CPU, wide) == "fp32"
    assert resolve_precision("bf16", CPU, narrow) == "bf16"


@pytest.mark.parametrize(("flags", "expected"), [(frozenset({"avx512_bf16"}), "bf16"), (frozenset(), "fp32")])
def test_trainer_auto_precision_uses_the_model_width(monkeypatch, flags, expected):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda width: 2.0)
    config = MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=4, n_embd=MIN_BF16_WIDTH)
    data = LanguageModelingDataset(torch.arange(200) % 11, 8)
    trainer = Trainer(MiniGPT(config), TrainerConfig(precision="auto", device="cpu", max_steps=1), data)
    assert trainer.precision == expected


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """This machine has avx512_bf16: inject what an AVX2-only CPU reports (no flag, bf16 products 18x slower)."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda *args: frozenset())
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda *args, **kwargs: 1 / 18)
    monkeypatch.setattr(precision_mod, "_warned", False)


def test_cpu_bf16_slowdown_needs_no_flag_and_a_slow_product(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a CPU with a bf16 unit is not timed")

    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda *args: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", never)
    assert precision_mod.cpu_bf16_slowdown() is None
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda *args: frozenset())
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda *args, **kwargs: 1.2)  # e.g. ARM with bf16
    assert precision_mod.cpu_bf16_slowdown() is None
    monkeypatch.setattr(precision_mod, "probe_bf16_speedup", lambda *args, **kwargs: 0.25)
    assert precision_mod.cpu_bf16_slowdown() == 4.0


def test_explicit_bf16_on_a_cpu_without_bf16_units_warns_once(cpu_without_bf16, recwarn):
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match=r"precision bf16 on a CPU without bf16 units \(no amx_bf16 or avx512_bf16 "
                                         r"flag\): a bf16 matrix product ran 18\.0x slower than fp32 here; use fp32"):
        assert resolve_precision("bf16", cpu) == "bf16"  # still obeyed
    recwarn.clear()
    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, n_embd=8))
    config = TrainerConfig(precision="bf16", device="cpu", peak_flops=1e12, max_steps=1, batch_size=2)
    Trainer(model, config, LanguageModelingDataset(list(range(11)) * 4, 8), progress=False)
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("auto", cpu, model) == "fp32"
    assert not [w for w in recwarn if "bf16" in str(w.message)]  # once per process
