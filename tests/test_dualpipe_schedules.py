"""DualPipe / DualPipeV generators against hand-derived facts about the reference
(deepseek-ai/DualPipe, DualPipe.step and DualPipeV.step)."""

from __future__ import annotations

from collections import Counter

import pytest

from dualpipe_sim.schedules.ir import FB, Op, Schedule, ScheduleError
from dualpipe_sim.schedules.registry import build, get
from dualpipe_sim.engine.validate import validate

DUALPIPE_SHAPES = [
    (S, M)
    for S in (2, 4, 6, 8, 10, 16)
    for M in sorted({2 * S, 2 * S + 2, 3 * S + (3 * S) % 2, 40, 4 * S + 6})
    if M >= 2 * S
]
# (ranks R, micro-batches M); stages = 2R.  The reference only asserts M >= 2R,
# so R = 1 (both stages on one rank) and odd R / odd M are all valid.
DUALPIPEV_SHAPES = [(R, M) for R in (1, 2, 3, 4, 5, 8) for M in sorted({2 * R, 2 * R + 1, 3 * R, 50})]


def dualpipe(S, M) -> Schedule:
    return build("dualpipe", S, M)


def dualpipev(R, M) -> Schedule:
    return build("dualpipev", 2 * R, M)


def strs(actions) -> list[str]:
    return [str(a) for a in actions]


# -- 1. the schedules run to the end ---------------------------------------------


@pytest.mark.parametrize("S,M", DUALPIPE_SHAPES)
def test_dualpipe_validates(S, M):
    sched = dualpipe(S, M)
    assert sched.num_ranks == S and sched.stages == S and sched.microbatches == M
    validate(sched)


@pytest.mark.parametrize("R,M", DUALPIPEV_SHAPES)
def test_dualpipev_validates(R, M):
    sched = dualpipev(R, M)
    assert sched.num_ranks == R and sched.stages == 2 * R and sched.microbatches == M
    validate(sched)


def test_dualpipe_placement_and_directions():
    # Rank r holds stage r of direction 0 and stage S-1-r of direction 1;
    # micro-batches 0..M/2-1 go in direction 0, the rest in direction 1.
    S, M = 8, 20
    sched = dualpipe(S, M)
    assert sched.placement() == {**{(0, r): r for r in range(S)}, **{(1, S - 1 - r): r for r in range(S)}}
    for actions in sched.ranks:
        for a in actions:
            for op in (a.ops if isinstance(a, FB) else (a,)):
                assert op.direction == (op.microbatch >= M // 2)


def test_dualpipev_placement():
    R, M = 5, 13
    sched = dualpipev(R, M)
    assert sched.placement() == {(0, s): min(s, 2 * R - 1 - s) for s in range(2 * R)}


# -- 2. counting invariants --------------------------------------------------------
#
# Hand derivation from the reference's phase lengths.  Write L for the ranks on
# one leg (DualPipe: num_half_ranks = S/2; DualPipeV: num_ranks = R), p for the
# rank's position on it (DualPipe: half_rank = min(r, S-1-r); DualPipeV: r),
# C for micro-batches per lane (DualPipe: M/2; DualPipeV: M), a = L-p-1 and
# t = 1 on the turning-point rank (a == 0: DualPipe's two middle ranks,
# DualPipeV's last rank), else 0.  Per phase, what runs:
#
#   1  2a x F                                  -> 2a lone F
#   2  (p+1) x (F, F)                          -> 2(p+1) lone F
#   3  a x (I, W, F)                           -> a I, a W, a lone F
#   4  (C-2L+p+1) x (FB, FB); on the turning point the first FB is F, B alone
#                                              -> 2(C-2L+p+1) - t FB, t lone F, t lone B
#   5  a x (B, FB)                             -> a lone B, a FB
#   6  (p+1) x (B, B), the last p+1 of them split
#                                              -> p+1 lone B, p+1 I
#   7  a x (W, I)                              -> a W, a I
#   8  (p+1) x W                               -> p+1 W
#
# Totals: lone F = 3a + 2p + 2 + t; FB = 2(C-2L+p+1) - t + a;
# lone B = a + p + 1 + t; I = W = 2a + p + 1.
# (Check: lone F + FB = 4(a+p+1) - 4L + 2C = 2C forwards, both lanes.)


def expected_counts(L, p, C):
    a = L - p - 1
    t = int(a == 0)
    return {
        "F": 3 * a + 2 * p + 2 + t,
        "FB": 2 * (C - 2 * L + p + 1) - t + a,
        "B": a + p + 1 + t,
        "I": 2 * a + p + 1,
        "W": 2 * a + p + 1,
    }


def count_kinds(actions) -> Counter:
    return Counter("FB" if isinstance(a, FB) else a.kind for a in actions)


def check_weight_fifo(actions):
    """Every I has exactly one W after it on the rank; W's pop the oldest I first."""
    queue = []
    for a in actions:
        if isinstance(a, FB):
            assert a.forward.kind == "F" and a.backward.kind == "B"  # overlapped backward is whole
            continue
        if a.kind == "I":
            queue.append(a)
        elif a.kind == "W":
            assert queue, f"{a} has no I before it"
            oldest = queue.pop(0)
            assert a == oldest._replace(kind="W"), f"{a} ran before the older {oldest}'s W"
    assert not queue, f"I's without a W: {queue}"


@pytest.mark.parametrize("S,M", DUALPIPE_SHAPES)
def test_dualpipe_counts(S, M):
    sched = dualpipe(S, M)
    for r, actions in enumerate(sched.ranks):
        assert count_kinds(actions) == {
            k: v for k, v in expected_counts(S // 2, min(r, S - 1 - r), M // 2).items() if v
        }, f"rank {r}"
        check_weight_fifo(actions)


@pytest.mark.parametrize("R,M", DUALPIPEV_SHAPES)
def test_dualpipev_counts(R, M):
    sched = dualpipev(R, M)
    for r, actions in enumerate(sched.ranks):
        assert count_kinds(actions) == {k: v for k, v in expected_counts(R, r, M).items() if v}, f"rank {r}"
        check_weight_fifo(actions)


def test_turning_point_first_pair_not_overlapped():
    # DualPipe's middle ranks (S/2-1, S/2) run their first steady-state F0/B1
    # as two lone chunks; the other ranks overlap it.
    S, M = 8, 20
    sched = dualpipe(S, M)
    for r, actions in enumerate(sched.ranks):
        first_fb = next(i for i, a in enumerate(actions) if isinstance(a, FB))
        lone_before = actions[first_fb - 2 : first_fb]
        if r in (S // 2 - 1, S // 2):
            assert [a.kind for a in lone_before] == ["F", "B"], r
            # F of this rank's own-end lane, then B of the other lane
            assert lone_before[0].direction == int(r >= S // 2) != lone_before[1].direction
        else:
            assert actions[first_fb].forward.direction == int(r >= S // 2), r


# -- 3. hand-transcribed small cases ----------------------------------------------
#
# DualPipe S=4, M=8: L=2, C=4; direction 0 = micro-batches 0..3 entering at
# rank 0, direction 1 = 4..7 entering at rank 3.  Worked by hand from the
# phase list above ("lane 0" = the direction entering at the rank's own end).
#
# Rank 0 (p=0, a=1; lane 0 = dir 0 at stage 0, lane 1 = dir 1 at stage 3):
#   1: F F            0F0 0F1
#   2: F F            0F2 3F4@1
#   3: I W F          3I4@1 3W4@1 3F5@1
#   4: 1 round        (0F3;3B5@1) (3F6@1;0B0)
#   5: B FB           3B6@1 (3F7@1;0B1)
#   6: B, I           3B7@1 0I2
#   7: W I            0W2 0I3
#   8: W              0W3
# Rank 1 (p=1, a=0, a middle rank; lane 0 = dir 0 at stage 1, lane 1 = dir 1 at stage 2):
#   2: (F F) x2       1F0 2F4@1 1F1 2F5@1
#   4: 2 rounds, the first F/B lone
#                     1F2 2B4@1 (2F6@1;1B0)  (1F3;2B5@1) (2F7@1;1B1)
#   6: B B I I        2B6@1 1B2 2I7@1 1I3
#   8: W W            2W7@1 1W3
# Rank 3 (p=0, a=1; lane 0 = dir 1 at stage 0, lane 1 = dir 0 at stage 3): rank 0 mirrored.

OV = "OVERLAP_F_B"
DUALPIPE_4_8 = {
    0: ["0F0", "0F1", "0F2", "3F4@1", "3I4@1", "3W4@1", "3F5@1",
        f"(0F3;3B5@1){OV}", f"(3F6@1;0B0){OV}", "3B6@1", f"(3F7@1;0B1){OV}",
        "3B7@1", "0I2", "0W2", "0I3", "0W3"],
    1: ["1F0", "2F4@1", "1F1", "2F5@1",
        "1F2", "2B4@1", f"(2F6@1;1B0){OV}", f"(1F3;2B5@1){OV}", f"(2F7@1;1B1){OV}",
        "2B6@1", "1B2", "2I7@1", "1I3", "2W7@1", "1W3"],
    3: ["0F4@1", "0F5@1", "0F6@1", "3F0", "3I0", "3W0", "3F1",
        f"(0F7@1;3B1){OV}", f"(3F2;0B4@1){OV}", "3B2", f"(3F3;0B5@1){OV}",
        "3B3", "0I6@1", "0W6@1", "0I7@1", "0W7@1"],
}  # fmt: skip


@pytest.mark.parametrize("rank", sorted(DUALPIPE_4_8))
def test_dualpipe_4_8_by_hand(rank):
    assert strs(dualpipe(4, 8).ranks[rank]) == DUALPIPE_4_8[rank]


# DualPipeV R=2 (S=4), M=4.  Rank 1 is the V's tip (p=1, a=0; lane 0 = stage 1,
# lane 1 = stage 2): 2: F F F F; 4: two rounds, first F/B lone; 6: B B I I; 8: W W.
# Rank 0 (p=0, a=1; stages 0 and 3): 1: F F; 2: F F; 3: I W F; 4: one round;
# 5: B FB; 6: B I; 7: W I; 8: W.
DUALPIPEV_2_4 = {
    0: ["0F0", "0F1", "0F2", "3F0", "3I0", "3W0", "3F1",
        f"(0F3;3B1){OV}", f"(3F2;0B0){OV}", "3B2", f"(3F3;0B1){OV}",
        "3B3", "0I2", "0W2", "0I3", "0W3"],
    1: ["1F0", "2F0", "1F1", "2F1",
        "1F2", "2B0", f"(2F2;1B0){OV}", f"(1F3;2B1){OV}", f"(2F3;1B1){OV}",
        "2B2", "1B2", "2I3", "1I3", "2W3", "1W3"],
}  # fmt: skip


@pytest.mark.parametrize("rank", sorted(DUALPIPEV_2_4))
def test_dualpipev_2_4_by_hand(rank):
    assert strs(dualpipev(2, 4).ranks[rank]) == DUALPIPEV_2_4[rank]


def test_dualpipev_single_rank_by_hand():
    # R=1, M=3: one rank holds stages 0 and 1.  2: F F; 4: M-2+1 = 2 rounds, the
    # first F/B lone (the rank is the V's tip); 6: one pair B, I; 8: W.
    assert strs(dualpipev(1, 3).ranks[0]) == [
        "0F0", "1F0", "0F1", "1B0", f"(1F1;0B0){OV}", f"(0F2;1B1){OV}", f"(1F2;0B1){OV}",
        "1B2", "0I2", "0W2",
    ]  # fmt: skip


# -- 4. constraints ----------------------------------------------------------------


@pytest.mark.parametrize(
    "S,M,field",
    [
        (5, 20, "pipeline.stages"),  # odd stages
        (0, 20, "pipeline.stages"),
        (4, 9, "pipeline.microbatches"),  # odd micro-batches
        (4, 6, "pipeline.microbatches"),  # fewer than 2 * stages
        (8, 14, "pipeline.microbatches"),
    ],
)
def test_dualpipe_constraints(S, M, field):
    problem = get("dualpipe").check(S, M)
    assert problem and field in problem and str(S if "stages" in field else M) in problem
    with pytest.raises(ScheduleError, match=field.replace(".", r"\.")):
        build("dualpipe", S, M)


@pytest.mark.parametrize("S,M", [(2, 4), (4, 8), (8, 16), (8, 18), (16, 32)])
def test_dualpipe_valid_shapes_pass_check(S, M):
    assert get("dualpipe").check(S, M) is None


@pytest.mark.parametrize(
    "S,M,field",
    [
        (6, 5, "pipeline.microbatches"),  # R=3 needs M >= 6
        (8, 7, "pipeline.microbatches"),
        (7, 20, "pipeline.stages"),  # stages = 2R must be even
        (0, 4, "pipeline.stages"),
    ],
)
def test_dualpipev_constraints(S, M, field):
    problem = get("dualpipev").check(S, M)
    assert problem and field in problem
    with pytest.raises(ScheduleError, match=field.replace(".", r"\.")):
        build("dualpipev", S, M)


@pytest.mark.parametrize("S,M", [(2, 2), (6, 6), (6, 7), (10, 11)])
def test_dualpipev_valid_shapes_pass_check(S, M):
    assert get("dualpipev").check(S, M) is None


# -- 5. parameter copies -------------------------------------------------------------


def test_two_parameter_copies_per_rank():
    S = 8
    assert dualpipe(S, 16).stages_on_rank() == [sorted({r, S - 1 - r}) for r in range(S)]
    R = 4
    assert dualpipev(R, 8).stages_on_rank() == [[r, 2 * R - 1 - r] for r in range(R)]


# -- 6. simulated bubble and memory (needs the engine) ----------------------------------


def _engine():
    engine = pytest.importorskip("dualpipe_sim.engine.simpy_engine")
    costs = pytest.importorskip("dualpipe_sim.inputs.costs")
    metrics = pytest.importorskip("dualpipe_sim.readers.metrics")
    return engine.simulate, costs.CostModel, metrics.compute_metrics


SIM_CASES = (
    [("dualpipe", S, M) for S in (2, 4, 6, 8, 16) for M in (2 * S, 2 * S + 2, 40, 64) if M >= 2 * S]
    + [("dualpipev", 2 * R, M) for R in (1, 2, 3, 5, 8) for M in (2 * R, 2 * R + 1, 3 * R, 50)]
)


@pytest.mark.parametrize("F", [1.0, 2.5])
@pytest.mark.parametrize("family,S,M", SIM_CASES)
def test_bubble_and_peak_activation(family, S, M, F):
    """DualPipe README: bubble (PP/2-1)(F&B+B-3W), activation PP+1, with PP = stages.

    With B = 2F, W = F, F&B = F+B and free communication every rank idles
    (S/2-1)(F&B+B-3W) = (S-2)F, whatever M, and the busiest rank holds S+1
    stage-activations at its peak.
    """
    simulate, CostModel, compute_metrics = _engine()
    B, W = 2 * F, F
    costs = CostModel.uniform(S, forward=F, backward=B, weight=W, overlapped=F + B, p2p=0.0)
    m = compute_metrics(simulate(build(family, S, M), costs)).to_dict()
    bubble = (S / 2 - 1) * ((F + B) + B - 3 * W)
    for rank in m["per_rank"]:
        assert rank["idle"] == pytest.approx(bubble), rank
    assert max(rank["peak_activation"] for rank in m["per_rank"]) == S + 1
