"""results.csv: its columns, how values are written, and how it grows row by row.

Rows are appended and flushed the moment a point finishes, so an interrupted
sweep keeps every finished row; resuming reads them back and skips those
points.  When the sweep completes, the file is rewritten in point order
(first grid axis slowest), so the same grid gives the same bytes whatever
ran it and in whatever order the points finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .errors import SweepError
from .grid import Axis, Point
from ..scenario import apply_overrides
from .point import METRIC_COLUMNS

STATUSES = ("ok", "skipped", "error")
SHAPE_KEYS = ("schedule", "stages", "microbatches")  # [pipeline] keys every row carries, grid or not


def columns(axes: list[Axis]) -> list[str]:
    """pipeline.schedule/stages/microbatches, the other grid keys, status, reason, the metrics."""
    shape = [f"pipeline.{k}" for k in SHAPE_KEYS]
    return shape + [a.key for a in axes if a.key not in shape] + ["status", "reason", *METRIC_COLUMNS]


def format_value(value) -> str:
    """One cell: '' for None, shortest round-trip text for floats, TOML-like lists."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def point_key(values) -> tuple[str, ...]:
    """What identifies a point in results.csv: its grid cells, as written."""
    return tuple(format_value(v) for v in values)


def row_key(axes: list[Axis], row: dict) -> tuple[str, ...]:
    return tuple(row[a.key] for a in axes)


def make_row(cols: list[str], axes: list[Axis], base: dict, point: Point, fields: dict) -> dict[str, str]:
    """The CSV row of a finished point: its shape and grid cells from the point itself
    (so even a point whose worker died has them), status and metrics from run_point."""
    cells = {c: format_value(fields.get(c)) for c in cols}
    pipeline = apply_overrides(base, list(point.overrides)).get("pipeline", {})
    cells.update({f"pipeline.{k}": format_value(pipeline.get(k)) for k in SHAPE_KEYS})
    cells.update({a.key: format_value(v) for a, v in zip(axes, point.values)})
    return cells


def read_rows(path: Path, cols: list[str]) -> list[dict[str, str]]:
    """Complete rows of an existing results.csv with exactly these columns.

    A row cut short (the sweep was killed while writing it) or with an unknown
    status is dropped, so its point runs again.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return []
            if header != cols:
                raise SweepError(
                    "resume",
                    f"{path} has the columns of another grid ({', '.join(header[:4])}, ...); resume with "
                    f"the same grid keys in the same order, or write to another folder",
                )
            status = cols.index("status")
            return [dict(zip(cols, r)) for r in reader if len(r) == len(cols) and r[status] in STATUSES]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SweepError("resume", f"cannot read {path}: {exc}") from None


class ResultsFile:
    """results.csv opened for appending, one flushed line per finished point."""

    def __init__(self, path: Path, cols: list[str], kept: list[dict[str, str]]) -> None:
        self.path, self.cols = path, cols
        self.rows: list[dict[str, str]] = []
        # Start from a clean file holding the kept rows (drops a half-written last line).
        self._rewrite(kept)
        self.rows = list(kept)
        self._file = path.open("a", newline="", encoding="utf-8")

    def append(self, row: dict[str, str]) -> None:
        self._file.write(_lines(self.cols, [row], header=False))
        self._file.flush()
        self.rows.append(row)

    def close(self) -> None:
        self._file.close()

    def finish(self, order: list[tuple[str, ...]], axes: list[Axis]) -> list[dict[str, str]]:
        """Rewrite in point order; rows of points outside this grid (an earlier, wider
        sweep being resumed) follow in the order they had.  Returns the sorted rows."""
        self.close()
        rank = {key: i for i, key in enumerate(order)}
        first: dict[tuple, dict] = {}
        for row in self.rows:
            first.setdefault(row_key(axes, row), row)
        rows = sorted(first.values(), key=lambda r: rank.get(row_key(axes, r), len(rank)))
        self._rewrite(rows)
        return rows

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(_lines(self.cols, rows, header=True), encoding="utf-8", newline="")
        os.replace(tmp, self.path)


def _lines(cols: list[str], rows: list[dict[str, str]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(cols)
    writer.writerows([[row[c] for c in cols] for row in rows])
    return buf.getvalue()
