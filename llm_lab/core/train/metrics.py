"""The run's ``metrics.csv``: one row per logged step, appended and flushed as training goes.

Floats are written with ``repr`` (the shortest text that reads back to the same float), so two runs can be
compared bit for bit from their CSVs. Resuming from step ``s`` first drops the rows after ``s`` (written after
the checkpoint by the run that was interrupted), rewriting the file atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from llm_lab.utils.csv_input import read_csv_file
from llm_lab.utils.io import atomic_write_text

__all__ = ["METRICS_COLUMNS", "MetricsLog", "read_metrics"]

METRICS_COLUMNS: tuple[str, ...] = (
    "step",
    "tokens",
    "lr",
    "train_loss",
    "val_loss",
    "grad_norm",
    "tokens_per_second",
    "mfu",
    "elapsed_s",
)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings (empty string where a value is absent).

    Raises:
        ValueError: not UTF-8 CSV, or a row with more fields than the header (the file and the line are named).
    """
    return [row for _, row in read_csv_file(path)[1]]


class MetricsLog:
    """Appends rows to ``path`` (``metrics.csv``), keeping only rows up to ``keep_until_step`` from before.

    Args:
        path: the CSV file; created with a header if missing.
        keep_until_step: rows of an earlier run with ``step`` above this are removed (0 removes all).
        columns: the header (default: the trainer's :data:`METRICS_COLUMNS`; RL runs log their own), ``step`` first.
    """

    def __init__(
        self, path: str | Path, keep_until_step: int = 0, columns: tuple[str, ...] = METRICS_COLUMNS
    ) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            kept = [row for row in read_metrics(self.path) if row.get("step") and int(row["step"]) <= keep_until_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path, buffer.getvalue())
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = csv.DictWriter(self._file, fieldnames=columns, lineterminator="\n")

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (missing columns are left empty) and flush it to the OS, so a kill keeps it."""
        self._writer.writerow({k: _format(row.get(k)) for k in self.columns})
        self._file.flush()

    def close(self) -> None:
        self._file.close()
