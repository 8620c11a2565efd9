"""A process's random streams as checkpoint data: capture, restore, and check a saved state before trusting it.

Exact resume replays the same batches and dropout masks, so a run checkpoint holds every global RNG state the
training stream draws from (python, numpy, torch, cuda), in types that ``torch.load(weights_only=True)`` accepts:
numpy's state holds an ndarray, which ``weights_only`` refuses, so its keys are stored as a tensor. The trainer
also runs evaluation and sample callbacks between a capture and a restore, so they never shift that stream.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "generator_state_problem", "restore_rng_state", "rng_state_problem"]


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state this process draws from, in ``weights_only``-safe types."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states saved by :func:`capture_rng_state`."""
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_problem(state: Any) -> str | None:
    """What is wrong with one process's saved RNG state (:func:`capture_rng_state`'s form), or ``None``.

    Each part is put into a scratch generator of its kind, which runs the generator's own checks without touching
    the process's RNGs.
    """
    if not isinstance(state, Mapping) or not {"python", "numpy", "torch"} <= set(state):
        return "not a dict with python, numpy and torch states"
    try:
        version, internal, gauss = state["python"]
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError):
        return "the python RNG state is damaged"
    npy = state["numpy"]
    try:
        keys = npy["keys"]
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64:
            raise TypeError
        np.random.RandomState().set_state(
            (npy["kind"], keys.numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        return "the numpy RNG state is damaged"
    problem = generator_state_problem(state["torch"])
    if problem:
        return f"the torch RNG state {problem}"
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
        return "the cuda RNG states are not a list of byte tensors"
    return None


def generator_state_problem(state: Any) -> str | None:
    """What is wrong with a CPU ``torch.Generator`` state, or ``None`` (tried on a scratch generator)."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        return "is not a byte tensor"
    try:
        torch.Generator().set_state(state)
    except RuntimeError as e:
        return f"is damaged ({str(e).strip().splitlines()[0] if str(e).strip() else 'rejected'})"
    return None
