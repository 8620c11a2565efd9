"""The on-disk layout of a model package, and the checks that decide whether a directory is one.

A package is a directory::

    <package>/
      package.json          manifest (see below), written last
      config.json           the MiniGPTConfig as ``config_to_dict`` writes it (derived head values null)
      model.safetensors     the weights (loaded first: safetensors cannot execute code)
      tokenizer/            ``tokenizer.save(...)`` output (vocab.json + merges.txt for BPE, the vocabulary for chars)
      checkpoints/
        best_val.pt         the model's plain state_dict (``model.load_state_dict(torch.load(p, weights_only=True))``)
        last.pt             (optional) the state_dict at the end of training

The manifest (format version 2) holds ``format`` (``"llm-lab-package"``), ``format_version``, ``library_version``,
``created``, the tokenizer's type, vocabulary size and fingerprint, ``num_parameters``, ``weights_from`` (which
checkpoint ``model.safetensors`` holds), ``checkpoints`` (their paths) and ``checkpoint_info`` (each one's step,
tokens and best validation loss), a ``training`` summary, a machine-independent ``source``, ``files`` (every file's
size and sha256) and ``"complete": true``. Version 1 packages (checkpoints holding ``{"model": ..., "step": ...}``
dicts, sizes without checksums) still load.

A directory in the spec's layout (``config.json``, ``tokenizer/``, ``checkpoints/best_val.pt``, no manifest) loads
too: :func:`package_layout` tells the two apart. A package is built beside its final path and swapped in
(:mod:`llm_lab.utils.dirswap`), so a crash never leaves a half-written package at the path; the manifest's checksums
catch damage that happens afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from llm_lab.core.train.checkpoint import BEST_FILE, CHECKPOINT_DIR, FILES, LAST_FILE, RUN_FILE
from llm_lab.utils.dirlock import refuse_symlink
from llm_lab.utils.dirswap import unexpected_files
from llm_lab.utils.errors import short_list
from llm_lab.utils.json_input import loads_strict

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
    "check_replaceable",
    "file_record",
    "is_package",
    "package_layout",
    "read_json",
    "read_manifest",
    "safe_relative_path",
    "short_list",
]

PACKAGE_FORMAT = "llm-lab-package"
PACKAGE_FORMAT_VERSION = 2
# Manifest versions this llm-lab reads: 1 (checkpoints as dicts, sizes only) and 2 (plain state dicts, sha256).
READABLE_FORMAT_VERSIONS = (1, 2)

MANIFEST_FILE = "package.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/{BEST_FILE}"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/{LAST_FILE}"

# Which file holds the weights for each value of ``load_model_package(..., checkpoint=...)``.
CHECKPOINT_FILES: dict[str, str] = {which: f"{CHECKPOINT_DIR}/{name}" for which, name in FILES.items()}


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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PackageError(f"{path}: not valid JSON (not UTF-8 text: {e}){damaged}") from None
    try:
        return loads_strict(text, what=str(path))
    except ValueError as e:
        raise PackageError(f"{e}{damaged}") from None


def is_package(path: str | Path) -> bool:
    """True if ``path`` is a directory with a package manifest (complete or not)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def _spec_layout_missing(path: Path) -> list[str]:
    """What a directory lacks to be a package in the spec's layout (empty: it is one)."""
    wanted = {CONFIG_FILE: Path.is_file, f"{TOKENIZER_DIR}/": Path.is_dir, BEST_CHECKPOINT: Path.is_file}
    return [name for name, check in wanted.items() if not check(path / name.rstrip("/"))]


def package_layout(path: str | Path) -> str:
    """``"manifest"`` for a directory with ``package.json``, ``"spec"`` for the spec's layout without one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: neither (the message says what is missing, and points a run directory at
            ``package create``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"package not found: {path}")
    if not path.is_dir():
        raise PackageError(f"{path}: not a directory; a package is a directory with {MANIFEST_FILE}")
    if is_package(path):
        return "manifest"
    missing = _spec_layout_missing(path)
    if not missing:
        return "spec"
    hint = ""
    if (path / RUN_FILE).is_file():
        hint = f"; it looks like a run directory: `llm-lab package create {path} OUT` makes a package from it"
    raise PackageError(
        f"{path / MANIFEST_FILE}: missing, so {path} is not a complete package, nor one in the spec's layout "
        f"(missing {', '.join(missing)}){hint}"
    )


def safe_relative_path(name: Any, where: str | Path) -> str:
    """``name`` if it is a relative POSIX path that stays inside its directory, else a :class:`PackageError`.

    Absolute paths, ``..`` components, backslashes and empty names are refused, so a listed name never reaches
    (or reveals anything about) files outside the directory.
    """
    pure = PurePosixPath(name) if isinstance(name, str) else None
    if (
        pure is None
        or not name
        or "\\" in name
        or "\0" in name
        or pure.is_absolute()
        or any(part in ("..", "") for part in name.split("/"))
        or (len(name) > 1 and name[1] == ":")
    ):
        raise PackageError(f"{where}: {name!r} is not a path inside the directory; refusing it")
    return name


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What the manifest records about one file: ``{"size": bytes, "sha256": hex}``."""
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def _regular_file(directory: Path, name: str, manifest_path: Path) -> Path:
    """``directory/name`` if it is a regular file inside ``directory`` (no symbolic link on the way)."""
    file = directory / name
    current = directory
    for part in name.split("/"):
        current = current / part
        if current.is_symlink():
            raise PackageError(
                f"{file}: a symbolic link (listed in {manifest_path.name}); a package holds only regular files"
            )
    if not file.is_file():
        raise PackageError(f"{file}: missing from the package (listed in {manifest_path.name})")
    return file


def manifest_files(manifest: dict[str, Any], manifest_path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` as ``{name: {"size": int, "sha256": hex or None}}`` (version 1 has sizes only)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise PackageError(f"{manifest_path}: 'files' must map each file to its size and sha256")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in files.items():
        safe_relative_path(name, manifest_path)
        if manifest["format_version"] == 1 and isinstance(entry, int) and not isinstance(entry, bool):
            out[name] = {"size": entry, "sha256": None}
            continue
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise PackageError(f'{manifest_path}: files[{name!r}] must be {{"size": bytes, "sha256": hex}}')
        out[name] = {"size": entry["size"], "sha256": entry["sha256"]}
    return out


def read_manifest(path: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Read and check ``package.json``: the format, its version, the completion marker, file sizes and checksums.

    Args:
        path: the package directory.
        check_files: also check that every file the manifest lists is a regular file inside the package with the
            recorded size and (version 2) sha256.

    Returns:
        The manifest as a dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackageError: not a package, an unknown format version, a half-written package, a listed path outside the
            package or through a symbolic link, a missing, truncated or modified file. The message names the file.
    """
    path = Path(path)
    package_layout(path)  # not found / not a directory / no manifest (with what is missing)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path}: missing; this is a spec-layout package, which has no manifest")
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
    if version not in READABLE_FORMAT_VERSIONS:
        raise PackageError(f"{manifest_path}: unknown format_version {version}")
    if manifest.get("complete") is not True:
        raise PackageError(
            f"{manifest_path}: the package is not marked complete; it was half-written (a crash during saving?). "
            "Save it again."
        )
    checkpoints = manifest.get("checkpoints", [])
    listed = manifest_files(manifest, manifest_path)
    if not isinstance(checkpoints, list) or any(name not in listed for name in checkpoints):
        raise PackageError(f"{manifest_path}: 'checkpoints' must list files that 'files' holds, got {checkpoints!r}")
    if check_files:
        for name, record in listed.items():
            file = _regular_file(path, name, manifest_path)
            actual = file.stat().st_size
            if actual != record["size"]:
                raise PackageError(
                    f"{file}: {actual} bytes, but {MANIFEST_FILE} records {record['size']}; the file is truncated or "
                    "was replaced after the package was written"
                )
            if record["sha256"] is not None and sha256_of(file) != record["sha256"]:
                raise PackageError(
                    f"{file}: its sha256 differs from the one {MANIFEST_FILE} records; the file was corrupted or "
                    "modified after the package was written"
                )
    return manifest


def check_replaceable(path: str | Path) -> None:
    """Refuse to replace ``path`` unless it is empty or an llm-lab package holding only the files it lists.

    A ``package.json`` of someone else's (a Node project), a manifest without our format marker or with a version
    this llm-lab does not know, or any file the manifest does not list, means the directory is not (only) ours.

    Raises:
        FileExistsError: with one line naming what was found.
    """
    path = Path(path)
    refuse_symlink(path)
    if path.is_file():
        raise FileExistsError(f"{path} exists and is a file; a package is a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return
    refuse = f"{path} is not an llm-lab package; refusing to replace it"
    manifest_path = path / MANIFEST_FILE
    if manifest_path.is_symlink() or not manifest_path.is_file():
        found = sorted(p.name for p in path.iterdir())
        raise FileExistsError(f"{refuse} (it holds {short_list(found, 4)} and no {MANIFEST_FILE})")
    try:
        manifest = loads_strict(manifest_path.read_bytes(), what=str(manifest_path))
    except (ValueError, OSError):
        raise FileExistsError(f"{refuse} (its {MANIFEST_FILE} is not an llm-lab manifest)") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != PACKAGE_FORMAT
        or manifest.get("format_version") not in READABLE_FORMAT_VERSIONS
    ):
        raise FileExistsError(f"{refuse} (its {MANIFEST_FILE} is not an llm-lab manifest)")
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    foreign = unexpected_files(path, [*files, MANIFEST_FILE])
    if foreign:
        raise FileExistsError(
            f"{path} holds files its {MANIFEST_FILE} does not list ({short_list(foreign, 4)}); refusing to replace it "
            "(move them out first)"
        )
