"""s18e: sweep/__init__.py's Interrupted counts on a resumed sweep (planted bug s18e-sweep-left-counts-kept).

A grid of 4 points resumed over a results.csv holding 2 of them runs the other 2; stopped (Ctrl-C) after the
first of those, results.csv holds 2 + 1 = 3 finished rows and 4 - 3 = 1 point is left, whatever was kept."""

import csv

import pytest

from dualpipe_sim.cli import parse_grid
from dualpipe_sim.sweep import Interrupted, executors, run_sweep
from dualpipe_sim.sweep.point import run_point as real_run_point
from test_sweep_resume import BASE  # 1F1B, 2 stages, 4 micro-batches, F 1, B 2


def test_interrupted_resume_counts_finished_and_left(tmp_path, monkeypatch):
    base = tmp_path / "base.toml"
    base.write_text(BASE)
    out = tmp_path / "out"
    run_sweep(base, parse_grid(["pipeline.microbatches=4,8"]), out, jobs=1, charts=False)
    calls = []

    def stop_at_second(scenario, overrides):  # the resumed grid's 2nd new point: Ctrl-C
        calls.append(overrides)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_point(scenario, overrides)

    monkeypatch.setattr(executors, "run_point", stop_at_second)
    with pytest.raises(Interrupted) as got:
        run_sweep(base, parse_grid(["pipeline.microbatches=4,8,12,16"]), out, jobs=1, resume=True, charts=False)
    assert len(calls) == 2  # the two kept points were not run again
    assert (got.value.finished, got.value.left) == (3, 1)  # 2 kept + 1 run; 4 points - 3
    assert "3 finished rows" in str(got.value) and "the other 1 points" in str(got.value)
    with (out / "results.csv").open(newline="") as f:
        assert sorted(int(r["pipeline.microbatches"]) for r in csv.DictReader(f)) == [4, 8, 12]
