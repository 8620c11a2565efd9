"""Save and load model packages: config + tokenizer + weights, written atomically, loaded without executing code.

    from llm_lab.core.package.io import save_model_package, load_model_package

    save_model_package("artifacts/my_run", config, tokenizer, model, is_best=True)
    cfg, tok, model = load_model_package("artifacts/my_run")

The layout is described in :mod:`llm_lab.core.package.layout`. Safety rules:

* Weights come from ``model.safetensors`` first (a format that holds only tensors), otherwise from a checkpoint
  read with ``torch.load(weights_only=True)``, which refuses pickled Python objects instead of running them.
* Every file is checked before it is trusted: the manifest's completion marker and file sizes, the config's keys
  and types, the tokenizer's vocabulary against the model's, every tensor's name and shape. Each failure is a
  :class:`~llm_lab.core.package.layout.PackageError` (a ``ValueError``) naming the file and what is wrong.
* A package is written into a hidden temporary directory and renamed into place, so a crash leaves the old
  package (or nothing), never half of a new one.

Run directories written by the Trainer (``run.json``, ``tokenizer/``, ``checkpoints/``) can be loaded directly
(:func:`load_run`) or turned into a package (:func:`package_run`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from llm_lab import __version__
from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.package.layout import (
    BEST_CHECKPOINT,
    CHECKPOINT_FILES,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    MANIFEST_FILE,
    PACKAGE_FORMAT,
    PACKAGE_FORMAT_VERSION,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    PackageError,
    TrainingSummary,
    is_package,
    read_json,
    read_manifest,
)
from llm_lab.utils.config_loader import config_from_dict, config_to_dict
from llm_lab.utils.devices import resolve_device
from llm_lab.utils.io import _fsync_dir, atomic_torch_save, atomic_write_bytes, atomic_write_json

__all__ = [
    "PackageError",
    "TrainingSummary",
    "describe_package",
    "load_model_package",
    "load_package_or_run",
    "load_run",
    "load_state_dict_file",
    "load_weights_into",
    "package_run",
    "resolve_device",
    "save_model_package",
]

CHECKPOINT_FORMAT_VERSION = 1
Checkpoint = Literal["best", "last"]

# Wrappers whose state_dict keys gain a prefix; saved state must not depend on them (torch.compile, DDP).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


# --------------------------------------------------------------------------------------------- weights


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


def _safetensors_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as safetensors wants it: tied tensors once, contiguous, on the CPU, no sharing."""
    state = unwrap_model(model).state_dict()
    drop = {name for group in _tied_groups(state) for name in group[1:]}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if k not in drop}


def _checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def _short_list(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _unpickler_reason(error: Exception) -> str:
    """The useful line of torch's weights-only refusal (its first line suggests the unsafe retry; skip it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "nsupported" in line and "file an issue" not in line), None)
    return f"weights_only unpickler: {detail}" if detail else "rejected by torch.load(weights_only=True)"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a ``.safetensors`` file or a checkpoint, never executing code.

    ``.safetensors`` files are read with ``safetensors``; anything else with ``torch.load(weights_only=True)``,
    which refuses pickles that would construct arbitrary Python objects. A checkpoint dict (``{"model": state_dict,
    ...}``) yields its ``"model"`` entry; a bare state dict is returned as is.

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
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise PackageError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PackageError(
            f"refusing to load {path}: it holds pickled Python objects beyond tensors and plain containers, and "
            f"unpickling them could run code ({_unpickler_reason(e)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PackageError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        version = obj.get("format_version", CHECKPOINT_FORMAT_VERSION)
        if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
            raise PackageError(
                f"{path}: checkpoint format_version {version!r} is not supported (this llm-lab reads up to "
                f"{CHECKPOINT_FORMAT_VERSION})"
            )
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PackageError(f"{path}: holds no state dict (expected a mapping of names to tensors)")
    return dict(obj)


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
    missing = [k for k in expected if k not in full]
    unexpected = [k for k in full if k not in expected]
    wrong_shape = [
        f"{k} is {tuple(full[k].shape)} but the model expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in full and tuple(full[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_short_list(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_short_list(wrong_shape, 4)}")
    if problems:
        raise PackageError(f"{source}: weights do not match the model config ({'; '.join(problems)})")
    model.load_state_dict(full, strict=True)


def _weights_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype of the stored weights if they all share one (so bf16 packages load as bf16)."""
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


# --------------------------------------------------------------------------------------------- pieces


def _read_config(path: Path) -> MiniGPTConfig:
    if not path.is_file():
        raise PackageError(f"{path}: missing (the model config)")
    return config_from_dict(MiniGPTConfig, read_json(path), where=str(path))


def _load_tokenizer(directory: Path) -> Any:
    from llm_lab.core.tokenization import load_tokenizer

    if not directory.is_dir():
        raise PackageError(f"{directory}: missing (the tokenizer directory)")
    try:
        return load_tokenizer(directory)
    except FileNotFoundError as e:
        raise PackageError(f"{directory}: incomplete tokenizer ({e})") from None
    except ValueError as e:
        raise PackageError(f"{directory}: cannot load the tokenizer ({e})") from None


def _check_vocab(config: MiniGPTConfig, tokenizer: Any, tokenizer_where: str, config_where: str) -> None:
    # A model vocabulary larger than the tokenizer's is fine (embeddings padded to a round size); a smaller one
    # means some token ids have no embedding row.
    if tokenizer.vocab_size > config.vocab_size:
        raise PackageError(
            f"vocab-size mismatch: the tokenizer in {tokenizer_where} has {tokenizer.vocab_size} tokens but the "
            f"model in {config_where} has vocab_size={config.vocab_size}; they must come from the same training run"
        )


def _build_model(config: MiniGPTConfig) -> nn.Module:
    from llm_lab.core.model.gpt import MiniGPT

    return MiniGPT(config)


def _tokenizer_type(tokenizer: Any, directory: Path) -> str:
    config_file = directory / "tokenizer_config.json"
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        kind = json.loads(config_file.read_text(encoding="utf-8")).get("type")
        if isinstance(kind, str):
            return kind
    return type(tokenizer).__name__


def _num_parameters(model: nn.Module) -> int:
    model = unwrap_model(model)
    if hasattr(model, "num_parameters"):
        with contextlib.suppress(TypeError):
            return int(model.num_parameters())
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- writing


def _checkpoint_payload(config: MiniGPTConfig, state: dict[str, torch.Tensor], info: Mapping[str, Any]) -> dict:
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": config_to_dict(config),
        "model": state,
        "step": info.get("step"),
        "tokens_seen": info.get("tokens_seen"),
        "best_val_loss": info.get("best_val_loss"),
    }


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.is_file() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is a file; a package is a directory")
    if path.is_dir() and any(path.iterdir()):
        if not is_package(path):
            raise FileExistsError(
                f"{path} exists and is not an llm-lab package; refusing to replace it (choose another path)"
            )
        if not overwrite:
            raise FileExistsError(f"{path} already holds a package; pass overwrite (--force) to replace it")


def _temp_directory_beside(path: Path) -> Path:
    """A hidden empty directory next to ``path`` (same filesystem, so renaming it into place is atomic).

    ``mkdtemp`` makes it private (0700); it gets the mode a plain ``mkdir`` would, since it becomes the package.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def _commit_directory(tmp: Path, path: Path) -> None:
    """Move the finished package ``tmp`` to ``path``, replacing an old package there."""
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        old.rmdir()
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_package(
    path: str | Path,
    config: MiniGPTConfig,
    tokenizer: Any,
    *,
    weights: dict[str, torch.Tensor],
    weights_from: str,
    num_parameters: int,
    checkpoints: dict[str, dict],
    carry_over: Iterable[str] = (),
    summary: TrainingSummary,
    source: dict[str, Any] | None,
    overwrite: bool,
) -> Path:
    """Write a whole package into a temporary directory, then rename it to ``path``.

    Args:
        weights: tensors for ``model.safetensors`` (tied tensors once).
        weights_from: ``"best"`` or ``"last"``: which checkpoint ``model.safetensors`` holds.
        checkpoints: relative checkpoint path -> payload to ``torch.save``.
        carry_over: relative paths copied unchanged from the package already at ``path``.
    """
    path = Path(path)
    _prepare_target(path, overwrite)
    _check_vocab(config, tokenizer, "the tokenizer passed in", "the config passed in")
    tmp = _temp_directory_beside(path)
    try:
        from safetensors.torch import save as safetensors_bytes

        atomic_write_json(tmp / CONFIG_FILE, config_to_dict(config))
        tokenizer.save(tmp / TOKENIZER_DIR)
        for rel in carry_over:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path / rel, tmp / rel)
        for rel, payload in checkpoints.items():
            atomic_torch_save(payload, tmp / rel)
        atomic_write_bytes(tmp / WEIGHTS_FILE, safetensors_bytes(weights, metadata={"format": "pt"}))

        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": PACKAGE_FORMAT,
            "format_version": PACKAGE_FORMAT_VERSION,
            "library_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "tokenizer_type": _tokenizer_type(tokenizer, tmp / TOKENIZER_DIR),
            "vocab_size": config.vocab_size,
            "tokenizer_vocab_size": tokenizer.vocab_size,
            "num_parameters": num_parameters,
            "weights": WEIGHTS_FILE,
            "weights_from": weights_from,
            "checkpoints": sorted(k for k in files if k.startswith("checkpoints/")),
            "training": {"steps": summary.steps, "tokens": summary.tokens, "best_val_loss": summary.best_val_loss},
            "source": source or {},
            "files": files,
            # Written last, inside the same file: a manifest without it was never finished.
            "complete": True,
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        _fsync_dir(tmp)
        _commit_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _existing_same_model(path: Path, config: MiniGPTConfig) -> dict[str, Any] | None:
    """The manifest of a complete package at ``path`` with the same model config, else None."""
    try:
        manifest = read_manifest(path)
        same = _read_config(path / CONFIG_FILE) == config
    except (OSError, ValueError):
        return None
    return manifest if same else None


def save_model_package(
    path: str | Path,
    config: MiniGPTConfig,
    tokenizer: Any,
    model: nn.Module,
    is_best: bool = True,
    *,
    step: int | None = None,
    tokens_seen: int | None = None,
    best_val_loss: float | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save config + tokenizer + weights as a package directory, atomically.

    ``is_best=True`` writes ``checkpoints/best_val.pt`` and ``model.safetensors`` from ``model``, keeping a
    ``last.pt`` already in the package. ``is_best=False`` writes ``checkpoints/last.pt`` and keeps the package's
    best weights if it has them (so a training loop can call this after every evaluation and at the end). Kept
    files are only kept when the existing package has the same model config.

    Args:
        path: the package directory (created; an existing package there is replaced atomically).
        config: the model's ``MiniGPTConfig``.
        tokenizer: a tokenizer with ``save(directory)`` and ``vocab_size``.
        model: the model (``torch.compile`` / DDP wrappers are unwrapped; saved state never depends on them).
        is_best: whether these are the best weights so far (``best_val.pt``) or the latest (``last.pt``).
        step: optimizer steps taken, recorded in the checkpoint and ``package.json``.
        tokens_seen: training tokens seen, recorded likewise.
        best_val_loss: the best validation loss so far, recorded likewise.
        source: free-form provenance recorded in ``package.json`` (e.g. the run directory).
        overwrite: replace an existing package at ``path``; if False that is a ``FileExistsError``.

    Returns:
        The package path.

    Raises:
        FileExistsError: ``path`` exists and is not a package (never clobbered), or is one and ``overwrite`` is
            False.
        PackageError: the tokenizer has more tokens than the model's vocabulary.
    """
    path = Path(path)
    config_from_model = getattr(unwrap_model(model), "config", None)
    if isinstance(config_from_model, MiniGPTConfig) and config_from_model != config:
        raise PackageError("save_model_package: `config` differs from model.config; pass the model's own config")
    info = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val_loss}
    state = _checkpoint_state(model)
    existing = _existing_same_model(path, config) if path.is_dir() else None
    existing_files = set((existing or {}).get("files", {}))

    if is_best:
        checkpoints = {BEST_CHECKPOINT: _checkpoint_payload(config, state, info)}
        carry = [LAST_CHECKPOINT] if LAST_CHECKPOINT in existing_files else []
        weights, weights_from = _safetensors_state(model), "best"
    else:
        checkpoints = {LAST_CHECKPOINT: _checkpoint_payload(config, state, info)}
        keep_best = (
            existing is not None and existing.get("weights_from") == "best" and BEST_CHECKPOINT in existing_files
        )
        if keep_best:
            # model.safetensors keeps the best weights; read them back (already checked) to rewrite the file.
            carry = [BEST_CHECKPOINT]
            weights = load_state_dict_file(path / WEIGHTS_FILE)
            weights_from = "best"
        else:
            carry, weights, weights_from = [], _safetensors_state(model), "last"
    summary = TrainingSummary(steps=step, tokens=tokens_seen, best_val_loss=best_val_loss)
    return _write_package(
        path,
        config,
        tokenizer,
        weights=weights,
        weights_from=weights_from,
        num_parameters=_num_parameters(model),
        checkpoints=checkpoints,
        carry_over=carry,
        summary=summary,
        source=source,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------- loading


def _finish_model(config: MiniGPTConfig, state: dict[str, torch.Tensor], source: Path, device: Any) -> nn.Module:
    model = _build_model(config)
    load_weights_into(model, state, source)
    dtype = _weights_dtype(state)
    if dtype is not None and dtype != torch.float32:
        model.to(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_model_package(
    path: str | Path, *, checkpoint: Checkpoint | None = None, device: str | torch.device | None = None
) -> tuple[MiniGPTConfig, Any, nn.Module]:
    """Load ``(config, tokenizer, model)`` from a package directory, checking every file first.

    Args:
        path: the package directory.
        checkpoint: ``None`` for the package's weights (``model.safetensors``), or ``"best"`` / ``"last"`` for
            ``checkpoints/best_val.pt`` / ``checkpoints/last.pt`` (served from ``model.safetensors`` when it holds
            the same weights).
        device: where to put the model (default: CPU).

    Returns:
        The config, the tokenizer and the model in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: a half-written or damaged package, an unknown format version, a config with unknown keys,
            a tokenizer/model vocabulary mismatch, a checkpoint holding Python objects, tensors missing,
            unexpected or of the wrong shape. The message names the file.
    """
    path = Path(path)
    device = resolve_device(device)
    manifest = read_manifest(path)
    config = _read_config(path / CONFIG_FILE)
    tokenizer = _load_tokenizer(path / TOKENIZER_DIR)
    _check_vocab(config, tokenizer, str(path / TOKENIZER_DIR), str(path / CONFIG_FILE))

    if checkpoint is not None and checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint={checkpoint!r}: choose 'best', 'last' or None (the package's weights)")
    weights_file = path / WEIGHTS_FILE
    if checkpoint is None:
        candidates = [weights_file, path / BEST_CHECKPOINT, path / LAST_CHECKPOINT]
    elif manifest.get("weights_from") == checkpoint:
        candidates = [weights_file, path / CHECKPOINT_FILES[checkpoint]]
    else:
        candidates = [path / CHECKPOINT_FILES[checkpoint]]
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        available = [p for p in (WEIGHTS_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT) if (path / p).is_file()]
        raise PackageError(f"{candidates[0]}: missing; weights files in {path}: {', '.join(available) or 'none'}")
    state = load_state_dict_file(source)
    return config, tokenizer, _finish_model(config, state, source, device)


# --------------------------------------------------------------------------------------------- run directories

RUN_CHECKPOINTS: dict[str, str] = {"best": "checkpoints/best_val.pt", "last": "checkpoints/last.pt"}


def _read_run_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint as a dict, through the trainer's reader (``weights_only=True``; errors name the file)."""
    from llm_lab.core.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")  # CheckpointError is a ValueError: one line on the CLI
    if not isinstance(ckpt.get("model"), dict):
        raise PackageError(f"{path}: not a trainer checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def _run_pieces(
    run_dir: Path, checkpoint: Checkpoint, tokenizer: Any = None
) -> tuple[MiniGPTConfig, Any, dict[str, Any], Path, dict[str, Any]]:
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise PackageError(f"{run_json}: missing, so {run_dir} is not a run directory")
    run_config = read_json(run_json)
    if not isinstance(run_config, dict):
        raise PackageError(f"{run_json}: expected a JSON object with 'model', 'train', ... sections")
    if checkpoint not in RUN_CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r}: choose 'best' or 'last'")
    order = [checkpoint] + [k for k in RUN_CHECKPOINTS if k != checkpoint]
    ckpt_path = next((run_dir / RUN_CHECKPOINTS[k] for k in order if (run_dir / RUN_CHECKPOINTS[k]).is_file()), None)
    if ckpt_path is None:
        raise PackageError(f"{run_dir / 'checkpoints'}: no best_val.pt or last.pt; has the run saved a checkpoint?")
    ckpt = _read_run_checkpoint(ckpt_path)
    # The checkpoint's own model config describes its tensors; run.json is the fallback.
    model_dict = ckpt.get("model_config") or run_config.get("model")
    if not isinstance(model_dict, dict):
        raise PackageError(f"{ckpt_path}: no model_config, and {run_json} has no 'model' section")
    config = config_from_dict(MiniGPTConfig, model_dict, where=f"{ckpt_path}: model_config")
    where = "the tokenizer passed in"
    if tokenizer is None:
        tokenizer, where = _load_tokenizer(run_dir / TOKENIZER_DIR), str(run_dir / TOKENIZER_DIR)
    _check_vocab(config, tokenizer, where, str(ckpt_path))
    return config, tokenizer, ckpt, ckpt_path, run_config


def load_run(
    run_dir: str | Path,
    *,
    checkpoint: Checkpoint = "best",
    device: str | torch.device | None = None,
    tokenizer: Any = None,
) -> tuple[MiniGPTConfig, Any, nn.Module]:
    """Load ``(config, tokenizer, model)`` from a Trainer run directory.

    Args:
        run_dir: a directory with ``run.json``, ``tokenizer/`` and ``checkpoints/``.
        checkpoint: ``"best"`` (``best_val.pt``, falling back to ``last.pt``) or ``"last"`` (the reverse).
        device: where to put the model.
        tokenizer: use this tokenizer instead of ``run_dir/tokenizer`` (its vocabulary is still checked).
    """
    run_dir = Path(run_dir)
    device = resolve_device(device)
    config, tokenizer, ckpt, ckpt_path, _ = _run_pieces(run_dir, checkpoint, tokenizer)
    state = {k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    return config, tokenizer, _finish_model(config, state, ckpt_path, device)


def load_package_or_run(
    path: str | Path, *, checkpoint: Checkpoint | None = None, device: str | torch.device | None = None
) -> tuple[MiniGPTConfig, Any, nn.Module]:
    """Load a package, or a run directory (one with ``run.json``), whichever ``path`` is."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no package or run directory at {path}")
    if (path / "run.json").is_file() and not is_package(path):
        return load_run(path, checkpoint=checkpoint or "best", device=device)
    return load_model_package(path, checkpoint=checkpoint, device=device)


def package_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Turn a Trainer run directory into a package.

    The package's ``model.safetensors`` holds the best-validation weights (the last ones if the run never
    evaluated); both ``best_val.pt`` and ``last.pt`` are copied as model-only checkpoints (no optimizer state).

    Args:
        run_dir: the run directory (``run.json``, ``tokenizer/``, ``checkpoints/``).
        out: the package directory to write.
        overwrite: replace an existing package at ``out``.

    Returns:
        The package path.
    """
    run_dir = Path(run_dir)
    config, tokenizer, main_ckpt, main_path, run_config = _run_pieces(run_dir, "best")
    checkpoints: dict[str, dict] = {}
    ckpts = {main_path.name: main_ckpt}
    for name in ("best_val.pt", "last.pt"):
        p = run_dir / "checkpoints" / name
        if name not in ckpts and p.is_file():
            ckpts[name] = _read_run_checkpoint(p)
    model = None
    for name, ckpt in ckpts.items():
        model_config = ckpt.get("model_config")
        if model_config is not None and config_from_dict(MiniGPTConfig, model_config, where=name) != config:
            raise PackageError(f"{run_dir / 'checkpoints' / name}: model_config differs from {main_path.name}")
        state = {k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
        m = _build_model(config)
        load_weights_into(m, state, run_dir / "checkpoints" / name)  # checks names and shapes
        info = {k: ckpt.get(k) for k in ("step", "tokens_seen", "best_val_loss")}
        checkpoints[f"checkpoints/{name}"] = _checkpoint_payload(config, _checkpoint_state(m), info)
        if name == main_path.name:
            model = m
    assert model is not None
    # The training summary describes the whole run: the latest checkpoint knows the most.
    latest = ckpts.get("last.pt", main_ckpt)
    summary = TrainingSummary(
        steps=latest.get("step"),
        tokens=latest.get("tokens_seen"),
        best_val_loss=latest.get("best_val_loss", main_ckpt.get("best_val_loss")),
    )
    source = {"kind": "run", "run_dir": str(run_dir.resolve()), "run_config": run_config}
    return _write_package(
        out,
        config,
        tokenizer,
        weights=_safetensors_state(model),
        weights_from="best" if main_path.name == "best_val.pt" else "last",
        num_parameters=_num_parameters(model),
        checkpoints=checkpoints,
        summary=summary,
        source=source,
        overwrite=overwrite,
    )


def describe_package(path: str | Path) -> dict[str, Any]:
    """Load a package (checking it fully) and summarise it: config, parameters, tokenizer, training.

    Returns:
        A JSON-ready dict with ``path``, ``format_version``, ``library_version``, ``created``, ``config``,
        ``num_parameters``, ``num_non_embedding_parameters``, ``tokenizer`` (type, vocab size, special tokens),
        ``weights_from``, ``checkpoints``, ``training`` and ``source`` (its kind only).
    """
    path = Path(path)
    config, tokenizer, model = load_model_package(path)
    manifest = read_manifest(path, check_files=False)
    num_non_embedding = None
    with contextlib.suppress(TypeError):
        num_non_embedding = int(model.num_parameters(non_embedding=True))
    return {
        "path": str(path),
        "format_version": manifest["format_version"],
        "library_version": manifest.get("library_version"),
        "created": manifest.get("created"),
        "config": config_to_dict(config),
        "num_parameters": _num_parameters(model),
        "num_non_embedding_parameters": num_non_embedding,
        "tokenizer": {
            "type": manifest.get("tokenizer_type"),
            "vocab_size": tokenizer.vocab_size,
            "eot_token_id": getattr(tokenizer, "eot_token_id", None),
            "special_tokens": dict(getattr(tokenizer, "special_tokens", {}) or {}),
        },
        "weights_from": manifest.get("weights_from"),
        "checkpoints": manifest.get("checkpoints", []),
        "training": manifest.get("training", {}),
        "source": (manifest.get("source") or {}).get("kind"),
    }
