"""The deferred output-layer wgrad's drain as trace rows, and slowed beside a grad sync (s19o), worked by hand.

``model.defer_embedding_wgrad`` runs the deferred wgrad GEMMs after the last rank's pipeline work
(Megatron-core core_r0.11.0 schedules.py ``finish_embedding_wgrad_compute``, after "Launch any remaining grad
reductions", before ``finalize_model_grads``).  An overlapped grad sync released earlier is not ordered after it (the
output weight's DDP hook fired in its deferred backward: ``register_grad_ready`` -> ``start_grad_sync``, an async
collective on NCCL's stream, and nothing makes it wait for the drain's GEMMs on the compute stream), so it runs
beside the drain and takes its SMs as it takes the pipeline's compute's (docs/model.md, "The output layer's deferred
weight gradients", and docs/step.md, "Data-parallel collectives take SMs": a compute interval overlapped for d ms by
the rank's grad sync takes (f - 1) d ms longer, the overlaps read off the unslowed first pass).

The engine case: 1F1B, 2 stages x 4 micro-batches, F = 1, B = 3, no P2P cost, micro-batches 0 and 1 deferred on
stage 1 (B 0.5 + 1.0 shorter: 1.5), as tests/test_defer_embedding_wgrad.py works it:
  rank 1: F0 [1,2] B0 [2,3.5] F1 [3.5,4.5] B1 [4.5,6] F2 [7.5,8.5] B2 [8.5,11.5] F3 [11.5,12.5] B3 [12.5,15.5]
  rank 0: F0 [0,1] F1 [1,2] B0 [3.5,6.5] F2 [6.5,7.5] B1 [7.5,10.5] F3 [10.5,11.5] B2 [11.5,14.5] B3 [15.5,18.5]
makespan 18.5; the drain (4) on rank 1 from its pipeline's end, 15.5, to 19.5.
"""

from __future__ import annotations

import json

import numpy as np

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.step import with_step
from dualpipe_sim.engine.trace import DRAIN, GRAD_SYNC, ON_COMPUTE, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.model import deferred_wgrad
from dualpipe_sim.outputs.exports.chrome import chrome_trace
from dualpipe_sim.outputs.files import metrics_json
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.readers.step_metrics import step_metrics
from dualpipe_sim.schedules import registry
from dualpipe_sim.step_costs import StepCosts
from helpers import TINY_LLAMA_MODEL, step_kind_path

BASE = dict(forward=(1.0, 1.0), backward=(3.0, 3.0), weight=(1.0, 1.0), activation_bytes=(1.0, 1.0),
            parameter_bytes=(1.0, 1.0))


def stepped(**step):
    costs = StepCosts(**({"grad_sync": (0.0, 1.0), "cross_copy_sync": (0.0, 0.0), "optimizer": (0.5, 0.5),
                          "overlap_grad_sync": True, "drain": (0.0, 4.0)} | step))  # fmt: skip
    pipeline = simulation.simulate(registry.build("1f1b", 2, 4), CostModel(**BASE, deferred=(1, 2, 0.5, 1.0)))
    trace = with_step(pipeline, costs)
    rows = {}
    for r in trace.step:
        rows.setdefault((int(r["kind"]), int(r["rank"])), []).append((int(r["stage"]), float(r["start"]), float(r["end"])))
    return trace, costs, rows


def test_drain_is_a_compute_row_on_the_head_rank():
    trace, _, rows = stepped()
    assert DRAIN in ON_COMPUTE  # drawn in the rank's compute lane
    assert rows[(DRAIN, 1)] == [(1, 15.5, 19.5)]  # stage 1's, from rank 1's last backward's end, 4 long
    assert (DRAIN, 0) not in rows
    assert rows[(OPTIMIZER, 1)] == [(-1, 19.5, 20.0)]  # after it
    assert trace.end == 20.0  # what gantt.png's axis and the Chrome trace run to


def test_busy_counts_the_drain_inside_the_makespan():
    """rank 1: F 4 x 1 + B 1.5 + 1.5 + 3 + 3 = 13 of pipeline compute, plus the drain's 18.5 - 15.5 = 3 inside the
    makespan: busy 16, idle 2.5, span from 1 to 18.5; rank 0 as without a drain (4 + 12 = 16)."""
    trace, _, _ = stepped()
    m = compute_metrics(trace)
    assert m.makespan == 18.5
    one, zero = m.per_rank[1], m.per_rank[0]
    assert (one.busy, one.idle, one.span, one.span_idle) == (16.0, 2.5, 17.5, 1.5)
    assert (zero.busy, zero.idle) == (16.0, 2.5)
    assert m.bubble_ratio == pytest.approx(5.0 / 37.0)


def test_step_block_names_the_drain_on_its_rank_only():
    trace, costs, _ = stepped()
    m = step_metrics(trace, costs)
    assert m.drain == 4.0
    assert [p.drain for p in m.per_rank] == [None, 4.0]
    assert m.per_rank[1].grad_sync_exposed == 0.0  # [15.5, 16.5] runs beside the drain
    m = compute_metrics(trace)
    from dataclasses import replace

    doc = json.loads(metrics_json(replace(m, step=step_metrics(trace, costs))))
    assert doc["step"]["drain"] == 4.0
    assert "drain" not in doc["step"]["per_rank"][0] and doc["step"]["per_rank"][1]["drain"] == 4.0


def test_without_a_drain_no_key():
    trace, costs, rows = stepped(drain=())
    assert not any(k == DRAIN for k, _ in rows)
    assert step_metrics(trace, costs).drain is None
    assert "drain" not in metrics_json(compute_metrics(trace))


def test_drain_slowed_beside_the_overlapped_sync():
    """Slowdown 1.5 on stage 1: the sync [15.5, 16.5] (released at B3's end) overlaps the first pass's drain
    [15.5, 19.5] for 1 ms: the drain takes 0.5 longer, to 20.0; the optimizer follows it (20.0, 20.5)."""
    trace, costs, rows = stepped(dp_comm_slowdown=(1.0, 1.5))
    assert rows[(GRAD_SYNC, 1)] == [(1, 15.5, 16.5)]
    assert rows[(DRAIN, 1)] == [(1, 15.5, 20.0)]
    assert rows[(OPTIMIZER, 1)] == [(-1, 20.0, 20.5)]
    assert step_metrics(trace, costs).total == 20.5


def test_drain_not_slowed_by_a_sync_after_it():
    """Not overlapped, the sync waits for the drain (Megatron's finish_grad_sync runs start_grad_sync in
    finalize_model_grads, after finish_embedding_wgrad_compute): nothing beside the drain, so nothing slows it."""
    _, _, rows = stepped(dp_comm_slowdown=(1.0, 1.5), overlap_grad_sync=False)
    assert rows[(DRAIN, 1)] == [(1, 15.5, 19.5)]
    assert rows[(GRAD_SYNC, 1)] == [(1, 19.5, 20.5)]
    assert rows[(OPTIMIZER, 1)] == [(-1, 20.5, 21.0)]


def test_sync_over_the_last_backward_and_the_drain():
    """Grad sync 4 in two buckets of 2, slowdown 1.5: bucket 1 ready half-way through B3 (14.0), bucket 2 at its
    end (15.5); first pass [14, 16], [16, 18].  B3 [12.5, 15.5] overlaps them 1.5 (+0.75), the drain [15.5, 19.5]
    2.5 (+1.25).  Second pass: rank 1's pipeline ends 16.25, the drain to 19.5 + 0.75 + 1.25 = 21.5; bucket 1 at
    14.0 [14, 16], bucket 2 at 16.25 [16.25, 18.25]; the optimizer (21.5, 22.0)."""
    trace, costs, rows = stepped(grad_sync=(0.0, 4.0), grad_sync_buckets=2, dp_comm_slowdown=(1.0, 1.5))
    assert rows[(GRAD_SYNC, 1)] == [(1, 14.0, 16.0), (1, 16.25, 18.25)]
    assert rows[(DRAIN, 1)] == [(1, 16.25, 21.5)]
    assert rows[(OPTIMIZER, 1)] == [(-1, 21.5, 22.0)]
    m = step_metrics(trace, costs)
    assert (m.total, m.drain, m.per_rank[1].grad_sync_exposed) == (22.0, 5.25, 0.0)


# -- the scenario: the drain of model.defer_embedding_wgrad = 2 on the tiny model, end to end ------------------------

def tiny(tmp_path):
    path = tmp_path / "t.toml"
    model = TINY_LLAMA_MODEL.replace("vocab_size = 1000", "vocab_size = 32000")
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + model
                    + 'micro_batch_size = 64\ndefer_embedding_wgrad = 2\n[parallel]\ntensor = 4\n'
                    + 'sequence_parallel = true\n[hardware]\npreset = "H100"\n[step]\ngrad_sync = 1.0\noptimizer = 0.5\n')
    return scenario.load(path)


def test_run_shows_the_drain(tmp_path):
    sc = tiny(tmp_path)
    st = sc.derived().setup
    drain = deferred_wgrad.drain_ms(st.cfg, st.rates, st.layout, 2)
    res = simulation.run(sc)
    t = res.trace
    (row,) = t.step[t.step["kind"] == DRAIN]
    # its pipeline work's end: its last backward and that backward's send to rank 0 (Megatron's send_backward, waited
    # for before finish_embedding_wgrad_compute)
    last = max(float(t.compute["end"][t.compute["rank"] == 1].max()), float(t.comm["end"][t.comm["rank"] == 1].max()))
    assert (int(row["rank"]), int(row["stage"])) == (1, 1)
    assert float(row["start"]) == pytest.approx(last, abs=1e-9)
    assert float(row["end"] - row["start"]) == pytest.approx(drain)
    assert res.metrics.step.per_rank[1].drain == pytest.approx(drain)
    doc = chrome_trace(t)
    (ev,) = [e for e in doc["traceEvents"] if e.get("cat") == "drain"]
    assert (ev["pid"], ev["tid"], ev["name"]) == (1, 1, "drain stage 1")  # the compute thread
    assert ev["dur"] == pytest.approx(drain * 1e3, abs=1e-3)  # microseconds


def test_gantt_draws_the_drain_in_the_compute_lane():
    """gantt.png: the drain a box of rank 1's compute lane (y from -ROW_H to -ROW_H + LANE_H, as the optimizer's),
    from 15.5 to 19.5, in its own colour; the legend names it."""
    from dualpipe_sim.outputs.plots.style import STEP_LABELS

    trace, _, _ = stepped()
    path, gantt = step_kind_path(trace, "drain", 10.0)
    xs, ys = path.vertices[:, 0], path.vertices[:, 1]
    assert (xs.min(), xs.max()) == (15.5, 19.5)
    assert (ys.min(), ys.max()) == pytest.approx((-gantt.ROW_H, -gantt.ROW_H + gantt.LANE_H))
    assert STEP_LABELS["drain"] in [h.get_label() for h in gantt.step_legend(trace)]


def test_step_line_prints_the_drain(tmp_path, capsys):
    """run's step line names the drain as it names the slowdown (s21e): the hand case's 4 ms (its last words), none
    without a drain; and the tiny scenario's run prints it (metrics.json's step.drain, in units.number's words)."""
    from dualpipe_sim import units
    from dualpipe_sim.cli import main, step_line

    trace, costs, _ = stepped()
    assert step_line(step_metrics(trace, costs)).endswith(", optimizer 0.5, deferred output-layer wgrad drain 4")
    trace, costs, _ = stepped(drain=())
    assert "drain" not in step_line(step_metrics(trace, costs))
    tiny(tmp_path)  # writes t.toml
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "t.toml"), "--out", str(out), "--plots", "none"]) == 0
    drain = json.loads((out / "metrics.json").read_text())["step"]["drain"]
    assert f", deferred output-layer wgrad drain {units.number(drain)}\n" in capsys.readouterr().out
