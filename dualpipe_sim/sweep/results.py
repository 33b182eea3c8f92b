"""results.csv: its columns, how values are written, and how it grows row by row.

Rows are appended and flushed the moment a point finishes, so an interrupted
sweep keeps every finished row; resuming reads them back and skips those
points.  When the sweep completes, the file is rewritten in point order
(first grid axis slowest), so the same grid gives the same bytes whatever
ran it and in whatever order the points finished.

Identity.  Every row carries the run it belongs to and the whole point, in
its last two columns: ``point`` (the grid overrides that made it, as a JSON
list) and ``scenario_id`` (a hash of the base scenario's content: the file's
TOML after the run's overrides, comments and layout aside).  A row is matched
to a point by the complete scenario the two make, never by a few cells, so a
resume can neither skip a point it has not run nor give a row another
point's labels.  Resuming with another base scenario is refused.  Resuming
with another grid keeps every earlier row: the new grid's keys become new
columns, filled for earlier rows from their own point, and rows outside the
new grid stay after its rows (they are not in its summary or charts).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

from ..inputs.scenario import ScenarioError, apply_overrides
from .errors import SweepError
from .grid import Axis, Point
from .point import METRIC_COLUMNS

STATUSES = ("ok", "skipped", "error")
SHAPE_KEYS = ("schedule", "stages", "microbatches")  # [pipeline] keys every row carries, grid or not
SHAPE_COLUMNS = tuple(f"pipeline.{k}" for k in SHAPE_KEYS)
IDENTITY_COLUMNS = ("point", "scenario_id")  # last: what the row is a result of


class ResumeError(SweepError):
    """An existing results.csv that this sweep must not continue (another scenario, another format)."""

    def __init__(self, message: str) -> None:
        super().__init__("resume", message)


def columns(axes: list[Axis], earlier_keys: list[str] = ()) -> list[str]:
    """pipeline.schedule/stages/microbatches, the grid keys (an earlier run's first), status,
    reason, the metrics, then the identity columns."""
    keys = [k for k in earlier_keys if k not in SHAPE_COLUMNS]
    keys += [a.key for a in axes if a.key not in SHAPE_COLUMNS and a.key not in keys]
    return [*SHAPE_COLUMNS, *keys, "status", "reason", *METRIC_COLUMNS, *IDENTITY_COLUMNS]


def grid_keys(cols: list[str]) -> list[str]:
    """The key columns of a header: every column before ``status``."""
    return cols[: cols.index("status")]


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


def _canonical(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def scenario_id(base: dict) -> str:
    """16 hex digits naming the base scenario's content (file + overrides)."""
    return hashlib.sha256(_canonical(base).encode()).hexdigest()[:16]


def point_key(base: dict, overrides) -> str | None:
    """The whole point: the complete scenario ``overrides`` make of ``base``, as canonical text."""
    try:
        return _canonical(apply_overrides(base, list(overrides)))
    except ScenarioError:
        return None


def row_overrides(row: dict[str, str]) -> list[str] | None:
    """The grid overrides a row records, or None when its ``point`` cell is unreadable."""
    try:
        value = json.loads(row.get("point", ""))
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def row_key(base: dict, row: dict[str, str]) -> str | None:
    overrides = row_overrides(row)
    return None if overrides is None else point_key(base, overrides)


def _lookup(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def key_cells(keys: list[str], base: dict, overrides) -> dict[str, str]:
    """The key cells of a point, read off the complete scenario it is (so they cannot disagree)."""
    data = apply_overrides(base, list(overrides))
    return {k: format_value(_lookup(data, k)) for k in keys}


def make_row(cols: list[str], base: dict, point: Point, fields: dict) -> dict[str, str]:
    """The CSV row of a finished point: key cells and identity from the point itself
    (so even a point whose worker died has them), status and metrics from run_point."""
    cells = {c: format_value(fields.get(c)) for c in cols}
    cells.update(key_cells(grid_keys(cols), base, point.overrides))
    cells["point"] = json.dumps(list(point.overrides))
    cells["scenario_id"] = scenario_id(base)
    return cells


def extend_rows(rows: list[dict[str, str]], cols: list[str], base: dict) -> list[dict[str, str]]:
    """Earlier rows under a header with more key columns: each new cell is read off the
    row's own point (empty when the point cell cannot be read)."""
    out = []
    for row in rows:
        missing = [c for c in cols if c not in row]
        overrides = row_overrides(row)
        filled = dict.fromkeys(missing, "")
        if missing and overrides is not None:
            try:
                filled = key_cells(missing, base, overrides)
            except ScenarioError:
                pass
        out.append({**row, **filled})
    return out


def read_rows(path: Path, base: dict) -> tuple[list[str], list[dict[str, str]]]:
    """(key columns, complete rows) of an existing results.csv of this base scenario.

    A row cut short (the sweep was killed while writing it) or with an unknown
    status is dropped, so its point runs again.  Raises ResumeError when the
    file is not one this version wrote or its rows belong to another scenario.
    """
    if not path.is_file():  # a device (/dev/full reads zeros forever), a fifo: not a results.csv
        raise ResumeError(f"cannot resume {path}: not a regular file; write to another folder")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return [], []
            _check_header(path, header)
            status = header.index("status")
            rows = [dict(zip(header, r)) for r in reader if len(r) == len(header) and r[status] in STATUSES]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from None
    ours = scenario_id(base)
    theirs = sorted({r["scenario_id"] for r in rows} - {ours})
    if theirs:
        raise ResumeError(
            f"{path} holds results of another scenario (scenario_id {theirs[0]}, this one is {ours}: the "
            f"scenario file's content or the overrides differ); resume with the same scenario and overrides, "
            f"or write to another folder"
        )
    return grid_keys(header), rows


OLDER_WAY_OUT = "write to another folder, or move this results.csv away and run the sweep afresh (not resuming)"


def _check_header(path: Path, header: list[str]) -> None:
    keys_end = header.index("status") if "status" in header else -1
    tail = ["status", "reason", *METRIC_COLUMNS, *IDENTITY_COLUMNS]
    if keys_end < 0 or header[keys_end:] != tail or tuple(header[:3]) != SHAPE_COLUMNS:
        if "point" not in header and "status" in header:
            why = f"it was written by an older dualpipe-sim, without point identities; {OLDER_WAY_OUT}"
        elif (missing := _fewer_metrics(header, keys_end)) is not None:
            why = (f"it was written by an older dualpipe-sim, before the columns {', '.join(missing)}, which "
                   f"its rows cannot be given without running them again; {OLDER_WAY_OUT}")
        else:
            why = (f"its columns ({', '.join(header[:4])}, ...) are not those of a sweep's results.csv; "
                   f"write to another folder")
        raise ResumeError(f"cannot resume {path}: {why}")


def _fewer_metrics(header: list[str], keys_end: int) -> list[str] | None:
    """Today's metric columns an older results.csv lacks: its own metric columns (between
    ``reason`` and the identity columns) are today's in today's order, some left out (columns
    are only ever added); None when the header is not such a file."""
    if keys_end < 0 or tuple(header[:3]) != SHAPE_COLUMNS or tuple(header[-2:]) != IDENTITY_COLUMNS:
        return None
    theirs = header[keys_end + 2:-2] if header[keys_end + 1:keys_end + 2] == ["reason"] else None
    today = iter(METRIC_COLUMNS)
    if theirs is None or not all(col in today for col in theirs):  # a subsequence of today's, in order
        return None
    missing = [col for col in METRIC_COLUMNS if col not in theirs]
    return missing or None


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

    def finish(self, order: list[str | None], base: dict) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Rewrite in point order, rows of points outside this grid (earlier grids being
        extended) after them in the order they had.  Returns (this grid's rows, the others)."""
        self.close()
        rank = {key: i for i, key in enumerate(order) if key is not None}
        mine: dict[str, tuple[int, dict]] = {}
        others, seen = [], set()
        for row in self.rows:
            key = row_key(base, row)
            if key in rank:
                mine.setdefault(key, (rank[key], row))  # a point run twice: the same result, kept once
            elif key is None or key not in seen:  # an unreadable point cell is kept as it is
                seen.add(key)
                others.append(row)
        rows = [row for _, row in sorted(mine.values(), key=lambda item: item[0])]
        self._rewrite(rows + others)
        return rows, others

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(_lines(self.cols, rows, header=True), encoding="utf-8", newline="")
            os.replace(tmp, self.path)
        except BaseException:  # Ctrl-C or a full disk midway: results.csv stays as it was, no stray file
            tmp.unlink(missing_ok=True)
            raise


def _lines(cols: list[str], rows: list[dict[str, str]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(cols)
    writer.writerows([[row[c] for c in cols] for row in rows])
    return buf.getvalue()
