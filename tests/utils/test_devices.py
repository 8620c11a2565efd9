"""Device names checked up front (llm_lab/utils/devices.py)."""

from __future__ import annotations

import pytest
import torch

from llm_lab.utils.devices import resolve_device


def test_valid_names():
    assert resolve_device(None) is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", "device 'gpu' is not a device name; use cpu, cuda, cuda:N or mps"),
        ("cuda:x", "device 'cuda:x' is not a device name"),
        ("meta", "device 'meta': llm-lab runs models on cpu, cuda or mps"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda():
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine; use cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_out_of_range():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_synchronize_waits_on_the_device_it_is_given(monkeypatch):
    from llm_lab.utils.devices import synchronize

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    synchronize("cpu")
    assert calls == []  # nothing to wait for on a CPU
    synchronize("cuda:1")
    synchronize(torch.device("mps"))
    assert calls == [("cuda", torch.device("cuda", 1)), ("mps", None)]
