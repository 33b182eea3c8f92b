"""comm.p2p_mode = "blocking": before each compute call a rank issues the sends
its previous call queued and the receives this call needs, and waits for all."""

from __future__ import annotations

import pytest

from dualpipe_sim.schedules.registry import build
from helpers import run_uniform


def test_two_stage_1f1b_blocking_by_hand():
    """1F1B, 2 stages, 2 micro-batches, F = 1, B = 2, p2p = 0.5 (async: makespan 10).

    rank 0: F0 [0,1]; send act0 [1,1.5] and wait; F1 [1.5,2.5]; send act1
            [2.5,3] and wait for grad0 too; B0 [5,7]; nothing to send (stage 0);
            wait for grad1; B1 [8.5,10.5].
    rank 1: wait for act0; F0 [1.5,2.5]; B0 [2.5,4.5]; send grad0 [4.5,5] and
            wait (act1 is already there); F1 [5,6]; B1 [6,8]; send grad1 [8,8.5].
    Makespan 10.5.  Every transfer is waited for by its sender: all 2.0 exposed.
    """
    r = run_uniform("1f1b", 2, 2, forward=1.0, backward=2.0, p2p=0.5, comm__p2p_mode="blocking")
    got = {(int(x["rank"]), "FBIW"[x["kind"]], int(x["microbatch"])): (x["start"], x["end"]) for x in r.trace.compute}
    assert got == {
        (0, "F", 0): (0, 1), (0, "F", 1): (1.5, 2.5), (0, "B", 0): (5, 7), (0, "B", 1): (8.5, 10.5),
        (1, "F", 0): (1.5, 2.5), (1, "B", 0): (2.5, 4.5), (1, "F", 1): (5, 6), (1, "B", 1): (6, 8),
    }  # fmt: skip
    sends = sorted((float(x["start"]), float(x["end"])) for x in r.trace.comm)
    assert sends == [(1, 1.5), (2.5, 3), (4.5, 5), (8, 8.5)]
    m = r.metrics.to_dict()
    assert m["makespan"] == 10.5
    assert m["comm"]["p2p_time"] == 2.0
    assert m["comm"]["exposed"] == 2.0 and m["comm"]["overlap_ratio"] == 0.0


def test_blocking_with_free_p2p_is_async():
    """With p2p = 0 there is nothing to wait for: same trace as async."""
    a = run_uniform("dualpipe", 4, 8, weight=1.0, comm__p2p_mode="async")
    b = run_uniform("dualpipe", 4, 8, weight=1.0, comm__p2p_mode="blocking")
    assert (a.trace.compute == b.trace.compute).all()


@pytest.mark.parametrize("family,S,M", [("dualpipe", 4, 8), ("dualpipe", 8, 20), ("dualpipev", 6, 7), ("1f1b", 4, 8)])
def test_blocking_runs_and_never_beats_async(family, S, M):
    """The reference's blocking exchange finishes on these schedules and is never
    faster than sends beside compute (it only adds waits)."""
    kw = dict(forward=1.0, backward=2.0, weight=1.0, p2p=0.2, costs__overlapped=2.5)
    a = run_uniform(family, S, M, comm__p2p_mode="async", **kw)
    b = run_uniform(family, S, M, comm__p2p_mode="blocking", **kw)
    assert b.metrics.makespan >= a.metrics.makespan
    assert b.metrics.comm.exposed == pytest.approx(b.metrics.comm.p2p_time)
    assert len(b.trace.compute) == len(a.trace.compute) == sum(
        len(x.ops) if hasattr(x, "ops") else 1 for actions in build(family, S, M).ranks for x in actions
    )
