"""Weights on disk and in a module: read a state dict safely, check it against a model, load it, write it plainly.

* :func:`load_state_dict_file` reads tensors from ``.safetensors`` (a format that holds only tensors) or from a
  checkpoint through ``torch.load(weights_only=True)``, never executing code;
* :func:`load_weights_into` copies a state dict into a model after checking every name, shape and dtype and that
  the values are finite (tied tensors may be stored once);
* :func:`safetensors_state` / :func:`checkpoint_state` give a model's state as each format wants it, free of the
  ``torch.compile`` / DDP wrappers (:func:`unwrap_model`).

The package reader and writer (:mod:`llm_lab.core.package.io`) and the Hugging Face import use these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from llm_lab.core.package.layout import PackageError, short_list
from llm_lab.core.train.checkpoint import CheckpointError, check_state_dict, read_state_dict

__all__ = [
    "checkpoint_state",
    "load_state_dict_file",
    "load_weights_into",
    "safetensors_state",
    "unwrap_model",
    "weights_dtype",
]

# Wrappers whose state_dict keys gain a prefix; saved state must not depend on them (torch.compile, DDP).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` / ``DistributedDataParallel`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__ in (
            "DistributedDataParallel",
            "DataParallel",
        ):
            model = model.module
        else:
            return model


def _strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _tied_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names in ``state`` that are the same tensor (tied embeddings), in state_dict order."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def safetensors_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as safetensors wants it: tied tensors once, contiguous, on the CPU, no sharing."""
    state = unwrap_model(model).state_dict()
    drop = {name for group in _tied_groups(state) for name in group[1:]}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if k not in drop}


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def _utf8_path(path: Path) -> bool:
    """Whether ``path``'s bytes on disk are UTF-8 (a name that is not shows up with surrogate escapes)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a ``.safetensors`` file or a checkpoint, never executing code.

    ``.safetensors`` files are read with ``safetensors``; anything else with
    :func:`llm_lab.core.train.checkpoint.read_state_dict` (``torch.load(weights_only=True)``, which refuses pickles
    that would construct arbitrary Python objects): a plain state dict, or a run checkpoint's ``"model"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: the file is corrupt, holds Python objects beyond tensors and containers, is a checkpoint of
            an unknown format version, or holds no state dict. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load, load_file

        try:
            if _utf8_path(path):
                return load_file(str(path))
            # safetensors takes only UTF-8 paths; a folder named in another encoding (a Latin-1 "café" from an old
            # archive) is read here and parsed from memory, as the package was written.
            return load(path.read_bytes())
        except (SafetensorError, OSError, ValueError) as e:
            raise PackageError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        raise PackageError(str(e)) from None


def load_weights_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``model`` after checking every name and shape; errors name ``source``.

    Tied tensors may be stored once (as in safetensors files): a missing name is fine when a tensor it is tied to
    is present.

    Raises:
        PackageError: missing tensors, unexpected tensors, or tensors of the wrong shape (all listed).
    """
    model = unwrap_model(model)
    state = _strip_wrapper_prefixes(state)
    expected = model.state_dict()
    full = dict(state)
    for group in _tied_groups(expected):
        present = [name for name in group if name in state]
        for name in group:
            if name not in full and present:
                full[name] = state[present[0]]
    try:
        check_state_dict(full, expected, source)
    except CheckpointError as e:
        raise PackageError(str(e)) from None
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise PackageError(
            f"{source}: bad weights, {short_list(not_finite, 4)} hold NaN or infinite values (a diverged or "
            "damaged model); refusing to load them"
        )
    model.load_state_dict(full, strict=True)


def weights_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype of the stored weights if they all share one (so bf16 packages load as bf16)."""
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None
