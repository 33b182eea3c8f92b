"""Over-long values echoed in error lines (s11e): every echo of a user's value goes through
errors.shown / errors.cut (its repr cut past 80 characters to its first 60 and its length), as
scenario keys' own errors did (tests/test_error_lines_untested_rules.py).  Through the CLI, as a user
meets it: one line, exit 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli_error

from dualpipe_sim.errors import cut, shown

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"
LONG = "x" * 100_000
# 'x' * 100_000 in quotes is 100,002 characters of repr: its first 60 are the quote and 59 x's.
LONG_SHOWN = "'" + "x" * 59 + "... (100002 characters)"
KNOWN = ("1f1b, 1f1b-overlap, chimera, chimera-doubling, dualpipe, dualpipev, gpipe, interleaved-1f1b, "
         "interleaved-1f1b-overlap, zb-h1, zb-h1-megatron, zb-h2, zbv")


def test_shown_cuts_past_80_characters_of_repr():
    """78 characters and two quotes are 80: whole; 79 and two quotes are 81: 60 kept and the length."""
    assert shown("a" * 78) == "'" + "a" * 78 + "'"
    assert shown("a" * 79) == "'" + "a" * 59 + "... (81 characters)"
    assert cut("b" * 80) == "b" * 80 and cut("b" * 81) == "b" * 60 + "... (81 characters)"


def test_an_unknown_long_schedule_is_cut(tmp_path):
    line = cli_error(tmp_path, "run", str(QUICK), "--set", "pipeline.schedule=" + LONG)
    assert line == f"error: pipeline.schedule: unknown schedule {LONG_SHOWN}; known: {KNOWN}"


def test_an_unknown_long_schedule_in_a_grid_is_cut(tmp_path):
    """The grid's line echoes the value twice, as the schedule's name and in the --grid it came from (unquoted)."""
    line = cli_error(tmp_path, "sweep", str(QUICK), "--grid", "pipeline.schedule=1f1b," + LONG)
    # "--grid pipeline.schedule=1f1b," is 30 of the 60 characters kept of the 7 + 23 + 100,000.
    assert line == (f"error: pipeline.schedule: unknown schedule {LONG_SHOWN}; known: {KNOWN} "
                    "(in --grid pipeline.schedule=1f1b," + "x" * 30 + "... (100030 characters))")


def test_a_long_bad_grid_value_is_cut(tmp_path):
    """A value the scenario refuses: the grid's line and the scenario's own, both cut."""
    line = cli_error(tmp_path, "sweep", str(QUICK), "--grid", "pipeline.stages=4," + LONG)
    # "--grid pipeline.stages=4," is 25 of the 60 characters kept of the 7 + 18 + 100,000.
    assert line == (f"error: pipeline.stages: must be a whole number, got {LONG_SHOWN} "
                    "(in --grid pipeline.stages=4," + "x" * 35 + "... (100025 characters))")


def test_a_long_grid_spec_is_cut(tmp_path):
    spec = "pipeline.stages=1:" + LONG + ":1"  # not a range of numbers, and one item
    line = cli_error(tmp_path, "sweep", str(QUICK), "--grid", spec)
    assert line == ("error: pipeline.stages: a range is start:stop:step with three numbers, e.g. "
                    "pipeline.stages=4,8,16 or pipeline.microbatches=8:64:8 (in --grid pipeline.stages=1:"
                    + "x" * 35 + "... (100027 characters))")
    assert len(line) < 300


@pytest.mark.parametrize("key,words", [
    ("parallel.layout", "parallel.layout: must be a list of layer counts or a Megatron layout string, got "),
])
def test_a_long_model_value_is_cut(tmp_path, key, words):
    """The model's own checks (model/layout.py) echo through the same helper."""
    line = cli_error(tmp_path, "run", str(ROOT / "scenarios" / "deepseek-v3-predicted.toml"),
                     "--set", f"{key}={{a = \"{LONG}\"}}")
    assert line.startswith("error: ") and len(line) < 400, line[:500]
    assert "... (" in line


@pytest.mark.parametrize("scenario_file,key,words", [
    (QUICK, "pipeline." + LONG, "unknown key"),  # the scenario's own check (pydantic)
    (ROOT / "scenarios" / "deepseek-v3-predicted.toml", "model." + LONG, "unknown key"),  # the model's
])
def test_a_long_unknown_key_is_cut(tmp_path, scenario_file, key, words):
    """A key is the user's text too: 'pipeline.' and 100,000 x's are 100,009 characters."""
    line = cli_error(tmp_path, "run", str(scenario_file), "--set", f"{key}=1")
    assert line == f"error: {key[:60]}... ({len(key)} characters): {words}"


def test_a_long_value_given_twice_in_a_grid_is_cut(tmp_path):
    half = "x" * 50_000  # two in one argument: the OS takes 128 KiB at most
    line = cli_error(tmp_path, "sweep", str(QUICK), "--grid", f"pipeline.stages={half},{half}")
    assert line == ("error: pipeline.stages: value " + "x" * 60 + "... (50000 characters) appears twice in the grid "
                    "(in --grid pipeline.stages=" + "x" * 37 + "... (100024 characters))")
