"""docs/architecture.md's "How to add an op kind", followed on a copy of the package.

A recompute kind R (the forward rerun before its backward: it reads its stage's saved activation,
runs the forward pass, costs a forward and frees nothing) is added by the recipe's three steps,
as text edits of a copy of dualpipe_sim (a Kind cannot be added to the real one at run time), and
a hand-written schedule is run on it in a subprocess.  If the code moves under the recipe, an
edit's anchor is missing and the test says which; if the recipe stops being enough, the run fails.

Hand-worked: 2 stages on 2 ranks, 2 micro-batches, F = R = 1, B = 2 ms, no P2P time;
rank 0 runs F0 F1 R0 B0 R1 B1, rank 1 runs F0 R0 B0 F1 R1 B1.
  rank 1: F0 1-2 (after 0F0 ends at 1), R0 2-3, B0 3-5, F1 5-6, R1 6-7, B1 7-9;
  rank 0: F0 0-1, F1 1-2, R0 2-3, B0 5-7 (the gradient of 1B0 at 5), R1 7-8, B1 9-11.
Makespan 11 ms.  Activations (F allocates at its start, B frees at its end, R neither; a free and an
allocation at one instant free first): rank 0 1, 2, 1, 0 (allocations at 0 and 1, frees at 7 and 11);
rank 1 1, 0, 1, 0 (at 1, 5, 5, 9).  Had R freed too (the trap the old derived FREES set), rank 0 would
go 1, 2, 1, 0, -1, -2: the recipe's declaration `frees=True` for R is refused at import instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dualpipe_sim"


def recipe(frees: bool) -> dict[str, list[tuple[str, str]]]:
    """The recipe's edits for R, per file: (anchor, anchor with the addition)."""
    w_rule = '    Kind.W: Rule((Need(Data.INPUT_GRAD, 0),), (), "weight-gradient part", (Kind.W,), frees=False),\n'
    work = "WORK: tuple[tuple[Kind, ...], ...] = ((Kind.F, Kind.B), (Kind.F, Kind.I, Kind.W)"
    return {
        # step 1: a member of Kind, its RULES entry (needs, produces, passes, frees), its place in WORK
        "schedules/rules.py": [
            ('    W = "W"  # weight-gradient part of a split backward\n',
             '    W = "W"  # weight-gradient part of a split backward\n    R = "R"  # recompute\n'),
            (w_rule, w_rule + f'    Kind.R: Rule((Need(Data.ACTIVATION, 0),), (), "recompute", (Kind.F,), frees={frees}),\n'),
            (work, work + ", (Kind.F, Kind.R, Kind.B)"),
        ],
        # step 2: its length (CostModel.duration; plan's _lengths is not used by a run)
        "inputs/costs.py": [('        if op.kind == "F":\n', '        if op.kind in ("F", "R"):\n')],
        # step 3: its colours and words
        "outputs/plots/style.py": [
            ('"W": "#dcebf5"}', '"W": "#dcebf5", "R": "#b2df8a"}'),
            ('"W": "#fdebd6"}', '"W": "#fdebd6", "R": "#ffff99"}'),
            ('"W": "weight-grad"}', '"W": "weight-grad", "R": "recompute"}'),
        ],
    }  # fmt: skip


RUN = r"""
import json, sys
import numpy as np
from dualpipe_sim import simulation
from dualpipe_sim.engine import simpy_engine
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.outputs.exports.chrome import chrome_trace
from dualpipe_sim.outputs.plots.gantt_file import save_gantt
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.ir import Op, Schedule
from dualpipe_sim.schedules.rules import KIND_CODES

order = ("F0 F1 R0 B0 R1 B1", "F0 R0 B0 F1 R1 B1")
schedule = Schedule("recompute", 2, 2, tuple(tuple(Op(a[0], int(a[1:]), s) for a in o.split()) for s, o in enumerate(order)))
costs = CostModel.uniform(2, forward=1.0, backward=2.0)
out = {}
for name, simulate in (("replay", simulation.simulate), ("simpy", simpy_engine.simulate)):
    t = simulate(schedule, costs)
    m = t.memory
    r_rows = t.compute[t.compute["kind"] == KIND_CODES["R"]]
    out[name] = {"makespan": float(t.makespan),
                 "levels": [np.cumsum(m["units"][m["rank"] == r]).tolist() for r in range(2)],
                 "R": sorted((int(r["rank"]), int(r["microbatch"]), float(r["start"]), float(r["end"])) for r in r_rows)}
doc = chrome_trace(simulation.simulate(schedule, CostModel.uniform(2, forward=1.0, backward=2.0, p2p=0.5)))
out["flows"] = sum(e["ph"] == "s" for e in doc["traceEvents"])
save_gantt(t, compute_metrics(t), sys.argv[1])
print(json.dumps(out))
"""


def run_with_recipe(tmp_path: Path, frees: bool) -> subprocess.CompletedProcess:
    copy = tmp_path / "dualpipe_sim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for name, edits in recipe(frees).items():
        path = copy / name
        text = path.read_text()
        for anchor, new in edits:
            assert text.count(anchor) == 1, f"{name}: the recipe's anchor {anchor!r} is not there once: update the test and the recipe"
            text = text.replace(anchor, new)
        path.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "gantt.png")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_recompute_kind_added_by_the_recipe_runs_to_the_hand_worked_figures(tmp_path):
    done = run_with_recipe(tmp_path, frees=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for engine in ("replay", "simpy"):
        got = out[engine]
        assert got["makespan"] == 11.0
        assert got["levels"] == [[1, 2, 1, 0], [1, 0, 1, 0]]  # never below zero, back to zero at the end
        assert got["R"] == [[0, 0, 2.0, 3.0], [0, 1, 7.0, 8.0], [1, 0, 2.0, 3.0], [1, 1, 6.0, 7.0]]  # (rank, mb, start, end)
    assert out["flows"] == 4  # with P2P time, each send's arrow to its reader: 0F0 -> 1F0, 0F1 -> 1F1, 1B0 -> 0B0, 1B1 -> 0B1: R reads nothing from another stage
    assert (tmp_path / "gantt.png").stat().st_size > 0


def test_a_recompute_kind_that_frees_is_refused_at_import(tmp_path):
    """The double free the derived FREES set allowed: now a WORK set freeing twice stops the import, in words."""
    done = run_with_recipe(tmp_path, frees=True)
    assert done.returncode != 0
    assert "rules: WORK ('F', 'R', 'B') must free the activation once" in done.stderr


@pytest.mark.parametrize("kind", ["F", "W"])
def test_a_kind_that_frees_what_it_never_reads_is_refused(tmp_path, kind):
    """Rule.frees without the kind reading its own stage's activation: refused, naming the kind."""
    copy = tmp_path / "dualpipe_sim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rules = copy / "schedules/rules.py"
    text = rules.read_text()
    anchor = {"F": '"forward", (Kind.F,), frees=False)', "W": '"weight-gradient part", (Kind.W,), frees=False)'}[kind]
    assert text.count(anchor) == 1
    rules.write_text(text.replace(anchor, anchor.replace("frees=False", "frees=True")))
    done = subprocess.run([sys.executable, "-c", "import dualpipe_sim.schedules.rules"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert f"rules: {kind} frees its stage's activation but never reads it" in done.stderr
