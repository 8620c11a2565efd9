"""The on-disk layout of a model package, and the checks that decide whether a directory is one.

A package is a directory::

    <package>/
      package.json          manifest: format version, tokenizer type, library version, training summary,
                            the size of every file, and "complete": true (written last)
      config.json           the MiniGPTConfig, ``dataclasses.asdict`` verbatim
      model.safetensors     the weights (loaded first: safetensors cannot execute code)
      tokenizer/            ``tokenizer.save(...)`` output (vocab.json + merges.txt for BPE, the vocabulary for chars)
      checkpoints/
        best_val.pt         {"format_version", "model_config", "model": state_dict, "step", "tokens_seen", ...}
        last.pt             (optional) the weights at the end of training

A package is written into a hidden temporary directory beside its final path and renamed into place, and its
manifest carries ``"complete": true`` and the size of every file, so a package half-written by a crash (or
truncated by an interrupted copy) is refused with an error naming the file, never half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BEST_CHECKPOINT",
    "CONFIG_FILE",
    "LAST_CHECKPOINT",
    "MANIFEST_FILE",
    "PACKAGE_FORMAT",
    "PACKAGE_FORMAT_VERSION",
    "TOKENIZER_DIR",
    "WEIGHTS_FILE",
    "PackageError",
    "TrainingSummary",
    "is_package",
    "read_json",
    "read_manifest",
]

PACKAGE_FORMAT = "llm-lab-package"
PACKAGE_FORMAT_VERSION = 1

MANIFEST_FILE = "package.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best_val.pt"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"

# Which file holds the weights for each value of ``load_model_package(..., checkpoint=...)``.
CHECKPOINT_FILES: dict[str, str] = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}


class PackageError(ValueError):
    """A package (or run directory, or HF directory) that cannot be loaded or written; the message names the file.

    A ``ValueError``, so the CLI prints it as a one-line error with exit code 2.
    """


@dataclass
class TrainingSummary:
    """What ``package.json`` records about the training that produced the weights.

    Attributes:
        steps: optimizer steps taken.
        tokens: training tokens seen.
        best_val_loss: the lowest validation loss seen (nats per token), if evaluated.
    """

    steps: int | None = None
    tokens: int | None = None
    best_val_loss: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainingSummary:
        data = data or {}
        return cls(steps=data.get("steps"), tokens=data.get("tokens"), best_val_loss=data.get("best_val_loss"))


def read_json(path: Path, *, damaged: str = "") -> Any:
    """The JSON in ``path``; a file that is not UTF-8 JSON is a :class:`PackageError` naming it.

    Args:
        path: the file (its existence is the caller's check, with the caller's message).
        damaged: appended to the error message, e.g. ``"; the package is damaged"``.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e}){damaged}") from None


def is_package(path: str | Path) -> bool:
    """True if ``path`` is a directory with a package manifest (complete or not)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(path: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Read and check ``package.json``: the format, its version, the completion marker and the file sizes.

    Args:
        path: the package directory.
        check_files: also check that every file the manifest lists exists with the recorded size.

    Returns:
        The manifest as a dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: not a package, an unknown format version, a half-written package, a missing or truncated
            file. The message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"package not found: {path}")
    if not path.is_dir():
        raise PackageError(f"{path}: not a directory; a package is a directory with {MANIFEST_FILE}")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        hint = ""
        if (path / "run.json").is_file():
            hint = f"; it looks like a run directory: `llm-lab package create {path} OUT` makes a package from it"
        raise PackageError(
            f"{manifest_path}: missing, so {path} is not a complete package (a save interrupted by a crash "
            f"leaves no manifest){hint}"
        )
    manifest = read_json(manifest_path, damaged="; the package is damaged")
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{manifest_path}: not an llm-lab package manifest (expected format {PACKAGE_FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PackageError(f"{manifest_path}: format_version must be an integer, got {version!r}")
    if version > PACKAGE_FORMAT_VERSION:
        raise PackageError(
            f"{manifest_path}: format_version {version} is newer than this llm-lab understands "
            f"(up to {PACKAGE_FORMAT_VERSION}); upgrade llm-lab to load it"
        )
    if version < 1:
        raise PackageError(f"{manifest_path}: unknown format_version {version}")
    if manifest.get("complete") is not True:
        raise PackageError(
            f"{manifest_path}: the package is not marked complete; it was half-written (a crash during saving?). "
            "Save it again."
        )
    if check_files:
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise PackageError(f"{manifest_path}: 'files' must map each file to its size in bytes")
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                raise PackageError(f"{file}: missing from the package (listed in {MANIFEST_FILE})")
            actual = file.stat().st_size
            if actual != size:
                raise PackageError(
                    f"{file}: {actual} bytes, but {MANIFEST_FILE} records {size}; the file is truncated or was "
                    "replaced after the package was written"
                )
    return manifest
