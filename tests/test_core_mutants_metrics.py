"""metrics.json's figures on runs small enough to work on paper (issue s10d: planted bugs the
suite let through).  Each docstring works the run out by hand; the tests compare with that."""

import pytest

from helpers import run_uniform


def test_span_idle_and_span_bubble_rate_on_1f1b_two_ranks():
    """1F1B, p = 2, m = 2, F = 1, B = 2, no P2P.
    rank 0: F0 [0,1] F1 [1,2] B0 [4,6] B1 [7,9]     (B0 waits for rank 1's B0 [2,4])
    rank 1: F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7]
    makespan 9 = (m + p - 1)(F + B); busy 6 on each rank, so idle 3 on each.
    span: rank 0 [0,9] = 9, span_idle 3; rank 1 [1,7] = 6, span_idle 0 (its waits are all
    before its first op or after its last).  span_bubble_rate = (9 - 6) / 9 = 1/3."""
    m = run_uniform("1f1b", 2, 2).metrics
    assert m.makespan == pytest.approx(9.0)
    assert [(r.busy, r.idle) for r in m.per_rank] == [(6.0, 3.0), (6.0, 3.0)]
    assert [(r.span, r.span_idle) for r in m.per_rank] == [(9.0, 3.0), (6.0, 0.0)]
    assert m.span_bubble_rate == pytest.approx(1 / 3)
    assert m.bubble_ratio == pytest.approx(6 / 18)


def test_p2p_exposed_hidden_and_overlap_ratio_on_1f1b_two_ranks():
    """1F1B, p = 2, m = 2, F = 1, B = 2, P2P 0.5 per transfer (async).
    rank 0: F0 [0,1] F1 [1,2]; activations sent [1,1.5] and [2,2.5].
    rank 1: F0 [1.5,2.5] B0 [2.5,4.5] F1 [4.5,5.5] B1 [5.5,7.5]; gradients sent [4.5,5] and [7.5,8].
    rank 0: B0 [5,7] B1 [8,10].  makespan 10.
    Exposed (the part of a transfer while its reader sits idle waiting for it):
      rank 1 F0 waits [0,1.5] for [1,1.5]: 0.5;   rank 1 F1: no wait (its activation landed at 2.5): 0;
      rank 0 B0 waits [2,5] for [4.5,5]: 0.5;     rank 0 B1 waits [7,8] for [7.5,8]: 0.5.
    p2p_time 4 x 0.5 = 2; exposed 1.5; hidden 0.5; overlap_ratio = hidden / total = 0.25."""
    m = run_uniform("1f1b", 2, 2, p2p=0.5).metrics
    assert m.makespan == pytest.approx(10.0)
    c = m.comm
    assert (c.p2p_time, c.a2a_time) == (pytest.approx(2.0), 0.0)
    assert c.p2p_exposed == pytest.approx(1.5) and c.exposed == pytest.approx(1.5)
    assert c.hidden == pytest.approx(0.5)
    assert c.overlap_ratio == pytest.approx(0.25)


def test_p2p_exposed_counts_the_first_action_of_every_rank():
    """1F1B, p = 2, m = 1, P2P 0.5: rank 1's only forward is its first action, waiting from 0:
    rank 0 F0 [0,1], sends [1,1.5]; rank 1 F0 [1.5,2.5] B0 [2.5,4.5], sends [4.5,5]; rank 0 B0 [5,7].
    Both transfers are waited for whole: exposed 1.0 of 1.0, nothing hidden."""
    c = run_uniform("1f1b", 2, 1, p2p=0.5).metrics.comm
    assert (c.p2p_time, c.p2p_exposed, c.hidden, c.overlap_ratio) == pytest.approx((1.0, 1.0, 0.0, 0.0))


def test_peak_memory_is_the_fullest_rank_not_the_sum_of_two_ranks_maxima():
    """1F1B, p = 2, m = 4, 3 bytes of activations per stage, parameters 1 and 10 bytes.
    Rank 0 holds 2 activations at its peak (its warm-up), rank 1 holds 1: rank 0 has 6 + 1 = 7
    bytes, rank 1 3 + 10 = 13.  peak_memory_bytes is the fullest rank's, 13 (not 6 + 10 = 16)."""
    m = run_uniform("1f1b", 2, 4, memory__activation=[3.0, 3.0], memory__parameters=[1.0, 10.0]).metrics
    assert [(r.peak_activation_bytes, r.parameter_bytes) for r in m.per_rank] == [(6.0, 1.0), (3.0, 10.0)]
    assert m.scalars()["peak_memory_bytes"] == 13.0


def test_between_ops_counts_an_actions_all_to_all_at_its_edges():
    """[chunk] component model, one stage, one micro-batch, one layer (notation of
    tests/test_overlap_components.py).  A lone F runs Af 1, Df 2, Mf 3, Cf 4 in turn: [0, 10], its
    action ending with the combine all-to-all Cf [6, 10].  B then runs Cb 0.5, MbI 1.5, MbW 1,
    Db 2.5, AbI 2, AbW 0.5: [10, 18], its action starting with the all-to-all Cb [10, 10.5].
    The actions touch, so the time between ops is 0 (the closed-form bubble of one stage), while
    the compute channel is idle for every all-to-all: 2 + 4 + 0.5 + 2.5 = 9 of the 18."""
    from dualpipe_sim.inputs.costs import COMPONENTS, Chunk, CostModel
    from dualpipe_sim.readers.metrics import compute_metrics
    from dualpipe_sim.schedules.registry import build
    from dualpipe_sim.simulation import simulate

    times = {"attn_forward": 1, "dispatch_forward": 2, "mlp_forward": 3, "combine_forward": 4,
             "combine_backward": 0.5, "mlp_backward_input": 1.5, "mlp_backward_weight": 1,
             "dispatch_backward": 2.5, "attn_backward_input": 2, "attn_backward_weight": 0.5}  # fmt: skip
    costs = CostModel.from_chunk(1, Chunk(1, tuple(float(times[str(c)]) for c in COMPONENTS)))
    m = compute_metrics(simulate(build("1f1b", 1, 1), costs))
    (rank,) = m.per_rank
    assert m.makespan == pytest.approx(18.0)
    assert rank.busy == pytest.approx(9.0) and rank.idle == pytest.approx(9.0)
    assert rank.a2a_time == pytest.approx(9.0) and rank.a2a_exposed == pytest.approx(9.0)
    assert rank.between_ops == pytest.approx(0.0)


def test_all_exposed_communication_reports_exactly_zero_hidden():
    """1F1B never runs an all-to-all under compute, so every millisecond of it is exposed: hidden is 0 and the
    overlap ratio 0, exactly, even when the interval sums round differently (these decimals left 7.1e-15 ms
    and 1.4e-14 ms hidden, printed as "hidden 7.105e-15", before the rounding-size difference was snapped)."""
    from dualpipe_sim.inputs.costs import Chunk, CostModel
    from dualpipe_sim.readers.metrics import compute_metrics
    from dualpipe_sim.schedules.registry import build
    from dualpipe_sim.simulation import simulate

    vals = [0.1, 0.7, 0.3, 1.1, 0.9, 0.2, 0.6, 1.3, 0.4, 0.8]
    for r in range(6):
        times = tuple(vals[r:] + vals[:r])
        m = compute_metrics(simulate(build("1f1b", 4, 8), CostModel.from_chunk(4, Chunk(1, times))))
        assert m.comm.exposed == pytest.approx(m.comm.p2p_time + m.comm.a2a_time)
        assert m.comm.hidden == 0.0 and m.comm.overlap_ratio == 0.0
