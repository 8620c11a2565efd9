"""Save and load model packages: config + tokenizer + weights, written atomically, loaded without executing code.

    from llm_lab.core.package.io import save_model_package, load_model_package

    save_model_package("artifacts/my_run", config, tokenizer, model, is_best=True)
    cfg, tok, model = load_model_package("artifacts/my_run")

The layout is described in :mod:`llm_lab.core.package.layout`. Safety rules:

* Weights come from ``model.safetensors`` first (a format that holds only tensors), otherwise from a checkpoint
  read with ``torch.load(weights_only=True)``, which refuses pickled Python objects instead of running them.
* Every file is checked before it is trusted: the manifest's completion marker, file sizes and sha256 checksums,
  the config's keys and types, the tokenizer's fingerprint and vocabulary against the model's, every tensor's name,
  shape and dtype, and that the weights are finite. Each failure is a
  :class:`~llm_lab.core.package.layout.PackageError` (a ``ValueError``) naming the file and what is wrong.
* A package is built beside its final path and swapped in (:func:`llm_lab.utils.dirswap.staged_directory`); a kill
  at any step leaves the old package or the new one, and the next reader or writer finishes an interrupted swap.
  Only a directory that is empty or an llm-lab package holding nothing but the files its manifest lists is
  ever replaced.
* Packages in the spec's layout (``config.json``, ``tokenizer/``, ``checkpoints/best_val.pt``, no manifest) load
  too, with the same checks on what they hold.

Run directories written by the Trainer (``run.json``, ``tokenizer/``, ``checkpoints/``) can be loaded directly
(:func:`load_run`) or turned into a package (:func:`package_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
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
    check_replaceable,
    file_record,
    is_package,
    package_layout,
    read_json,
    read_manifest,
)
from llm_lab.core.package.weights import (
    checkpoint_state,
    load_state_dict_file,
    load_weights_into,
    safetensors_state,
    unwrap_model,
    weights_dtype,
)
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint
from llm_lab.core.train.checkpoint import (
    BEST_FILE,
    CHECKPOINT_DIR,
    LAST_FILE,
    RUN_FILE,
    CheckpointError,
    check_size_fits,
    load_checkpoint,
    reconcile_best,
    run_checkpoint_path,
)
from llm_lab.utils.config_loader import config_from_dict, config_to_dict
from llm_lab.utils.devices import resolve_device
from llm_lab.utils.dirswap import recover_directory, staged_directory
from llm_lab.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

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
    "unwrap_model",
    "save_model_package",
]

Checkpoint = Literal["best", "last"]

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
        if not (directory / "tokenizer_config.json").is_file() and not (directory / "merges.txt").is_file():
            return _spec_char_tokenizer(directory / "vocab.json")
        return load_tokenizer(directory)
    except FileNotFoundError as e:
        raise PackageError(f"{directory}: incomplete tokenizer ({e})") from None
    except PackageError:
        raise
    except ValueError as e:
        raise PackageError(f"{directory}: cannot load the tokenizer ({e})") from None


def _spec_char_tokenizer(vocab_path: Path) -> Any:
    """A character vocabulary as the spec's layout may hold it: ``vocab.json`` alone, character -> id."""
    from llm_lab.core.tokenization import CharTokenizer

    if not vocab_path.is_file():
        raise FileNotFoundError(f"no tokenizer_config.json, and no character vocabulary {vocab_path.name}")
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(
        isinstance(ch, str) and len(ch) == 1 and isinstance(i, int) and not isinstance(i, bool)
        for ch, i in vocab.items()
    ):
        raise PackageError(
            f"{vocab_path}: without merges.txt or tokenizer_config.json this must be a character vocabulary "
            "(a JSON object mapping single characters to ids 0..N-1)"
        )
    try:
        return CharTokenizer(vocab)
    except ValueError as e:
        raise PackageError(f"{vocab_path}: {e}") from None


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


def _is_machine_path(value: Any) -> bool:
    """An absolute or home-relative path: true of one machine only."""
    return isinstance(value, str) and (
        os.path.isabs(value) or value.startswith("~") or (len(value) > 2 and value[1] == ":" and value[2] in "/\\")
    )


def _portable(value: Any) -> Any:
    """``value`` without the entries that name places on this machine (absolute paths), recursively."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items() if not _is_machine_path(v)}
    if isinstance(value, list):
        return [_portable(v) for v in value if not _is_machine_path(v)]
    return value


def _prepare_target(path: Path, overwrite: bool) -> None:
    """Refuse a target that is not ours to replace, before anything is written.

    An interrupted swap of ``path`` left by a killed writer is finished first, so what is judged is the real state.
    """
    recover_directory(path)
    check_replaceable(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already holds a package; pass overwrite (--force) to replace it")


# A checkpoint to write: its plain state dict and what the manifest records about it (step, tokens, best loss).
CheckpointEntry = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _checkpoint_info(info: Mapping[str, Any]) -> dict[str, Any]:
    return {key: info.get(key) for key in ("step", "tokens_seen", "best_val_loss")}


def _write_package(
    path: str | Path,
    config: MiniGPTConfig,
    tokenizer: Any,
    *,
    weights: dict[str, torch.Tensor],
    weights_from: str,
    num_parameters: int,
    checkpoints: dict[str, CheckpointEntry],
    summary: TrainingSummary,
    source: dict[str, Any] | None,
    overwrite: bool,
) -> Path:
    """Build a whole package beside ``path`` and swap it in (:func:`~llm_lab.utils.dirswap.staged_directory`).

    Args:
        weights: tensors for ``model.safetensors`` (tied tensors once).
        weights_from: ``"best"`` or ``"last"``: which checkpoint ``model.safetensors`` holds.
        checkpoints: relative checkpoint path -> (plain state dict, metadata for the manifest).
    """
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    _prepare_target(path, overwrite)
    _check_vocab(config, tokenizer, "the tokenizer passed in", "the config passed in")
    with staged_directory(path) as tmp:
        atomic_write_json(tmp / CONFIG_FILE, config_to_dict(config))
        tokenizer.save(tmp / TOKENIZER_DIR)
        for rel, (state, _) in checkpoints.items():
            atomic_torch_save(state, tmp / rel)
        atomic_write_bytes(tmp / WEIGHTS_FILE, safetensors_bytes(weights, metadata={"format": "pt"}))
        files = {p.relative_to(tmp).as_posix(): file_record(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": PACKAGE_FORMAT,
            "format_version": PACKAGE_FORMAT_VERSION,
            "library_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "tokenizer_type": _tokenizer_type(tokenizer, tmp / TOKENIZER_DIR),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": config.vocab_size,
            "tokenizer_vocab_size": tokenizer.vocab_size,
            "num_parameters": num_parameters,
            "weights": WEIGHTS_FILE,
            "weights_from": weights_from,
            "checkpoints": sorted(checkpoints),
            "checkpoint_info": {rel: _checkpoint_info(info) for rel, (_, info) in sorted(checkpoints.items())},
            "training": {"steps": summary.steps, "tokens": summary.tokens, "best_val_loss": summary.best_val_loss},
            "source": _portable(source or {}),
            "files": files,
            # Written last, inside the same file: a manifest without it was never finished.
            "complete": True,
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return path


def _existing_same_model(path: Path, config: MiniGPTConfig) -> dict[str, Any] | None:
    """The manifest of a complete package at ``path`` with the same model config, else None."""
    try:
        recover_directory(path)
        manifest = read_manifest(path)
        same = _read_config(path / CONFIG_FILE) == config
    except (OSError, ValueError):
        return None
    return manifest if same else None


def _existing_checkpoint(path: Path, rel: str, manifest: dict[str, Any]) -> CheckpointEntry:
    """A checkpoint of the package at ``path``, as a plain state dict and its metadata (any format version)."""
    info = (manifest.get("checkpoint_info") or {}).get(rel)
    if info is None:  # format 1: the metadata lives in the checkpoint dict itself
        old = load_checkpoint(path / rel)
        return {k: v for k, v in old["model"].items() if isinstance(v, torch.Tensor)}, _checkpoint_info(old)
    return load_state_dict_file(path / rel), _checkpoint_info(info)


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
    files are only kept when the existing package has the same model config. Checkpoints are plain state dicts;
    ``step``, ``tokens_seen`` and ``best_val_loss`` go to the manifest.

    Args:
        path: the package directory (created; an existing package there is replaced atomically).
        config: the model's ``MiniGPTConfig``.
        tokenizer: a tokenizer with ``save(directory)`` and ``vocab_size``.
        model: the model (``torch.compile`` / DDP wrappers are unwrapped; saved state never depends on them).
        is_best: whether these are the best weights so far (``best_val.pt``) or the latest (``last.pt``).
        step: optimizer steps taken, recorded in ``package.json``.
        tokens_seen: training tokens seen, recorded likewise.
        best_val_loss: the best validation loss so far, recorded likewise.
        source: provenance recorded in ``package.json`` (absolute paths are left out: a package is portable).
        overwrite: replace an existing package at ``path``; if False that is a ``FileExistsError``.

    Returns:
        The package path.

    Raises:
        FileExistsError: ``path`` exists and is not an llm-lab package holding only its own files (never
            clobbered), or is one and ``overwrite`` is False.
        PackageError: the tokenizer has more tokens than the model's vocabulary, or ``model`` is a decode-only copy.
    """
    from llm_lab.core.decode.fast_linear import is_decode_copy

    path = Path(path)
    if is_decode_copy(unwrap_model(model)):
        raise PackageError(
            "save_model_package: this is a decode-only copy (prepare_for_decode), whose weights are laid out for "
            "decoding and not saved; save the model it was prepared from"
        )
    config_from_model = getattr(unwrap_model(model), "config", None)
    if isinstance(config_from_model, MiniGPTConfig) and config_from_model != config:
        raise PackageError("save_model_package: `config` differs from model.config; pass the model's own config")
    info = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val_loss}
    entry: CheckpointEntry = (checkpoint_state(model), info)
    existing = _existing_same_model(path, config) if path.is_dir() else None
    existing_checkpoints = set((existing or {}).get("checkpoints", []))

    if is_best:
        checkpoints = {BEST_CHECKPOINT: entry}
        if LAST_CHECKPOINT in existing_checkpoints:
            checkpoints[LAST_CHECKPOINT] = _existing_checkpoint(path, LAST_CHECKPOINT, existing)
        weights, weights_from = safetensors_state(model), "best"
    else:
        checkpoints = {LAST_CHECKPOINT: entry}
        if existing is not None and existing.get("weights_from") == "best" and BEST_CHECKPOINT in existing_checkpoints:
            # model.safetensors keeps the best weights; read them back (already checked) to rewrite the file.
            checkpoints[BEST_CHECKPOINT] = _existing_checkpoint(path, BEST_CHECKPOINT, existing)
            weights, weights_from = load_state_dict_file(path / WEIGHTS_FILE), "best"
        else:
            weights, weights_from = safetensors_state(model), "last"
    summary = TrainingSummary(steps=step, tokens=tokens_seen, best_val_loss=best_val_loss)
    return _write_package(
        path,
        config,
        tokenizer,
        weights=weights,
        weights_from=weights_from,
        num_parameters=_num_parameters(model),
        checkpoints=checkpoints,
        summary=summary,
        source=source,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------- loading


def _finish_model(config: MiniGPTConfig, state: dict[str, torch.Tensor], source: Path, device: Any) -> nn.Module:
    try:
        check_size_fits(state, config, source)  # before building what the config asks for
    except CheckpointError as e:
        raise PackageError(str(e)) from None
    model = _build_model(config)
    load_weights_into(model, state, source)
    dtype = weights_dtype(state)
    if dtype is not None and dtype != torch.float32:
        model.to(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _open_package(path: Path) -> tuple[str, dict[str, Any] | None, MiniGPTConfig, Any]:
    """Check a package's layout, manifest, config and tokenizer: ``(layout, manifest or None, config, tokenizer)``.

    A swap of ``path`` that a killed writer left half done is finished first (quietly skipped where the directory
    cannot be written: the reader then sees what is there).
    """
    with contextlib.suppress(OSError):
        recover_directory(path)
    layout = package_layout(path)
    manifest = read_manifest(path) if layout == "manifest" else None
    config = _read_config(path / CONFIG_FILE)
    tokenizer = _load_tokenizer(path / TOKENIZER_DIR)
    _check_vocab(config, tokenizer, str(path / TOKENIZER_DIR), str(path / CONFIG_FILE))
    recorded = (manifest or {}).get("tokenizer_fingerprint")
    if recorded is not None and recorded != tokenizer_fingerprint(tokenizer):
        raise PackageError(
            f"{path / TOKENIZER_DIR}: not the tokenizer this package was written with (its fingerprint differs from "
            f"the one in {MANIFEST_FILE}: ids were changed or permuted), so the model would read the wrong tokens"
        )
    return layout, manifest, config, tokenizer


def _weights_source(path: Path, layout: str, manifest: dict[str, Any] | None, checkpoint: Checkpoint | None) -> Path:
    if checkpoint is not None and checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint={checkpoint!r}: choose 'best', 'last' or None (the package's weights)")
    weights_file = path / WEIGHTS_FILE
    if layout == "spec":
        candidates = [path / CHECKPOINT_FILES[checkpoint or "best"]]
    elif checkpoint is None:
        candidates = [weights_file, path / BEST_CHECKPOINT, path / LAST_CHECKPOINT]
    elif (manifest or {}).get("weights_from") == checkpoint:
        candidates = [weights_file, path / CHECKPOINT_FILES[checkpoint]]
    else:
        candidates = [path / CHECKPOINT_FILES[checkpoint]]
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        available = [p for p in (WEIGHTS_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT) if (path / p).is_file()]
        raise PackageError(f"{candidates[0]}: missing; weights files in {path}: {', '.join(available) or 'none'}")
    return source


def load_model_package(
    path: str | Path, *, checkpoint: Checkpoint | None = None, device: str | torch.device | None = None
) -> tuple[MiniGPTConfig, Any, nn.Module]:
    """Load ``(config, tokenizer, model)`` from a package directory, checking every file first.

    Args:
        path: the package directory: an llm-lab package (with ``package.json``) or one in the spec's layout
            (``config.json``, ``tokenizer/``, ``checkpoints/best_val.pt`` holding a state dict).
        checkpoint: ``None`` for the package's weights (``model.safetensors``; ``best_val.pt`` in the spec's
            layout), or ``"best"`` / ``"last"`` for ``checkpoints/best_val.pt`` / ``checkpoints/last.pt`` (served
            from ``model.safetensors`` when it holds the same weights).
        device: where to put the model (default: CPU).

    Returns:
        The config, the tokenizer and the model in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: a half-written or damaged package (size or checksum), an unknown format version, a config
            with unknown keys, a changed tokenizer, a tokenizer/model vocabulary mismatch, a checkpoint holding
            Python objects, tensors missing, unexpected, of the wrong shape or dtype, or not finite. The message
            names the file.
    """
    path = Path(path)
    device = resolve_device(device)
    layout, manifest, config, tokenizer = _open_package(path)
    source = _weights_source(path, layout, manifest, checkpoint)
    state = load_state_dict_file(source)
    return config, tokenizer, _finish_model(config, state, source, device)


# --------------------------------------------------------------------------------------------- run directories


def _read_run_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint as a dict, through the trainer's reader (``weights_only=True``; errors name the file)."""
    ckpt = load_checkpoint(path, map_location="cpu")  # CheckpointError is a ValueError: one line on the CLI
    if not isinstance(ckpt.get("model"), dict):
        raise PackageError(f"{path}: not a trainer checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def _check_run_dir(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory (which must exist), as a dict; a replacement of it that a killed writer left
    half done is finished or rolled back first (quietly skipped where the directory cannot be written)."""
    with contextlib.suppress(OSError):
        recover_directory(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    run_json = run_dir / RUN_FILE
    if not run_json.is_file():
        raise PackageError(f"{run_json}: missing, so {run_dir} is not a run directory")
    run_config = read_json(run_json)
    if not isinstance(run_config, dict):
        raise PackageError(f"{run_json}: expected a JSON object with 'model', 'train', ... sections")
    return run_config


def _run_pieces(
    run_dir: Path, checkpoint: Checkpoint, tokenizer: Any = None
) -> tuple[MiniGPTConfig, Any, dict[str, Any], Path, dict[str, Any]]:
    run_config = _check_run_dir(run_dir)
    order = [checkpoint] + [k for k in CHECKPOINT_FILES if k != checkpoint]
    paths = [run_checkpoint_path(run_dir, k) for k in order]  # a bad `checkpoint` is a ValueError here
    ckpt_path = next((p for p in paths if p.is_file()), None)
    if ckpt_path is None:
        raise PackageError(
            f"{run_dir / CHECKPOINT_DIR}: no {BEST_FILE} or {LAST_FILE}; has the run saved a checkpoint?"
        )
    ckpt = _read_run_checkpoint(ckpt_path)
    # The checkpoint's own model config describes its tensors; run.json is the fallback.
    model_dict = ckpt.get("model_config") or run_config.get("model")
    if not isinstance(model_dict, dict):
        raise PackageError(f"{ckpt_path}: no model_config, and {run_dir / 'run.json'} has no 'model' section")
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
    """Load a package (llm-lab or spec layout), or a run directory (one with ``run.json``), whichever ``path`` is."""
    path = Path(path)
    with contextlib.suppress(OSError):
        recover_directory(path)
    if not path.exists():
        raise FileNotFoundError(f"no package or run directory at {path}")
    if (path / RUN_FILE).is_file() and not is_package(path):
        return load_run(path, checkpoint=checkpoint or "best", device=device)
    return load_model_package(path, checkpoint=checkpoint, device=device)


def package_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Turn a Trainer run directory into a package.

    The package's ``model.safetensors`` holds the best-validation weights (the last ones if the run never
    evaluated); both ``best_val.pt`` and ``last.pt`` are copied as plain state dicts (no optimizer state), their
    steps and losses recorded in the manifest. A ``best_val.pt`` that a kill left behind ``last.pt`` is repaired
    first (:func:`~llm_lab.core.train.checkpoint.reconcile_best`), so the package never ships stale best weights
    under a newer loss.

    Args:
        run_dir: the run directory (``run.json``, ``tokenizer/``, ``checkpoints/``).
        out: the package directory to write.
        overwrite: replace an existing package at ``out`` (only an llm-lab package holding only its own files).

    Returns:
        The package path.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    reconcile_best(run_dir)
    config, tokenizer, main_ckpt, main_path, run_config = _run_pieces(run_dir, "best")
    main = "best" if main_path == run_checkpoint_path(run_dir, "best") else "last"
    ckpts = {main: (main_path, main_ckpt)}
    for which in CHECKPOINT_FILES:
        p = run_checkpoint_path(run_dir, which)
        if which not in ckpts and p.is_file():
            ckpts[which] = (p, _read_run_checkpoint(p))
    checkpoints: dict[str, CheckpointEntry] = {}
    model = None
    for which, (ckpt_path, ckpt) in ckpts.items():
        model_config = ckpt.get("model_config")
        if model_config is not None and config_from_dict(MiniGPTConfig, model_config, where=str(ckpt_path)) != config:
            raise PackageError(f"{ckpt_path}: model_config differs from {main_path.name}")
        state = {k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
        m = _build_model(config)
        load_weights_into(m, state, ckpt_path)  # checks names, shapes, dtypes, finiteness
        checkpoints[CHECKPOINT_FILES[which]] = (checkpoint_state(m), _checkpoint_info(ckpt))
        if which == main:
            model = m
    assert model is not None
    # The training summary describes the whole run: the latest checkpoint knows the most.
    latest = ckpts.get("last", (main_path, main_ckpt))[1]
    summary = TrainingSummary(
        steps=latest.get("step"),
        tokens=latest.get("tokens_seen"),
        best_val_loss=latest.get("best_val_loss", main_ckpt.get("best_val_loss")),
    )
    return _write_package(
        out,
        config,
        tokenizer,
        weights=safetensors_state(model),
        weights_from=main,
        num_parameters=_num_parameters(model),
        checkpoints=checkpoints,
        summary=summary,
        source={"kind": "run", "run_config": run_config},
        overwrite=overwrite,
    )


def _weights_files(path: Path, layout: str, manifest: dict[str, Any] | None) -> list[str]:
    """Every weights file a package holds (relative paths): the ones a load reads and the ones it may skip."""
    if layout == "manifest":
        # Only names the manifest's (checked) file list holds: a crafted "checkpoints" entry never leaves the package.
        files = (manifest or {}).get("files") or {}
        listed = [name for name in (manifest or {}).get("checkpoints") or [] if name in files]
        return [name for name in (WEIGHTS_FILE, *listed) if name in files]
    checkpoint_dir = path / CHECKPOINT_DIR
    return sorted(
        p.relative_to(path).as_posix()
        for p in checkpoint_dir.rglob("*")
        if p.is_file() and not p.is_symlink() and p.suffix in _WEIGHTS_SUFFIXES
    )


# Weights files of a spec-layout package that inspect opens (pickle formats and safetensors).
_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def describe_package(path: str | Path) -> dict[str, Any]:
    """Check a package fully (every weights file, not only the one a load reads) and summarise it.

    Returns:
        A JSON-ready dict with ``path``, ``layout`` (``"manifest"`` or ``"spec"``: the spec's layout without a
        manifest), ``format_version``, ``library_version``, ``created``, ``config``, ``num_parameters``,
        ``num_non_embedding_parameters``, ``tokenizer`` (type, vocab size, special tokens), ``weights_from``,
        ``checkpoints``, ``checkpoint_info``, ``training`` and ``source`` (its kind only).

    Raises:
        PackageError: anything :func:`load_model_package` refuses, in any weights file of the package (a malicious
            pickle in a checkpoint that loading would never open is still a bad package).
    """
    path = Path(path)
    layout, manifest, config, tokenizer = _open_package(path)
    model = None
    for name in _weights_files(path, layout, manifest):
        state = load_state_dict_file(path / name)
        checked = _finish_model(config, state, path / name, None)
        model = model or checked
    if model is None:
        raise PackageError(f"{path}: holds no weights file")
    manifest = manifest or {}
    num_non_embedding = None
    with contextlib.suppress(TypeError):
        num_non_embedding = int(model.num_parameters(non_embedding=True))
    checkpoints = manifest.get("checkpoints") or [n for n in _weights_files(path, layout, None)]
    return {
        "path": str(path),
        "layout": layout,
        "format_version": manifest.get("format_version"),
        "library_version": manifest.get("library_version"),
        "created": manifest.get("created"),
        # For reading, not reloading: the resolved values (n_kv_head=4, attention_type="mha"), never null.
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "num_parameters": _num_parameters(model),
        "num_non_embedding_parameters": num_non_embedding,
        "tokenizer": {
            "type": manifest.get("tokenizer_type") or _tokenizer_type(tokenizer, path / TOKENIZER_DIR),
            "vocab_size": tokenizer.vocab_size,
            "eot_token_id": getattr(tokenizer, "eot_token_id", None),
            "special_tokens": dict(getattr(tokenizer, "special_tokens", {}) or {}),
        },
        "weights_from": manifest.get("weights_from", "best" if layout == "spec" else None),
        "checkpoints": checkpoints,
        "checkpoint_info": manifest.get("checkpoint_info", {}),
        "training": manifest.get("training", {}),
        "source": (manifest.get("source") or {}).get("kind"),
    }
