"""ZeRO 2/3: every micro-batch's data-parallel collectives slow the compute beside them (step.dp_comm_sms), not
only the last backward's (issue 21 s20n; docs/step.md, "ZeRO 2 and 3: Megatron-FSDP's reduce-scatters").

ZeRO 2's reduce-scatters after the earlier backwards are laid on the rank's channel as the last backward's are, grad
sync rows queued with them, and stretch the compute beside them (engine/step.py _earlier_jobs): worked by hand on typed
costs.  ZeRO 3's are
inside its actions (tests/test_fsdp.py works those by hand)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine import step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER, SLOWED
from dualpipe_sim.inputs import scenario
from dualpipe_sim.schedules.rules import KIND_CODES

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
    at 6 + 0.5 x (0.5 + 1.0 + 0.5) = 7, [7,8]; optimizer [8,9].  B0's are grad sync rows on the stretched times too
    (s21k): [2,2.5] and, released at 3 + 0.5 x 0.5 = 3.25, [3.25,4.25]."""
    trace, costs = two_microbatches()
    plain = step.simulate_step(trace, costs)
    assert spans(plain, GRAD_SYNC) == [5.0, 5.5, 6.0, 7.0] and spans(plain, OPTIMIZER) == [7.0, 8.0]
    last = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,)))
    assert spans(last, GRAD_SYNC) == pytest.approx([5.0, 5.5, 6.25, 7.25])
    every = replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 1.0),))
    rows = step.simulate_step(trace, every)
    assert spans(rows, GRAD_SYNC) == pytest.approx([2.0, 2.5, 3.25, 4.25, 5.75, 6.25, 7.0, 8.0])
    assert spans(rows, OPTIMIZER) == pytest.approx([8.0, 9.0])
    # the last backward's are the grad sync's, not every_backward's: with no grad sync, only B0's 1.5 ms beside
    # compute move the rank's end, 6 -> 6.75, and the optimizer runs [6.75,7.75] (B1's own would add 0.25 more)
    alone = step.simulate_step(trace, replace(every, grad_sync=(0.0,), grad_sync_shares=()))
    assert spans(alone, GRAD_SYNC) == pytest.approx([2.0, 2.5, 3.25, 4.25])
    assert spans(alone, OPTIMIZER) == pytest.approx([6.75, 7.75])
    # nothing slowed (f = 1, or no factor): B0's [2,2.5] and [3,4], done before B1's are released, move nothing
    for unslowed in (replace(every, dp_comm_slowdown=(1.0,)), replace(costs, every_backward=((0.5, 1.0),))):
        rows = step.simulate_step(trace, unslowed)
        assert spans(rows, GRAD_SYNC) == [2.0, 2.5, 3.0, 4.0, 5.0, 5.5, 6.0, 7.0]
        assert spans(rows, OPTIMIZER) == [7.0, 8.0]


def test_a_reduce_scatter_on_an_idle_gpu_slows_nothing_and_holds_the_channel():
    """B0's second unit 5 ms instead: [3,8] beside F1 [3,4] and B1 [4,6], then nothing computes (the GPU idles from
    6): 3 ms of it beside compute, not 5.  B1's reduce-scatters, released at 5 and 6, queue behind it on the one
    channel (s21k): [8,8.5], [8.5,9.5] on the first pass, beside nothing.  Beside compute: 0.5 (B0) + 1 (F1) + 2 (B1)
    = 3.5 ms, 1.75 more, so B1 ends at 7.75 (the slowed row [6,7.75]).  Second pass: B0's at 2 and 3 + 0.25,
    [2,2.5], [3.25,8.25]; B1's behind them [8.25,8.75], [8.75,9.75]; optimizer [9.75,10.75]."""
    trace, costs = two_microbatches()
    rows = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 5.0),)))
    assert spans(rows, SLOWED) == pytest.approx([6.0, 7.75])
    assert spans(rows, GRAD_SYNC) == pytest.approx([2.0, 2.5, 3.25, 8.25, 8.25, 8.75, 8.75, 9.75])
    assert spans(rows, OPTIMIZER) == pytest.approx([9.75, 10.75])


def test_gpipe_releases_through_each_backward_on_its_own_times():
    """GPipe: F0 [0,1], F1 [1,2], B0 [2,4], B1 [4,6].  B0 releases 0.5 at 3 ([3,3.5], beside B0) and 1.0 at 4 ([4,5],
    beside B1): 1.5 ms beside before 5, with B1's [5,5.5] 2 ms before 6: the first unit at 5.75, B1 ends at 7; B0's
    second at 4 + 0.5 x 0.5 = 4.25."""
    trace, costs = two_microbatches("gpipe")
    rows = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,), every_backward=((0.5, 1.0),)))
    assert spans(rows, GRAD_SYNC) == pytest.approx([3.0, 3.5, 4.25, 5.25, 5.75, 6.25, 7.0, 8.0])


def llama70b(tmp_path, zero: int, sms: int = 16):
    text = (ROOT / "scenarios" / "llama3-70b.toml").read_text()
    text = text.replace('config = "', f'config = "{ROOT}/scenarios/').replace("zero = 2 ", f"zero = {zero} ")
    path = tmp_path / f"z{zero}-{sms}.toml"
    path.write_text(text + f'\n[step]\ngrad_sync = "derived"\noptimizer = 1\ndp_comm_sms = {sms}\n')
    return scenario.load(path)


def test_zero_2_releases_the_stages_whole_gradient_after_every_backward(tmp_path):
    """Llama 3 70B, ZeRO 2: each backward releases the copy's whole reduce-scatter (docs/step.md's worked example:
    36.74 ms on stages 4-16, four layers, the first layer's last; 47.74 ms on stage 0, the
    embedding's last), ZeRO 1's figure, and so does the last (its grad sync figure, s21k: no per-copy carry); none
    with ZeRO 1 or 3; the same with step.dp_comm_sms = 0 (they load the channel whether or not they slow compute)."""
    every = llama70b(tmp_path, 2).step_costs().every_backward
    assert len(every) == 20 and len(every[4]) == 4 and len(every[0]) == 5
    assert sum(every[4]) == pytest.approx(36.74, abs=0.005)
    # the first layer's alone at the end; the other three share the rest equally (their sizes are not told apart)
    assert every[4][0] == every[4][1] == every[4][2] and every[4][-1] == pytest.approx(sum(every[4]) - 3 * every[4][0])
    assert sum(every[0]) == pytest.approx(47.74, abs=0.005)
    whole = llama70b(tmp_path, 1).step_costs().grad_sync
    assert [sum(x) for x in every] == pytest.approx(list(whole))
    assert list(llama70b(tmp_path, 2).step_costs().grad_sync) == pytest.approx(list(whole))
    assert llama70b(tmp_path, 1).step_costs().every_backward == ()
    assert llama70b(tmp_path, 3).step_costs().every_backward == ()
    assert llama70b(tmp_path, 2, sms=0).step_costs().every_backward == every


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
    maps = step._stretch(trace, rows, costs.dp_comm_slowdown)
    less = np.asarray(costs.dp_comm_slowdown) - 1.0
    c = trace.compute
    for r in range(trace.ranks):
        busy = step._union([(x[4], x[5]) for x in rows if x[0] == GRAD_SYNC and x[1] == r])
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


F, B = KIND_CODES["F"], KIND_CODES["B"]


def two_rank_zero_3(sms: int):
    """Two ranks of 1F1B, two micro-batches, each stage four layers of Llama 3 70B's shape (TP 8, DP 64, H100)
    with ZeRO 3 (Megatron-FSDP's per-unit gathers and reduce-scatters inside every forward and backward)."""
    raw = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2},
           "model": {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 8, "vocab_size": 128256,
                     "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
                     "seq_length": 8192},
           "parallel": {"tensor": 8, "data": 64, "zero": 3},
           "hardware": {"preset": "H100"},
           "step": {"grad_sync": "derived", "optimizer": 1, "dp_comm_sms": sms}}
    sc = scenario.from_dict(raw)
    return sc.derived().stages, simulation.run(sc).trace


def test_zero_3s_slowed_forward_delays_the_next_rank_by_hand():
    """s21g.  ZeRO 3's every-micro-batch collectives slow the forward and backward they run in (model/fsdp.py
    `slowed`, in the stage's figures), so the replay waits for the slowed action: rank 0's slower forward delays
    rank 1's, inside the pipeline, not only the rank's end of step (ZeRO 2's earlier reduce-scatters, laid out after
    the pipeline, do not: docs/step.md).  Two ranks, two micro-batches, blocking P2P (1F1B's derived mode: a rank
    waits for its previous call's sends), a, b rank 0's forward and backward, c, d rank 1's, p one transfer:
    rank 0 F0 [0, a], F1 [a+p, 2a+p]; rank 1 F0 [a+p, a+p+c], B0 [a+p+c, a+p+c+d], F1 from a+2p+c+d (its B0's send
    landed; rank 0's F1 arrived at 2a+2p, earlier as c+d > a), B1 [a+2p+2c+d, a+2p+2c+2d]; rank 0 B0 [a+2p+c+d,
    a+2p+c+d+b], B1 [a+3p+2c+2d, a+3p+2c+2d+b] (B0 ended first, as c+d > b)."""
    free_stages, free = two_rank_zero_3(0)
    held_stages, held = two_rank_zero_3(16)
    for stages, trace in ((free_stages, free), (held_stages, held)):
        a, b, c, d = stages[0].forward, stages[0].backward, stages[1].forward, stages[1].backward
        assert c + d > max(a, b)
        p = float(trace.comm["end"][0] - trace.comm["start"][0])
        assert p > 0
        expect = {(0, F, 0): (0, a), (0, F, 1): (a + p, 2 * a + p),
                  (1, F, 0): (a + p, a + p + c), (1, B, 0): (a + p + c, a + p + c + d),
                  (1, F, 1): (a + 2 * p + c + d, a + 2 * p + 2 * c + d),
                  (1, B, 1): (a + 2 * p + 2 * c + d, a + 2 * p + 2 * c + 2 * d),
                  (0, B, 0): (a + 2 * p + c + d, a + 2 * p + c + d + b),
                  (0, B, 1): (a + 3 * p + 2 * c + 2 * d, a + 3 * p + 2 * c + 2 * d + b)}
        rows = trace.compute
        got = {(int(r["rank"]), int(r["kind"]), int(r["microbatch"])): (float(r["start"]), float(r["end"]))
               for r in rows}
        assert len(rows) == 8 and got.keys() == expect.keys()
        for key, span in expect.items():
            assert got[key] == pytest.approx(span, rel=1e-12, abs=1e-9), key
    # rank 0's forward is slower by what its units' held pace beside their own gathers adds (tests/test_fsdp.py; since
    # s21n the walk with it, 0.21 ms here, where s20n's (k - 1) x beside charged over 1 ms), and rank 1's first
    # forward starts that much later
    slowed = held_stages[0].fsdp_slowed[0]
    assert slowed > 0.1 and free_stages[0].fsdp_slowed is None
    assert held_stages[0].forward - free_stages[0].forward == pytest.approx(slowed)

    def first_forward(trace, rank):
        return float(trace.compute["start"][(trace.compute["rank"] == rank) & (trace.compute["kind"] == F)].min())

    assert first_forward(held, 1) - first_forward(free, 1) == pytest.approx(slowed)


def two_ranks_zero_2():
    """Two ranks of 1F1B, two micro-batches, F 1 ms, B 2 ms, no P2P time: rank 0 F0 [0,1], F1 [1,2], B0 [4,6],
    B1 [7,9]; rank 1 F0 [1,2], B0 [2,4], F1 [4,5], B1 [5,7].  ZeRO 2: each backward releases the stage's 1.5 ms
    reduce-scatter at its end (one unit), the last backward's as the grad sync; f = 1.5; optimizer 1 ms."""
    raw = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2},
           "costs": {"forward": 1.0, "backward": 2.0}, "comm": {"p2p": 0.0},
           "step": {"grad_sync": 1.5, "overlap_grad_sync": True, "optimizer": 1.0}}
    sc = scenario.from_dict(raw)
    costs = replace(sc.step_costs(), dp_comm_slowdown=(1.5, 1.5), every_backward=((1.5,), (1.5,)))
    return simulation.run(sc).trace, costs


def test_zero_2s_earlier_reduce_scatters_stretch_only_the_ranks_end():
    """s21g, what the model does (docs/step.md, "ZeRO 2 and 3"): the stretch is measured on the unslowed pipeline and
    charged at each rank's end.  Rank 1: B0's reduce-scatter [4,5.5] runs beside F1 [4,5] and B1 [5,5.5], 1.5 ms,
    0.75 more: its end 7 -> 7.75, its grad sync [7.75,9.25].  Rank 0: B0's [6,7.5] beside B1 [7,7.5] only (rank 0
    idles [6,7]), 0.25 more: end 9.25, grad sync [9.25,10.75], optimizer [10.75,11.75].  B0's are grad sync rows too."""
    trace, costs = two_ranks_zero_2()
    rows = step.simulate_step(trace, costs)
    assert spans(rows[rows["rank"] == 0], GRAD_SYNC) == pytest.approx([6.0, 7.5, 9.25, 10.75])
    assert spans(rows[rows["rank"] == 1], GRAD_SYNC) == pytest.approx([4.0, 5.5, 7.75, 9.25])
    assert spans(rows[rows["rank"] == 0], OPTIMIZER) == pytest.approx([10.75, 11.75])


@pytest.mark.xfail(strict=True, reason="ZeRO 2's earlier reduce-scatters slow the rank's end, not the replay "
                   "(docs/step.md, 'ZeRO 2 and 3'; docs/searches.md, s21g)")
def test_zero_2s_slowed_forward_would_delay_the_next_rank_by_hand():
    """s21g, the runtime: rank 1's F1 runs at 1/1.5 of its speed while B0's reduce-scatter runs, [4,5.5], both
    ending at 5.5; B1 [5.5,7.5] beside nothing; its gradient reaches rank 0 at 7.5, so rank 0's B1 runs [7.5,9.5],
    B0's reduce-scatter [6,7.5] having run while rank 0 waited (nothing slowed on rank 0).  Rank 0's grad sync
    [9.5,11], optimizer [11,12]: 0.25 ms later than the model's end-of-rank stretch, which neither delays rank 0 nor
    sees that its own reduce-scatter then runs beside an idle GPU."""
    trace, costs = two_ranks_zero_2()
    rows = step.simulate_step(trace, costs)
    assert spans(rows[rows["rank"] == 0], OPTIMIZER) == pytest.approx([11.0, 12.0])
