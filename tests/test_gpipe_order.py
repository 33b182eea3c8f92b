"""GPipe's per-rank order, written out by hand.

GPipe (Huang et al. 2019, Fig. 2c): each rank runs every forward, micro-batch 0
first, then every backward, the last micro-batch first (its forward finished
last, so its gradient is the first the last stage can start without waiting for
an older one to be picked up; the order docs/schedules.md states).  With equal
costs the makespan is the same in either backward order, so only the order
itself pins this down.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.simulation import simulate
from dualpipe_sim.schedules.registry import build
from dualpipe_sim.schedules.rules import KIND_CODES

EXPECTED = {
    (2, 3): [
        ["0F0", "0F1", "0F2", "0B2", "0B1", "0B0"],
        ["1F0", "1F1", "1F2", "1B2", "1B1", "1B0"],
    ],
    (3, 4): [
        ["0F0", "0F1", "0F2", "0F3", "0B3", "0B2", "0B1", "0B0"],
        ["1F0", "1F1", "1F2", "1F3", "1B3", "1B2", "1B1", "1B0"],
        ["2F0", "2F1", "2F2", "2F3", "2B3", "2B2", "2B1", "2B0"],
    ],
    (1, 2): [["0F0", "0F1", "0B1", "0B0"]],
}


@pytest.mark.parametrize("stages,microbatches", sorted(EXPECTED))
def test_gpipe_per_rank_order(stages, microbatches):
    sched = build("gpipe", stages, microbatches)
    assert [[str(a) for a in actions] for actions in sched.ranks] == EXPECTED[(stages, microbatches)]


def test_gpipe_backward_start_times_by_hand():
    # 2 stages, 3 micro-batches, F = 1, B = 2, no P2P.  Forwards: stage 0 [0,1] [1,2] [2,3],
    # stage 1 [1,2] [2,3] [3,4].  Backwards, last micro-batch first: stage 1 mb 2 [4,6],
    # mb 1 [6,8], mb 0 [8,10]; stage 0 mb 2 [6,8], mb 1 [8,10], mb 0 [10,12].
    trace = simulate(build("gpipe", 2, 3), CostModel.uniform(2, forward=1.0, backward=2.0))
    backward = KIND_CODES["B"]
    got = {(int(r["stage"]), "B" if r["kind"] == backward else "F", int(r["microbatch"])): (r["start"], r["end"])
           for r in trace.compute}  # fmt: skip
    assert got[(1, "B", 2)] == (4.0, 6.0) and got[(1, "B", 0)] == (8.0, 10.0)
    assert got[(0, "B", 2)] == (6.0, 8.0) and got[(0, "B", 0)] == (10.0, 12.0)
