import warnings

import pytest
import torch

from llm_lab.core.train import device as device_mod
from llm_lab.core.train.device import autocast_context, maybe_compile, resolve_precision, select_device
from llm_lab.utils.devices import mps_available


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_auto_is_cpu_without_accelerators_and_missing_cuda_is_an_error():
    if not mps_available():
        assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"train.device='cuda' but CUDA is not available here"):
        select_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA comes first; checks the order below it")
def test_auto_picks_mps_before_cpu_and_the_env_report_agrees(monkeypatch):
    from llm_lab.experiments.env import available_devices, default_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert mps_available()
    assert select_device("auto") == torch.device("mps")
    assert default_device() == "mps" and available_devices()[-1] == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") and default_device() == "cpu"
    with pytest.raises(ValueError, match=r"train.device='mps' but MPS is not available here"):
        select_device("mps")


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match=r"precision 'fp16' needs CUDA \(a grad scaler\); on cpu use 'bf16'"):
        resolve_precision("fp16", cpu)


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu():
    a = torch.randn(4, 4)
    with autocast_context("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with autocast_context("fp32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_compile_without_a_compiler_warns_and_stays_eager(monkeypatch):
    monkeypatch.setattr(device_mod.shutil, "which", lambda name: None)
    model = torch.nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match=r"train.compile=true ignored: torch.compile on CPU needs a C\+\+ compiler"):
        assert maybe_compile(model, torch.device("cpu")) is model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device_mod.compile_unsupported_reason(torch.device("cuda")) is None
