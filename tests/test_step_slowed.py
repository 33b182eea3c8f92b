"""The compute slowdown beside data-parallel collectives, shown: a SLOWED row per rank and metrics.json's
``step.slowed`` / ``step.per_rank[].slowed`` (issue 21 s20s; docs/step.md, "Metrics" and "Data-parallel collectives
take SMs").

``step.dp_comm_sms`` stretches a rank's times (engine/step.py _stretch: t -> t + the slowdown accrued before t); its
compute rows keep their unslowed times.  What the stretch charged by the rank's pipeline end P, map(P) - P, is a row on
its compute from P to map(P), where the drain starts.  A sync is exposed after the rank's compute end, map(P) + the
drain.  The identity, per rank without cross-copy sums (every grad sync is released by the compute's end, so its
channel then runs without a gap, then the tail and the optimizer):

    end == pipeline_end + slowed + drain + grad_sync_exposed + optimizer

The typed-cost case: 1F1B, 2 stages x 4 micro-batches, F = 1, B = 3, no P2P cost, worked by hand:
  rank 0: F0 [0,1] F1 [1,2] B0 [5,8] F2 [8,9] B1 [9,12] F3 [12,13] B2 [13,16] B3 [17,20]
  rank 1: F0 [1,2] B0 [2,5] F1 [5,6] B1 [6,9] F2 [9,10] B2 [10,13] F3 [13,14] B3 [14,17]
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.step import with_step
from dualpipe_sim.engine.trace import DRAIN, GRAD_SYNC, ON_COMPUTE, OPTIMIZER, SLOWED, STEP_KIND_NAMES
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.outputs.exports.chrome import chrome_trace
from dualpipe_sim.outputs.files import metrics_json
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.readers.step_metrics import step_metrics
from dualpipe_sim.schedules import registry
from dualpipe_sim.step_costs import StepCosts
from helpers import step_kind_path

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(forward=(1.0, 1.0), backward=(3.0, 3.0), weight=(1.0, 1.0), activation_bytes=(1.0, 1.0),
            parameter_bytes=(1.0, 1.0))


def stepped(**step):
    """Grad sync 2 ms (stage 0) and 4 ms (stage 1), each in two overlapped buckets; optimizer 0.5 a stage;
    slowdown 2.0 on stage 0 and 1.5 on stage 1."""
    costs = StepCosts(**({"grad_sync": (2.0, 4.0), "cross_copy_sync": (0.0, 0.0), "optimizer": (0.5, 0.5),
                          "overlap_grad_sync": True, "grad_sync_buckets": 2, "dp_comm_slowdown": (2.0, 1.5)}
                         | step))  # fmt: skip
    pipeline = simulation.simulate(registry.build("1f1b", 2, 4), CostModel(**BASE))
    trace = with_step(pipeline, costs)
    rows = {}
    for r in trace.step:
        rows.setdefault((int(r["kind"]), int(r["rank"])), []).append((float(r["start"]), float(r["end"])))
    return trace, costs, rows


def adds_up(p) -> float:
    """end - (pipeline_end + slowed + drain + grad_sync_exposed + optimizer): 0 where the identity holds."""
    return p.end - (p.pipeline_end + (p.slowed or 0.0) + (p.drain or 0.0) + p.grad_sync_exposed + p.optimizer)


def test_slowed_rows_by_hand():
    """Rank 1: B3 [14,17] releases 2 ms at 15.5 and 2 ms at 17; first pass [15.5,17.5], [17.5,19.5]; B3 beside the
    first for 1.5 ms at f = 1.5: 0.75 more, so map(17) = 17.75.  Second pass: [15.5,17.5], [17.75,19.75], the
    optimizer [19.75,20.25]; the slowed row [17, 17.75]; exposed after 17.75: 2 (not 2.5, as measured from 17 before
    s20s).  Rank 0: B3 [17,20] releases 1 ms at 18.5 and at 20: first pass [18.5,19.5], [20,21]; B3 beside the first
    for 1 ms at f = 2: 1 more, map(20) = 21; second pass [18.5,19.5], [21,22], the optimizer [22,22.5], slowed
    [20,21], exposed 1.  end = P + slowed + exposed + optimizer: 17 + 0.75 + 2 + 0.5 = 20.25, 20 + 1 + 1 + 0.5."""
    trace, costs, rows = stepped()
    assert SLOWED in ON_COMPUTE and STEP_KIND_NAMES[SLOWED] == "slowed"
    assert rows[(GRAD_SYNC, 1)] == [(15.5, 17.5), (17.75, 19.75)]
    assert rows[(SLOWED, 1)] == [(17.0, 17.75)]
    assert rows[(OPTIMIZER, 1)] == [(19.75, 20.25)]
    assert rows[(GRAD_SYNC, 0)] == [(18.5, 19.5), (21.0, 22.0)]
    assert rows[(SLOWED, 0)] == [(20.0, 21.0)]
    assert rows[(OPTIMIZER, 0)] == [(22.0, 22.5)]
    m = step_metrics(trace, costs)
    zero, one = m.per_rank
    assert (one.pipeline_end, one.slowed, one.grad_sync_exposed, one.end) == (17.0, 0.75, 2.0, 20.25)
    assert (zero.pipeline_end, zero.slowed, zero.grad_sync_exposed, zero.end) == (20.0, 1.0, 1.0, 22.5)
    assert (m.slowed, m.total, m.grad_sync.exposed) == (1.0, 22.5, 2.0)
    assert adds_up(zero) == 0.0 and adds_up(one) == 0.0


def test_the_earlier_backwards_collectives_charged_too():
    """ZeRO 2's reduce-scatters after each earlier backward (every_backward): stage 1's 1 ms at B0, B1 and B2's ends,
    [5,6], [9,10], [13,14], beside F1, F2 and F3 for 1 ms each (+0.5 each at f = 1.5), then B3 beside the first
    bucket as above (+0.75): map(15.5) = 17, map(17) = 19.25.  Buckets [17,19], [19.25,21.25]; slowed [17, 19.25]
    (2.25); optimizer [21.25,21.75] = 17 + 2.25 + 2 + 0.5.  The earlier ones are grad sync rows on the stretched
    times (s21k): [5,6], [9.5,10.5], [14,15], none exposed."""
    trace, costs, rows = stepped(every_backward=((), (1.0,)), grad_sync=(0.0, 4.0), dp_comm_slowdown=(1.0, 1.5))
    assert rows[(GRAD_SYNC, 1)] == [(5.0, 6.0), (9.5, 10.5), (14.0, 15.0), (17.0, 19.0), (19.25, 21.25)]
    assert rows[(SLOWED, 1)] == [(17.0, 19.25)]
    assert rows[(OPTIMIZER, 1)] == [(21.25, 21.75)]
    assert (SLOWED, 0) not in rows  # nothing beside rank 0's compute: no row, and 0 in the block
    m = step_metrics(trace, costs)
    assert [p.slowed for p in m.per_rank] == [0.0, 2.25]
    assert m.per_rank[1].grad_sync_exposed == 2.0 and adds_up(m.per_rank[1]) == 0.0
    assert adds_up(m.per_rank[0]) == 0.0  # 20 + 0 + 0 + 0.5


def test_the_drain_starts_where_the_slowed_row_ends():
    """A drain of 4 on stage 1 after rank 1's pipeline work (as tests/test_drain_rows.py, the backwards not made
    lighter here): B3 beside the first bucket [15.5,17.5] for 1.5 ms (+0.75), the first pass's drain [17,21] beside
    both buckets for 0.5 + 2 ms (+1.25): slowed [17,17.75], the drain keeps its mapped place [17.75, 21 + 2 = 23], its
    own slowdown in its length (5.25), the optimizer [23,23.5]; the second bucket [17.75,19.75] runs beside the drain:
    nothing exposed.  23.5 = 17 + 0.75 + 5.25 + 0 + 0.5."""
    trace, costs, rows = stepped(grad_sync=(0.0, 4.0), dp_comm_slowdown=(1.0, 1.5), drain=(0.0, 4.0))
    assert rows[(SLOWED, 1)] == [(17.0, 17.75)]
    assert rows[(DRAIN, 1)] == [(17.75, 23.0)]
    assert rows[(GRAD_SYNC, 1)] == [(15.5, 17.5), (17.75, 19.75)]
    assert rows[(OPTIMIZER, 1)] == [(23.0, 23.5)]
    one = step_metrics(trace, costs).per_rank[1]
    assert (one.slowed, one.drain, one.grad_sync_exposed, one.end) == (0.75, 5.25, 0.0, 23.5)
    assert adds_up(one) == 0.0


def test_nothing_slowed_no_row_no_key():
    """Every factor 1 (step.dp_comm_sms = 0): no row, and metrics.json as before (no ``slowed`` key anywhere)."""
    trace, costs, rows = stepped(dp_comm_slowdown=(1.0, 1.0))
    assert not any(k == SLOWED for k, _ in rows)
    m = step_metrics(trace, costs)
    assert m.slowed is None and all(p.slowed is None for p in m.per_rank)
    doc = json.loads(metrics_json(replace(compute_metrics(trace), step=m)))
    assert "slowed" not in doc["step"] and not any("slowed" in p for p in doc["step"]["per_rank"])
    trace, costs, _ = stepped()
    slowed = json.loads(metrics_json(replace(compute_metrics(trace), step=step_metrics(trace, costs))))
    assert slowed["step"]["slowed"] == 1.0 and [p["slowed"] for p in slowed["step"]["per_rank"]] == [1.0, 0.75]


# -- the identity on derived layouts (the kernel model on H100, where step.dp_comm_sms slows compute) ---------------

MODEL = """[model]
model_type = "llama"
hidden_size = 2048
num_hidden_layers = 8
vocab_size = 32000
num_attention_heads = 16
num_key_value_heads = 4
intermediate_size = 8192
seq_length = 2048
micro_batch_size = 1
"""


def derived(schedule="1f1b", stages=2, zero=1, sms=16, defer=0, step="", chunks=0, overlap="true"):
    text = (f'[pipeline]\nschedule = "{schedule}"\nstages = {stages}\nmicrobatches = 8\n'
            + (f"chunks_per_rank = {chunks}\n" if chunks else "") + MODEL
            + f"defer_embedding_wgrad = {defer}\n[parallel]\ndata = 8\nzero = {zero}\n[hardware]\npreset = \"H100\"\n"
            + f'[step]\ngrad_sync = "derived"\noptimizer = "derived"\noverlap_grad_sync = {overlap}\ndp_comm_sms = {sms}\n'
            + step)  # fmt: skip
    return simulation.run(scenario.from_dict(tomllib.loads(text)))


LAYOUTS = {  # name -> (derived()'s arguments, whether some rank's compute is slowed)
    "zero1-overlapped": (dict(zero=1), True),
    "zero1-overlapped-drain": (dict(zero=1, defer=2), True),
    "zero1-not-overlapped-drain": (dict(zero=1, defer=2, overlap="false"), False),
    "zero1-pp-aligned": (dict(schedule="interleaved-1f1b", stages=4, chunks=2, step='grad_sync_launch = "pp-aligned"\n'),
                         True),
    "zero2": (dict(zero=2), True),
    "zero2-drain": (dict(zero=2, defer=2), True),
    "zero3": (dict(zero=3), False),  # its per-unit collectives are slowed inside its actions (model/fsdp.py)
    "zero1-sms0": (dict(zero=1, sms=0), False),
    "zero2-sms0-drain": (dict(zero=2, sms=0, defer=2), False),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_step_adds_up_per_rank(name):
    kw, slows = LAYOUTS[name]
    res = derived(**kw)
    st, t = res.metrics.step, res.trace
    for p in st.per_rank:
        assert adds_up(p) == pytest.approx(0.0, abs=1e-9 * p.end), (name, p)
        rows = t.step[(t.step["rank"] == p.rank) & (t.step["kind"] == SLOWED)]
        if p.slowed:  # one row, from the unslowed pipeline end
            assert len(rows) == 1 and float(rows["start"][0]) == p.pipeline_end
            assert float(rows["end"][0] - rows["start"][0]) == pytest.approx(p.slowed)
        else:
            assert len(rows) == 0
        drain = t.step[(t.step["rank"] == p.rank) & (t.step["kind"] == DRAIN)]
        if len(drain):  # the drain follows the slowed row at once
            assert float(drain["start"].min()) == pytest.approx(p.pipeline_end + (p.slowed or 0.0), abs=1e-12)
    assert (st.slowed is None) == (kw.get("sms", 16) == 0)
    assert (max(p.slowed or 0.0 for p in st.per_rank) > 0.0) == slows
    if kw.get("defer"):
        assert st.drain


def test_sweep_results_carry_step_slowed(tmp_path):
    """results.csv's ``step.slowed`` (s21e): a point whose compute step.dp_comm_sms slows holds metrics.json's figure,
    the most on one rank, which each rank's identity gives (end - pipeline_end - grad_sync_exposed - optimizer, no
    drain or cross-copy sum here); a point with dp_comm_sms = 0 (nothing slowed) leaves it empty, as the other
    optional step columns are."""
    import csv

    from dualpipe_sim.cli import parse_grid
    from dualpipe_sim.sweep import run_sweep

    text = (f'[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 8\n{MODEL}[parallel]\ndata = 8\n'
            '[hardware]\npreset = "H100"\n[step]\ngrad_sync = "derived"\noptimizer = "derived"\n'
            "overlap_grad_sync = true\n")  # fmt: skip
    path = tmp_path / "s.toml"
    path.write_text(text)
    run_sweep(path, parse_grid(["step.dp_comm_sms=0,16"]), tmp_path / "out", jobs=1, charts=False)
    with (tmp_path / "out" / "results.csv").open(newline="") as f:
        rows = {r["step.dp_comm_sms"]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == rows["16"]["status"] == "ok"
    assert rows["0"]["step.slowed"] == "" and rows["0"]["step.total"] != ""
    st = simulation.run(scenario.from_dict(tomllib.loads(text + "dp_comm_sms = 16\n"))).metrics.step
    by_identity = max(p.end - p.pipeline_end - p.grad_sync_exposed - p.optimizer for p in st.per_rank)
    assert float(rows["16"]["step.slowed"]) == st.slowed == pytest.approx(by_identity)
    assert st.slowed > 0.0

def test_cross_copy_sums_can_keep_a_rank_waiting():
    """DualPipe: a stage's sum waits for both copies, so a rank can idle for its pair and the two channels run side
    by side: end - (pipeline_end + slowed + optimizer) is at least the larger exposed figure (no drain here)."""
    res = derived(schedule="dualpipe", stages=4, step='cross_copy_sync = "derived"\n')
    for p in res.metrics.step.per_rank:
        rest = p.end - (p.pipeline_end + (p.slowed or 0.0) + p.optimizer)
        assert p.cross_copy_exposed > 0.0
        assert rest >= max(p.grad_sync_exposed, p.cross_copy_exposed) - 1e-9


def test_the_reported_case_llama3_70b_zero2(tmp_path, capsys):
    """The issue's case: Llama 3 70B, interleaved 4 x 5 x 16, ZeRO 2, derived grad sync: rank 0's step (5.0 s) was
    pipeline 3.69 s + exposed sync 0.24 s + optimizer, 1.06 s short; the slowdown is now a row, a figure and a word
    of the step line, and each rank's end adds up (how large it is is the cost model's, s20n's, not checked here)."""
    from dualpipe_sim.cli import main

    out = tmp_path / "o"
    args = ["run", str(ROOT / "scenarios" / "llama3-70b.toml"), "--out", str(out), "--plots", "none",
            "--set", "step.grad_sync=derived", "--set", "step.optimizer=1", "--set", "parallel.zero=2"]  # fmt: skip
    assert main(args) == 0
    assert "compute slowed beside data-parallel collectives" in capsys.readouterr().out
    st = json.loads((out / "metrics.json").read_text())["step"]
    worst = max(st["per_rank"], key=lambda p: p["end"])
    assert worst["slowed"] > 0.0 and st["slowed"] == max(p["slowed"] for p in st["per_rank"])
    for p in st["per_rank"]:
        assert p["end"] == pytest.approx(p["pipeline_end"] + p["slowed"] + p["grad_sync_exposed"] + p["optimizer"])


# -- drawn: gantt.png, the bands, report.html, the Chrome trace, memory.png ------------------------------------------

def test_gantt_draws_the_slowed_row_in_the_compute_lane():
    """Rank 1's slowed row [17, 17.75] a box of its compute lane, in its own colour, its word "slowed" where it fits;
    the legend names it."""
    from dualpipe_sim.outputs.plots.style import STEP_COLOURS, STEP_LABELS, STEP_WORDS

    trace, _, _ = stepped()
    path, gantt = step_kind_path(trace, "slowed", 40.0)  # one compound path: 5 vertices a box, closed
    box = path.vertices.reshape(-1, 5, 2)[:, :4]
    spans = sorted((float(b[:, 0].min()), float(b[:, 0].max()), float(b[:, 1].min())) for b in box)
    assert spans == [(17.0, 17.75, pytest.approx(-gantt.ROW_H)), (20.0, 21.0, pytest.approx(0.0))]
    assert STEP_LABELS["slowed"] in [h.get_label() for h in gantt.step_legend(trace)]
    assert set(STEP_WORDS) == {STEP_KIND_NAMES[k] for k in ON_COMPUTE}  # every compute-lane box has its word
    assert set(STEP_COLOURS) == set(STEP_LABELS) == set(STEP_KIND_NAMES)  # and every kind its colour and legend


def test_bands_count_the_slowed_row_as_compute():
    """The long-run view: rank 0's slowed row [20, 21] fills its bin's compute lane in the slowed colour (the bin
    [20, 21] of 22.5 bins 0-22.5 wide 1, no averaging)."""
    from dualpipe_sim.outputs.plots import overview

    trace, _, _ = stepped()
    bands = overview.band_shares(trace, 0.0, 22.5, 45, window=0.0)  # bins of 0.5
    assert bands.slowed[0, 40] == pytest.approx(1.0) and bands.slowed[0, 41] == pytest.approx(1.0)
    assert bands.slowed[0, 39] == 0.0 and bands.slowed[0, 42] == 0.0
    assert bands.busy[0, 40] == pytest.approx(1.0)
    assert bands.slowed[1, 34] == pytest.approx(1.0) and bands.slowed[1, 35] == pytest.approx(0.5)
    assert "slowed" in bands.drawn()
    assert "slowed beside DP collectives" in [h.get_label() for h in overview.band_legend([bands])]


def test_report_and_chrome_trace_show_it():
    from dualpipe_sim.outputs.plots.report import gantt_traces
    from dualpipe_sim.outputs.plots.style import STEP_LABELS

    trace, _, _ = stepped()
    traces, _ = gantt_traces(trace, "run", 0)
    (bar,) = [t for t in traces if t["name"] == STEP_LABELS["slowed"]]
    assert sorted(zip(bar["base"], bar["x"])) == [(17.0, 0.75), (20.0, 1.0)]
    doc = chrome_trace(trace)
    evs = sorted((e["pid"], e["tid"], e["ts"], e["dur"]) for e in doc["traceEvents"] if e.get("cat") == "slowed")
    assert evs == [(0, 1, 20000.0, 1000.0), (1, 1, 17000.0, 750.0)]  # the compute thread, in microseconds
