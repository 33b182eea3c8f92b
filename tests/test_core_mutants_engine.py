"""The engine's records held to the cost model's definitions and hand-worked runs
(issue s10d: planted bugs the suite let through)."""

import numpy as np
import pytest

from helpers import run_uniform

FORWARD = [1.0, 1.5, 2.0, 2.5]
BACKWARD = [2.0, 3.0, 4.0, 5.0]


def _pairs(trace):
    """Per overlapped pair action: (forward row, backward row), read off the compute rows."""
    c = trace.compute
    rows = c[c["overlapped"]]
    out = {}
    for row in rows:
        out.setdefault((int(row["rank"]), int(row["action"])), []).append(row)
    for members in out.values():
        assert len(members) == 2
    return [tuple(sorted(m, key=lambda r: r["start"])) for m in out.values()]


@pytest.mark.parametrize("name,ranks", [("dualpipe", 4), ("dualpipev", 2)])
def test_pair_without_overlapped_time_lasts_its_two_ops(name, ranks):
    """Without costs.overlapped a pair takes F of its forward's stage plus B of its backward's
    stage (docs: "None = F + B, no gain").  In DualPipe and DualPipeV a pair's two ops are on two
    different stages, and the stage costs differ here, so every pair's length says which stage
    each cost was read from."""
    result = run_uniform(name, 4, 8, forward=FORWARD, backward=BACKWARD, weight=1.0)
    pairs = _pairs(result.trace)
    assert len(pairs) > 0
    stages_seen = set()
    for f, b in pairs:
        assert (f["kind"], b["kind"]) == (0, 1)  # the forward's row first, then the backward's
        assert f["end"] == b["start"]
        stages_seen.add((int(f["stage"]), int(b["stage"])))
        assert b["end"] - f["start"] == pytest.approx(FORWARD[f["stage"]] + BACKWARD[b["stage"]])
    assert len(stages_seen) >= 2  # several stage pairings, each read off its own two stages


def test_pair_with_overlapped_time_takes_its_forward_stages_figure_split_by_f_and_b():
    """costs.overlapped is F&B per forward stage (README's costs table).  A pair of F (stage a)
    and B (stage b) lasts overlapped[a]; the chart's split gives the forward the share
    F_a / (F_a + B_b) of it (costs.CostModel.timeline)."""
    overlapped = [2.8, 3.9, 5.0, 6.1]  # within [max(F, B), F + B] of each stage
    result = run_uniform("dualpipe", 4, 8, forward=FORWARD, backward=BACKWARD, weight=1.0,
                         costs__overlapped=overlapped)  # fmt: skip
    pairs = _pairs(result.trace)
    assert any(f["stage"] != b["stage"] for f, b in pairs)  # forward and backward stage tell apart
    for f, b in pairs:
        a, s = int(f["stage"]), int(b["stage"])
        total = overlapped[a]
        assert b["end"] - f["start"] == pytest.approx(total)
        assert f["end"] - f["start"] == pytest.approx(total * FORWARD[a] / (FORWARD[a] + BACKWARD[s]))


def test_trace_end_is_the_last_end_of_step_row():
    """1F1B, p = 2, m = 2, F = 1, B = 2 (the pipeline of tests/test_core_mutants_metrics.py:
    rank 0 ends at 9, rank 1 at 7), step.grad_sync 0.5, step.optimizer 1.5, no overlap:
    rank 0 syncs [9, 9.5] and steps [9.5, 11]; rank 1 syncs [7, 7.5] and steps [7.5, 9].
    The trace ends at 11, after the makespan 9: the charts' time axis (Trace.end) must reach it."""
    result = run_uniform("1f1b", 2, 2, step__grad_sync=0.5, step__optimizer=1.5)
    trace = result.trace
    assert trace.makespan == pytest.approx(9.0)
    assert trace.end == pytest.approx(11.0)
    assert result.metrics.step.total == pytest.approx(11.0)
    plain = run_uniform("1f1b", 2, 2).trace
    assert plain.end == plain.makespan == pytest.approx(9.0)


def test_overlapped_grad_sync_buckets_spread_over_the_whole_last_weight_op():
    """[chunk] model, one stage, one micro-batch, one layer (times of
    tests/test_core_mutants_metrics.py's between_ops case): B's compute rows are MbI [10.5, 12],
    MbW [12, 13], AbI [15.5, 17.5], AbW [17.5, 18] (its all-to-alls in between).  With
    step.overlap_grad_sync and 2 buckets of 2 ms / 2 = 1 ms, bucket k of n is ready k/n of the way
    through that op (docs/step.md): bucket 1 at 10.5 + (18 - 10.5) / 2 = 14.25, runs [14.25, 15.25];
    bucket 2 at its end, 18, runs [18, 19].  The step ends at 19, 1 ms of sync exposed."""
    from dualpipe_sim import simulation
    from dualpipe_sim.inputs import scenario

    times = {"attn_forward": 1, "dispatch_forward": 2, "mlp_forward": 3, "combine_forward": 4,
             "combine_backward": 0.5, "mlp_backward_input": 1.5, "mlp_backward_weight": 1,
             "dispatch_backward": 2.5, "attn_backward_input": 2, "attn_backward_weight": 0.5}  # fmt: skip
    data = {"pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1}, "chunk": {"layers": 1, **times},
            "step": {"grad_sync": 2.0, "overlap_grad_sync": True, "grad_sync_buckets": 2}}  # fmt: skip
    result = simulation.run(scenario.from_dict(data))
    step = result.trace.step
    assert [(float(a), float(b)) for a, b in zip(step["start"], step["end"])] == [(14.25, 15.25), (18.0, 19.0)]
    assert result.metrics.step.total == pytest.approx(19.0)
    assert result.metrics.step.grad_sync.exposed == pytest.approx(1.0)


@pytest.mark.parametrize("engine", ["replay", "simpy"])
def test_pairs_of_one_forward_stage_with_different_backward_stages_each_take_their_own_time(engine):
    """One rank holding stages 0 and 1, three micro-batches, written by hand:
    F0@0, F0@1, (F1@0; B0@1), F1@1, (F2@0; B0@0), F2@1, B1@1, B1@0, B2@1, B2@0.
    Both pairs' forwards are on stage 0, their backwards on stages 1 and 0.  Without
    costs.overlapped a pair takes F(its forward's stage) + B(its backward's stage):
    F = (1, 1.5), B = (2, 5): the first pair lasts 1 + 5 = 6, the second 1 + 2 = 3.  The actions
    run back to back from 0: 1, 1.5, then [2.5, 8.5], 1.5, [10, 13], then F2@1 1.5 and the four
    backwards 5 + 2 + 5 + 2: the run ends at 13 + 1.5 + 14 = 28.5.  The replay core and the SimPy
    reference engine (which caches an action's timeline by costs.signature) both give it."""
    from dualpipe_sim.engine import simpy_engine
    from dualpipe_sim.inputs.costs import CostModel
    from dualpipe_sim.schedules.ir import FB, Op, Schedule
    from dualpipe_sim.simulation import simulate

    F, B = lambda m, s: Op("F", m, s), lambda m, s: Op("B", m, s)  # noqa: E731
    actions = (F(0, 0), F(0, 1), FB(F(1, 0), B(0, 1)), F(1, 1), FB(F(2, 0), B(0, 0)), F(2, 1),
               B(1, 1), B(1, 0), B(2, 1), B(2, 0))  # fmt: skip
    schedule = Schedule("by-hand", 2, 3, (actions,))
    costs = CostModel(forward=(1.0, 1.5), backward=(2.0, 5.0), weight=(1.0, 1.0),
                      activation_bytes=(1.0, 1.0), parameter_bytes=(1.0, 1.0))  # fmt: skip
    trace = (simulate if engine == "replay" else simpy_engine.simulate)(schedule, costs)
    pairs = sorted(_pairs(trace), key=lambda fb: fb[0]["start"])
    assert [(float(f["start"]), float(b["end"])) for f, b in pairs] == [(2.5, 8.5), (10.0, 13.0)]
    assert trace.makespan == pytest.approx(28.5)
