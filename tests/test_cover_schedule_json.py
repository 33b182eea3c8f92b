"""A schedule file's refusals (schedules/ir.py's JSON reading, actions.read_schedule) that the s16g coverage
run found no test reaching.  Each is one ScheduleError line starting with the file's name; before s16g a
"ranks" that is not a list of lists read "schedule JSON: 'int' object is not iterable"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim.actions import read_schedule
from dualpipe_sim.schedules.ir import ScheduleError
from tests.helpers import cli_error

QUICK = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"
F = {"kind": "F", "microbatch": 0, "stage": 0}
B = {"kind": "B", "microbatch": 0, "stage": 0}


def refusal(data) -> str:
    with pytest.raises(ScheduleError) as err:
        read_schedule(json.dumps(data), "s.json")
    return str(err.value)


def test_the_smallest_complete_schedule_reads():
    s = read_schedule(json.dumps({"ranks": [[F, B]]}), "s.json")
    assert (s.stages, s.microbatches, s.num_ranks) == (1, 1, 1)  # both inferred from the ops


@pytest.mark.parametrize("ranks,line", [
    (5, "ranks must be a list of each rank's list of actions, got 5"),
    ([F], "ranks must be a list of each rank's list of actions, got [{'kind': 'F', 'microbatch': 0, 'stage': 0}]"),
    ([[5]], "an action must be an object, got 5"),
    ([[{"kind": "FB", "forward": 3, "backward": B}]], "an op must be an object, got 3"),
    ([[{**F, "microbatch": -1}]], "op microbatch must be a whole number >= 0, got -1 in "
                                  "{'kind': 'F', 'microbatch': -1, 'stage': 0}"),
    ([[{**F, "direction": 2}]], "op direction must be 0 or 1, got 2"),
])  # fmt: skip
def test_a_malformed_ranks_list_is_named(ranks, line):
    assert refusal({"ranks": ranks}) == f"s.json: schedule JSON: {line}"


def test_declared_counts_are_whole_and_cannot_outnumber_the_ops():
    assert refusal({"ranks": [[F, B]], "stages": True}) == "s.json: schedule JSON: stages must be a whole number >= 1, got True"
    assert refusal({"ranks": [[F, B]], "microbatches": 100}) == (
        "s.json: the schedule declares 100 micro-batches but holds only 2 ops "
        "(each micro-batch needs an F and a B, or I and W, on every stage)"
    )


def test_a_bad_schedule_file_through_run_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "run").mkdir()
    bad = tmp_path / "in" / "s.json"
    bad.write_text(json.dumps({"ranks": 5}))
    line = cli_error(tmp_path / "run", "run", str(QUICK), "--schedule-file", str(bad))
    assert line == f"error: --schedule-file {bad}: schedule JSON: ranks must be a list of each rank's list of actions, got 5"
