"""Small table helpers shared by the benchmarks and experiments: CSV files and markdown tables.

Rows are plain dicts; a missing or ``None`` value is an empty CSV cell and a ``-`` in markdown.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_lab.utils.csv_input import read_csv_file
from llm_lab.utils.io import atomic_write_text


def _columns_of(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` to ``path`` as CSV (atomically); ``columns`` fixes the order (default: first seen)."""
    columns = _columns_of(rows, columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV file into a list of dicts of strings (``ValueError`` naming the file and line if it is not UTF-8
    CSV; :func:`llm_lab.utils.csv_input.read_csv_file`)."""
    return [row for _, row in read_csv_file(path)[1]]


def format_value(value: Any, digits: int = 4) -> str:
    """A short human-readable cell: floats to ``digits`` significant figures, ``None``/NaN as ``-``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    digits: int = 4,
) -> str:
    """Render ``rows`` as a GitHub markdown table (also readable in a terminal).

    Args:
        rows: one dict per row.
        columns: which keys, in which order (default: every key, first seen first).
        headers: display names for some columns (default: the key).
        digits: significant figures for floats.
    """
    columns = _columns_of(rows, columns)
    headers = dict(headers or {})
    header_cells = [headers.get(c, c) for c in columns]
    body = [[format_value(row.get(c), digits) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header_cells)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    out = [line(header_cells), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in body)
    return "\n".join(out) + "\n"
