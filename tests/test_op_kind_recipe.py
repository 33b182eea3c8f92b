"""docs/architecture.md's "How to add an op kind", followed on a copy of the package.

An op kind is one declaration: a member of rules.Kind, its RULES entry (needs, results, passes, whether it frees,
its Look) and its place in WORK.  Each test adds a kind that way, as text edits of rules.py in a copy of
dualpipe_sim (a Kind cannot be added to the real one at run time), and runs it in a subprocess: its length, memory,
buffers, plan estimate and chart all come from the declaration.  If the code moves under the recipe, an edit's
anchor is missing and the test says which; if the recipe stops being enough, the run fails.

A recompute kind R (the forward rerun before its backward: it reads its stage's saved activation,
runs the forward pass, so costs a forward, and frees nothing).
Hand-worked: 2 stages on 2 ranks, 2 micro-batches, F = R = 1, B = 2 ms, no P2P time;
rank 0 runs F0 F1 R0 B0 R1 B1, rank 1 runs F0 R0 B0 F1 R1 B1.
  rank 1: F0 1-2 (after 0F0 ends at 1), R0 2-3, B0 3-5, F1 5-6, R1 6-7, B1 7-9;
  rank 0: F0 0-1, F1 1-2, R0 2-3, B0 5-7 (the gradient of 1B0 at 5), R1 7-8, B1 9-11.
Makespan 11 ms.  Activations (F allocates at its start, B frees at its end, R neither; a free and an
allocation at one instant free first): rank 0 1, 2, 1, 0 (allocations at 0 and 1, frees at 7 and 11);
rank 1 1, 0, 1, 0 (at 1, 5, 5, 9).  Had R freed too (the trap the old derived FREES set), rank 0 would
go 1, 2, 1, 0, -1, -2: the recipe's declaration `frees=True` for R is refused at import instead.

A whole backward under another letter, X (what B needs, produces and runs: the input- and weight-gradient passes,
freeing the activation), drawn in its own colours, dark and hatched: the places that once asked for the letters B, I
or W ask its declaration instead (s21f), so it flows through them with no other edit.
Hand-worked: GPipe's order with X for B on 2 stages, 2 micro-batches (each rank F0 F1 X1 X0), F = 1, B = 2, W = 0.5 ms,
no P2P time, and the output layer's wgrad deferred on stage 1 for micro-batch 0 (CostModel.deferred
(1, 1, 0.5, 0.25): that X runs 0.5 + 0.25 ms less, 1.25 ms):
  rank 0: F0 0-1, F1 1-2;  rank 1: F0 1-2, F1 2-3, X1 3-5, X0 5-6.25;  rank 0: X1 5-7, X0 7-9 (1X0's gradient at 6.25).
Makespan 9 ms; the deferred buffer (model/buffers.py) is taken at the end of the X that frees stage 1's activation of
micro-batch 0: rank 1 at 6.25 ms.  plan: every backward whole (no kind running weight gradients apart), so its
compute floor holds the drain; its action lengths F 1, X 2, the light X 1.25 ms.  gantt.png: X's boxes in its
colours and hatched, its legend entry "X other backward".
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


W_RULE = """    Kind.W: Rule((Need(Data.INPUT_GRAD, 0),), (), "weight-gradient part", (Kind.W,), frees=False,
                 look=Look(("#dcebf5", "#fdebd6"), "weight-grad", hatched=True)),
"""
WORK = "WORK: tuple[tuple[Kind, ...], ...] = ((Kind.F, Kind.B), (Kind.F, Kind.I, Kind.W)"


def declare(letter: str, rule: str, work: str) -> dict[str, list[tuple[str, str]]]:
    """The recipe's one declaration, per file: (anchor, anchor with the addition)."""
    return {
        "schedules/rules.py": [
            ('    W = "W"  # weight-gradient part of a split backward\n',
             f'    W = "W"  # weight-gradient part of a split backward\n    {letter} = "{letter}"\n'),
            (W_RULE, W_RULE + f"    Kind.{letter}: {rule},\n"),
            (WORK, WORK + f", {work}"),
        ],
    }  # fmt: skip


def recipe(frees: bool) -> dict[str, list[tuple[str, str]]]:
    """The recipe's edits for R: needs its own stage's activation, runs the forward pass, frees nothing."""
    rule = (f'Rule((Need(Data.ACTIVATION, 0),), (), "recompute", (Kind.F,), frees={frees}, '
            f'look=Look(("#b2df8a", "#ffff99"), "recompute"))')  # fmt: skip
    return declare("R", rule, "(Kind.F, Kind.R, Kind.B)")


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


def run_with_recipe(tmp_path: Path, frees: bool, edits=None, script: str = RUN) -> subprocess.CompletedProcess:
    copy = tmp_path / "dualpipe_sim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for name, changes in (edits or recipe(frees)).items():
        path = copy / name
        text = path.read_text()
        for anchor, new in changes:
            assert text.count(anchor) == 1, f"{name}: the recipe's anchor {anchor!r} is not there once: update the test and the recipe"
            text = text.replace(anchor, new)
        path.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "gantt.png")], cwd=tmp_path, env=env,
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


X_COLOURS = ("#33a02c", "#6a3d9a")
X_RULE = (f'Rule((Need(Data.ACTIVATION, 0), Need(Data.GRADIENT, +1)), (Data.GRADIENT,), "other backward", '
          f'(Kind.I, Kind.W), frees=True, look=Look({X_COLOURS!r}, "other backward", dark=True, hatched=True))')  # fmt: skip

X_RUN = r"""
import json, sys
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from dualpipe_sim import simulation
from dualpipe_sim.engine import simpy_engine
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.model import buffers
from dualpipe_sim.outputs.plots import gantt
from dualpipe_sim.plan import estimate, step_estimate
from dualpipe_sim.schedules import registry
from dualpipe_sim.schedules.family import register
from dualpipe_sim.schedules.ir import Op, Schedule
from dualpipe_sim.schedules.rules import KIND_NAMES


@register("gpipe-x", check=lambda stages, microbatches: None, constraints="", description="GPipe with X for B")
def gpipe_x(stages, microbatches):
    ranks = tuple(tuple([Op("F", m, s) for m in range(microbatches)] + [Op("X", m, s) for m in reversed(range(microbatches))])
                  for s in range(stages))
    return Schedule("gpipe-x", stages, microbatches, ranks)


registry._REGISTRY["gpipe-x"] = gpipe_x.family  # a family for the test, not an edit of the package
schedule = registry.build("gpipe-x", 2, 2)
costs = CostModel.uniform(2, forward=1.0, backward=2.0, weight=0.5)
costs = type(costs)(**{**costs.__dict__, "deferred": (1, 1, 0.5, 0.25)})
out = {}
for name, simulate in (("replay", simulation.simulate), ("simpy", simpy_engine.simulate)):
    t = simulate(schedule, costs)
    out[name] = sorted((int(r["rank"]), KIND_NAMES[r["kind"]], int(r["microbatch"]), float(r["start"]), float(r["end"]))
                       for r in t.compute)
buffers.held_bytes = lambda st: 1.0  # the buffer's size is deferred_wgrad's; when and where it is taken is asked here
rank, time, size = buffers._deferred(t, None, costs.deferred)
out["deferred"] = [(int(r), float(w)) for r, w in zip(rank, time)]
out["whole"] = estimate.whole_backwards("gpipe-x", 2, None)
b = step_estimate.built("gpipe-x", 2, 2, None)
stage_costs = step_estimate.StageCosts((1.0, 1.0), (2.0, 2.0), (0.5, 0.5), deferred=(1, 1, 0.5, 0.25))
out["lengths"] = step_estimate.lengths(b, stage_costs).tolist()
out["plan_makespan"] = step_estimate.replayed(b, stage_costs, 0.0, False).makespan
fig = Figure(figsize=(8, 3))
ax = fig.add_axes((0.1, 0.2, 0.8, 0.6))
gantt.draw_gantt(ax, t, legend=False)
out["boxes"] = sorted({(to_hex(c.get_facecolor()[0]), c.get_hatch() or "") for c in ax.collections
                       if len(c.get_facecolor())})
out["legend"] = [(h.get_label(), to_hex(h.get_facecolor()), h.get_hatch() or "") for h in gantt.legend_for(t)]
print(json.dumps(out))
"""


def test_a_whole_backward_under_another_letter_flows_through_from_its_declaration(tmp_path):
    """X declared once (rules.py) is costed, deferred, estimated and drawn as its declaration says (hand-worked above)."""
    done = run_with_recipe(tmp_path, frees=False, edits=declare("X", X_RULE, "(Kind.F, Kind.X)"), script=X_RUN)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    want = [[0, "F", 0, 0.0, 1.0], [0, "F", 1, 1.0, 2.0], [0, "X", 0, 7.0, 9.0], [0, "X", 1, 5.0, 7.0],
            [1, "F", 0, 1.0, 2.0], [1, "F", 1, 2.0, 3.0], [1, "X", 0, 5.0, 6.25], [1, "X", 1, 3.0, 5.0]]  # fmt: skip
    assert out["replay"] == want and out["simpy"] == want
    assert out["deferred"] == [[1, 6.25]]  # the end of the light X: rules.FREES, not the letters B and I
    assert out["whole"] is True  # no kind running weight gradients apart (rules.WEIGHT_APART)
    assert sorted(out["lengths"]) == [1.0, 1.0, 1.0, 1.0, 1.25, 2.0, 2.0, 2.0]  # kind_length: X runs I and W, costs B
    assert out["plan_makespan"] == 9.0
    blue_f = "#a6cee3"  # F's direction-0 colour, from rules.RULES
    assert (X_COLOURS[0], "////") in [tuple(b) for b in out["boxes"]]  # its colour and, declared hatched, hatched
    assert (blue_f, "") in [tuple(b) for b in out["boxes"]]
    assert ["X other backward", X_COLOURS[0], "////"] in out["legend"]


@pytest.mark.parametrize("kind", ["F", "W"])
def test_a_kind_that_frees_what_it_never_reads_is_refused(tmp_path, kind):
    """Rule.frees without the kind reading its own stage's activation: refused, naming the kind."""
    copy = tmp_path / "dualpipe_sim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rules = copy / "schedules/rules.py"
    text = rules.read_text()
    anchor = {"F": '"forward", (Kind.F,), frees=False,', "W": '"weight-gradient part", (Kind.W,), frees=False,'}[kind]
    assert text.count(anchor) == 1
    rules.write_text(text.replace(anchor, anchor.replace("frees=False", "frees=True")))
    done = subprocess.run([sys.executable, "-c", "import dualpipe_sim.schedules.rules"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert f"rules: {kind} frees its stage's activation but never reads it" in done.stderr


def test_the_weight_gradient_part_is_drawn_hatched_as_declared_and_left_out_of_the_widening():
    """README's "W pale and hatched" from W's rules.Look: ZB-H1 on 2 stages, 4 micro-batches, F = 1, B = 2, W = 0.001 ms.
    Only the W boxes (and their legend entry) are hatched; their 0.001 ms would need a chart ~2,000 times wider for a
    number lying down, but a hatched kind's number sits on a backing, so gantt.png stays at its 10 inches."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from dualpipe_sim import simulation
    from dualpipe_sim.inputs.costs import CostModel
    from dualpipe_sim.outputs.plots import gantt
    from dualpipe_sim.schedules import registry

    trace = simulation.simulate(registry.build("zb-h1", 2, 4), CostModel.uniform(2, forward=1.0, backward=2.0, weight=0.001))
    fig = Figure(figsize=(8, 3))
    ax = fig.add_axes((0.1, 0.2, 0.8, 0.6))
    gantt.draw_gantt(ax, trace, legend=False)
    hatched = {to_hex(c.get_facecolor()[0]) for c in ax.collections if len(c.get_facecolor()) and c.get_hatch()}
    assert hatched == {"#dcebf5"}  # W's pale blue, direction 0
    legend = {h.get_label(): h.get_hatch() or "" for h in gantt.legend_for(trace)}
    assert legend == {"F forward": "", "I input-grad": "", "W weight-grad": "////"}
    assert gantt.widen_for_labels(10.0, [trace], trace.end) == 10.0
