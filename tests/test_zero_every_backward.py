"""ZeRO 2/3: every micro-batch's data-parallel collectives slow the compute beside them (step.dp_comm_sms), not
only the last backward's (issue 21 s20n; docs/step.md, "ZeRO 2 and 3: Megatron-FSDP's reduce-scatters").

ZeRO 2's reduce-scatters after the earlier backwards are laid on the rank's channel as the last backward's are and
stretch the compute beside them (engine/step.py _every_backward): worked by hand on typed costs.  ZeRO 3's are
inside its actions (tests/test_fsdp.py works those by hand)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine import step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario

ROOT = Path(__file__).resolve().parents[1]


def two_microbatches(schedule: str = "1f1b"):
    """One stage, two micro-batches, F 1 ms, B 2 ms (1F1B: F0 [0,1], B0 [1,3], F1 [3,4], B1 [4,6]); a grad sync of
    1.5 ms in two units' shares, 0.5 then 1.0 (the stage's first unit last, at the backward's end), overlapped;
    optimizer 1 ms.  Typed costs slow nothing by themselves: the factor is given."""
    raw = {
        "pipeline": {"schedule": schedule, "stages": 1, "microbatches": 2},
        "costs": {"forward": 1.0, "backward": 2.0},
        "comm": {"p2p": 0.0},
        "step": {"grad_sync": 1.5, "overlap_grad_sync": True, "optimizer": 1.0},
    }
    sc = scenario.from_dict(raw)
    costs = replace(sc.step_costs(), grad_sync_shares=((1 / 3, 2 / 3),))
    return simulation.run(sc).trace, costs


def spans(rows, kind) -> list[tuple[float, float]]:
    return [x for r in rows[rows["kind"] == kind] for x in (float(r["start"]), float(r["end"]))]


def test_the_earlier_backwards_reduce_scatters_slow_the_compute_beside_them_by_hand():
    """Unslowed: the last backward B1 [4,6] releases 0.5 ms at 5 ([5,5.5]) and 1.0 ms at 6 ([6,7]); optimizer [7,8].
    At f = 1.5, the last backward's alone (s9a's rule): 0.5 ms of B1 beside [5,5.5] costs 0.25, so B1 ends at 6.25,
    [5,5.5], [6.25,7.25], optimizer [7.25,8.25].  With B0's own reduce-scatters (every_backward, the same two
    units): 0.5 at 2 ([2,2.5], beside B0) and 1.0 at 3 ([3,4], beside F1): 1.5 ms more of compute beside a
    collective, 0.75 more, all before 5: the first unit goes at 5 + 0.5 x (0.5 + 1.0) = 5.75, [5.75,6.25]; B1 ends
    at 6 + 0.5 x (0.5 + 1.0 + 0.5) = 7, [7,8]; optimizer [8,9]."""
    trace, costs = two_microbatches()
    plain = step.simulate_step(trace, costs)
    assert spans(plain, GRAD_SYNC) == [5.0, 5.5, 6.0, 7.0] and spans(plain, OPTIMIZER) == [7.0, 8.0]
    last = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,)))
    assert spans(last, GRAD_SYNC) == pytest.approx([5.0, 5.5, 6.25, 7.25])
    every = replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 1.0),))
    rows = step.simulate_step(trace, every)
    assert spans(rows, GRAD_SYNC) == pytest.approx([5.75, 6.25, 7.0, 8.0])
    assert spans(rows, OPTIMIZER) == pytest.approx([8.0, 9.0])
    # the last backward's are the grad sync's, not every_backward's: with no grad sync, only B0's 1.5 ms beside
    # compute move the rank's end, 6 -> 6.75, and the optimizer runs [6.75,7.75] (B1's own would add 0.25 more)
    alone = step.simulate_step(trace, replace(every, grad_sync=(0.0,), grad_sync_shares=()))
    assert spans(alone, GRAD_SYNC) == [] and spans(alone, OPTIMIZER) == pytest.approx([6.75, 7.75])
    # nothing slowed (f = 1, or no factor), nothing moves: the earlier reduce-scatters are not rows of the step
    assert step.simulate_step(trace, replace(every, dp_comm_slowdown=(1.0,))).tobytes() == plain.tobytes()
    assert step.simulate_step(trace, replace(costs, every_backward=((0.5, 1.0),))).tobytes() == plain.tobytes()


def test_a_reduce_scatter_on_an_idle_gpu_or_beside_another_slows_nothing_more():
    """B0's second unit 5 ms instead: [3,8] beside F1 [3,4] and B1 [4,6], then nothing computes (the GPU idles from
    6): 3 ms of it beside compute, not 5.  The last backward's [5,5.5] runs inside it, so B1's half beside both is
    slowed once.  Before 5: 0.5 (B0) + 1 (F1) + 1 (B1's first half) = 2.5 ms beside, 1.25 more: [6.25,6.75]; B1 ends
    at 6 + 0.5 x 3.5 = 7.75, [7.75,8.75]; optimizer [8.75,9.75]."""
    trace, costs = two_microbatches()
    rows = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 5.0),)))
    assert spans(rows, GRAD_SYNC) == pytest.approx([6.25, 6.75, 7.75, 8.75])
    assert spans(rows, OPTIMIZER) == pytest.approx([8.75, 9.75])


def test_gpipe_releases_through_each_backward_on_its_own_times():
    """GPipe: F0 [0,1], F1 [1,2], B0 [2,4], B1 [4,6].  B0 releases 0.5 at 3 ([3,3.5], beside B0) and 1.0 at 4 ([4,5],
    beside B1): 1.5 ms beside before 5, with B1's [5,5.5] 2 ms before 6: the first unit at 5.75, B1 ends at 7."""
    trace, costs = two_microbatches("gpipe")
    rows = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 1.0),)))
    assert spans(rows, GRAD_SYNC) == pytest.approx([5.75, 6.25, 7.0, 8.0])


def llama70b(tmp_path, zero: int, sms: int = 16):
    text = (ROOT / "scenarios" / "llama3-70b.toml").read_text()
    text = text.replace('config = "', f'config = "{ROOT}/scenarios/').replace("zero = 2 ", f"zero = {zero} ")
    path = tmp_path / f"z{zero}-{sms}.toml"
    path.write_text(text + f'\n[step]\ngrad_sync = "derived"\noptimizer = 1\ndp_comm_sms = {sms}\n')
    return scenario.load(path)


def test_zero_2_releases_the_stages_whole_gradient_after_every_backward(tmp_path):
    """Llama 3 70B, ZeRO 2: each backward releases the copy's whole reduce-scatter (docs/step.md's worked example:
    36.74 ms on stages 4-16, four layers, the first layer's last; 47.74 ms on stage 0, the
    embedding's last), ZeRO 1's figure; none with ZeRO 1 or 3, or with step.dp_comm_sms = 0."""
    every = llama70b(tmp_path, 2).step_costs().every_backward
    assert len(every) == 20 and len(every[4]) == 4 and len(every[0]) == 5
    assert sum(every[4]) == pytest.approx(36.74, abs=0.005)
    # the first layer's alone at the end; the other three share the rest equally (their sizes are not told apart)
    assert every[4][0] == every[4][1] == every[4][2] and every[4][-1] == pytest.approx(sum(every[4]) - 3 * every[4][0])
    assert sum(every[0]) == pytest.approx(47.74, abs=0.005)
    whole = llama70b(tmp_path, 1).step_costs().grad_sync
    assert [sum(x) for x in every] == pytest.approx(list(whole))
    assert llama70b(tmp_path, 1).step_costs().every_backward == ()
    assert llama70b(tmp_path, 3).step_costs().every_backward == ()
    assert llama70b(tmp_path, 2, sms=0).step_costs().every_backward == ()


def test_the_stretch_pairs_each_row_with_the_syncs_it_overlaps_as_every_pair_would():
    """_stretch intersects a rank's compute rows only with the syncs each can overlap (the merged spans are sorted and
    disjoint): its maps must be those of every row against every span, in the order span by span, row by row, bit for
    bit (s20r; the whole replays plan's ZeRO 2 estimate lays out made the every-pair way costly)."""
    import numpy as np

    from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed, trace_of
    from dualpipe_sim.step_costs import StepCosts

    rng = np.random.default_rng(7)
    b = built("interleaved-1f1b", 8, 12, 2)
    f = tuple(rng.uniform(1.0, 2.0, 8))
    trace = trace_of(b, replayed(b, StageCosts(f, tuple(2 * x for x in f), tuple(0.4 * x for x in f)), 0.1, False))
    costs = StepCosts(tuple(rng.uniform(0.5, 6.0, 8)), (0.0,) * 8, (0.5,) * 8, overlap_grad_sync=True,
                      grad_sync_buckets=3, dp_comm_slowdown=tuple(rng.uniform(1.0, 1.4, 8)),
                      every_backward=tuple(tuple(rng.uniform(0.1, 2.0, 3)) for _ in range(8)))  # fmt: skip
    rows = step.rows_of(trace, replace(costs, dp_comm_slowdown=(1.0,) * 8))  # the first pass's rows
    beside = step._every_backward(trace, costs)
    maps = step._stretch(trace, rows, costs.dp_comm_slowdown, beside)
    less = np.asarray(costs.dp_comm_slowdown) - 1.0
    c = trace.compute
    for r in range(trace.ranks):
        busy = step._union(list(beside[r]) + [(x[4], x[5]) for x in rows if x[0] == GRAD_SYNC and x[1] == r])
        mine = c[c["rank"] == r]
        lo, hi, w = [], [], []
        for s0, s1 in busy.tolist():
            for t0, t1, stage in zip(mine["start"].tolist(), mine["end"].tolist(), mine["stage"].tolist()):
                if less[stage] != 0.0 and min(t1, s1) > max(t0, s0):
                    lo.append(max(t0, s0)), hi.append(min(t1, s1)), w.append(less[stage])
        assert len(lo) > 10  # compute beside many spans
        lo, hi, w = np.array(lo), np.array(hi), np.array(w)
        t = np.linspace(0.0, float(mine["end"].max()) + 5.0, 97)
        every = t + np.sum(w * np.clip(np.subtract.outer(t, lo), 0.0, hi - lo), axis=-1)
        assert np.array_equal(maps[r](t), every)
