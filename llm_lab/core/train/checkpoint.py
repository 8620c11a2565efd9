"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so loading it never runs code):

=================  ==================================================================================
``format_version`` ``FORMAT_VERSION`` (1); other versions are refused with a message
``model_config``   ``MiniGPTConfig`` as a dict
``model``          the state dict of the *uncompiled*, unwrapped module
``optimizer``      the AdamW state dict (``None`` in a weights-only export)
``grad_scaler``    the fp16 grad scaler's state dict, or ``None``
``step``           optimizer steps completed
``tokens_seen``    training tokens consumed (all processes)
``best_val_loss``  best validation loss so far, or ``None``
``train_config``   ``TrainerConfig`` as a dict
``rng``            ``{"world_size": W, "states": [per-process RNG state]}`` (python, numpy, torch, cuda)
``data_state``     ``{"generators": [per-process torch.Generator state of the batch sampler]}``
=================  ==================================================================================

numpy's RNG state holds an ndarray, which ``weights_only`` loading refuses, so it is stored as a tensor.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_lab.utils.io import atomic_torch_save

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = ("format_version", "model_config", "model", "step")
TRAINING_KEYS: tuple[str, ...] = ("optimizer", "tokens_seen", "train_config", "rng", "data_state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, foreign or from another format version."""


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


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a kill at any moment leaves the previous file intact."""
    atomic_torch_save(checkpoint, path)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, training_state: bool = False
) -> dict[str, Any]:
    """Read and check a checkpoint written by the trainer.

    Args:
        path: a ``.pt`` file, or a run directory (its ``checkpoints/last.pt`` is read).
        map_location: where tensors are loaded.
        training_state: also require what resuming needs (optimizer, RNG and data states).

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: the file is missing, truncated, not a PyTorch file, not an llm-lab checkpoint, or
            from another ``format_version``. The message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refusing to load, it holds pickled Python objects (which could run code); an llm-lab "
            "checkpoint holds only tensors, numbers, strings, lists and dicts"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (truncated, corrupted or not a PyTorch file): {first_line}"
        ) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path}: not an llm-lab training checkpoint (no format_version)")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is not supported; this llm-lab reads version "
            f"{FORMAT_VERSION}"
        )
    required = REQUIRED_KEYS + (TRAINING_KEYS if training_state else ())
    missing = [k for k in required if k not in checkpoint or (training_state and checkpoint[k] is None)]
    if missing:
        raise CheckpointError(f"{path}: not a complete llm-lab training checkpoint (missing {', '.join(missing)})")
    return checkpoint
