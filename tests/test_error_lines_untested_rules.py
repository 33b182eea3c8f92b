"""Error lines the coverage run (s10d) found untested: the costs.* rule for a derived MoE
component model, a NaN duration, and an over-long value (issue: s10i).  Each through the
CLI, as a user meets it: one line naming the field and the rule, exit 2, no traceback,
nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"
# An MoE model with parallel.expert = 64 and no [chunk] table: its components are derived.
MOE = ROOT / "scenarios" / "deepseek-v3-predicted.toml"


def cli_error(tmp_path, scenario, *sets: str) -> str:
    """Run `dualpipe-sim run` with --set overrides; assert exit 2, one stderr line, no output
    folder; return the line."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dualpipe_sim", "run", str(scenario), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"
    return proc.stderr.rstrip("\n")


@pytest.mark.parametrize("name,value", [("forward", "3"), ("backward", "6"), ("weight", "1"), ("overlapped", "8")])
def test_costs_with_a_derived_moe_model_is_one_line(tmp_path, name, value):
    """docs/model.md: with parallel.expert > 1 the costs are the derived [chunk] components,
    so a typed costs.* figure would be silently ignored; it is refused instead."""
    line = cli_error(tmp_path, MOE, f"costs.{name}={value}")
    assert line == (
        f"error: costs.{name}: must be left out for an MoE model with parallel.expert > 1 "
        "(the [chunk] components are derived; type a [chunk] table to override them)"
    )


def test_the_same_moe_model_without_expert_parallelism_takes_costs(tmp_path):
    """The rule is about expert parallelism: with parallel.expert = 1 the same scenario's
    typed costs are what the run uses (so the refusal above is not a blanket one)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dualpipe_sim", "run", str(MOE), "--out", str(out), "--plots", "none",
         "--set", "parallel.expert=1", "--set", "costs.forward=3", "--set", "costs.backward=6"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.json").exists()


def test_nan_whole_number_is_one_line(tmp_path):
    """TOML's nan where a whole number goes: NaN fails every comparison, so the line says
    plainly that a number is wanted and that NaN was given."""
    assert cli_error(tmp_path, QUICK, "pipeline.microbatches=nan") == (
        "error: pipeline.microbatches: must be a number, got NaN")


@pytest.mark.parametrize("key", ["costs.forward", "comm.p2p"])
def test_nan_duration_is_one_line(tmp_path, key):
    assert cli_error(tmp_path, QUICK, f"{key}=nan") == f"error: {key}: must be a finite number, got nan"


def test_an_absurdly_long_value_is_cut_in_the_line(tmp_path):
    """A 100,000-character value: the line shows its first 60 characters of repr and its
    length (repr adds the two quotes: 100,002), not the whole value."""
    line = cli_error(tmp_path, QUICK, "pipeline.stages=" + "x" * 100_000)
    assert line == "error: pipeline.stages: must be a whole number, got '" + "x" * 59 + "... (100002 characters)"


def test_a_value_of_80_characters_is_shown_whole(tmp_path):
    """The cut starts above 80 characters of repr: 78 x's and two quotes are 80, shown whole."""
    line = cli_error(tmp_path, QUICK, "comm.p2p_mode=" + "x" * 78)
    assert line == ("error: comm.p2p_mode: input should be 'async', 'blocking' or 'derived', got '"
                    + "x" * 78 + "'")
