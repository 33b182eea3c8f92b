"""Parameter sweeps: run a scenario over the product of grid axes.

``run_sweep`` is what ``dualpipe-sim sweep`` calls.  Order of work:

1. read the scenario and the grid axes (``{key: values}``), and check them
   (grid.py): bad input stops here, before anything is written;
2. open results.csv (results.py), fresh or, with ``resume``, keeping the rows
   already there and skipping their points;
3. run the remaining points on an executor (executors.py), appending each
   row as it finishes and calling ``progress(done, total)``;
4. rewrite results.csv in point order, then write summary.md and the PNG
   charts all-or-nothing (outputs.write_all).

Ctrl-C or SIGTERM during step 3 raises :class:`Interrupted` after the finished
rows are safely in results.csv (and, on SIGTERM, the worker processes are stopped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from ..outputs.files import os_problem, write_all, write_text
from ..progress import Progress, report
from ..inputs.scenario import apply_overrides, load_raw
from .errors import SweepError
from .executors import DaskExecutor, LocalExecutor
from .grid import Axis, Oddity, check_against, grid_oddities, make_axes, points
from .results import ResultsFile, ResumeError, columns, extend_rows, make_row, point_key, read_rows, row_key
from .summary import parse_bytes, summary_markdown
from ..errors import shown

RESULTS = "results.csv"
SUMMARY = "summary.md"
PLOTS = ("bubble_vs_microbatches.png", "peak_activation_vs_stages.png", "bubble_heatmap.png")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a sweep; every finished row is in results.csv (``path``);
    ``signal`` is the KeyboardInterrupt that did (signals.Terminated for SIGTERM)."""

    def __init__(self, path: Path, finished: int, left: int, signal: BaseException | None = None) -> None:
        super().__init__(f"interrupted: {finished} finished rows are in {path}; resume to run the other {left} points")
        self.path, self.finished, self.left = path, finished, left
        self.signal = signal if signal is not None else KeyboardInterrupt()


@dataclass
class SweepReport:
    out: Path
    points: int  # in this grid
    ran: int  # run now (the rest were already in results.csv)
    counts: dict[str, int]  # status -> rows in the final results.csv
    files: list[Path]
    executor: str
    other_rows: int = 0  # rows of earlier grids of the same scenario, kept after this grid's in results.csv
    oddities: list[Oddity] = field(default_factory=list)  # legal but odd input, and at which points


def run_sweep(
    scenario: str | Path | dict,
    grid: Mapping[str, Iterable] | Iterable[Axis],
    out: str | Path,
    *,
    overrides: list[str] = (),
    unset: list[str] = (),
    jobs: int | None = None,
    memory_limit: float | str | None = None,
    resume: bool = False,
    dask_scheduler: str | None = None,
    progress: Progress | None = None,
    charts: bool = True,
) -> SweepReport:
    """Run every point of the grid; see the module docstring.

    ``scenario``: a TOML path or the raw scenario dict, without the keys ``unset`` names, then
    with ``overrides`` set; ``grid``: ``{key: values}``,
    e.g. ``{"pipeline.stages": [4, 8], "pipeline.microbatches": range(8, 65, 8)}``;
    ``memory_limit``: bytes (or ``"80GiB"``) for summary.md; ``progress`` is told of
    each finished point (progress.py); ``charts=False`` skips the PNG charts.
    Raises ScenarioError or SweepError (bad input, nothing written) or Interrupted."""
    if dask_scheduler is not None and not dask_scheduler.strip():  # "" is a slip, not "run locally"
        raise SweepError("dask_scheduler", f"empty address {shown(dask_scheduler)}; give the scheduler's address, "
                                           f"e.g. tcp://host:8786 (or leave it out to run locally)")
    out = Path(out)
    raw = scenario if isinstance(scenario, dict) else load_raw(scenario)
    base = apply_overrides(raw, list(overrides), unset)
    axes = make_axes(grid)
    check_against(base, axes)
    limit = None if memory_limit is None else parse_bytes(memory_limit)
    grid_points = points(axes)
    path = out / RESULTS
    if path.exists() and not resume:
        raise SweepError("out", f"{path} already exists; resume it, or write to another folder")
    earlier_keys, kept = read_rows(path, base) if resume and path.exists() else ([], [])
    cols = columns(axes, earlier_keys)
    kept = extend_rows(kept, cols, base)
    # Rows and points meet on the complete scenario they are (results.py), never on a few cells.
    done = {row_key(base, r) for r in kept}
    keys = [point_key(base, p.overrides) for p in grid_points]
    todo = [p for p, key in zip(grid_points, keys) if key not in done]
    odd = grid_oddities(base, grid_points)  # every point's, not only the base's
    executor = DaskExecutor(dask_scheduler) if dask_scheduler else LocalExecutor(jobs)

    results = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        results = ResultsFile(path, cols, kept)
        try:
            _run_points(executor, base, todo, axes, cols, results, progress)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
            results.close()
            left = len(todo) - (len(results.rows) - len(kept))
            raise Interrupted(path, len(results.rows), left, exc) from None
        rows, others = results.finish(keys, base)
    except OSError as exc:  # a full disk, a read-only folder: one line; the rows written so far stay
        kept_rows = len(results.rows) if results is not None else len(kept)
        if results is not None:
            try:
                results.close()
            except OSError:  # its buffer is empty (each row is flushed), but the disk may say no again
                pass
        raise os_problem(path, exc, f"{kept_rows} finished rows are in it; resume the sweep once it can be "
                                    f"written") from None
    finally:
        executor.close()
    files = [path, *write_reports(out, rows, cols, axes, limit, charts)]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    return SweepReport(out, len(grid_points), len(todo), counts, files, executor.describe(), len(others), odd)


def _run_points(executor, base, todo, axes, cols, results: ResultsFile, progress) -> None:
    report(progress, 0, len(todo), "points")
    for done, (point, fields) in enumerate(executor.run(base, todo), 1):
        results.append(make_row(cols, base, point, fields))
        report(progress, done, len(todo), "points")


def write_reports(out: Path, rows: list[dict], cols: list[str], axes: list[Axis], memory_limit,
                  charts: bool = True) -> list[Path]:
    """summary.md and (unless ``charts`` is False) the charts, all-or-nothing."""
    writers = {SUMMARY: write_text(summary_markdown(rows, cols, memory_limit))}
    if charts:
        from ..outputs.plots import sweep as draw  # matplotlib only when we draw

        # Each chart against an axis the grid sweeps (plots/sweep.py: charts), e.g. vs_comm.p2p.png.
        writers.update(draw.charts(rows, axes))
    return write_all(out, writers)


__all__ = ["run_sweep", "SweepReport", "SweepError", "ResumeError", "Interrupted", "Axis", "Oddity", "RESULTS", "SUMMARY", "PLOTS"]
