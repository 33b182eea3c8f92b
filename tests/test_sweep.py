"""Sweeps end to end: rows against closed forms, skipped/error rows, resume,
Ctrl-C, summary choice, and identical results.csv from 1 job, 2 jobs and Dask."""

import csv
import json
import os

import pytest

from dualpipe_sim.cli import main, parse_grid
from dualpipe_sim.sweep import Interrupted, SweepError, executors, run_sweep
from dualpipe_sim.sweep.point import run_point as real_run_point

F, B, W = 1.0, 2.0, 1.0
ACT, PARAMS = 1e9, 0.5e9
SCENARIO = f"""
[pipeline]
schedule = "1f1b"
stages = 4
microbatches = 8

[costs]
forward = {F}
backward = {B}
weight = {W}

[comm]
p2p = 0.0

[memory]
activation = {ACT}
parameters = {PARAMS}
"""
GRID = ["pipeline.schedule=1f1b,gpipe,dualpipe", "pipeline.stages=2:4:2", "pipeline.microbatches=4,8"]


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(SCENARIO)
    return path


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_match_closed_forms_and_skips_say_why(tmp_path, scenario):
    report = run_sweep(scenario, parse_grid(GRID), tmp_path / "out", jobs=1)
    rows = read(tmp_path / "out" / "results.csv")
    assert len(rows) == report.points == 3 * 2 * 2
    # Point order: first axis slowest.
    assert [(r["pipeline.schedule"], r["pipeline.stages"], r["pipeline.microbatches"]) for r in rows[:4]] == [
        ("1f1b", "2", "4"), ("1f1b", "2", "8"), ("1f1b", "4", "4"), ("1f1b", "4", "8")]
    for r in rows:
        S, M = int(r["pipeline.stages"]), int(r["pipeline.microbatches"])
        if r["pipeline.schedule"] in ("1f1b", "gpipe"):
            # Uniform costs, free communication: makespan (M + S - 1)(F + B), bubble (S-1)/(M+S-1).
            assert r["status"] == "ok" and r["reason"] == ""
            assert float(r["makespan"]) == pytest.approx((M + S - 1) * (F + B))
            assert float(r["bubble_ratio"]) == pytest.approx((S - 1) / (M + S - 1))
            assert float(r["analytic.bubble"]) == pytest.approx((S - 1) * (F + B))
            assert int(r["ranks"]) == S
            # Peak on rank 0: 1F1B holds min(S, M) activations, GPipe all M.
            units = min(S, M) if r["pipeline.schedule"] == "1f1b" else M
            assert int(r["peak_activation"]) == units
            assert float(r["peak_activation_bytes"]) == units * ACT
            assert float(r["parameter_bytes"]) == PARAMS
            assert float(r["peak_memory_bytes"]) == units * ACT + PARAMS
            assert float(r["comm.p2p_time"]) == 0 and r["comm.overlap_ratio"] == ""
    dual = {(r["pipeline.stages"], r["pipeline.microbatches"]): r for r in rows if r["pipeline.schedule"] == "dualpipe"}
    # DualPipe needs micro-batches >= 2 x stages: only (2, 4), (2, 8) and (4, 8) run.
    assert {k for k, r in dual.items() if r["status"] == "ok"} == {("2", "4"), ("2", "8"), ("4", "8")}
    skipped = dual[("4", "4")]
    assert skipped["status"] == "skipped"
    assert skipped["reason"] == "pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = 8, got 4"
    assert skipped["makespan"] == ""
    assert report.counts == {"ok": 11, "skipped": 1, "error": 0}
    for name in ("summary.md", "bubble_vs_microbatches.png", "peak_activation_vs_stages.png", "bubble_heatmap.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "bubble_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_point_is_an_error_row_and_the_sweep_goes_on(tmp_path, scenario):
    # A 2-value per-stage list fits 2 stages only; the 4-stage point fails, the others run.
    grid = ["costs.forward=[1, 3]", "pipeline.stages=2,4", "pipeline.microbatches=2"]
    report = run_sweep(scenario, parse_grid(grid), tmp_path / "out", jobs=1)
    rows = read(tmp_path / "out" / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[1]["reason"] == "costs.forward: a per-stage list needs one value per stage (4), got 2"
    assert rows[0]["costs.forward"] == "[1, 3]"
    # 1F1B, 2 stages, 2 micro-batches, F = (1, 3), B = 2: the slow stage paces it:
    # F0 [0,1], then stage 1 runs F F B B back to back from t=1: 1 + 2*3 + 2*2 = 11, then B on stage 0: 13.
    assert float(rows[0]["makespan"]) == pytest.approx(13.0)
    assert report.counts["error"] == 1


def die_at_four_stages(base, overrides):
    """A worker process that dies outright (as if killed) at the 4-stage point."""
    if "pipeline.stages=4" in overrides:
        os._exit(3)
    return real_run_point(base, overrides)


def test_a_dead_worker_process_is_an_error_row_not_an_abort(tmp_path, scenario, monkeypatch):
    monkeypatch.setattr(executors, "run_point", die_at_four_stages)
    report = run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), tmp_path / "out", jobs=2)
    rows = read(tmp_path / "out" / "results.csv")
    assert [r["pipeline.stages"] for r in rows] == ["2", "4"]
    assert rows[1]["status"] == "error" and rows[1]["reason"].startswith("worker failed: BrokenProcessPool")
    assert report.counts["error"] >= 1 and (tmp_path / "out" / "summary.md").exists()


def test_resume_skips_finished_points_and_ends_identical(tmp_path, scenario):
    fresh = tmp_path / "fresh"
    run_sweep(scenario, parse_grid(GRID), fresh, jobs=1)
    full = (fresh / "results.csv").read_text()
    lines = full.splitlines(keepends=True)
    # An interrupted sweep: header, 5 finished rows in another order, half of a sixth row.
    part = tmp_path / "part"
    part.mkdir()
    (part / "results.csv").write_text(lines[0] + "".join(lines[5:0:-1]) + lines[6][:15])
    report = run_sweep(scenario, parse_grid(GRID), part, jobs=1, resume=True)
    assert report.ran == 12 - 5
    assert (part / "results.csv").read_text() == full

    # Finished rows really are skipped: a marked row survives a resume untouched.
    marked = full.replace(lines[2], lines[2].replace(",ok,,", ",ok,kept,", 1))
    (part / "results.csv").write_text(marked)
    assert run_sweep(scenario, parse_grid(GRID), part, jobs=1, resume=True).ran == 0
    assert (part / "results.csv").read_text() == marked


def test_ctrl_c_keeps_finished_rows_then_resume_completes(tmp_path, scenario, monkeypatch):
    real = real_run_point
    calls = []

    def interrupt_at_fifth(base, overrides):
        calls.append(overrides)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(base, overrides)

    monkeypatch.setattr(executors, "run_point", interrupt_at_fifth)
    out = tmp_path / "out"
    with pytest.raises(Interrupted, match="4 finished rows"):
        run_sweep(scenario, parse_grid(GRID), out, jobs=1)
    rows = read(out / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert not (out / "summary.md").exists()
    monkeypatch.setattr(executors, "run_point", real)
    run_sweep(scenario, parse_grid(GRID), out, jobs=1, resume=True)
    run_sweep(scenario, parse_grid(GRID), tmp_path / "fresh", jobs=1)
    assert (out / "results.csv").read_bytes() == (tmp_path / "fresh" / "results.csv").read_bytes()


def test_existing_results_need_resume_and_another_grid_extends_them(tmp_path, scenario, capsys):
    out = tmp_path / "out"
    run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), out, jobs=1)
    before = (out / "results.csv").read_bytes()
    with pytest.raises(SweepError, match="^out: .* already exists; resume it"):
        run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), out, jobs=1)
    assert main(["sweep", str(scenario), "--grid", "pipeline.stages=2,4", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {out}: {out / 'results.csv'} already exists; pass --resume")
    assert (out / "results.csv").read_bytes() == before
    # Another grid key: a new column, the earlier rows kept after the new grid's (test_sweep_resume.py).
    report = run_sweep(scenario, parse_grid(["costs.forward=1,2"]), out, jobs=1, resume=True)
    rows = read(out / "results.csv")
    assert (report.ran, report.other_rows) == (2, 2)
    assert [(r["costs.forward"], r["pipeline.stages"]) for r in rows] == [("1", "4"), ("2", "4"), ("1.0", "2"),
                                                                          ("1.0", "4")]


def test_summary_picks_the_fastest_schedule_that_fits(tmp_path, scenario):
    # S=4, M=8, F=1, B=2, W=1.  Makespans by closed form: ZB-H1 M(F+B) + (S-1)(F+B-2W) = 27;
    # 1F1B and GPipe (M+S-1)(F+B) = 33.  Peak memory on rank 0: 1F1B and ZB-H1 hold S = 4
    # activations (4.5 GB with the 0.5 GB of parameters), GPipe all M = 8 (8.5 GB).
    grid = ["pipeline.schedule=gpipe,1f1b,zb-h1"]
    run_sweep(scenario, parse_grid(grid), tmp_path / "a", jobs=1, memory_limit=5e9)
    line = _summary_row(tmp_path / "a")
    assert line[:4] == ["4", "8", "zb-h1", "27"]
    assert line[5] == "4.5 GB" and line[6] == "gpipe (8.5 GB)"
    run_sweep(scenario, parse_grid(grid), tmp_path / "b", jobs=1, memory_limit=4e9)
    assert _summary_row(tmp_path / "b")[2] == "none fits"
    # No limit and a tie (GPipe = 1F1B = 33): the name that sorts first wins, whatever the grid order.
    run_sweep(scenario, parse_grid(["pipeline.schedule=gpipe,1f1b"]), tmp_path / "c", jobs=1)
    assert _summary_row(tmp_path / "c")[2:4] == ["1f1b", "33"]


def _summary_row(out):
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| 4 ")]
    assert len(rows) == 1
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_same_csv_from_one_job_two_jobs_and_dask(tmp_path, scenario):
    from distributed import LocalCluster  # the test extra installs dask[distributed]

    grid = ["pipeline.schedule=1f1b,dualpipe,zb-h1", "pipeline.stages=2,4", "pipeline.microbatches=4:8:4",
            "comm.p2p=0,0.25"]
    run_sweep(scenario, parse_grid(grid), tmp_path / "one", jobs=1)
    run_sweep(scenario, parse_grid(grid), tmp_path / "two", jobs=2)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                      protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        report = run_sweep(scenario, parse_grid(grid), tmp_path / "dask", dask_scheduler=cluster.scheduler_address)
    assert report.executor.startswith("Dask cluster at tcp://127.0.0.1")
    one = (tmp_path / "one" / "results.csv").read_bytes()
    assert one == (tmp_path / "two" / "results.csv").read_bytes() == (tmp_path / "dask" / "results.csv").read_bytes()
    assert (tmp_path / "one" / "summary.md").read_bytes() == (tmp_path / "dask" / "summary.md").read_bytes()
    assert len(read(tmp_path / "one" / "results.csv")) == 3 * 2 * 2 * 2


def test_cli_sweep_writes_and_reports(tmp_path, scenario, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(scenario), "--grid", "pipeline.stages=2,4", "--out", str(out), "--jobs", "1",
                 "--memory-limit", "8GiB", "--set", "pipeline.microbatches=4"]) == 0
    printed = capsys.readouterr().out
    assert "2 points (2 run now on 1 local process): 2 ok, 0 skipped, 0 error" in printed
    assert "memory limit 8.59 GB" in (out / "summary.md").read_text()
    assert [r["pipeline.microbatches"] for r in read(out / "results.csv")] == ["4", "4"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--grid", "pipeline.stages=8:4:1"], "error: pipeline.stages: start must be <= stop"),
        (["--grid", "pipeline.bogus=1"], "error: pipeline.bogus: unknown key"),
        (["--grid", "pipeline.stages=2", "--memory-limit", "lots"], "error: --memory-limit: expected a size"),
        (["--grid", "pipeline.stages=2", "--memory-limit", "0"], "error: --memory-limit: must be a finite size > 0"),
        (["--grid", "pipeline.stages=2", "--jobs", "0"], "error: --jobs: must be >= 1"),
        (["--grid", "pipeline.stages=2", "--jobs", "2", "--dask-scheduler", "tcp://127.0.0.1:1"],
         "error: --jobs: does not apply with --dask-scheduler"),
        (["--grid", "pipeline.stages=2", "--set", "costs.forward=-1"], "error: costs.forward: input should be"),
        # an empty address is a slip, not "no Dask": said before anything runs
        (["--grid", "pipeline.stages=2", "--dask-scheduler", ""],
         "error: --dask-scheduler: empty address ''; give the scheduler's address, e.g. tcp://host:8786"),
        (["--grid", "pipeline.stages=2", "--dask-scheduler", "  "],
         "error: --dask-scheduler: empty address '  '; give the scheduler's address, e.g. tcp://host:8786"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, scenario, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["sweep", str(scenario), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()


def test_an_unreachable_dask_scheduler_is_one_clear_error():
    with pytest.raises(SweepError, match=r"^dask_scheduler: tcp://127.0.0.1:1: cannot connect"):
        executors.DaskExecutor("tcp://127.0.0.1:1", timeout=0.5)


def test_json_like_values_round_trip_in_the_csv(tmp_path, scenario):
    run_sweep(scenario, parse_grid(["costs.backward=[2, 2],[3, 2.5]", "pipeline.stages=2"]), tmp_path / "o", jobs=1)
    rows = read(tmp_path / "o" / "results.csv")
    assert [json.loads(r["costs.backward"]) for r in rows] == [[2, 2], [3, 2.5]]


def test_charts_off_writes_table_and_summary_only(tmp_path, scenario):
    # `sweep --plots none`: results.csv and summary.md, no chart (and no matplotlib work).
    report = run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), tmp_path / "out", jobs=1, charts=False)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.csv", "summary.md"}
    assert report.counts["ok"] == 2


def test_python_grid_and_progress_callback(tmp_path, scenario):
    calls = []
    report = run_sweep(scenario, {"pipeline.stages": [2, 4]}, tmp_path / "api", jobs=1,
                       progress=lambda done, total, what: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)] and report.counts["ok"] == 2
    run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), tmp_path / "cli", jobs=1)
    assert (tmp_path / "api" / "results.csv").read_bytes() == (tmp_path / "cli" / "results.csv").read_bytes()


def test_a_swept_cost_axis_gets_its_own_chart(tmp_path, scenario):
    from dualpipe_sim.outputs.plots.sweep import numeric_axes

    grid = ["pipeline.schedule=1f1b,gpipe", "comm.p2p=0,0.25,0.5"]
    run_sweep(scenario, parse_grid(grid), tmp_path / "out", jobs=1)
    assert (tmp_path / "out" / "vs_comm.p2p.png").read_bytes()[:4] == b"\x89PNG"
    axes = parse_grid(grid + ["pipeline.stages=2,4"])
    assert numeric_axes([], axes) == ["comm.p2p"]  # not schedule, stages or micro-batches


# F = 1, B = 2 (SCENARIO): an overlapped pair under max(F, B) = 2 is odd, 2 to F + B = 3 is not.
ODD_TAIL = ("is less than the longer half alone, max(F, B) = 2: an overlapped F+B pair would be faster than its "
            "backward on its own (expected between max(F, B) and F + B = 3)")


def test_sweep_warns_about_odd_grid_points_not_only_the_base(tmp_path, scenario, capsys):
    # The base has no costs.overlapped (nothing odd); the grid makes 2 of its 3 values odd,
    # at both stage counts: 4 of 6 points, the first in grid order being (0.5, 2 stages).
    assert main(["sweep", str(scenario), "--grid", "costs.overlapped=2.5,0.5,1.5", "--grid", "pipeline.stages=2,4",
                 "--out", str(tmp_path / "o"), "--jobs", "1", "--plots", "none"]) == 0
    err = capsys.readouterr().err
    assert err == (f"warning: costs.overlapped: 0.5 at stage 0 {ODD_TAIL} (at 4 of 6 points, e.g. "
                   f"costs.overlapped=0.5 pipeline.stages=2)\n")


def test_sweep_oddities_name_their_points_and_pass_over_invalid_ones(tmp_path, scenario):
    # A per-stage list of 2 values: valid at 2 stages (stage 1's 1.5 < 2 is odd), not a
    # scenario at 4 stages (an error row), so the warning holds at 1 point of 2.
    report = run_sweep(scenario, parse_grid(["pipeline.stages=2,4"]), tmp_path / "o", jobs=1, charts=False,
                       overrides=["pipeline.stages=2", "costs.overlapped=[2.5, 1.5]"])
    assert report.counts == {"ok": 1, "skipped": 0, "error": 1}
    [odd] = report.oddities
    assert odd.key == "costs.overlapped" and odd.text == f"costs.overlapped: 1.5 at stage 1 {ODD_TAIL}"
    assert [p.overrides for p in odd.points] == [("pipeline.stages=2",)] and odd.example == odd.points[0]


def test_an_odd_base_warns_once_for_every_point(tmp_path, scenario, capsys):
    assert main(["sweep", str(scenario), "--grid", "pipeline.stages=2,4", "--set", "costs.overlapped=1",
                 "--out", str(tmp_path / "o"), "--jobs", "1", "--plots", "none"]) == 0
    assert capsys.readouterr().err == f"warning: costs.overlapped: 1 at stage 0 {ODD_TAIL} (at every point)\n"


def test_two_kinds_of_warning_about_one_key_are_counted_apart(tmp_path, scenario, capsys):
    # F = 1, B = 2: 0.5 is under max(F, B) = 2 (at both stage counts), 3.5 over F + B = 3 (at both).
    assert main(["sweep", str(scenario), "--grid", "costs.overlapped=0.5,2.5,3.5", "--grid", "pipeline.stages=2,4",
                 "--out", str(tmp_path / "o"), "--jobs", "1", "--plots", "none"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("warning: costs.overlapped: 0.5 at stage 0 is less than the longer half alone")
    assert lines[0].endswith("(at 2 of 6 points, e.g. costs.overlapped=0.5 pipeline.stages=2)")
    assert lines[1].startswith("warning: costs.overlapped: 3.5 at stage 0 is more than F + B = 3")
    assert lines[1].endswith("(at 2 of 6 points, e.g. costs.overlapped=3.5 pipeline.stages=2)")
