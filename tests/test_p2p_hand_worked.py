"""A 2-stage 1F1B run with P2P cost, worked out by hand.

F = 1, B = 2, p2p = 0.5, two micro-batches.
rank 0: F0 [0,1]  F1 [1,2]                       B0 [5,7]   B1 [8,10]
sends:  act0 [1,1.5]  act1 [2,2.5]      grad0 [4.5,5]   grad1 [7.5,8]
rank 1:     F0 [1.5,2.5] B0 [2.5,4.5] F1 [4.5,5.5] B1 [5.5,7.5]
Makespan 10.  Exposed: rank 1 waits for act0 during [1,1.5] (0.5); act1 lands
while rank 1 computes (0); rank 0 waits for grad0 during [4.5,5] and for grad1
during [7.5,8] (0.5 each).  Exposed 1.5 of 2.0 -> hidden 0.5.
"""

import pytest

from helpers import run_uniform


def test_two_stage_p2p():
    r = run_uniform("1f1b", 2, 2, forward=1.0, backward=2.0, p2p=0.5)
    comp = r.trace.compute
    got = {(int(x["rank"]), "FBIW"[x["kind"]], int(x["microbatch"])): (x["start"], x["end"]) for x in comp}
    assert got == {
        (0, "F", 0): (0, 1), (0, "F", 1): (1, 2), (0, "B", 0): (5, 7), (0, "B", 1): (8, 10),
        (1, "F", 0): (1.5, 2.5), (1, "B", 0): (2.5, 4.5), (1, "F", 1): (4.5, 5.5), (1, "B", 1): (5.5, 7.5),
    }
    m = r.metrics.to_dict()
    assert m["makespan"] == 10
    assert [x["idle"] for x in m["per_rank"]] == [4.0, 4.0]
    assert m["comm"]["p2p_time"] == pytest.approx(2.0)
    assert m["comm"]["exposed"] == pytest.approx(1.5)
    assert m["comm"]["hidden"] == pytest.approx(0.5)
    assert m["comm"]["overlap_ratio"] == pytest.approx(0.25)


def test_link_serialises_transfers():
    # GPipe, F = 1, p2p = 3: rank 0 finishes F0 at 1 and F1 at 2, but the one
    # link 0->1 carries act0 over [1,4] and act1 only over [4,7].
    r = run_uniform("gpipe", 2, 2, forward=1.0, backward=1.0, p2p=3.0)
    p2p = r.trace.comm
    sends = sorted((float(x["start"]), float(x["end"])) for x in p2p if x["rank"] == 0)
    assert sends == [(1.0, 4.0), (4.0, 7.0)]
    comp = r.trace.compute
    f1 = comp[(comp["rank"] == 1) & (comp["kind"] == 0) & (comp["microbatch"] == 1)][0]
    assert f1["start"] == 7.0


def test_no_communication_means_null_overlap_ratio():
    r = run_uniform("1f1b", 3, 4)
    assert r.metrics.comm.overlap_ratio is None
    assert r.metrics.comm.exposed == 0
