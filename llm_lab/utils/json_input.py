"""Strict JSON for input the lab did not write itself: config files, request bodies, manifests, meta files.

Python's ``json.loads`` is lenient in three ways that hurt here:

* a repeated key silently keeps the last value (``{"lr": 1e-3, "lr": 3.0}`` trains with 3.0);
* ``NaN`` and ``Infinity`` are accepted although they are not JSON;
* deep nesting (``[[[[...]]]]`` 100,000 levels) ends in ``RecursionError`` instead of a clean error.

:func:`loads_strict` refuses all three with a ``ValueError`` that names where the text came from. The nesting
depth is checked by a linear scan *before* parsing, so no input can reach the recursion limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "load_json_file", "loads_strict"]

# Deep enough for every file and request the lab reads (its deepest is 4 levels), far below Python's recursion limit.
MAX_JSON_DEPTH = 64


def _check_depth(text: str, max_depth: int, what: str) -> None:
    """Raise ``ValueError`` if brackets outside strings nest deeper than ``max_depth``."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"{what}: JSON nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1


def _no_duplicates(what: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"{what}: duplicate key {key!r} in JSON (each key may appear once per object)")
            result[key] = value
        return result

    return hook


def _no_constant(what: str):
    def hook(name: str) -> Any:
        raise ValueError(f"{what}: {name} is not valid JSON (use a number or null)")

    return hook


def loads_strict(text: str | bytes, *, what: str = "JSON", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text, refusing duplicate keys, ``NaN``/``Infinity`` and nesting deeper than ``max_depth``.

    Args:
        text: the JSON document (bytes are decoded as UTF-8).
        what: names the source in error messages (a file path, ``"request body"``).
        max_depth: the deepest nesting of arrays and objects allowed.

    Raises:
        ValueError: invalid JSON (with line and column), a duplicate key, a non-finite constant, too deep.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}: not UTF-8 text (byte {e.start})") from None
    _check_depth(text, max_depth, what)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(what), parse_constant=_no_constant(what))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def load_json_file(path: str | Path, *, what: str | None = None, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read and parse a JSON file with :func:`loads_strict`; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what or path}: file not found") from None
    return loads_strict(data, what=what or str(path), max_depth=max_depth)
