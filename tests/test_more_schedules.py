"""Chimera, interleaved 1F1B, ZB-H1 and ZB-V against hand-derived facts.

Expected op strings below were written by hand from the references' rules
(Chimera: Shigangli/Chimera's slot generator / the paper's basic unit;
interleaved: torch.distributed.pipelining ScheduleInterleaved1F1B (Megatron-LM's order for M a multiple of p);
ZB-H1: the zero-bubble repo's WeightGradStore patch of Megatron 1F1B; ZB-V:
the paper's handcrafted V order as in PyTorch's ScheduleZBVZeroBubble), not
copied from generator output.  Timing facts come from the papers' closed forms
and from small timelines worked by hand (noted where they are).
"""

from __future__ import annotations

from collections import Counter

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.engine.simpy_engine import simulate
from dualpipe_sim.schedules.ir import Op, ScheduleError
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import analytic, build, get
from dualpipe_sim.engine.validate import validate


def strs(actions) -> list[str]:
    return [str(a) for a in actions]


def run(name, stages, microbatches, *, forward, backward, weight=None, p2p=0.0, **options):
    sched = build(name, stages, microbatches, **options)
    costs = CostModel.uniform(stages, forward=forward, backward=backward, weight=weight, p2p=p2p)
    return sched, compute_metrics(simulate(sched, costs)).to_dict(), costs


def idles(metrics) -> list[float]:
    return [r["idle"] for r in metrics["per_rank"]]


def peaks(metrics) -> list[int]:
    return [r["peak_activation"] for r in metrics["per_rank"]]


# -- shapes ----------------------------------------------------------------------

CHIMERA_SHAPES = [(D, k * D) for D in (2, 4, 6, 8, 10) for k in (1, 2, 3, 5)]
INTERLEAVED_SHAPES = [(p, v, k * p) for p in (1, 2, 3, 4, 5) for v in (1, 2, 3, 4) for k in (1, 2, 3, 5)]
ZBH1_SHAPES = [(p, m) for p in (1, 2, 3, 4, 5, 8) for m in sorted({1, 2, p - 1, p, p + 1, 2 * p, 3 * p + 1, 17}) if m >= 1]
ZBV_SHAPES = [(p, m) for p in (1, 2, 3, 4, 6) for m in sorted({1, 2, p, 2 * p - 1, 2 * p, 3 * p + 1, 20}) if m >= 1]


# -- 1. every valid shape runs to the end ----------------------------------------


@pytest.mark.parametrize("D,N", CHIMERA_SHAPES)
def test_chimera_validates(D, N):
    sched = build("chimera", D, N)
    assert sched.num_ranks == D and sched.stages == D and sched.microbatches == N
    validate(sched)


@pytest.mark.parametrize("p,v,m", INTERLEAVED_SHAPES)
def test_interleaved_validates(p, v, m):
    sched = build("interleaved-1f1b", p * v, m, chunks_per_rank=v)
    assert sched.num_ranks == p and sched.stages == p * v
    validate(sched)


@pytest.mark.parametrize("p,m", ZBH1_SHAPES)
def test_zb_h1_validates(p, m):
    sched = build("zb-h1", p, m)
    assert sched.num_ranks == p
    validate(sched)


@pytest.mark.parametrize("p,m", ZBV_SHAPES)
def test_zbv_validates(p, m):
    sched = build("zbv", 2 * p, m)
    assert sched.num_ranks == p and sched.stages == 2 * p
    validate(sched)


# -- 2. placement and counting invariants ----------------------------------------


def test_chimera_placement_and_direction_split():
    D, N = 6, 18
    sched = build("chimera", D, N)
    # down pipeline: stage i on rank i; up pipeline: stage i on rank D-1-i.
    assert sched.placement() == {**{(0, i): i for i in range(D)}, **{(1, i): D - 1 - i for i in range(D)}}
    assert sched.stages_on_rank() == [sorted({r, D - 1 - r}) for r in range(D)]
    direction = {}
    for actions in sched.ranks:
        for op in actions:
            direction[op.microbatch] = op.direction
    # unit u: u*D .. u*D + D/2 - 1 down, the next D/2 up.
    assert direction == {mb: 0 if mb % D < D // 2 else 1 for mb in range(N)}
    for actions in sched.ranks:
        kinds = Counter(op.kind for op in actions)
        assert kinds == {"F": N, "B": N}  # two stages per rank, N/2 micro-batches each


def test_interleaved_placement_and_counts():
    p, v, m = 3, 3, 6
    sched = build("interleaved-1f1b", p * v, m, chunks_per_rank=v)
    assert sched.placement() == {(0, s): s % p for s in range(p * v)}
    for r, actions in enumerate(sched.ranks):
        assert Counter(op.kind for op in actions) == {"F": m * v, "B": m * v}
        # every chunk sees its micro-batches in increasing order, forwards and backwards alike
        for stage in range(r, p * v, p):
            for kind in "FB":
                assert [op.microbatch for op in actions if op.stage == stage and op.kind == kind] == list(range(m))


@pytest.mark.parametrize("p,m", [(4, 8), (5, 3), (6, 20)])
def test_zb_h1_splits_every_backward(p, m):
    # The paper's ZB-H1: every backward is I then W (the gradient leaves after I).
    for actions in build("zb-h1", p, m).ranks:
        assert Counter(op.kind for op in actions) == {"F": m, "I": m, "W": m}


@pytest.mark.parametrize("p,m", [(4, 8), (5, 3), (6, 20)])
def test_zb_h1_megatron_defers_exactly_r_weight_grads_on_rank_r(p, m):
    sched = build("zb-h1-megatron", p, m)
    for r, actions in enumerate(sched.ranks):
        kinds = Counter(op.kind for op in actions)
        assert kinds["F"] == m and kinds["B"] + kinds["I"] == m and kinds["W"] == kinds["I"]
        if r == 0:
            assert kinds["I"] == 0  # rank 0 never splits
        if m >= p:
            # the last r ops of rank r are W's: the weight gradients held back by rank
            tail = actions[len(actions) - r :] if r else ()
            assert all(op.kind == "W" for op in tail)


def test_zbv_placement_v_shape():
    p, m = 4, 10
    sched = build("zbv", 2 * p, m)
    assert sched.placement() == {**{(0, r): r for r in range(p)}, **{(0, 2 * p - 1 - r): r for r in range(p)}}
    for actions in sched.ranks:
        assert Counter(op.kind for op in actions) == {"F": 2 * m, "I": 2 * m, "W": 2 * m}


# -- 3. small cases written out by hand ------------------------------------------


def test_interleaved_p3_v2_m3_by_hand():
    # torch's order: one round of 3; warm-up min(3 + 2 (2 - r), 6) = 6, 5, 3 forwards.
    sched = build("interleaved-1f1b", 6, 3, chunks_per_rank=2)
    assert [strs(a) for a in sched.ranks] == [
        ["0F0", "0F1", "0F2", "3F0", "3F1", "3F2", "3B0", "3B1", "3B2", "0B0", "0B1", "0B2"],
        ["1F0", "1F1", "1F2", "4F0", "4F1", "4F2", "4B0", "4B1", "4B2", "1B0", "1B1", "1B2"],
        ["2F0", "2F1", "2F2", "5F0", "5B0", "5F1", "5B1", "5F2", "5B2", "2B0", "2B1", "2B2"],
    ]


def test_zb_h1_megatron_p3_m6_by_hand():
    # Megatron 1F1B with warm-up p-r-1; steady backward i is split (I now, W
    # queued) when r > 0 and (i < r or last steady iteration); one W after the
    # last steady iteration if i >= r > 0; cool-down I's each followed by a W
    # when R + i >= r; leftover W's at the end.
    sched = build("zb-h1-megatron", 3, 6)
    assert strs(sched.ranks[0]) == ["0F0", "0F1", "0F2", "0B0", "0F3", "0B1", "0F4", "0B2", "0F5", "0B3", "0B4", "0B5"]
    assert strs(sched.ranks[1]) == [
        "1F0", "1F1", "1I0", "1F2", "1B1", "1F3", "1B2", "1F4", "1B3", "1F5", "1I4", "1W0", "1I5", "1W4", "1W5",
    ]  # fmt: skip
    assert strs(sched.ranks[2]) == [
        "2F0", "2I0", "2F1", "2I1", "2F2", "2B2", "2F3", "2B3", "2F4", "2B4", "2F5", "2I5", "2W0", "2W1", "2W5",
    ]  # fmt: skip


def test_zb_h1_p3_m6_by_hand():
    # The same order with every fused B written as I then W (the paper's ZB-H1).
    sched = build("zb-h1", 3, 6)
    assert strs(sched.ranks[0]) == [
        "0F0", "0F1", "0F2", "0I0", "0W0", "0F3", "0I1", "0W1", "0F4", "0I2", "0W2", "0F5", "0I3", "0W3",
        "0I4", "0W4", "0I5", "0W5",
    ]  # fmt: skip
    assert strs(sched.ranks[1]) == [
        "1F0", "1F1", "1I0", "1F2", "1I1", "1W1", "1F3", "1I2", "1W2", "1F4", "1I3", "1W3", "1F5", "1I4", "1W0",
        "1I5", "1W4", "1W5",
    ]  # fmt: skip
    assert strs(sched.ranks[2]) == [
        "2F0", "2I0", "2F1", "2I1", "2F2", "2I2", "2W2", "2F3", "2I3", "2W3", "2F4", "2I4", "2W4", "2F5", "2I5",
        "2W0", "2W1", "2W5",
    ]  # fmt: skip


def test_zb_h2_p3_m6_by_hand():
    # Rank r: 2(p-r)-1 warm-up F's; then per micro-batch j: I_j, the next F if
    # any, then the oldest W unless j >= m-2p+1 = 1 with forwards left (held
    # back for the parallelogram's tail); held W's after the last I.
    sched = build("zb-h2", 3, 6)
    assert strs(sched.ranks[0]) == [
        "0F0", "0F1", "0F2", "0F3", "0F4", "0I0", "0F5", "0W0", "0I1", "0W1", "0I2", "0W2", "0I3", "0W3",
        "0I4", "0W4", "0I5", "0W5",
    ]  # fmt: skip
    assert strs(sched.ranks[1]) == [
        "1F0", "1F1", "1F2", "1I0", "1F3", "1W0", "1I1", "1F4", "1I2", "1F5", "1I3", "1W1", "1I4", "1W2",
        "1I5", "1W3", "1W4", "1W5",
    ]  # fmt: skip
    assert strs(sched.ranks[2]) == [
        "2F0", "2I0", "2F1", "2W0", "2I1", "2F2", "2I2", "2F3", "2I3", "2F4", "2I4", "2F5", "2I5",
        "2W1", "2W2", "2W3", "2W4", "2W5",
    ]  # fmt: skip


def test_zbv_p2_m4_by_hand():
    # S = 4 stages on 2 ranks: rank 0 holds stages 0 and 3, rank 1 stages 1 and 2.
    # Rank 0: 2(p-0)-1 = 3 chunk-0 F's, 2 triples F/I/W on chunk 1, steady
    # (F0) I0 W0 F1 I1 W1, cool-down I0 W0.  Rank 1: 1 F0, a pair (F1, F0),
    # 1 triple, steady, cool-down (I0, I1) then (I0, W0), then W1, W0.
    sched = build("zbv", 4, 4)
    assert strs(sched.ranks[0]) == [
        "0F0", "0F1", "0F2", "3F0", "3I0", "3W0", "3F1", "3I1", "3W1",
        "0F3", "0I0", "0W0", "3F2", "3I2", "3W2", "0I1", "0W1", "3F3", "3I3", "3W3",
        "0I2", "0W2", "0I3", "0W3",
    ]  # fmt: skip
    assert strs(sched.ranks[1]) == [
        "1F0", "2F0", "1F1", "2F1", "2I0", "2W0",
        "1F2", "1I0", "1W0", "2F2", "2I1", "2W1", "1F3", "1I1", "1W1", "2F3", "2I2", "2W2",
        "1I2", "2I3", "1I3", "1W2", "2W3", "1W3",
    ]  # fmt: skip


# -- 4. constraint errors name the field -----------------------------------------


@pytest.mark.parametrize(
    "name,stages,mbs,options,field,words",
    [
        ("chimera", 5, 10, {}, "pipeline.stages", "even"),
        ("chimera", 4, 6, {}, "pipeline.microbatches", "multiple"),
        ("chimera", 4, 0, {}, "pipeline.microbatches", "multiple"),
        ("interleaved-1f1b", 8, 0, {"chunks_per_rank": 2}, "pipeline.microbatches", ">= 1"),
        ("interleaved-1f1b", 9, 6, {"chunks_per_rank": 2}, "pipeline.stages", "chunks_per_rank"),
        ("interleaved-1f1b", 8, 8, {"chunks_per_rank": 0}, "pipeline.chunks_per_rank", ">= 1"),
        ("zb-h1", 0, 4, {}, "pipeline.stages", ">= 1"),
        ("zb-h1", 4, 0, {}, "pipeline.microbatches", ">= 1"),
        ("zbv", 5, 8, {}, "pipeline.stages", "even"),
        ("zbv", 4, 0, {}, "pipeline.microbatches", ">= 1"),
    ],
)
def test_constraint_errors_name_the_field(name, stages, mbs, options, field, words):
    with pytest.raises(ScheduleError) as err:
        build(name, stages, mbs, **options)
    msg = str(err.value)
    assert field in msg and words in msg and name in msg
    assert msg.count(".") <= 3  # one sentence (dots only in the field names)


def test_interleaved_declares_its_option_and_defaults_to_two_chunks():
    assert get("interleaved-1f1b").options == ("chunks_per_rank", "microbatch_group")
    assert build("interleaved-1f1b", 8, 4).num_ranks == 4
    # other families ignore a stray chunks_per_rank from the scenario
    assert build("zb-h1", 4, 4, chunks_per_rank=3).num_ranks == 4


# -- 5. closed-form timing on the engine (zero communication, uniform stages) ----


@pytest.mark.parametrize("p,v,m", [(p, v, k * p) for p in (2, 3, 4) for v in (1, 2, 3) for k in (1, 2, 4)])
@pytest.mark.parametrize("f,b", [(1.0, 2.0), (1.0, 1.0), (2.0, 3.0)])
def test_interleaved_idle_closed_form(p, v, m, f, b):
    # Narayanan et al. 2021: bubble (p-1)(F+B)/v with F = v f, B = v b per rank.
    sched, met, costs = run("interleaved-1f1b", p * v, m, forward=f, backward=b, chunks_per_rank=v)
    F, B = v * f, v * b
    for idle in idles(met):
        assert idle == pytest.approx((p - 1) * (F + B) / v)
    assert met["makespan"] == pytest.approx(m * (F + B) + (p - 1) * (F + B) / v)
    # Peak: the warm-up forwards plus the steady state's first F before its B.
    for r, peak in enumerate(peaks(met)):
        warm = min(2 * (p - r - 1) + (v - 1) * p, m * v)  # torch's warm-up, rounds of p
        assert peak == min(warm + 1, m * v)
    a = analytic("interleaved-1f1b", p * v, m, costs, chunks_per_rank=v)
    assert a["bubble"] == pytest.approx((p - 1) * (F + B) / v) and a["peak_activation"] == max(peaks(met))


def test_interleaved_beats_1f1b_by_factor_v():
    _, inter, _ = run("interleaved-1f1b", 8, 8, forward=1, backward=2, chunks_per_rank=2)
    _, plain, _ = run("1f1b", 4, 8, forward=2, backward=4)  # same model cut in 4 stages
    assert idles(inter)[0] == pytest.approx(idles(plain)[0] / 2)


@pytest.mark.parametrize("p,m", [(p, m) for p in (2, 3, 4, 6) for m in (p, p + 1, 2 * p, 3 * p + 2)])
@pytest.mark.parametrize("f,b,w", [(1.0, 2.0, 1.0), (1.0, 3.0, 1.0), (2.0, 3.0, 1.0), (1.0, 2.0, 0.5)])
@pytest.mark.parametrize("name", ["zb-h1", "zb-h1-megatron"])
def test_zb_h1_idle_closed_form(name, p, m, f, b, w):
    # Qi et al. 2024: ZB-H1 bubble (p-1)(T_F + T_B - T_W) with T_B the input-
    # gradient time; here B = I + W, so (p-1)(F + B - 2W), against 1F1B's (p-1)(F+B).
    sched, met, costs = run(name, p, m, forward=f, backward=b, weight=w)
    for idle in idles(met):
        assert idle == pytest.approx((p - 1) * (f + b - 2 * w))
    assert peaks(met) == [min(p - r, m) for r in range(p)]  # as 1F1B
    assert analytic(name, p, m, costs)["bubble"] == pytest.approx((p - 1) * (f + b - 2 * w))


def test_zb_h1_p3_m6_unit_costs_makespan():
    # F = I = W = 1: 1F1B would take 3m + (p-1)*3 = 24; ZB-H1 takes 3m + (p-1) = 20.
    _, met, _ = run("zb-h1", 3, 6, forward=1, backward=2, weight=1)
    assert met["makespan"] == pytest.approx(20)
    _, base, _ = run("1f1b", 3, 6, forward=1, backward=2)
    assert base["makespan"] == pytest.approx(24)


def test_zbv_p2_m4_hand_timeline():
    # Worked by hand on the order of test_zbv_p2_m4_by_hand with F = I = W = 1:
    # rank 0 runs without a gap from 0 to 24, rank 1 from 1 to 25.
    _, met, _ = run("zbv", 4, 4, forward=1, backward=2, weight=1)
    assert met["makespan"] == pytest.approx(25)
    assert idles(met) == pytest.approx([1, 1])


@pytest.mark.parametrize("p,m", [(p, m) for p in (1, 2, 3, 4, 6) for m in (2 * p - 1, 2 * p, 3 * p + 1, 25)])
@pytest.mark.parametrize("t", [1.0, 2.5])
def test_zbv_near_zero_bubble_when_f_i_w_equal(p, m, t):
    # Rank r cannot start before r forwards have passed the ranks before it;
    # ZB-V adds no other gap: makespan = (6m + p - 1) t, every rank idles (p-1) t.
    sched, met, costs = run("zbv", 2 * p, m, forward=t, backward=2 * t, weight=t)
    assert met["makespan"] == pytest.approx((6 * m + p - 1) * t)
    assert idles(met) == pytest.approx([(p - 1) * t] * p)
    assert peaks(met) == [2 * p] * p  # half-size stages: the bytes of 1F1B's p
    a = analytic("zbv", 2 * p, m, costs)
    assert a["bubble"] == pytest.approx((p - 1) * t) and a["peak_activation"] == 2 * p


@pytest.mark.parametrize("D", [2, 4, 6, 8])
@pytest.mark.parametrize("units", [1, 2, 3, 4])
def test_chimera_idle_with_equal_forward_and_backward(D, units):
    # F = B: the slot clock is the timeline; makespan 2N + D - 2 slots, and
    # each rank idles D - 2 slots per iteration (not per unit: direct
    # concatenation fills one unit's drain with the next unit's fill), giving
    # the paper's bubble ratio (D-2)/(2N+D-2).
    N = units * D
    sched, met, costs = run("chimera", D, N, forward=1.5, backward=1.5)
    assert met["makespan"] == pytest.approx((2 * N + D - 2) * 1.5)
    assert idles(met) == pytest.approx([(D - 2) * 1.5] * D)
    assert met["bubble_ratio"] == pytest.approx((D - 2) / (2 * N + D - 2))
    assert analytic("chimera", D, N, costs)["bubble"] == pytest.approx((D - 2) * 1.5)


def test_chimera_d4_single_unit_with_backward_twice_forward():
    # Worked by hand (F = 1, B = 2) on the order of test_chimera_d4_n4_by_hand:
    # ranks 0 and 3 end with their last B in [14, 16]; every rank idles 4 = (D-2) B.
    _, met, costs = run("chimera", 4, 4, forward=1, backward=2)
    assert met["makespan"] == pytest.approx(16)
    assert idles(met) == pytest.approx([4] * 4)
    assert analytic("chimera", 4, 4, costs)["bubble"] is None  # the paper's (D-2)F assumes B = F


@pytest.mark.parametrize("D", [2, 4, 6, 8, 10])
def test_chimera_peak_activation_range(D):
    _, met, costs = run("chimera", D, 2 * D, forward=1, backward=2)
    got = peaks(met)
    assert all(D // 2 + 1 <= x <= D for x in got)
    assert got[0] == got[-1] == D // 2 + 1  # end ranks: D/2 + 1 (the paper's lower end)
    assert max(got) == D  # middle ranks reach D (the paper's upper end)
    assert got == [D // 2 + 1 + min(r, D - 1 - r) for r in range(D)]
    assert analytic("chimera", D, 2 * D, costs)["peak_activation"] == D


@pytest.mark.parametrize(
    "name,stages,mbs,options",
    [("chimera", 6, 12, {}), ("interleaved-1f1b", 8, 8, {"chunks_per_rank": 2}), ("zb-h1", 4, 8, {}), ("zbv", 8, 8, {})],
)
def test_schedules_finish_with_communication(name, stages, mbs, options):
    # With P2P cost the timing changes but every schedule still runs to the end
    # and does exactly its own work.
    sched, met, costs = run(name, stages, mbs, forward=1, backward=2, weight=1, p2p=0.3, **options)
    for r, actions in enumerate(sched.ranks):
        work = sum(costs.duration(op) for op in actions)
        assert met["per_rank"][r]["busy"] == pytest.approx(work)
    assert met["makespan"] > max(r["busy"] for r in met["per_rank"])


def test_generators_are_pure():
    for name, S, M, opt in [("chimera", 4, 8, {}), ("interleaved-1f1b", 6, 6, {"chunks_per_rank": 3}), ("zb-h1", 4, 6, {}), ("zbv", 6, 7, {})]:
        assert build(name, S, M, **opt) == build(name, S, M, **opt)
    assert Op("F", 0, 0) in build("zbv", 2, 1).ranks[0]
