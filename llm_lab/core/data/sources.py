"""Document sources: every input format a corpus can come from, read as a stream of documents.

``data prepare`` and ``tokenizer train`` see a corpus as documents, whatever files hold them:

    format     files                              one document is
    text       .txt and any other name            the whole file
    jsonl      .jsonl, .json (JSON lines)         one record's ``text_field`` (default "text")
    parquet    .parquet                           one row's ``text_field`` column, read a row group at a time
    datasets   a folder saved by ``save_to_disk``  one row's ``text_field`` (its Arrow files, read in batches)

Text and JSON lines may be compressed (``.gz``, ``.zst``: ``corpus.jsonl.zst``). :func:`resolve_inputs` turns the
user's ``--input`` values (files, directories, globs) into sources, in sorted order; :data:`SOURCES` is the only
list of formats. Each source streams: documents come as :class:`TextPiece` s of bounded size (a long text file is
cut at safe points, see :func:`iter_text_pieces`), so no format ever holds a whole file in memory.

Each source also counts what it read, for ``meta.json``: the bytes and sha256 of its files as they are on disk,
its documents and its empty documents (skipped).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

import regex

from llm_lab.utils.paths import path_kind

__all__ = [
    "COMPRESSIONS",
    "SOURCES",
    "DatasetsFolderSource",
    "DocumentSource",
    "JsonLinesSource",
    "ParquetSource",
    "TextFileSource",
    "TextPiece",
    "iter_text_pieces",
    "resolve_inputs",
]

READ_BYTES = 1 << 20  # bytes read per step: small enough to stream, large enough to keep encode() efficient
# A text file with no safe cut for this many characters is cut anyway (char tokenizers) or refused (BPE), so one
# endless line cannot grow memory without bound.
MAX_UNCUT_CHARS = 1 << 26

# Safe cuts for the built-in pre-tokenisation patterns (GPT-2's and cl100k's): just after a newline that ends a
# non-blank line, before a letter; or, failing that, before a space between two letters. At such a point every
# pattern splits anyway, so encoding the pieces equals encoding the whole text.
_LINE_CUT = regex.compile(r"(?r)(?<=\S\n)(?=\p{L})")
_WORD_CUT = regex.compile(r"(?r)(?<=\p{L})(?= \p{L})")


class TextPiece(NamedTuple):
    """A run of text from one document: ``starts_document`` marks the first piece of each document."""

    text: str
    starts_document: bool


def _last_cut(text: str, search_from: int, cut_anywhere: bool) -> int:
    """Index of the last safe cut in ``text[search_from:]`` (0 or -1 when there is none)."""
    match = _LINE_CUT.search(text, search_from)  # searched from the end: a cut is almost always near it
    cut = match.start() if match else -1
    if cut <= 0 and len(text) > 4 * READ_BYTES:  # a very long line: fall back to a space between words
        match = _WORD_CUT.search(text, search_from)
        cut = match.start() if match else -1
    if cut <= 0 and cut_anywhere and len(text) > READ_BYTES:
        cut = len(text)  # e.g. a char tokenizer: any cut is safe
    return cut


def iter_text_pieces(
    stream: IO[bytes], where: str, read_bytes: int = READ_BYTES, cut_anywhere: bool = False
) -> Iterator[str]:
    """Decode a UTF-8 byte stream into pieces of text cut only at safe points (see the module's cut rules).

    The pieces joined are exactly the stream's text (no newline translation), and encoding them one by one gives
    the ids of the whole text. ``cut_anywhere`` (a tokenizer whose ids do not depend on neighbours) lets a long
    text with no safe point be cut anywhere; otherwise more than :data:`MAX_UNCUT_CHARS` without one is an error.

    Raises:
        ValueError: the bytes are not UTF-8 text, hold a NUL byte (a binary file), or run too long without a cut.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    offset = 0
    searched = 0  # len(pending) at the last search
    while True:
        raw = stream.read(read_bytes)
        final = not raw
        try:
            text = decoder.decode(raw, final=final)
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not UTF-8 text (bad byte near offset {offset + e.start})") from None
        if "\0" in text:
            raise ValueError(
                f"{where} looks binary (a NUL byte near offset {offset + raw.find(0)}); give UTF-8 text, JSON lines, "
                "Parquet or a datasets folder"
            )
        offset += len(raw)
        pending += text
        if final:
            if pending:
                yield pending
            return
        # Text kept from the previous step had no safe cut; only its last 2 characters can start one now.
        cut = _last_cut(pending, max(0, searched - 2), cut_anywhere)
        searched = len(pending)
        if cut > 0:
            yield pending[:cut]
            pending = pending[cut:]
            searched = len(pending)
        elif len(pending) > MAX_UNCUT_CHARS:
            raise ValueError(
                f"{where} has {len(pending):,} characters with no line break or space between words, more than a "
                "BPE tokenizer can take in one piece; break its lines (or use the char tokenizer)"
            )


# --------------------------------------------------------------------------------------------------- compression


class _HashingReader:
    """A binary file that hashes and counts every byte read from it (the file as it is on disk)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:n])
        self.bytes_read += n
        return n

    def readable(self) -> bool:
        return True


class _CheckedDecompressor:
    """Wraps a decompressing reader so that a corrupt file is a ``ValueError`` naming it and its format."""

    def __init__(self, reader: IO[bytes], where: str, kind: str, errors: tuple[type[BaseException], ...]) -> None:
        self._reader, self._where, self._kind, self._errors = reader, where, kind, errors

    def read(self, size: int = -1) -> bytes:
        try:
            return self._reader.read(size)
        except self._errors as e:
            raise ValueError(f"{self._where} is not a valid {self._kind} file ({e})") from None


def _gzip_reader(raw: _HashingReader, where: str) -> IO[bytes]:
    errors = (OSError, EOFError, zlib.error)
    return _CheckedDecompressor(gzip.GzipFile(fileobj=raw, mode="rb"), where, "gzip", errors)


def _zstd_reader(raw: _HashingReader, where: str) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise ValueError(f"{where} is zstd-compressed; install zstandard (pip install zstandard)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return _CheckedDecompressor(reader, where, "zstd", (zstandard.ZstdError, OSError))


#: Compression suffix -> a function wrapping the raw (hashing) reader in a decompressing one.
COMPRESSIONS = {".gz": _gzip_reader, ".zst": _zstd_reader}


# ------------------------------------------------------------------------------------------------------ sources


@dataclass
class DocumentSource:
    """One input (a file, or a datasets folder) read as documents. Subclasses add one format each.

    Attributes:
        path: the input as the user named it (after expanding directories and globs).
        text_field: the record field that holds a document's text (record formats only).
        separator: text files only: the text between two documents (TinyStories' ``<|endoftext|>`` lines), dropped
            with one newline right after it; None: the file is one document.
        bytes_read, sha256: the input's files as they are on disk (complete once iteration ends).
        documents, empty_documents: documents read with text, and empty ones (skipped).
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]

    path: Path
    text_field: str = "text"
    separator: str | None = None
    bytes_read: int = field(default=0, init=False)
    sha256: str = field(default="", init=False)
    documents: int = field(default=0, init=False)
    empty_documents: int = field(default=0, init=False)

    def size(self) -> int:
        """Bytes on disk (what a progress bar counts)."""
        return self.path.stat().st_size

    def pieces(self, read_bytes: int = READ_BYTES, cut_anywhere: bool = False) -> Iterator[TextPiece]:
        """The documents' text as pieces, in order; empty documents are counted and skipped."""
        self.bytes_read, self.documents, self.empty_documents = 0, 0, 0
        for text in self._texts(read_bytes, cut_anywhere):
            if text:
                self.documents += 1
                yield TextPiece(text, True)
            else:
                self.empty_documents += 1

    def _texts(self, read_bytes: int, cut_anywhere: bool) -> Iterator[str]:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """This source's entry in ``meta.json`` (tokens are added by the caller)."""
        return {
            "path": str(self.path),
            "format": self.name,
            "bytes": self.bytes_read,
            "sha256": self.sha256,
            "documents": self.documents,
            "empty_documents": self.empty_documents,
        }

    # -- helpers for the formats

    def _open_stream(self) -> tuple[_HashingReader, IO[bytes], IO[bytes]]:
        """``(raw, stream, file)``: the hashing reader, the (decompressed) stream to parse, the open file."""
        f = open(self.path, "rb")  # noqa: SIM115 (closed by the caller)
        raw = _HashingReader(f)
        compression = COMPRESSIONS.get(self.path.suffix.lower())
        return raw, (compression(raw, str(self.path)) if compression else raw), f

    def _finish(self, raw: _HashingReader) -> None:
        while raw.read(READ_BYTES):  # a decompressor may stop before the end: hash the whole file
            pass
        self.bytes_read, self.sha256 = raw.bytes_read, raw.sha256.hexdigest()

    def _hash_files(self, files: Sequence[Path]) -> None:
        digest = hashlib.sha256()
        total = 0
        for path in files:
            with open(path, "rb") as f:
                while chunk := f.read(READ_BYTES):
                    digest.update(chunk)
                    total += len(chunk)
        self.bytes_read, self.sha256 = total, digest.hexdigest()

    def _field_text(self, value: Any, record: int, where: str) -> str:
        if isinstance(value, str):
            return value
        kind = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: record {record}: field {self.text_field!r} is {kind}, not a string")


@dataclass
class TextFileSource(DocumentSource):
    """A UTF-8 text file: one document, streamed in pieces cut at safe points."""

    name: ClassVar[str] = "text"
    suffixes: ClassVar[tuple[str, ...]] = (".txt",)

    def pieces(self, read_bytes: int = READ_BYTES, cut_anywhere: bool = False) -> Iterator[TextPiece]:
        self.bytes_read, self.documents, self.empty_documents = 0, 0, 0
        raw, stream, f = self._open_stream()
        # With a separator a cut may not fall inside it: safe cuts never do (they precede a letter after a line
        # end, or a space between letters); the cut-anywhere fallback could, so it is off then.
        cut_anywhere = cut_anywhere and self.separator is None
        split = regex.compile(regex.escape(self.separator) + r"\n?").split if self.separator else None
        with f:
            started = False  # a document is open and has text
            for text in iter_text_pieces(stream, str(self.path), read_bytes, cut_anywhere):
                parts = split(text) if split else [text]
                for k, part in enumerate(parts):
                    if k > 0:  # a separator ended the open document
                        self._close_document(started)
                        started = False
                    if part:
                        yield TextPiece(part, not started)
                        started = True
            self._close_document(started)
            self._finish(raw)

    def _close_document(self, had_text: bool) -> None:
        if had_text:
            self.documents += 1
        else:
            self.empty_documents += 1


@dataclass
class JsonLinesSource(DocumentSource):
    """JSON lines: one object per line, its ``text_field`` one document; blank lines are skipped."""

    name: ClassVar[str] = "jsonl"
    suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".json", ".ndjson")

    def _texts(self, read_bytes: int, cut_anywhere: bool) -> Iterator[str]:
        where = str(self.path)
        raw, stream, f = self._open_stream()
        with f:
            record = 0
            for line in _byte_lines(stream, read_bytes):
                if not line.strip():
                    continue
                record += 1
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{where}: record {record} is not UTF-8 text ({e.reason})") from None
                yield self._record_text(text, record, where)
            self._finish(raw)

    def _record_text(self, line: str, record: int, where: str) -> str:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if record == 1 and "\0" in line:
                raise ValueError(f"{where} looks binary (a NUL byte in its first record); give JSON lines") from None
            raise ValueError(f"{where}: record {record} is not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            hint = "; the file is one JSON array: write one object per line" if record == 1 and isinstance(
                obj, list) else ""
            raise ValueError(f"{where}: record {record} is a JSON {type(obj).__name__}, not an object{hint}")
        if self.text_field not in obj:
            fields = ", ".join(sorted(obj)) or "none"
            raise ValueError(
                f"{where}: record {record} has no field {self.text_field!r} (its fields: {fields}); pick one with "
                "--text-field"
            )
        return self._field_text(obj[self.text_field], record, where)


def _byte_lines(stream: IO[bytes], read_bytes: int) -> Iterator[bytes]:
    """The lines of a byte stream (split at b"\\n" only, as JSON lines are), without their line ends."""
    parts: list[bytes] = []  # the current line's bytes so far (a list: a long line is not copied over and over)
    while chunk := stream.read(read_bytes):
        if b"\n" not in chunk:
            parts.append(chunk)
            continue
        lines = chunk.split(b"\n")
        lines[0] = b"".join([*parts, lines[0]])
        parts = [lines.pop()]
        yield from lines
    if tail := b"".join(parts):
        yield tail


def _check_text_column(schema: Any, text_field: str, where: str) -> None:
    import pyarrow as pa

    if text_field not in schema.names:
        raise ValueError(
            f"{where} has no column {text_field!r} (its columns: {', '.join(schema.names) or 'none'}); pick one "
            "with --text-field"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{where}: column {text_field!r} holds {kind}, not strings")


def _column_texts(source: DocumentSource, column: Any, first_record: int, where: str) -> Iterator[str]:
    for k, value in enumerate(column.to_pylist()):
        yield source._field_text(value, first_record + k, where)


@dataclass
class ParquetSource(DocumentSource):
    """A Parquet file: one row's ``text_field`` per document, read one row group at a time (pyarrow)."""

    name: ClassVar[str] = "parquet"
    suffixes: ClassVar[tuple[str, ...]] = (".parquet",)

    def _texts(self, read_bytes: int, cut_anywhere: bool) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        where = str(self.path)
        try:
            with pq.ParquetFile(self.path) as parquet:
                _check_text_column(parquet.schema_arrow, self.text_field, where)
                record = 1
                for group in range(parquet.num_row_groups):
                    column = parquet.read_row_group(group, columns=[self.text_field]).column(0)
                    yield from _column_texts(self, column, record, where)
                    record += len(column)
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{where} is not a readable Parquet file ({str(e).splitlines()[0]})") from None
        self._hash_files([self.path])


@dataclass
class DatasetsFolderSource(DocumentSource):
    """A folder written by Hugging Face ``datasets``' ``save_to_disk`` (one split): its Arrow files, in order."""

    name: ClassVar[str] = "datasets"
    suffixes: ClassVar[tuple[str, ...]] = ()
    MARKERS: ClassVar[tuple[str, ...]] = ("state.json", "dataset_info.json")

    @classmethod
    def recognises(cls, directory: Path) -> bool:
        return all((directory / name).is_file() for name in cls.MARKERS) or (directory / "dataset_dict.json").is_file()

    def files(self) -> list[Path]:
        if (self.path / "dataset_dict.json").is_file():
            raise ValueError(
                f"{self.path} is a DatasetDict folder (several splits); give one split's folder, e.g. "
                f"{self.path / 'train'}"
            )
        state = json.loads((self.path / "state.json").read_text(encoding="utf-8"))
        listed = state.get("_data_files") if isinstance(state, dict) else None
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"{self.path / 'state.json'} lists no data files (no \"_data_files\")")
        files = []
        for entry in listed:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or Path(name).name != name:
                raise ValueError(f"{self.path / 'state.json'} names {name!r}, not a file in the folder")
            files.append(self.path / name)
        return files

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def _texts(self, read_bytes: int, cut_anywhere: bool) -> Iterator[str]:
        import pyarrow as pa

        files = self.files()
        record = 1
        for path in files:
            where = str(path)
            try:
                with pa.memory_map(str(path)) as source:
                    reader = pa.ipc.open_stream(source)
                    _check_text_column(reader.schema, self.text_field, where)
                    for batch in reader:
                        column = batch.column(self.text_field)
                        yield from _column_texts(self, column, record, where)
                        record += len(column)
            except pa.ArrowException as e:
                raise ValueError(f"{where} is not a readable Arrow file ({str(e).splitlines()[0]})") from None
        self._hash_files(files)


#: Every file format, by name: the only list of them. A datasets folder is recognised by its marker files.
SOURCES: dict[str, type[DocumentSource]] = {
    cls.name: cls for cls in (TextFileSource, JsonLinesSource, ParquetSource, DatasetsFolderSource)
}


def _source_class(path: Path) -> type[DocumentSource]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] in ParquetSource.suffixes:
            raise ValueError(f"{path}: a compressed Parquet file cannot be read by row group; use Parquet's own "
                             "compression (zstd, snappy) and drop the outer one")
    last = suffixes[-1] if suffixes else ""
    return next((cls for cls in SOURCES.values() if last in cls.suffixes), TextFileSource)


def _check_regular(path: Path) -> None:
    kind = path_kind(path)
    if kind is None:
        raise FileNotFoundError(f"input file not found: {path}")
    if kind not in ("a regular file", "a directory"):
        raise ValueError(f"--input {path} is {kind}, not a regular file; give files, folders or globs")


def _directory_files(directory: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / name for name in files if not name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def _expand(path: Path, text_field: str, separator: str | None = None) -> list[DocumentSource]:
    _check_regular(path)
    if path.is_dir():
        if DatasetsFolderSource.recognises(path):
            source = DatasetsFolderSource(path, text_field)
            source.files()  # refuse a DatasetDict or a broken state.json now, before any work
            return [source]
        files = _directory_files(path)
        if not files:
            raise ValueError(f"--input {path} is a folder with no files in it")
        return [source for f in files for source in _expand(f, text_field, separator)]
    return [_source_class(path)(path, text_field, separator)]


def resolve_inputs(
    inputs: Sequence[str | os.PathLike], text_field: str = "text", separator: str | None = None
) -> list[DocumentSource]:
    """The sources named by ``--input`` values, in order: files, folders (every file inside, sorted by path, or a
    ``datasets`` folder) and globs (``data/*.parquet``, ``**`` recursive; matches sorted). ``separator`` splits
    text files into documents (see :class:`DocumentSource`).

    Raises:
        ValueError: no inputs, a glob matching nothing, a folder with no files, a FIFO, a device or a socket.
        FileNotFoundError: a named file that does not exist.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no input files given")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field must be a non-empty field name, got {text_field!r}")
    if separator is not None and (not isinstance(separator, str) or not separator.strip() or "\n" in separator):
        raise ValueError(f"separator must be text on one line, got {separator!r}")
    sources: list[DocumentSource] = []
    for spec in inputs:
        path = Path(spec)
        if not path.exists() and not path.is_symlink() and glob.has_magic(str(spec)):
            matches = sorted(glob.glob(str(spec), recursive=True))
            if not matches:
                raise ValueError(f"--input {spec!r} matches no file")
            for match in matches:
                sources += _expand(Path(match), text_field, separator)
        else:
            sources += _expand(path, text_field, separator)
    return sources
