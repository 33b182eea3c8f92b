"""Zero-bubble schedules (Qi et al., ICLR 2024; sail-sg/zero-bubble-pipeline-parallelism).

Both split a backward into I (input gradient, on the critical path) and W
(weight gradient, which nothing downstream waits for), so W can fill bubbles.

ZB-H1 (``zb-h1``), one stage per rank, stage r on rank r.  Order: the
repository's ZB-H1 patch of Megatron's non-interleaved 1F1B
(``forward_backward_pipelining_without_interleaving`` with
``WeightGradStore``; the same logic as its zb-h1 quick-start patch),
transcribed per rank r with w = min(p - r - 1, m) warm-up forwards and
R = m - w steady iterations:

* warm-up: F0 .. F(w-1);
* steady iteration i: F(w+i), then the backward of micro-batch i, split into
  I (its W queued) when r > 0 and (i < r or i is the last steady iteration),
  a full B otherwise; after the last steady iteration one queued W runs if
  i >= r > 0 ("delay W by rank");
* cool-down, i = 0..w-1: I of micro-batch R+i on ranks r > 0 (B on rank 0),
  then one queued W if R + i >= r;
* the queued W's that are left, oldest first.

So rank r keeps its first r weight gradients back and runs them at the very
end, which lets the cool-down I's race back to rank 0.  Paper: with T_B the
time of I, the bubble is (p-1)(T_F + T_B - T_W); here B = I + W, so each rank
idles (p - 1)(F + B - 2W) when m >= p.  Activations are freed at I (the engine's memory
model), so the peak on rank r is min(p - r, m), as in 1F1B.

ZB-V (``zbv``), two stages per rank in a V: with p = stages / 2 ranks, rank r
holds stage r (the outbound leg, "chunk 0") and stage 2p-1-r (the return leg,
"chunk 1"); all micro-batches go in direction 0.  Order: the handcrafted ZB-V
of the paper's Sec. 6 figure, in the closed form that PyTorch ships as
``ScheduleZBVZeroBubble``, per rank r (mb indices count per chunk):

* warm-up: 2(p - r) - 1 chunk-0 F's; r pairs (F chunk 1, F chunk 0);
  p - r triples (F, I, W) on chunk 1;
* steady, while chunk 1 has forwards left: (F chunk 0 if any left), I, W on
  chunk 0, then F, I, W on chunk 1;
* cool-down: r pairs (I chunk 0, I chunk 1); p - r pairs (I chunk 0, W chunk 0
  oldest); then the remaining chunk-1 W's, then chunk-0 W's.

Running the repository's own V-schedule builder (``zbv.py``, greedy, with
F = B = W and no communication cost) yields the same order up to where the
last few W's sit in the cool-down.  With F = I = W = t and no communication,
rank r can only start after its r predecessors' first forwards, and the
schedule has no other gap: makespan = (6m + p - 1) t, so every rank idles
(p - 1) t, for m >= 2p - 1 (bubble ratio (p-1)/(6m+p-1); the paper calls it
zero bubble).  Peak activation 2p stage-activations (each stage is half a
1F1B stage, so the same bytes as 1F1B's p).
"""

from __future__ import annotations

from collections import deque

from ..costs import mean_costs
from ..ir import Op, Schedule
from ..registry import register
from .gpipe import check_one_stage_per_rank


# -- ZB-H1 ---------------------------------------------------------------------


def _zb_h1_analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, W, _ = mean_costs(costs, stages)
    # The paper's (p-1)(T_F + T_B - T_W) with T_B = I = B - W; it assumes m >= p.
    bubble = (stages - 1) * (F + B - 2 * W) if microbatches >= stages else None
    return {"bubble": bubble, "peak_activation": min(stages, microbatches)}


@register(
    "zb-h1",
    check=check_one_stage_per_rank,
    constraints="stages >= 1, microbatches >= 1; one stage per rank",
    description="ZB-H1 (zero bubble, 1F1B memory): 1F1B with the first r weight gradients of rank r deferred",
    analytic=_zb_h1_analytic,
)
def zb_h1(stages: int, microbatches: int) -> Schedule:
    p, m = stages, microbatches
    ranks = []
    for r in range(p):
        w = min(p - r - 1, m)
        steady = m - w
        ops: list[Op] = [Op("F", mb, r) for mb in range(w)]
        queued: deque[Op] = deque()

        def backward(mb: int, split: bool) -> None:
            if split:
                ops.append(Op("I", mb, r))
                queued.append(Op("W", mb, r))
            else:
                ops.append(Op("B", mb, r))

        for i in range(steady):
            last = i == steady - 1
            ops.append(Op("F", w + i, r))
            backward(i, split=r > 0 and (i < r or last))
            if last and i >= r > 0:
                ops.append(queued.popleft())
        for i in range(w):
            backward(steady + i, split=r > 0)
            if r > 0 and steady + i >= r:
                ops.append(queued.popleft())
        ops.extend(queued)
        ranks.append(tuple(ops))
    return Schedule("zb-h1", p, m, tuple(ranks))


# -- ZB-V ------------------------------------------------------------------------


def _zbv_check(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return f"pipeline.stages must be an even number >= 2 for zbv (two stages per rank in a V), got {stages}"
    if microbatches < 1:
        return f"pipeline.microbatches must be >= 1, got {microbatches}"
    return None


def _zbv_analytic(stages: int, microbatches: int, costs) -> dict:
    F, B, W, _ = mean_costs(costs, stages)
    p = stages // 2
    I = B - W
    if not (abs(F - I) < 1e-12 and abs(I - W) < 1e-12) or microbatches < 2 * p - 1:
        return {"bubble": None, "peak_activation": None}
    return {"bubble": (p - 1) * F, "peak_activation": 2 * p}


@register(
    "zbv",
    check=_zbv_check,
    constraints="stages even >= 2; ranks = stages / 2 (rank r holds stages r and S-1-r); microbatches >= 1",
    description="ZB-V: zero-bubble V schedule, two stages per rank, F/I/W split (handcrafted order, paper Sec. 6)",
    analytic=_zbv_analytic,
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
