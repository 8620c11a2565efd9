"""Shared pytest fixtures: deterministic seeds and the optional real corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tiny_shakespeare.txt"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shakespeare_path() -> Path | None:
    """The tiny Shakespeare corpus beside the repository, or None where it is absent."""
    return SHAKESPEARE if SHAKESPEARE.is_file() else None


@pytest.fixture
def small_text() -> str:
    """A small, self-made text for tests that must run anywhere."""
    lines = [
        "the quick brown fox jumps over the lazy dog.",
        "a small model learns the patterns of a small text.",
        "to be, or not to be: that is the question.",
        "all that glitters is not gold; all who wander are not lost.",
    ]
    return "\n".join(lines * 40) + "\n"


# --------------------------------------------------------------------------------------------------- devices
# Tests that take a ``device`` argument run once per device type: CPU always, CUDA and MPS where this machine has
# them (elsewhere those legs are skipped, saying why). Every leg carries the ``device`` marker, so
# ``pytest -m device --devices cuda`` runs exactly the CUDA legs (what ``make gpu-check`` does).

DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")

# How close a result computed in a dtype must be to the same result computed another way: on another device, by
# another kernel (SDPA vs the written-out softmax), through the KV cache, or in fp32 on the CPU. The one table of
# device-test tolerances; tests read it through the ``tolerance`` fixture. Measured on the tiny test models (logits
# up to about 1): bf16 differed from fp32 by at most 3.3e-3 and fp16 by 3.9e-4 (one unit in the last place at 0.5
# is 2e-3 and 2.4e-4); the table allows about 5x that. fp32 allows the reordered reductions of other kernels.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}


def device_unavailable_reason(device_type: str) -> str | None:
    """Why tests cannot run on ``device_type`` here, or ``None`` when they can."""
    if device_type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device_type == "mps":
        from llm_lab.utils.devices import mps_available

        if not mps_available():
            return "MPS is not available on this machine"
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--devices",
        default=",".join(DEVICE_TYPES),
        help="comma-separated device types the `device` fixture runs on (default: cpu,cuda,mps; absent ones skip)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "device: a test whose result depends on the device; `make gpu-check` runs its CUDA legs"
    )


def _selected_devices(config: pytest.Config) -> list[str]:
    names = [name.strip() for name in config.getoption("--devices").split(",") if name.strip()]
    unknown = [name for name in names if name not in DEVICE_TYPES]
    if unknown or not names:
        raise pytest.UsageError(f"--devices {unknown or names}: choose from {', '.join(DEVICE_TYPES)}")
    return names


def _parametrized_names(metafunc: pytest.Metafunc) -> set[str]:
    names: set[str] = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = argnames.split(",")
        names.update(name.strip() for name in argnames)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test that parametrizes its own ``device`` argument (e.g. bad device names for the CLI) keeps it.
    if "device" in metafunc.fixturenames and "device" not in _parametrized_names(metafunc):
        params = [pytest.param(name, id=name, marks=pytest.mark.device) for name in _selected_devices(metafunc.config)]
        metafunc.parametrize("device", params, indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of this leg (``cpu``, ``cuda`` or ``mps``); the leg is skipped where that backend is absent."""
    reason = device_unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return torch.device(request.param)


@pytest.fixture
def tolerance():
    """``tolerance(dtype) -> {"atol": ..., "rtol": ...}`` from :data:`TOLERANCES`, for ``assert_close(**...)``."""
    return TOLERANCES.__getitem__


def _assert_greedy_within_tolerance(
    reference: torch.nn.Module, prompt: list[int], new_ids: list[int], dtype: torch.dtype
) -> None:
    """Every token greedy decoding chose (on some device, in ``dtype``) is the fp32 CPU argmax, up to a near-tie.

    Across devices and dtypes two logits closer than the dtype's tolerance may swap places, after which the texts
    part ways legitimately; demanding equal texts would test luck. So ``reference`` (fp32, CPU) is run on the
    prompt followed by the chosen tokens, and at each step the chosen token's logit must be within
    ``atol + rtol * |max|`` of that step's maximum. A wrong token from a real bug is far outside that.
    """
    assert new_ids, "nothing was generated"
    ids = torch.tensor([list(prompt) + list(new_ids)])
    with torch.no_grad():
        logits = reference(ids)[0][0, len(prompt) - 1 : -1].float()  # (new, vocab): the logits behind each choice
    chosen = logits.gather(-1, torch.tensor(new_ids)[:, None])[:, 0]
    best = logits.max(dim=-1).values
    tol = TOLERANCES[dtype]
    too_low = (best - chosen > tol["atol"] + tol["rtol"] * best.abs()).nonzero().flatten().tolist()
    assert not too_low, (
        f"{dtype} greedy picked non-argmax tokens at new positions {too_low}: "
        f"logit gaps {[(best - chosen)[i].item() for i in too_low]}"
    )


@pytest.fixture
def assert_greedy_within_tolerance():
    """``check(reference_cpu_fp32_model, prompt_ids, new_ids, dtype)``: see :func:`_assert_greedy_within_tolerance`."""
    return _assert_greedy_within_tolerance
