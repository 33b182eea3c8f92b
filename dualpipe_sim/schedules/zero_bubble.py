"""Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024,
arXiv:2401.10241; sail-sg/zero-bubble-pipeline-parallelism).

All split a backward into I (input gradient, on the critical path: the
gradient is sent to the previous stage when I ends) and W (weight gradient,
which nothing downstream waits for), so W can fill bubbles.

One stage per rank (stage r on rank r), p ranks, m micro-batches:

ZB-H1 (``zb-h1``), the paper's Sec. 2.1 schedule.  Rank r runs w = min(p-r-1, m)
warm-up forwards and R = m - w steady iterations, each a forward then a
backward, then w cool-down backwards; every backward is split into I and W.
W runs right after its I, except that rank r holds back the W's of its first
r backwards (its first r steady iterations, and the last steady one) and runs
them in the cool-down (one after each cool-down I once R + i >= r, the rest at
the end), so its I's race back to rank 0.  This is the order of the
repository's ZB-H1 patch of Megatron's 1F1B with each backward split into I
then W; with the paper's profiled times it reproduces the paper's Table 5
bubble rates exactly (tests/test_zero_bubble_paper.py).

``zb-h1-megatron``: the same order, but the backwards whose W is not held back
run as one fused B, as the repository's Megatron patch (``WeightGradStore``)
does; there a gradient leaves only after its W, so with P2P time the W sits on
every hop's critical path.  Without P2P time both take the same time.

ZB-H2 (``zb-h2``), the paper's Sec. 2.2 schedule (memory 2p - 1 micro-batches
on rank 0).  Rank r runs k = min(2(p-r)-1, m) warm-up forwards, then for each
micro-batch j in order: I_j, the next forward if any is left, then the oldest
held-back W, except that W's are held back while the last 2p-1 I's race back
(j >= m - 2p + 1 with forwards left), which turns the 1F1B trapezoid into the
paper's parallelogram; the held-back W's run after the last I.  With F = I = W
every rank runs without a gap from its first op to its last.

Closed forms, each rank's idle time (no P2P time, uniform stages):

* ZB-H1: the paper's (p-1)(T_F + T_B - T_W), T_B being I: (p-1)(F + I - W),
  for m >= p, W <= F and W <= I (the W's must fit the gaps they fill);
* ZB-H2: (p-1)(F + max(0, I - 2W)) for m >= 2p - 1 and I <= F: rank p-1
  starts (p-1)F late and then runs without a gap, rank 0 starts at once and
  carries the paper's bubble (p-1)(T_F + T_B - 2T_W) = (p-1)(F + I - 2W) inside
  its span when that is positive; the makespan is the later of the two.  With
  F = I = W no rank has a gap inside its own span (span_bubble_rate 0).

Activations are freed at I (the engine's memory model): peak min(p - r, m) on
rank r for ZB-H1, min(2(p - r) - 1, m) for ZB-H2.
"""

from __future__ import annotations

from collections import deque

from .ir import Op, Schedule
from .family import register
from .closed_form import COMMON_RANGE, common_problem, le, mean_costs, result
from .gpipe import check_one_stage_per_rank


# -- ZB-H1 ---------------------------------------------------------------------

ZB_H1_FORMULA = "(p-1)(F + I - W), I = B - W"
ZB_H1_RANGE = f"m >= p; W <= F; W <= I; {COMMON_RANGE}"


def _zb_h1_analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, W, _ = mean_costs(costs, stages)
    I = B - W
    p, m = stages, microbatches
    reason = common_problem(costs, stages)
    if reason is None and m < p:
        reason = f"microbatches {m} < stages {p} (the formula assumes a full steady state)"
    if reason is None and not (le(W, F) and le(W, I)):
        reason = "W > F or W > I (the held-back W's no longer fit the gaps they fill)"
    return result((p - 1) * (F + I - W), min(p, m), ZB_H1_FORMULA, ZB_H1_RANGE, reason)


def _zb_h1_order(p: int, m: int, r: int, fused: bool) -> tuple[Op, ...]:
    """Rank r's ops; ``fused``: a backward whose W is not held back is one B."""
    w = min(p - r - 1, m)
    steady = m - w
    ops: list[Op] = [Op("F", mb, r) for mb in range(w)]
    held: deque[Op] = deque()

    def backward(mb: int, hold: bool) -> None:
        if hold:
            ops.append(Op("I", mb, r))
            held.append(Op("W", mb, r))
        elif fused:
            ops.append(Op("B", mb, r))
        else:
            ops.extend((Op("I", mb, r), Op("W", mb, r)))

    for i in range(steady):
        last = i == steady - 1
        ops.append(Op("F", w + i, r))
        backward(i, hold=r > 0 and (i < r or last))
        if last and i >= r > 0:
            ops.append(held.popleft())
    for i in range(w):
        backward(steady + i, hold=r > 0)
        if r > 0 and steady + i >= r:
            ops.append(held.popleft())
    ops.extend(held)
    return tuple(ops)


@register(
    "zb-h1",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description=(
        "ZB-H1 (Zero Bubble paper, 1F1B memory): 1F1B with every backward split into I then W, "
        "rank r holding back its first r W's"
    ),
    analytic=_zb_h1_analytic,
    splits_weight=True,
)
def zb_h1(stages: int, microbatches: int) -> Schedule:
    ranks = tuple(_zb_h1_order(stages, microbatches, r, fused=False) for r in range(stages))
    return Schedule("zb-h1", stages, microbatches, ranks)


@register(
    "zb-h1-megatron",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description=(
        "ZB-H1 as the zero-bubble repo's Megatron patch runs it: only held-back backwards are split, "
        "the rest are fused B's (gradient sent after W)"
    ),
    analytic=_zb_h1_analytic,
    splits_weight=True,
)
def zb_h1_megatron(stages: int, microbatches: int) -> Schedule:
    ranks = tuple(_zb_h1_order(stages, microbatches, r, fused=True) for r in range(stages))
    return Schedule("zb-h1-megatron", stages, microbatches, ranks)


# -- ZB-H2 ---------------------------------------------------------------------

ZB_H2_FORMULA = "(p-1)(F + max(0, I - 2W)), I = B - W"
ZB_H2_RANGE = f"m >= 2p - 1; I <= F; {COMMON_RANGE}"


def _zb_h2_peaks(p: int, m: int) -> list[int]:
    return [min(2 * (p - r) - 1, m) for r in range(p)]


def _zb_h2_analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, W, _ = mean_costs(costs, stages)
    I = B - W
    p, m = stages, microbatches
    reason = common_problem(costs, stages)
    if reason is None and m < 2 * p - 1:
        reason = f"microbatches {m} < 2 * stages - 1 = {2 * p - 1} (no full parallelogram)"
    if reason is None and not le(I, F):
        reason = "I > F (the 2p-1 warm-up forwards no longer cover the first gradient's round trip)"
    return result((p - 1) * (F + max(0.0, I - 2 * W)), max(_zb_h2_peaks(p, m)), ZB_H2_FORMULA, ZB_H2_RANGE, reason)


@register(
    "zb-h2",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description=(
        "ZB-H2 (Zero Bubble paper, memory 2p-1): 2(p-r)-1 warm-up forwards, I/F/W steady state, "
        "W's held back at the tail so the pipeline is a parallelogram"
    ),
    analytic=_zb_h2_analytic,
    splits_weight=True,
)
def zb_h2(stages: int, microbatches: int) -> Schedule:
    p, m = stages, microbatches
    ranks = []
    for r in range(p):
        k = min(2 * (p - r) - 1, m)
        ops: list[Op] = [Op("F", mb, r) for mb in range(k)]
        next_f, held = k, deque()
        for j in range(m):
            ops.append(Op("I", j, r))
            held.append(Op("W", j, r))
            forward_left = next_f < m
            if forward_left:
                ops.append(Op("F", next_f, r))
                next_f += 1
            # Hold W's back while the last 2p-1 I's race to rank 0 (the tail of the parallelogram).
            if j < m - 1 and (j < m - 2 * p + 1 or not forward_left):
                ops.append(held.popleft())
        ops.extend(held)
        ranks.append(tuple(ops))
    return Schedule("zb-h2", p, m, tuple(ranks))


# -- ZB-V ------------------------------------------------------------------------

# ZB-V (``zbv``), two stages per rank in a V: with p = stages / 2 ranks, rank r
# holds stage r (the outbound leg, "chunk 0") and stage 2p-1-r (the return leg,
# "chunk 1"); all micro-batches go in direction 0.  Order: the handcrafted ZB-V
# of the paper's Sec. 6 figure, in the closed form that PyTorch ships as
# ``ScheduleZBVZeroBubble``, per rank r (mb indices count per chunk):
#
# * warm-up: 2(p - r) - 1 chunk-0 F's; r pairs (F chunk 1, F chunk 0);
#   p - r triples (F, I, W) on chunk 1;
# * steady, while chunk 1 has forwards left: (F chunk 0 if any left), I, W on
#   chunk 0, then F, I, W on chunk 1;
# * cool-down: r pairs (I chunk 0, I chunk 1); p - r pairs (I chunk 0, W chunk 0
#   oldest); then the remaining chunk-1 W's, then chunk-0 W's.
#
# Running the repository's own V-schedule builder (``zbv.py``, greedy, with
# F = B = W and no communication cost) yields the same order up to where the
# last few W's sit in the cool-down.  With F = I = W = t and no communication,
# rank r can only start after its r predecessors' first forwards, and the
# schedule has no other gap: makespan = (6m + p - 1) t, so every rank idles
# (p - 1) t, for m >= 2p - 1 (the paper calls it zero bubble).  Peak activation
# 2p stage-activations (each stage is half a 1F1B stage, so the same bytes as
# 1F1B's p).


def _zbv_check(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return f"pipeline.stages: needs an even number >= 2 (two stages per rank in a V), got {stages}"
    if microbatches < 1:
        return f"pipeline.microbatches: needs >= 1, got {microbatches}"
    return None


ZBV_FORMULA = "(p-1) F, p = ranks"
ZBV_RANGE = f"F = I = W; m >= 2p - 1; {COMMON_RANGE}"


def _zbv_analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, W, _ = mean_costs(costs, stages)
    p = stages // 2
    I = B - W
    reason = common_problem(costs, stages)
    if reason is None and not (abs(F - I) <= 1e-9 * F and abs(I - W) <= 1e-9 * F):
        reason = "F, I and W differ (the handcrafted V is gap-free only when they are equal)"
    if reason is None and microbatches < 2 * p - 1:
        reason = f"microbatches {microbatches} < 2 * ranks - 1 = {2 * p - 1}"
    return result((p - 1) * F, 2 * p, ZBV_FORMULA, ZBV_RANGE, reason)


@register(
    "zbv",
    check=_zbv_check,
    constraints="stages even >= 2; ranks = stages / 2 (rank r holds stages r and S-1-r); microbatches >= 1",
    description="ZB-V: zero-bubble V schedule, two stages per rank, F/I/W split (handcrafted order, paper Sec. 6)",
    analytic=_zbv_analytic,
    splits_weight=True,
)
def zbv(stages: int, microbatches: int) -> Schedule:
    p, m = stages // 2, microbatches
    # Build for at least 2p-1 micro-batches (the shape the handcrafted order is
    # made for) and drop the ops of micro-batches that do not exist.
    n = max(2 * p - 1, m)
    ranks = []
    for r in range(p):
        stage = (r, 2 * p - 1 - r)  # chunk 0, chunk 1
        f, b, wcnt = [0, 0], [0, 0], [0, 0]
        ops: list[Op] = []

        def F(c: int) -> None:
            ops.append(Op("F", f[c], stage[c]))
            f[c] += 1

        def I(c: int) -> None:
            ops.append(Op("I", b[c], stage[c]))
            b[c] += 1

        def W(c: int) -> None:
            ops.append(Op("W", wcnt[c], stage[c]))
            wcnt[c] += 1

        for _ in range(2 * (p - r) - 1):
            F(0)
        for _ in range(r):
            F(1)
            F(0)
        for _ in range(p - r):
            F(1)
            I(1)
            W(1)
        while f[1] < f[0] or f[0] < n:
            if f[0] < n:
                F(0)
            I(0)
            W(0)
            F(1)
            I(1)
            W(1)
        for _ in range(r):
            I(0)
            I(1)
        for _ in range(p - r):
            I(0)
            W(0)
        while wcnt[1] < b[1]:
            W(1)
        while wcnt[0] < b[0]:
            W(0)
        assert f == b == wcnt == [n, n], (f, b, wcnt)
        ranks.append(tuple(op for op in ops if op.microbatch < m))
    return Schedule("zbv", stages, m, tuple(ranks))
