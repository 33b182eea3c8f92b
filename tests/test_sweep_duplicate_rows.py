"""A point that results.csv holds twice (a sweep stopped between writing a row and recording it, then
resumed, or two appends of one point) ends up once, in grid order, after a resume."""

from __future__ import annotations

from dualpipe_sim.cli import parse_grid
from dualpipe_sim.sweep import run_sweep

from test_sweep import GRID, SCENARIO


def test_a_row_written_twice_is_kept_once(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(SCENARIO)
    fresh = tmp_path / "fresh"
    run_sweep(base, parse_grid(GRID), fresh, jobs=1)
    full = (fresh / "results.csv").read_text()
    lines = full.splitlines(keepends=True)
    assert len(lines) == 1 + 12
    doubled = tmp_path / "doubled"
    doubled.mkdir()
    (doubled / "results.csv").write_text(lines[0] + lines[3] + "".join(lines[1:]))  # row 3 twice, first out of order
    report = run_sweep(base, parse_grid(GRID), doubled, jobs=1, resume=True)
    assert report.ran == 0
    assert (doubled / "results.csv").read_text() == full
