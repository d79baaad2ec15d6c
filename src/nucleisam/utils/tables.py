"""Small CSV tables (history, per-image metrics): rows of dicts written atomically and read back."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from nucleisam.utils.atomic import write_text_atomic


def write_rows_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], *, digits: int = 6
) -> Path:
    """Write ``rows`` as CSV atomically; columns in order of first appearance, a missing value is an
    empty cell, floats with ``digits`` significant digits."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.{digits}g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())


def read_rows_csv(
    path: str | os.PathLike[str], *, text_columns: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Read a table written by :func:`write_rows_csv`: ``text_columns`` stay strings, every other
    cell becomes a float, empty cells are left out of their row. A missing file gives no rows."""
    file = Path(path)
    if not file.is_file():
        return []
    with open(file, newline="", encoding="utf-8") as handle:
        return [
            {k: v if k in text_columns else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]
