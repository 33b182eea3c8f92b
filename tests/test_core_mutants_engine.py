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
    assert len(stages_seen) >= 2  # several stage pairings: a cost cached per pairing would show


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
