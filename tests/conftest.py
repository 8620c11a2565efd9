"""Shared pytest fixtures: deterministic seeds and the optional real corpus."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from llm_lab.utils.threads import resolve_threads

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tiny_shakespeare.txt"

# The tests, and the commands they run (in-process and in subprocesses), use one CPU thread unless the caller
# chose (LLM_LAB_THREADS=2 or auto): the models are tiny, no result depends on it, `auto` would watch the CPUs
# for 0.1 s at every command, and torch's default of one thread per core makes the suite several times slower
# whenever anything else runs on the machine.
os.environ.setdefault("LLM_LAB_THREADS", "1")
torch.set_num_threads(resolve_threads(os.environ["LLM_LAB_THREADS"]))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    torch.set_num_threads(threads)  # a command run in-process sets them for the whole process
    for signum, handler in handlers.items():  # and its SIGTERM/SIGINT handlers: a later SIGTERM must stop pytest
        signal.signal(signum, handler)


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
# device-test tolerances, read through the ``assert_within_tolerance`` fixture, which asserts
#     max |actual - expected| <= atol + rtol * max |expected|
# over the whole tensor: rounding errors grow with the magnitude of the computation (a row of logits), not with each
# element's own size, so an element near zero is allowed the error of its neighbours. Measured on the CPU, pure
# bf16 / fp16 models against fp32, max error / max |logit|: bf16 1.2% (default init) to 2.1% (weights of std 0.15),
# fp16 0.12% to 0.30% (one rounding is 0.39% and 0.05%); the table allows about 2.5x to 3x that. fp32 allows the
# reordered reductions of other kernels (1e-6 relative was seen).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.bfloat16: {"atol": 1e-2, "rtol": 5e-2},
    torch.float16: {"atol": 1e-3, "rtol": 1e-2},
}


def _assert_within_tolerance(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``max |actual - expected| <= atol + rtol * max |expected|`` with ``dtype``'s row of :data:`TOLERANCES`."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    tol = TOLERANCES[dtype]
    allowed = tol["atol"] + tol["rtol"] * expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    largest = expected.abs().max().item()
    assert error <= allowed, f"{dtype}: max error {error:.3g} > allowed {allowed:.3g} (largest |value| {largest:.3g})"


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
def assert_within_tolerance():
    """``check(actual, expected, dtype)``: see :func:`_assert_within_tolerance` and :data:`TOLERANCES`."""
    return _assert_within_tolerance


def _assert_greedy_within_tolerance(
    reference: torch.nn.Module, prompt: list[int], new_ids: list[int], dtype: torch.dtype
) -> None:
    """Every token greedy decoding chose (on some device, in ``dtype``) is the fp32 CPU argmax, up to a near-tie.

    Across devices and dtypes two logits closer than the dtype's tolerance may swap places, after which the texts
    part ways legitimately; demanding equal texts would test luck. So ``reference`` (fp32, CPU) is run on the
    prompt followed by the chosen tokens, and at each step the chosen token's logit must be within the dtype's
    allowed logit error (``atol + rtol * max |logit|`` of that step, :data:`TOLERANCES`) of the step's maximum.
    That allowance is 2.5-3x the measured error, so it covers two logits each off by the measured error trading
    places; a wrong token from a real bug is far outside it.
    """
    assert new_ids, "nothing was generated"
    ids = torch.tensor([list(prompt) + list(new_ids)])
    with torch.no_grad():
        logits = reference(ids)[0][0, len(prompt) - 1 : -1].float()  # (new, vocab): the logits behind each choice
    chosen = logits.gather(-1, torch.tensor(new_ids)[:, None])[:, 0]
    best = logits.max(dim=-1).values
    tol = TOLERANCES[dtype]
    slack = tol["atol"] + tol["rtol"] * logits.abs().max(dim=-1).values
    too_low = (best - chosen > slack).nonzero().flatten().tolist()
    assert not too_low, (
        f"{dtype} greedy picked non-argmax tokens at new positions {too_low}: "
        f"logit gaps {[(best - chosen)[i].item() for i in too_low]}"
    )


@pytest.fixture
def assert_greedy_within_tolerance():
    """``check(reference_cpu_fp32_model, prompt_ids, new_ids, dtype)``: see :func:`_assert_greedy_within_tolerance`."""
    return _assert_greedy_within_tolerance


@pytest.fixture(scope="session")
def device_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character-model package for the device tests: weights of std 0.1, wide enough that greedy text varies,
    small enough that bf16 stays within its tolerance (the serving tests' std 0.3 loses 6.5% of a logit in bf16)."""
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.package.io import save_model_package
    from llm_lab.core.tokenization import CharTokenizer

    text = "the quick brown fox jumps over the lazy dog.\nto be, or not to be: that is the question.\n"
    tokenizer = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = MiniGPT(MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.1)
    return save_model_package(tmp_path_factory.mktemp("device") / "pkg", model.config, tokenizer, model)
