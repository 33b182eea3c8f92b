"""1f1b-overlap and interleaved-1f1b-overlap: orders and a timeline worked by hand."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.simulation import simulate
from dualpipe_sim.schedules.ir import FB
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import build


def strs(actions):
    return [str(a) for a in actions]


def test_1f1b_overlap_p3_m5_by_hand():
    # Warm-up 2(p-1-r) + 1 = 5, 3, 1 (capped at m = 5); then pairs (F_{w+i}; B_i); then B's.
    sched = build("1f1b-overlap", 3, 5)
    assert strs(sched.ranks[0]) == ["0F0", "0F1", "0F2", "0F3", "0F4", "0B0", "0B1", "0B2", "0B3", "0B4"]
    assert strs(sched.ranks[1]) == [
        "1F0", "1F1", "1F2", "(1F3;1B0)OVERLAP_F_B", "(1F4;1B1)OVERLAP_F_B", "1B2", "1B3", "1B4",
    ]  # fmt: skip
    assert strs(sched.ranks[2]) == ["2F0"] + [f"(2F{i + 1};2B{i})OVERLAP_F_B" for i in range(4)] + ["2B4"]


def test_interleaved_overlap_p2_v2_m4_by_hand():
    # torch's order for p = 2, v = 2, M = 4 (2 rounds of 2; warm-up 2 + 2(1 - r)) plus one
    # forward: rank 0 warms up 5 of its forwards 0F0 0F1 2F0 2F1 0F2 | 0F3 2F2 2F3,
    # backwards 2B0 2B1 0B0 0B1 2B2 2B3 0B2 0B3; rank 1 warms up 3 of 1F0 1F1 3F0 | 3F1 1F2 1F3 3F2 3F3.
    sched = build("interleaved-1f1b-overlap", 4, 4, chunks_per_rank=2)
    assert strs(sched.ranks[0]) == [
        "0F0", "0F1", "2F0", "2F1", "0F2",
        "(0F3;2B0)OVERLAP_F_B", "(2F2;2B1)OVERLAP_F_B", "(2F3;0B0)OVERLAP_F_B",
        "0B1", "2B2", "2B3", "0B2", "0B3",
    ]  # fmt: skip
    assert strs(sched.ranks[1]) == [
        "1F0", "1F1", "3F0",
        "(3F1;3B0)OVERLAP_F_B", "(1F2;3B1)OVERLAP_F_B", "(1F3;1B0)OVERLAP_F_B", "(3F2;1B1)OVERLAP_F_B",
        "(3F3;3B2)OVERLAP_F_B", "3B3", "1B2", "1B3",
    ]  # fmt: skip


def test_1f1b_overlap_p2_m4_timeline_by_hand():
    # F = 1, B = 2, F&B = 2.5, no P2P time.  Rank 0: F0 F1 F2 [0,3], pair (F3;B0) waits for
    # rank 1's B0 (its pair (F1;B0) runs [2,4.5]) -> [4.5,7], B1 [7,9], B2 after rank 1's
    # pair (F3;B2) [7,9.5] -> [9.5,11.5], B3 after rank 1's B3 [9.5,11.5] -> [11.5,13.5].
    costs = CostModel.uniform(2, forward=1.0, backward=2.0, overlapped=2.5)
    met = compute_metrics(simulate(build("1f1b-overlap", 2, 4), costs))
    assert met.makespan == pytest.approx(13.5)
    assert [r.busy for r in met.per_rank] == pytest.approx([11.5, 10.5])
    assert [r.peak_activation for r in met.per_rank] == [4, 2]


@pytest.mark.parametrize("name,stages,opts", [("1f1b-overlap", 8, {}), ("interleaved-1f1b-overlap", 16, {"chunks_per_rank": 2})])
def test_steady_state_is_pairs_of_different_microbatches(name, stages, opts):
    sched = build(name, stages, 32, **opts)
    for actions in sched.ranks:
        pairs = [a for a in actions if isinstance(a, FB)]
        assert pairs and all(p.forward.microbatch != p.backward.microbatch or p.forward.stage != p.backward.stage for p in pairs)


@pytest.mark.parametrize("p,v,m", [(2, 2, 4), (4, 2, 10), (4, 2, 3), (3, 3, 7)])
def test_interleaved_overlap_peak_is_warmup_plus_two(p, v, m):
    # Rank 0 holds its warm-up forwards, (v-1) x round + 2(p-1) + 1, and the first pair's
    # forward (capped at v m): e.g. (2, 2, 4): 2 + 2 + 1 + 1 = 6 stage-activations.
    from dualpipe_sim.schedules.registry import analytic
    from dualpipe_sim.schedules.interleaved import round_sizes

    costs = CostModel.uniform(p * v, forward=1.0, backward=2.0, overlapped=2.5)
    met = compute_metrics(simulate(build("interleaved-1f1b-overlap", p * v, m, chunks_per_rank=v), costs))
    expected = min((v - 1) * round_sizes(p, m)[0] + 2 * (p - 1) + 2, v * m)
    assert max(r.peak_activation for r in met.per_rank) == expected
    assert analytic("interleaved-1f1b-overlap", p * v, m, costs, chunks_per_rank=v)["peak_activation"] == expected
