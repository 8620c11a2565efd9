"""Device names from the command line or a config, checked before anything slow happens.

``torch.device("foo")`` raises a ``RuntimeError`` listing every backend PyTorch knows, and ``.to("cuda")`` on a
machine without CUDA an ``AssertionError``; both end as tracebacks. :func:`resolve_device` turns them into one
``ValueError`` saying what to use instead, which the CLI prints as a one-line error.
"""

from __future__ import annotations

import torch

__all__ = ["mps_available", "resolve_device", "synchronize"]


def mps_available() -> bool:
    """Whether this machine has Apple's MPS backend (``False`` on builds without ``torch.backends.mps``)."""
    return getattr(torch.backends, "mps", None) is not None and bool(torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """Check a device name before any slow work: a typo or an absent backend is a ``ValueError`` saying what to use.

    Args:
        device: ``None`` (no choice: the caller's default), or a name such as ``cpu``, ``cuda``, ``cuda:1``, ``mps``.

    Returns:
        The ``torch.device``, or ``None``.

    Raises:
        ValueError: not a device name, or a CUDA/MPS device this machine does not have.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif resolved.type == "mps":
        if not mps_available():
            raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r}: llm-lab runs models on cpu, cuda or mps")
    return resolved


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously); a no-op on CPU.

    Call it before reading a clock, or a timing measures only how fast work was queued.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
