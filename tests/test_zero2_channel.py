"""ZeRO 2's backlog from the rank's own channel (s21k; docs/step.md, "ZeRO 2 and 3: Megatron-FSDP's reduce-scatters").

Each backward but a copy's last queues the copy's whole reduce-scatter on its rank's one data-parallel channel, one at
a time in release order, start = max(release, the previous one's end) (engine/step.py _earlier_jobs, _fifo); the last
backward's (the grad sync) queue behind what is left.  Before s21k the grad sync figure held a per-copy carry,
(n - 1) x max(0, R - (F + B)), instead: it did not see the channel drain while the rank waits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine import step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario


def two_ranks(every: tuple[float, float] = (6.0, 4.0)):
    """Two ranks of 1F1B, three micro-batches, no P2P time; stage 0 F 1, B 2 ms, stage 1 F 1, B 4 ms (rank 0 waits
    for rank 1's gradients).  Worked by hand: rank 0 F0 [0,1], F1 [1,2], B0 [6,8], F2 [8,9], B1 [11,13], B2 [16,18];
    rank 1 F0 [1,2], B0 [2,6], F1 [6,7], B1 [7,11], F2 [11,12], B2 [12,16].  Each backward releases its stage's
    whole reduce-scatter at its end (one unit): ``every`` ms (stage 0, stage 1), the last backward's the grad sync;
    optimizer 1 ms; nothing slowed."""
    raw = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 3},
           "costs": {"forward": 1.0, "backward": [2.0, 4.0]}, "comm": {"p2p": 0.0},
           "step": {"grad_sync": list(every), "overlap_grad_sync": True, "optimizer": 1.0}}
    sc = scenario.from_dict(raw)
    return simulation.run(sc).trace, replace(sc.step_costs(), every_backward=tuple((x,) for x in every))


def spans(rows, rank: int, kind: int) -> list[float]:
    mine = rows[(rows["rank"] == rank) & (rows["kind"] == kind)]
    return [x for r in mine for x in (float(r["start"]), float(r["end"]))]


def test_the_backlog_carries_over_and_drains_in_the_ranks_waits_by_hand():
    """Rank 0, R = 6 ms: B0's [8,14], B1's released at 13, starts at 14 (the channel's, not the backward's, end):
    [14,20]; B2's, released at 18, [20,26] (2 ms still queued at its release, 8 at the pipeline's end 18); optimizer
    [26,27].  The per-copy carry said 2 x (6 - 3) = 6 ms left at B2's end: [18,30] and the optimizer [30,31], not
    seeing the channel run through rank 0's waits [9,11] and [13,16].  Rank 1, R = 4 ms under its F + B = 5: [6,10],
    [11,15], [16,20] (nothing left when each is released), optimizer [20,21]."""
    trace, costs = two_ranks()
    rows = step.simulate_step(trace, costs)
    assert spans(rows, 0, GRAD_SYNC) == [8.0, 14.0, 14.0, 20.0, 20.0, 26.0]
    assert spans(rows, 0, OPTIMIZER) == [26.0, 27.0]
    assert spans(rows, 1, GRAD_SYNC) == [6.0, 10.0, 11.0, 15.0, 16.0, 20.0]
    assert spans(rows, 1, OPTIMIZER) == [20.0, 21.0]
    # the channel's work left at each rank's pipeline end (18, 16): 26 - 18 and 20 - 16
    assert step.by_end(trace, costs) == ([0.0, 0.0], [8.0, 4.0])


def test_a_channel_that_keeps_up_leaves_only_the_last_backwards_reduce_scatter():
    """R = 4 ms on rank 0 too (over its F + B = 3, so the per-copy carry said 2 x 1 ms): B0's [8,12] and B1's [13,17]
    end before the next release (rank 0 waits [9,11] and [13,16]), so B2's runs as released, [18,22]; optimizer
    [22,23], not [24,25]."""
    trace, costs = two_ranks((4.0, 4.0))
    rows = step.simulate_step(trace, costs)
    assert spans(rows, 0, GRAD_SYNC) == [8.0, 12.0, 13.0, 17.0, 18.0, 22.0]
    assert spans(rows, 0, OPTIMIZER) == [22.0, 23.0]
    assert step.by_end(trace, costs)[1] == [4.0, 4.0]


def test_a_carry_runs_after_the_ranks_own_channel_work():
    """rows_of's ``carry`` (plan's estimate: a backlog from micro-batches its replay leaves out) is queued at the rank's
    pipeline end behind every job the pipeline released: rank 0's 3 ms after its [20,26], optimizer [29,30]; rank 1's
    channel is done at 20, past its end 16, so its 1 ms runs [20,21] and the optimizer [21,22]."""
    trace, costs = two_ranks()
    rows = step.rows_of(trace, costs, carry=[3.0, 1.0])
    ends = {r: max(x[5] for x in rows if x[1] == r and x[0] == GRAD_SYNC) for r in (0, 1)}
    assert ends == {0: 29.0, 1: 21.0}
    assert sorted((x[1], x[4], x[5]) for x in rows if x[0] == OPTIMIZER) == [(0, 29.0, 30.0), (1, 21.0, 22.0)]
    # a carry worked out from the trace's own backlog (plan's callable) sees by_end's figures
    seen = []
    step.rows_of(trace, costs, carry=lambda backlog: seen.append(backlog) or [0.0, 0.0])
    assert seen == [[8.0, 4.0]]


def test_without_every_backward_nothing_is_queued_before_the_grad_sync():
    """The same trace with no earlier reduce-scatters: the grad syncs run as released, [18,24] and [16,20]."""
    trace, costs = two_ranks()
    rows = step.simulate_step(trace, replace(costs, every_backward=()))
    assert spans(rows, 0, GRAD_SYNC) == [18.0, 24.0] and spans(rows, 1, GRAD_SYNC) == [16.0, 20.0]
    assert step.by_end(trace, replace(costs, every_backward=())) == ([0.0, 0.0], [6.0, 4.0])


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_2s_grad_sync_figure_is_the_stages_whole_gradient(tmp_path, zero):
    """On Llama 3 70B (docs/step.md's worked example) ZeRO 2's grad sync figure per stage is its whole gradient's
    reduce-scatter, ZeRO 1's (36.74 ms on stages 4-16, 47.74 ms on stage 0): no carry in the figure."""
    from tests.test_zero_every_backward import llama70b

    sync = llama70b(tmp_path, zero).step_costs().grad_sync
    assert sync[0] == pytest.approx(47.74, abs=0.005) and sync[4] == pytest.approx(36.74, abs=0.005)
