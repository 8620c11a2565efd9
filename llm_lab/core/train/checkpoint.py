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

Every reader checks a checkpoint's contents with :func:`check_checkpoint` before using any of it: the keys, the
counters (``step`` a non-negative integer, ...), the form of the RNG and data states (each tried on a scratch
generator, never on the process's own), the model's tensors against the model that will receive them (names,
shapes, dtypes: :func:`check_state_dict`) and the optimizer state against the optimizer. A tampered or damaged
file is one :class:`CheckpointError` naming the file and what is wrong, before anything is loaded or written.

``last.pt`` and ``best_val.pt`` must agree: ``last.pt`` names the step of the best weights (``best_step``). The
trainer writes ``last.pt`` first and ``best_val.pt`` second, so the only state a kill can leave between the two is
a ``last.pt`` whose ``best_step`` is its own step and an older ``best_val.pt``; :func:`reconcile_best` (run on
resume and on ``package create``) sees that and rewrites ``best_val.pt`` from ``last.pt``.
"""

from __future__ import annotations

import math
import numbers
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

# capture_rng_state / restore_rng_state live in rng_state.py and stay importable from here (the checkpoint's API).
from llm_lab.core.train.rng_state import (
    capture_rng_state,
    generator_state_problem,
    restore_rng_state,
    rng_state_problem,
)
from llm_lab.utils.dirswap import remove_stale_temp_files
from llm_lab.utils.errors import short_list
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
    "check_checkpoint",
    "check_format_version",
    "check_size_fits",
    "check_state_dict",
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


def _is_count(value: Any) -> bool:
    """A non-negative integer (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_state_dict(state: Any, expected: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Check a state dict against the one a model expects: the same names, shapes and dtypes.

    Floating weights may be stored in any floating precision (bf16 packages load into a float32 model); every
    other tensor must have the model's dtype exactly, so an integer tensor never stands in for a weight (loading
    would truncate nothing visibly, but the values would be whatever the integers were).

    Args:
        state: the stored tensors (``name -> tensor``).
        expected: the model's ``state_dict()`` (tensors on the ``meta`` device are fine: only shapes and dtypes
            are read).
        where: the file, for the message.

    Raises:
        CheckpointError: one line listing the missing, unexpected, wrongly shaped and wrongly typed tensors.
    """
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{where}: the model weights are not a mapping of names to tensors")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} is {tuple(state[k].shape)} but the model expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    wrong_dtype = [
        f"{k} is {_dtype_name(state[k].dtype)} but the model expects "
        + ("floating point" if v.is_floating_point() else _dtype_name(v.dtype))
        for k, v in expected.items()
        if k in state and not (state[k].is_floating_point() and v.is_floating_point() or state[k].dtype == v.dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {short_list(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {short_list(wrong_shape, 4)}")
    if wrong_dtype:
        problems.append(f"wrong dtypes: {short_list(wrong_dtype, 4)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not match the model config ({'; '.join(problems)})")


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def check_size_fits(state: Mapping[str, torch.Tensor], config: Any, where: str | Path) -> None:
    """Check a MiniGPT config's sizes against the weights present before a model of that config is built.

    Building allocates what the config says; a config saying ``n_layer: 10000000`` beside weights for one block
    (or a vocabulary far beyond the embedding stored) would allocate for minutes before the names were compared.
    The blocks (``blocks.N.``) must be ``0 .. n_layer - 1`` and the token embedding ``(vocab_size, n_embd)``;
    the message has :func:`check_state_dict`'s form.

    Raises:
        CheckpointError: one line with what the config says and what the weights hold.
    """
    held = {int(m.group(1)) for name in state if (m := _BLOCK.match(name))}
    problems = []
    n_missing = config.n_layer - len([i for i in held if i < config.n_layer])
    shown = []
    for index in range(config.n_layer):  # stops after a few: n_layer may be huge
        if len(shown) == min(n_missing, 6):
            break
        if index not in held:
            shown.append(f"blocks.{index}.*")
    if n_missing:
        more = f" (+{n_missing - len(shown):,} more)" if n_missing > len(shown) else ""
        problems.append(f"missing tensors: {', '.join(shown)}{more}")
    extra = sorted(i for i in held if i >= config.n_layer)
    if extra:
        problems.append(f"unexpected tensors: {short_list([f'blocks.{i}.*' for i in extra])}")
    embedding = state.get("tok_emb.weight")
    wanted = (config.vocab_size, config.n_embd)
    if isinstance(embedding, torch.Tensor) and tuple(embedding.shape) != wanted:
        problems.append(f"wrong shapes: tok_emb.weight is {tuple(embedding.shape)} but the model expects {wanted}")
    if problems:
        raise CheckpointError(
            f"{where}: weights do not match the model config ({'; '.join(problems)}; the config says "
            f"n_layer={config.n_layer}, the weights hold {len(held)} block(s))"
        )


def _optimizer_problem(saved: Any, optimizer: torch.optim.Optimizer | None) -> str | None:
    """What is wrong with a saved optimizer state dict, against ``optimizer``'s parameters where given."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping):
        return "the optimizer state is not a dict with 'state' and 'param_groups'"
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups
    ):
        return "the optimizer's param_groups are damaged"
    if optimizer is None:
        return None
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if [len(g["params"]) for g in groups] != sizes:
        return (
            f"the optimizer state has parameter groups of {[len(g['params']) for g in groups]} parameters but this "
            f"run's optimizer has {sizes}"
        )
    shapes = {i: tuple(p.shape) for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    saved_ids = [i for g in groups for i in g["params"]]
    if sorted(saved_ids, key=str) != sorted(shapes, key=str):
        return "the optimizer's param_groups name other parameters than this run's optimizer has"
    for index, entry in saved["state"].items():
        if index not in shapes or not isinstance(entry, Mapping):
            return f"the optimizer state names parameter {index!r}, which this run's optimizer does not have"
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[index]:
                return (
                    f"the optimizer's {name} of parameter {index} is {tuple(value.shape)} but the parameter is "
                    f"{shapes[index]}"
                )
    return None


def check_checkpoint(
    checkpoint: Any,
    where: str | Path,
    *,
    training_state: bool = False,
    model_config: Mapping[str, Any] | None = None,
    expected_model: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    world_size: int | None = None,
) -> None:
    """Check a run checkpoint's contents before any of it is used (the one check every reader runs).

    Args:
        checkpoint: what ``torch.load`` returned.
        where: the file, for the message.
        training_state: also check what resuming needs: ``tokens_seen``, ``best_val_loss``, ``best_step``, the
            RNG and data states (their form: each is tried on a scratch generator), the optimizer state.
        model_config: the receiving model's config as a dict: the saved ``model_config`` must equal it.
        expected_model: the receiving model's ``state_dict()`` (or one on the ``meta`` device): names, shapes and
            dtypes must match (:func:`check_state_dict`). A function returning it is called only after
            ``model_config`` matched, so nothing is built for a config the checkpoint contradicts.
        optimizer: the receiving optimizer: the saved state must have its groups and parameter shapes.
        world_size: the number of processes that will resume: the saved RNG and data states must be one each.

    Raises:
        CheckpointError: one line naming the file and the first thing that is wrong.
    """
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{where}: not an llm-lab training checkpoint (no format_version)")
    check_format_version(checkpoint["format_version"], where)
    required = REQUIRED_KEYS + (TRAINING_KEYS if training_state else ())
    missing = [k for k in required if k not in checkpoint or (training_state and checkpoint[k] is None)]
    if missing:
        raise CheckpointError(f"{where}: not a complete llm-lab training checkpoint (missing {', '.join(missing)})")

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: damaged checkpoint: {what}")

    if not _is_count(checkpoint["step"]):
        raise bad(f"step is {checkpoint['step']!r}, expected a non-negative integer")
    saved_config = checkpoint["model_config"]
    if not isinstance(saved_config, dict):
        raise bad("model_config is not a dict")
    if model_config is not None and saved_config != model_config:
        keys = sorted(set(saved_config) | set(model_config))
        differ = [k for k in keys if saved_config.get(k) != model_config.get(k)]
        raise CheckpointError(f"{where} holds a different model ({', '.join(differ)}) than this run's config")
    model = checkpoint["model"]
    if not isinstance(model, Mapping) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise bad("the model weights are not a mapping of names to tensors")
    if expected_model is not None:
        check_state_dict(model, expected_model() if callable(expected_model) else expected_model, where)
    best_step = checkpoint.get("best_step")
    if best_step is not None and not (_is_count(best_step) and best_step <= checkpoint["step"]):
        raise bad(f"best_step is {best_step!r}, expected an integer from 0 to step ({checkpoint['step']})")
    if not training_state:
        return
    if not _is_count(checkpoint["tokens_seen"]):
        raise bad(f"tokens_seen is {checkpoint['tokens_seen']!r}, expected a non-negative integer")
    best_loss = checkpoint.get("best_val_loss")
    if best_loss is not None and not _is_finite_number(best_loss):
        raise bad(f"best_val_loss is {best_loss!r}, expected a finite number or null")
    elapsed = checkpoint.get("elapsed_s", 0.0)
    if not (_is_finite_number(elapsed) and elapsed >= 0):
        raise bad(f"elapsed_s is {elapsed!r}, expected a non-negative number of seconds")
    if not isinstance(checkpoint["train_config"], dict):
        raise bad("train_config is not a dict")
    scaler = checkpoint.get("grad_scaler")
    if scaler is not None and not isinstance(scaler, dict):
        raise bad("grad_scaler is neither null nor a dict")
    problem = _optimizer_problem(checkpoint["optimizer"], optimizer)
    if problem:
        raise bad(problem)
    rng = checkpoint["rng"]
    states = rng.get("states") if isinstance(rng, Mapping) else None
    saved_world = rng.get("world_size") if isinstance(rng, Mapping) else None
    if not (_is_count(saved_world) and saved_world >= 1 and isinstance(states, list) and len(states) == saved_world):
        raise bad("rng is not {'world_size': W, 'states': [one RNG state per process]}")
    if world_size is not None and saved_world != world_size:
        raise CheckpointError(
            f"{where} was written by {saved_world} process(es); resume it with the same number (this run has "
            f"{world_size})"
        )
    for rank, state in enumerate(states):
        problem = rng_state_problem(state)
        if problem:
            raise bad(f"RNG state of process {rank}: {problem}")
    data = checkpoint["data_state"]
    generators = data.get("generators") if isinstance(data, Mapping) else None
    if not isinstance(generators, list) or len(generators) != saved_world:
        raise bad(f"data_state is not {{'generators': [one batch-sampler state per process ({saved_world})]}}")
    for rank, state in enumerate(generators):
        problem = generator_state_problem(state)
        if problem:
            raise bad(f"the batch sampler's generator state of process {rank} {problem}")


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
    path: str | Path, map_location: str | torch.device = "cpu", *, training_state: bool = False, **expected: Any
) -> dict[str, Any]:
    """Read and check a run checkpoint written by the trainer (:func:`check_checkpoint`).

    Args:
        path: a ``.pt`` file, or a run directory (its ``checkpoints/last.pt`` is read).
        map_location: where tensors are loaded.
        training_state: also require and check what resuming needs (optimizer, RNG and data states).
        **expected: ``expected_model``, ``optimizer``, ``world_size``: what :func:`check_checkpoint` checks the
            contents against.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: the file is missing, truncated, not a PyTorch file, not an llm-lab checkpoint, from
            another ``format_version``, or its contents are damaged or do not fit ``expected``. The message names
            the file.
    """
    path = Path(path)
    if path.is_dir():
        path = run_checkpoint_path(path, "last")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    checkpoint = _torch_load(path, map_location)
    check_checkpoint(checkpoint, path, training_state=training_state, **expected)
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


def load_resume_checkpoint(run_dir: str | Path, **expected: Any) -> dict[str, Any]:
    """``last.pt`` of a run, with everything resuming needs, after cleaning up what a killed run left.

    ``last.pt`` is read and checked (:func:`check_checkpoint`, against ``expected``: ``expected_model``,
    ``optimizer``, ``world_size``) before anything is changed; then dead writers' temporary files are removed and
    ``best_val.pt`` is reconciled with ``last.pt``.

    Raises:
        CheckpointError: no ``last.pt`` (the run never reached its first checkpoint), or a bad or incomplete one.
    """
    last = run_checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} does not exist (the run never reached its first evaluation)")
    checkpoint = load_checkpoint(last, training_state=True, **expected)
    remove_stale_temp_files(last.parent)
    reconcile_best(run_dir)  # rewrites best_val.pt at most, never last.pt
    return checkpoint
