"""Download public corpora by URL, checked against a known sha256 and size before they are kept.

Only corpora listed in :data:`DATASETS` are known. A download streams into a temporary file beside the target
while it is hashed; the file is renamed into place only when size and sha256 match, so a bad or interrupted
download never leaves a file behind. ``from_path`` copies a local file instead (machines without internet),
with the same check.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

from llm_lab.utils.io import atomic_write

__all__ = [
    "DATASETS",
    "TINYSTORIES",
    "TINYSTORIES_VALID",
    "TINY_SHAKESPEARE",
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "download_dataset",
    "corpus_candidates",
    "default_corpus_path",
    "download_tiny_shakespeare",
    "sha256_file",
]

_BLOCK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """A corpus file: where it lives, what it is called locally, and how to recognise it.

    ``size`` is None where only the sha256 is published (the hash alone decides then); ``separator`` is the line
    that separates the file's documents (pass it to ``data prepare --separator``), None for one document.
    """

    name: str
    url: str
    filename: str
    sha256: str
    size: int | None
    separator: str | None = None


TINY_SHAKESPEARE = RemoteFile(
    name="tiny_shakespeare",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    filename="tiny_shakespeare.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1_115_394,
)

# TinyStories (Eldan & Li, 2023), the GPT-4-written V2 files most small-model recipes train on; the hashes are the
# Git LFS sha256 the Hugging Face dataset roneneldan/TinyStories publishes for them.
_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES = RemoteFile(
    name="tinystories",
    url=_TINYSTORIES + "TinyStoriesV2-GPT4-train.txt",
    filename="TinyStoriesV2-GPT4-train.txt",
    sha256="6418d412de72888f52b5142c761ac21a582f7d1166f0bfbdb5f03ccfdec90443",
    size=None,  # 2.23 GB; the exact count is not published beside the hash
    separator="<|endoftext|>",
)
TINYSTORIES_VALID = RemoteFile(
    name="tinystories_valid",
    url=_TINYSTORIES + "TinyStoriesV2-GPT4-valid.txt",
    filename="TinyStoriesV2-GPT4-valid.txt",
    sha256="6874bae9a4c1a4e7edcf0e53b86c17817e9cf881fc75ff2368da457b80c0585d",
    size=22_502_601,
    separator="<|endoftext|>",
)

DATASETS: dict[str, RemoteFile] = {f.name: f for f in (TINY_SHAKESPEARE, TINYSTORIES, TINYSTORIES_VALID)}


class DownloadError(OSError):
    """The file could not be fetched (no network, HTTP error, timeout). ``str(e)`` is one line."""


class ChecksumError(ValueError):
    """The bytes fetched or copied are not the expected file (size or sha256 differ)."""


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _copy_checked(src: IO[bytes], target: Path, spec: RemoteFile, origin: str) -> None:
    """Stream ``src`` into ``target`` atomically; raise ChecksumError (and keep nothing) on a mismatch."""
    digest = hashlib.sha256()
    size = 0
    with atomic_write(target, "wb") as out:
        while block := src.read(_BLOCK):
            digest.update(block)
            size += len(block)
            if spec.size is not None and size > spec.size:
                # Stop early: a file larger than expected is not the one we want.
                raise ChecksumError(
                    f"{origin} is larger than the {spec.size:,} bytes of {spec.name}; nothing was saved"
                )
            out.write(block)
        if (spec.size is not None and size != spec.size) or digest.hexdigest() != spec.sha256:
            expected = f"{spec.size:,} bytes with sha256" if spec.size is not None else "sha256"
            raise ChecksumError(
                f"{origin} is not {spec.name}: {size:,} bytes with sha256 {digest.hexdigest()}, expected "
                f"{expected} {spec.sha256}; nothing was saved"
            )


def _matches(path: Path, spec: RemoteFile) -> bool:
    size_ok = spec.size is None or path.stat().st_size == spec.size
    return size_ok and sha256_file(path) == spec.sha256


def corpus_candidates(
    root: str | Path, name: str = TINY_SHAKESPEARE.name, *, cwd: str | Path | None = None
) -> list[Path]:
    """Where a known corpus is looked for, in order: the user's own copies first, then a shared one.

    1. ``data/FILE`` in the working directory (where ``llm-lab data download NAME`` puts it);
    2. ``root/data/FILE`` in the checkout ``root`` (the same folder when run from the checkout);
    3. ``root/../shared/data/FILE``, a data folder shared beside the checkout.

    Raises:
        ValueError: an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    root, filename = Path(root), DATASETS[name].filename
    here = Path.cwd() if cwd is None else Path(cwd)
    candidates = [here / "data" / filename, root / "data" / filename, root.parent / "shared" / "data" / filename]
    unique: list[Path] = []
    for path in candidates:
        if all(path.resolve() != seen.resolve() for seen in unique):
            unique.append(path)
    return unique


def default_corpus_path(
    root: str | Path, name: str = TINY_SHAKESPEARE.name, *, cwd: str | Path | None = None
) -> Path:
    """The corpus every script uses when no ``--data`` is given: the first of :func:`corpus_candidates` that
    exists, else the user's ``data/FILE`` (which may not exist; the caller says how to fetch it).

    Raises:
        ValueError: an unknown name.
    """
    candidates = corpus_candidates(root, name, cwd=cwd)
    return next((path for path in candidates if path.is_file()), candidates[0])


def _kept(target: Path, spec: RemoteFile) -> bool:
    """``True`` when ``target`` already is the file; ``False`` when nothing is there; raise when something else is."""
    if not target.exists() and not target.is_symlink():
        return False
    if target.is_file() and _matches(target, spec):
        return True
    raise FileExistsError(
        f"{target} exists and is not {spec.name} (its size or sha256 differ), so it is left as it is: move it away "
        "or give another --out"
    )


def download_dataset(
    name: str,
    out_dir: str | Path = "data",
    *,
    from_path: str | Path | None = None,
    url: str | None = None,
    timeout: float = 30.0,
    urlopen: Callable[..., Any] | None = None,
) -> Path:
    """Fetch a known corpus into ``out_dir`` and return its path, checking size and sha256.

    A file already in place with the right hash is kept as is (no network needed); any other file (or link) there is
    someone's own and is refused, untouched, before anything is fetched (the output rule of
    :mod:`llm_lab.utils.outputs`: only what llm-lab wrote and recognises, here by its hash, is ever replaced).

    Args:
        name: a key of :data:`DATASETS` (``"tiny_shakespeare"``).
        out_dir: where the file goes, as ``out_dir / spec.filename``.
        from_path: copy this local file instead of downloading.
        url: fetch from this URL (a mirror) instead of the canonical one; the hash is checked all the same.
        timeout: seconds to wait on the network before giving up.
        urlopen: ``urllib.request.urlopen`` or a stand-in with the same signature (tests).

    Raises:
        ValueError: an unknown name.
        ChecksumError: the fetched or copied bytes are not the expected file (nothing is saved).
        DownloadError: the network could not deliver the file; pass ``from_path`` on an offline machine.
        FileNotFoundError: ``from_path`` does not exist.
        FileExistsError: ``out_dir / spec.filename`` holds another file.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    target = Path(out_dir) / spec.filename
    if from_path is not None:
        source = Path(from_path)
        if not source.is_file():
            raise FileNotFoundError(f"--from file not found: {source}")
        if source.resolve() == target.resolve():
            # Copying a file onto itself: just check it.
            if not _matches(source, spec):
                raise ChecksumError(f"{source} is not {spec.name}: its size or sha256 differ from the expected")
            return target
        if _kept(target, spec):
            return target
        with open(source, "rb") as src:
            _copy_checked(src, target, spec, str(source))
        return target
    if _kept(target, spec):
        return target
    url = url or spec.url
    opener = urlopen or urllib.request.urlopen
    target.parent.mkdir(parents=True, exist_ok=True)  # so a bad out_dir is not reported as a network error
    try:
        with opener(url, timeout=timeout) as response:
            _copy_checked(response, target, spec, url)
    except ChecksumError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"could not download {spec.name} from {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"could not download {spec.name} from {url}: {e.reason}") from None
    except (TimeoutError, HTTPException, OSError) as e:
        raise DownloadError(f"could not download {spec.name} from {url}: {e or type(e).__name__}") from None
    return target


def download_tiny_shakespeare(
    out_dir: str | Path = "data",
    *,
    from_path: str | Path | None = None,
    url: str | None = None,
    timeout: float = 30.0,
    urlopen: Callable[..., Any] | None = None,
) -> Path:
    """Fetch tiny Shakespeare (1,115,394 bytes, sha256 86c4e6aa...) into ``out_dir``; see :func:`download_dataset`."""
    return download_dataset(
        TINY_SHAKESPEARE.name, out_dir, from_path=from_path, url=url, timeout=timeout, urlopen=urlopen
    )
