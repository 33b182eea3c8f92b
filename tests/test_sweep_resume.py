"""`sweep --resume` never loses or relabels a finished row (issue 16).

Truth for a row is independent of how results.csv keys it: the scenario its
label cells describe (base scenario, then every key column as an override) is
simulated afresh and must give the row's makespan.  The property test drives
random sequences of grids, overrides and interruptions (Ctrl-C, and a kill
that leaves half a line) and checks after every step that each row ever
finished is still in the file, unchanged, and labelled truthfully; a refused
resume leaves the file byte for byte as it was.
"""

from __future__ import annotations

import csv

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpipe_sim.cli import main, parse_grid
from dualpipe_sim.inputs.scenario import apply_overrides, load_raw
from dualpipe_sim.sweep import Interrupted, ResumeError, SweepError, executors
from dualpipe_sim.sweep import run_sweep as _run_sweep
from dualpipe_sim.sweep.point import run_point as real_run_point
from dualpipe_sim.sweep.results import grid_keys

BASE = """
[pipeline]
schedule = "1f1b"
stages = 2
microbatches = 4

[costs]
forward = 1.0
backward = 2.0

[comm]
p2p = 0.0
"""


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(BASE)
    return path


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    """results.csv is what is under test; summary and charts are tested in test_sweep.py."""
    import dualpipe_sim.sweep as sweep

    monkeypatch.setattr(sweep, "write_reports", lambda *a, **k: [])


def run_sweep(scenario, grid: list[str], out, **kwargs):
    """The library call, with the grid written as on the command line."""
    return _run_sweep(scenario, parse_grid(grid), out, **kwargs)


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


_truth_cache: dict = {}


def truthful(row: dict, scenario_path, overrides=()) -> bool:
    """The row's makespan is that of the scenario its label cells name."""
    header = list(row)
    keys = grid_keys(header)
    labels = tuple(f"{k}={row[k]}" for k in keys if row[k] != "")
    base = apply_overrides(load_raw(scenario_path), list(overrides))
    cache_key = (str(scenario_path), tuple(overrides), labels)
    if cache_key not in _truth_cache:
        _truth_cache[cache_key] = real_run_point(base, labels)
    fields = _truth_cache[cache_key]
    if row["status"] != fields["status"]:
        return False
    return row["status"] != "ok" or float(row["makespan"]) == fields["makespan"]


def finished(rows) -> dict:
    """Rows by identity (point, scenario), the cells that must never change."""
    return {(r["point"], r["scenario_id"]): {k: v for k, v in r.items()} for r in rows}


def test_the_issues_sequence_loses_and_relabels_nothing(tmp_path, scenario):
    # stages=4,8 ; then microbatches=16,32 --resume ; then stages=4,8 --resume (issue 16).
    out = tmp_path / "X"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    first = finished(read(out / "results.csv"))
    report = run_sweep(scenario, ["pipeline.microbatches=6,8"], out, jobs=1, resume=True)
    assert report.ran == 2 and report.other_rows == 2
    report = run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert report.ran == 0 and report.other_rows == 2
    rows = read(out / "results.csv")
    assert len(rows) == 4
    assert {(r["pipeline.stages"], r["pipeline.microbatches"]) for r in rows} == {
        ("2", "4"), ("4", "4"), ("2", "6"), ("2", "8")}
    for key, cells in first.items():
        assert finished(rows)[key] == cells
    assert all(truthful(r, scenario) for r in rows)


def test_a_point_already_run_under_another_grid_is_not_run_again(tmp_path, scenario):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    # stages=2 is the base's own value: that point is the same scenario as the base.
    report = run_sweep(scenario, ["comm.p2p=0.0,0.5"], out, jobs=1, resume=True)
    assert report.ran == 1
    rows = read(out / "results.csv")
    assert [r["comm.p2p"] for r in rows] == ["0.0", "0.5", "0.0"]  # new column, filled from each row's point
    assert all(truthful(r, scenario) for r in rows)


def test_grid_keys_in_another_order_find_the_same_points(tmp_path, scenario):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4", "pipeline.microbatches=4,6"], out, jobs=1)
    before = finished(read(out / "results.csv"))
    report = run_sweep(scenario, ["pipeline.microbatches=4,6", "pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert report.ran == 0
    assert finished(read(out / "results.csv")) == before


def test_another_scenario_content_is_refused_and_nothing_changes(tmp_path, scenario):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    before = (out / "results.csv").read_bytes()
    scenario.write_text(BASE.replace("forward = 1.0", "forward = 1.5"))
    with pytest.raises(ResumeError, match="results of another scenario"):
        run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert (out / "results.csv").read_bytes() == before


def test_other_overrides_are_refused(tmp_path, scenario, capsys):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    before = (out / "results.csv").read_bytes()
    argv = ["sweep", str(scenario), "--grid", "pipeline.stages=2,4", "--out", str(out), "--resume", "--jobs", "1",
            "--set", "pipeline.microbatches=6"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ") and "another scenario" in err and err.count("\n") == 1
    assert (out / "results.csv").read_bytes() == before


def test_same_content_in_another_layout_resumes(tmp_path, scenario):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    scenario.write_text("# a comment\n" + BASE.replace("forward = 1.0", "forward   =   1.0  # F"))
    assert run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True).ran == 0


def test_a_file_without_identities_is_refused(tmp_path, scenario):
    out = tmp_path / "o"
    out.mkdir()
    old = "pipeline.schedule,pipeline.stages,pipeline.microbatches,status,reason,makespan\n1f1b,8,20,ok,,12.0\n"
    (out / "results.csv").write_text(old)
    with pytest.raises(ResumeError, match="older dualpipe-sim"):
        run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert (out / "results.csv").read_text() == old


def test_a_file_from_before_the_gpu_columns_says_it_is_older(tmp_path, scenario, capsys):
    """A results.csv written before s15i's gpus and gpu_time: its header is today's without those
    two (made here by hand from today's columns), so it is named an older version's file, the two
    columns named, and the ways out given; one line, exit 2, the file untouched."""
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, col in enumerate(rows[0]) if col not in ("gpus", "gpu_time")]
    assert len(keep) == len(rows[0]) - 2
    with (out / "results.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([r[i] for i in keep] for r in rows)
    older = (out / "results.csv").read_text()
    argv = ["sweep", str(scenario), "--grid", "pipeline.stages=2,4", "--out", str(out), "--resume", "--jobs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ") and err.count("\n") == 1, err
    assert "written by an older dualpipe-sim, before the columns gpus, gpu_time" in err
    assert err.rstrip().endswith("; write to another folder, or move this results.csv away and run the sweep afresh "
                                 "(not resuming)")
    assert "not those of a sweep" not in err
    assert (out / "results.csv").read_text() == older
    # A column today's version never wrote is no older file: the plain refusal stays.
    (out / "results.csv").write_text(older.replace("makespan", "makespan_ms", 1))
    with pytest.raises(ResumeError, match="are not those of a sweep's results.csv"):
        run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)


def test_a_row_with_an_unreadable_point_is_kept_as_it_is(tmp_path, scenario):
    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    text = (out / "results.csv").read_text()
    damaged = text.replace('"[""pipeline.stages=4""]"', "not json")
    (out / "results.csv").write_text(damaged)
    report = run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert report.ran == 1 and report.other_rows == 1  # stages=4 runs again; the damaged row stays
    assert "not json" in (out / "results.csv").read_text()


# -- property: random sequences of grids, overrides and interruptions ------------------------------
GRIDS = [
    ["pipeline.stages=2,4"],
    ["pipeline.microbatches=4,6"],
    ["pipeline.stages=2,4", "pipeline.microbatches=4,8"],
    ["pipeline.microbatches=8,4", "pipeline.stages=4"],
    ["pipeline.schedule=1f1b,gpipe", "pipeline.stages=2"],
    ["comm.p2p=0.0,0.25"],
    ["costs.forward=1.0,0.5", "pipeline.stages=4"],
]
OVERRIDES = [(), ("pipeline.microbatches=6",), ("costs.backward=3.0",)]

step = st.tuples(
    st.sampled_from(range(len(GRIDS))),
    st.sampled_from(range(len(OVERRIDES))),
    st.booleans(),  # --resume
    st.one_of(st.none(), st.integers(1, 3)),  # Ctrl-C before the n-th point of this step
    st.booleans(),  # after an interruption, a kill left half a line at the end
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=6))
def test_no_finished_row_is_ever_lost_or_relabelled(tmp_path_factory, monkeypatch, steps):
    out = tmp_path_factory.mktemp("prop") / "out"
    scenario = out.parent / "base.toml"
    scenario.write_text(BASE)
    path = out / "results.csv"
    ever: dict = {}  # identity -> cells, of every row ever finished
    owner = None  # the overrides of the run that wrote the file
    for grid_i, over_i, resume, stop_at, torn in steps:
        grid, overrides = GRIDS[grid_i], OVERRIDES[over_i]
        calls = []

        def interrupting(base, point_overrides):
            calls.append(point_overrides)
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt
            return real_run_point(base, point_overrides)

        monkeypatch.setattr(executors, "run_point", interrupting)
        before = path.read_bytes() if path.exists() else None
        had_rows = before is not None and any(r["status"] in ("ok", "skipped", "error") for r in read(path))
        try:
            run_sweep(scenario, grid, out, jobs=1, resume=resume, overrides=list(overrides))
        except ResumeError:
            assert resume and had_rows and overrides != owner
            assert path.read_bytes() == before  # refused: nothing touched
            continue
        except SweepError:
            assert not resume and before is not None  # results.csv exists and --resume was not given
            assert path.read_bytes() == before
            continue
        except Interrupted:
            if torn:  # the process was killed while writing the next row
                with path.open("a") as f:
                    f.write("1f1b,4,")
        owner = owner if had_rows else overrides  # a file without rows takes any scenario
        rows = read(path)
        now = finished(r for r in rows if r["status"] in ("ok", "skipped", "error"))
        for key, cells in ever.items():
            assert key in now, f"finished row {key} lost"
            assert {k: now[key][k] for k in cells} == cells, f"finished row {key} changed"
        for key, cells in now.items():
            ever.setdefault(key, {k: v for k, v in cells.items() if k in ("status", "makespan", *grid_keys(list(cells)))})
        for r in rows:
            if r["status"] in ("ok", "skipped", "error"):
                assert truthful(r, scenario, owner), f"row {r['point']} labelled as another point"


def test_an_interrupted_rewrite_leaves_results_as_they_were(tmp_path, scenario, monkeypatch):
    from dualpipe_sim.sweep import results

    out = tmp_path / "o"
    run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1)
    before = (out / "results.csv").read_bytes()

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "replace", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(scenario, ["pipeline.stages=2,4"], out, jobs=1, resume=True)
    assert (out / "results.csv").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]  # no .results.csv.tmp
