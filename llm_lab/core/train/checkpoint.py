"""The checkpoint format: file names, schema, version and its check, reader and writer, in one place.

Two kinds of ``.pt`` file exist, both read with ``torch.load(weights_only=True)`` (loading never runs code):

* A **run checkpoint** (``RUN_DIR/checkpoints/last.pt`` and ``best_val.pt``) holds everything resuming needs, a
  plain dict:

  =================  ==================================================================================
  ``format_version`` ``FORMAT_VERSION`` (1); other versions are refused by :func:`check_format_version`
  ``model_config``   ``MiniGPTConfig`` as a dict
  ``model``          the state dict of the *uncompiled*, unwrapped module
  ``optimizer``      the AdamW state dict (``None`` in a weights-only export)
  ``grad_scaler``    the fp16 grad scaler's state dict, or ``None``
  ``step``           optimizer steps completed
  ``tokens_seen``    training tokens consumed (all processes)
  ``best_val_loss``  best validation loss so far, or ``None``
  ``best_step``      the step whose weights are in ``best_val.pt`` (optional: absent in older files)
  ``train_config``   ``TrainerConfig`` as a dict
  ``rng``            ``{"world_size": W, "states": [per-process RNG state]}`` (python, numpy, torch, cuda)
  ``data_state``     ``{"generators": [per-process torch.Generator state of the batch sampler]}``
  =================  ==================================================================================

  numpy's RNG state holds an ndarray, which ``weights_only`` loading refuses, so it is stored as a tensor.

* A **package checkpoint** (``PACKAGE/checkpoints/best_val.pt``) is the model's plain ``state_dict``, so the spec's
  ``model.load_state_dict(torch.load(path, weights_only=True))`` works; its step and losses live in the package
  manifest. :func:`read_state_dict` reads either kind (and a run-checkpoint-shaped file in older packages).

``last.pt`` and ``best_val.pt`` must agree: ``last.pt`` names the step of the best weights (``best_step``). The
trainer writes ``last.pt`` first and ``best_val.pt`` second, so the only state a kill can leave between the two is
a ``last.pt`` whose ``best_step`` is its own step and an older ``best_val.pt``; :func:`reconcile_best` (run on
resume and on ``package create``) sees that and rewrites ``best_val.pt`` from ``last.pt``.
"""

from __future__ import annotations

import pickle
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_lab.utils.dirswap import remove_stale_temp_files
from llm_lab.utils.io import atomic_torch_save

__all__ = [
    "BEST_FILE",
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "LAST_FILE",
    "RUN_FILE",
    "CheckpointError",
    "UnsafePickleError",
    "capture_rng_state",
    "check_format_version",
    "load_checkpoint",
    "load_resume_checkpoint",
    "pickle_globals",
    "read_state_dict",
    "reconcile_best",
    "restore_rng_state",
    "run_checkpoint_path",
    "save_checkpoint",
]

FORMAT_VERSION = 1
# The names of a run directory: RUN_DIR/run.json (the run's record, written by llm_lab.core.train.run) and
# RUN_DIR/checkpoints/{last.pt, best_val.pt}; runs, sweeps and packages all read them from here.
RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
LAST_FILE = "last.pt"
BEST_FILE = "best_val.pt"
# Which file ``checkpoint="best"`` / ``"last"`` means, everywhere (runs, packages, the CLI).
FILES: dict[str, str] = {"best": BEST_FILE, "last": LAST_FILE}
REQUIRED_KEYS: tuple[str, ...] = ("format_version", "model_config", "model", "step")
TRAINING_KEYS: tuple[str, ...] = ("optimizer", "tokens_seen", "train_config", "rng", "data_state")
# Globals a torch checkpoint may name: torch's own rebuild functions, storages and dtypes, and ordered dicts.
_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


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


def check_format_version(version: Any, where: str | Path) -> None:
    """Refuse a checkpoint ``format_version`` this llm-lab does not read (the one check, used by every reader).

    Raises:
        CheckpointError: ``version`` is not ``FORMAT_VERSION``; the message names ``where``.
    """
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format_version {version!r} is not supported; this llm-lab reads version "
            f"{FORMAT_VERSION}"
        )


def run_checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    """``RUN_DIR/checkpoints/last.pt`` (``which="last"``) or ``.../best_val.pt`` (``which="best"``)."""
    if which not in FILES:
        raise ValueError(f"checkpoint={which!r}: choose {' or '.join(repr(k) for k in FILES)}")
    return Path(run_dir) / CHECKPOINT_DIR / FILES[which]


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a kill at any moment leaves the previous file intact.

    Temporary files that earlier, killed writes left in the directory (``.last.pt.PID.XXXX.tmp``) are removed first.
    """
    path = Path(path)
    remove_stale_temp_files(path.parent)
    atomic_torch_save(checkpoint, path)


def pickle_globals(path: str | Path) -> list[str]:
    """The ``module.name`` globals a ``torch.save`` file (or a bare pickle) would import, read without unpickling.

    Walks the pickle opcodes with :mod:`pickletools` (``GLOBAL`` and ``STACK_GLOBAL``), so a malicious file can be
    described (``posix.system``) without running anything. Unreadable files give ``[]``.
    """
    path = Path(path)
    streams: list[bytes] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                streams = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        else:
            streams = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    names: list[str] = []
    for data in streams:
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(data):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except (ValueError, EOFError, pickle.UnpicklingError, IndexError):
            pass  # a truncated or non-pickle stream: report what was seen
    return list(dict.fromkeys(names))


class UnsafePickleError(CheckpointError):
    """A ``.pt`` file that holds pickled Python objects beyond tensors and containers (loading could run code)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"{path}: refusing to load, it holds pickled Python objects ({reason}), which could run code; an "
            "llm-lab checkpoint holds only tensors, numbers, strings, lists and dicts"
        )


def _unsafe_reason(path: Path, error: Exception) -> str:
    """What the weights-only unpickler refused (its first line suggests the unsafe retry, so it is skipped) and
    the globals the file would import, read from its opcodes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "nsupported" in line and "file an issue" not in line), None)
    unsafe = [n for n in pickle_globals(path) if not n.startswith(_SAFE_GLOBALS)]
    parts = [f"weights_only unpickler: {detail}" if detail else "rejected by torch.load(weights_only=True)"]
    if unsafe:
        parts.append(f"it would import {', '.join(unsafe[:4])}")
    return "; ".join(parts)


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a one-line :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(path, _unsafe_reason(path, e)) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, IndexError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (truncated, corrupted or not a PyTorch file): {first_line}"
        ) from None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, training_state: bool = False
) -> dict[str, Any]:
    """Read and check a run checkpoint written by the trainer.

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
        path = run_checkpoint_path(path, "last")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    checkpoint = _torch_load(path, map_location)
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path}: not an llm-lab training checkpoint (no format_version)")
    check_format_version(checkpoint["format_version"], path)
    required = REQUIRED_KEYS + (TRAINING_KEYS if training_state else ())
    missing = [k for k in required if k not in checkpoint or (training_state and checkpoint[k] is None)]
    if missing:
        raise CheckpointError(f"{path}: not a complete llm-lab training checkpoint (missing {', '.join(missing)})")
    return checkpoint


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any checkpoint file: a plain state dict (packages) or a run checkpoint's ``"model"``.

    Raises:
        CheckpointError: unreadable, pickled objects, a run checkpoint of another format version, or no mapping of
            names to tensors. The message names the file.
    """
    path = Path(path)
    try:
        obj = _torch_load(path)
    except UnsafePickleError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects beyond tensors and plain containers, and "
            f"unpickling them could run code ({e.reason})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        check_format_version(obj.get("format_version", FORMAT_VERSION), path)
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected a mapping of names to tensors)")
    return dict(obj)


def reconcile_best(run_dir: str | Path) -> list[str]:
    """Make ``best_val.pt`` agree with ``last.pt``, repairing what a kill between the two writes left.

    ``last.pt`` records ``best_step``. When ``best_val.pt`` is from another step and ``best_step`` is ``last.pt``'s
    own step (the kill came after ``last.pt`` and before ``best_val.pt``), ``last.pt`` *is* the best checkpoint and
    is copied over ``best_val.pt``. Files without ``best_step`` (older runs) are left as they are.

    Returns:
        One line per repair made (empty when the two already agree).

    Raises:
        CheckpointError: the two disagree in a way no kill of the trainer can leave (the best weights are gone).
    """
    last_path, best_path = run_checkpoint_path(run_dir, "last"), run_checkpoint_path(run_dir, "best")
    if not last_path.is_file():
        return []
    last = load_checkpoint(last_path)
    best_step = last.get("best_step")
    if best_step is None:
        return []
    best = load_checkpoint(best_path) if best_path.is_file() else None
    if best is not None and best.get("step") == best_step and best.get("best_val_loss") == last["best_val_loss"]:
        return []
    if best_step == last["step"]:
        atomic_torch_save(last, best_path)
        return [f"{best_path}: rewritten from {last_path.name} (a kill had left it behind step {best_step})"]
    found = "missing" if best is None else f"from step {best.get('step')}"
    raise CheckpointError(
        f"{best_path}: {found}, but {last_path} records the best weights at step {best_step}; the best checkpoint "
        "was replaced or deleted by hand, so the run cannot say which weights are best"
    )


def load_resume_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """``last.pt`` of a run, with everything resuming needs, after cleaning up what a killed run left.

    Dead writers' temporary files are removed and ``best_val.pt`` is reconciled with ``last.pt`` first.

    Raises:
        CheckpointError: no ``last.pt`` (the run never reached its first checkpoint), or a bad or incomplete one.
    """
    last = run_checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} does not exist (the run never reached its first evaluation)")
    remove_stale_temp_files(last.parent)
    reconcile_best(run_dir)
    return load_checkpoint(last, training_state=True)
