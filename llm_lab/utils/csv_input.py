"""CSV files the lab reads back (``metrics.csv``, result tables): UTF-8 text, one line per row, the header's fields.

A file edited by hand, cut short, or saved in another encoding would otherwise end in ``UnicodeDecodeError`` (with
a byte position, not a file or a line) or be read with its extra fields under a ``None`` key. :func:`read_csv_file`
refuses each with a ``ValueError`` that names the file and the line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

__all__ = ["read_csv_file"]


def read_csv_file(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows of a CSV file, each row with the line it starts on.

    A row with fewer fields than the header has ``None`` for the missing ones (as ``csv.DictReader`` gives: a row
    cut short by a kill during a write).

    Raises:
        FileNotFoundError: no file there.
        ValueError: not UTF-8 text, not CSV, or a row with more fields than the header; the message names the file
            and the line.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); expected UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = list(reader.fieldnames or ())
        ended = reader.line_num  # the line the previous record ended on
        for row in reader:
            line = ended + 1
            extra = row.get(None)  # type: ignore[call-overload]  # DictReader's key for fields past the header's
            if extra is not None:
                raise ValueError(f"{path}:{line}: {len(header) + len(extra)} fields, but the header has {len(header)}")
            rows.append((line, row))
            ended = reader.line_num
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not CSV ({e})") from None
    return header, rows
