"""Byte-level helpers shared by the tokenizers: GPT-2's byte-to-unicode map, split patterns, exact UTF-8 round trips.

- ``bytes_to_unicode``: GPT-2's reversible map from the 256 byte values to printable characters, so that token byte
  strings can be written as text in ``vocab.json`` / ``merges.txt`` (a space becomes ``Ġ``, a newline ``Ċ``);
  ``token_to_unicode`` / ``token_from_unicode`` spell one token that way and back.
- ``PATTERNS``: the pre-tokenisation split regexes of GPT-2 and GPT-4 (cl100k), for the ``regex`` package.
- ``text_to_bytes`` / ``bytes_to_text``: UTF-8 that also carries lone surrogates (Python strings may hold them),
  so ``decode(encode(s)) == s`` for every ``str``, while bytes that are truly broken (an id sequence cut in the
  middle of a character) follow the caller's ``errors`` policy.
"""

from __future__ import annotations

import codecs
import functools
from typing import Literal

import regex

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "DecodeErrors",
    "bytes_to_text",
    "bytes_to_unicode",
    "check_coverage",
    "check_errors",
    "compile_pattern",
    "resolve_pattern",
    "is_byte_level_spelling",
    "text_to_bytes",
    "token_from_unicode",
    "token_to_unicode",
    "unicode_to_bytes",
]

# GPT-2's split: contractions, an optional space glued to the following run of letters / digits / other symbols,
# then whitespace; `\s+(?!\S)` leaves the last space of a run to prefix the next word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (cl100k_base): case-insensitive contractions, digits in groups of at most three, newlines kept apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

DecodeErrors = Literal["strict", "replace", "ignore", "backslashreplace"]
_DECODE_ERRORS = ("strict", "replace", "ignore", "backslashreplace")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte value to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, a few others) map to
    ``chr(256 + n)`` in byte order, so every token's bytes can be written as a whitespace-free string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def token_to_unicode(data: bytes) -> str:
    """A token's bytes spelled in GPT-2's byte-to-unicode alphabet (as ``vocab.json`` and ``merges.txt`` hold it)."""
    return data.decode("latin-1").translate(bytes_to_unicode())  # one character per byte (its ordinal), mapped in C


def token_from_unicode(token: str, where: str) -> bytes:
    """The bytes of a token spelled in GPT-2's alphabet; a character outside it is a ``ValueError`` naming ``where``."""
    table = unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError as exc:
        raise ValueError(
            f"{where}: unknown symbol {token!r}: character {exc.args[0]!r} is not in GPT-2's byte-to-unicode alphabet"
        ) from None


def is_byte_level_spelling(token: str) -> bool:
    """Whether every character of ``token`` belongs to GPT-2's byte-to-unicode alphabet."""
    table = unicode_to_bytes()
    return all(ch in table for ch in token)


def resolve_pattern(pattern: str) -> tuple[str, str]:
    """Return ``(name, regex)`` for a pattern given by name ("gpt2", "gpt4") or as a regex (name "custom")."""
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    for name, builtin in PATTERNS.items():
        if pattern == builtin:
            return name, builtin
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)} or a non-empty regex string, got {pattern!r}")
    if regex.fullmatch(r"[A-Za-z0-9_-]+", pattern):  # a bare word is a mistyped name, not a useful regex
        raise ValueError(f"unknown pattern name {pattern!r}; use one of {sorted(PATTERNS)} or a regex")
    compile_pattern(pattern)  # fail early with a clear message
    return "custom", pattern


@functools.cache
def compile_pattern(pattern_regex: str) -> regex.Pattern[str]:
    try:
        compiled = regex.compile(pattern_regex)
    except regex.error as exc:
        raise ValueError(f"pattern {pattern_regex!r} is not a valid regex for the `regex` package: {exc}") from exc
    if compiled.match(""):
        raise ValueError(f"pattern {pattern_regex!r} matches the empty string; every match must consume text")
    return compiled


def check_coverage(pattern_regex: str, text: str, pieces: list[str]) -> None:
    """Raise ``ValueError`` when ``pieces`` (the pattern's matches) skip characters of ``text``.

    ``findall`` silently drops what no alternative matches; the built-in patterns match every character, a custom
    one might not, and dropped text would break ``decode(encode(s)) == s``.
    """
    if sum(map(len, pieces)) == len(text):
        return
    pos = 0
    for match in compile_pattern(pattern_regex).finditer(text):
        if match.start() != pos:
            break
        pos = match.end()
    raise ValueError(
        f"pattern {pattern_regex!r} does not match the character {text[pos]!r} at position {pos}; a split pattern "
        "must match every character of the text (end it with a catch-all alternative such as `|\\s+|\\S`)"
    )


def text_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate becomes its 3-byte encoding (Python's "surrogatepass")."""
    return text.encode("utf-8", "surrogatepass")


def check_errors(errors: str) -> None:
    """Raise ``ValueError`` unless ``errors`` is a decode-error policy the tokenizers support."""
    if errors not in _DECODE_ERRORS:
        raise ValueError(f"errors must be one of {list(_DECODE_ERRORS)}, got {errors!r}")


def _is_encoded_surrogate(data: bytes, i: int) -> bool:
    # U+D800..U+DFFF encode as ED A0..BF 80..BF.
    return i + 2 < len(data) and data[i] == 0xED and 0xA0 <= data[i + 1] <= 0xBF and 0x80 <= data[i + 2] <= 0xBF


def _make_handler(fallback_name: str):
    fallback = codecs.lookup_error(fallback_name)

    def handler(exc: UnicodeError) -> tuple[str, int]:
        if isinstance(exc, UnicodeDecodeError) and _is_encoded_surrogate(exc.object, exc.start):
            data = exc.object
            code = ((data[exc.start] & 0x0F) << 12) | ((data[exc.start + 1] & 0x3F) << 6) | (data[exc.start + 2] & 0x3F)
            return chr(code), exc.start + 3
        return fallback(exc)

    return handler


@functools.cache
def _handler_name(errors: str) -> str:
    # Registered on first use (not at import): lone surrogates pass, anything else follows `errors`.
    name = f"llm_lab.surrogatepass+{errors}"
    codecs.register_error(name, _make_handler(errors))
    return name


def bytes_to_text(data: bytes, errors: str = "replace") -> str:
    """Decode UTF-8 produced by :func:`text_to_bytes`; bytes that are not valid UTF-8 follow ``errors``.

    Encoded lone surrogates always decode back to the surrogate (they only arise from a ``str`` that held one),
    so round trips are exact; ``errors`` decides what happens to genuinely broken sequences such as a multi-byte
    character cut in two: "strict" raises ``UnicodeDecodeError``, "replace" inserts U+FFFD, "ignore" drops them.
    """
    check_errors(errors)
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        if errors == "strict":
            raise
    return data.decode("utf-8", _handler_name(errors))
