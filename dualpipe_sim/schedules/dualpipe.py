"""DualPipe and DualPipeV (DeepSeek-V3 report; deepseek-ai/DualPipe).

Both families give every rank two model stages and run the same eight-phase
program per rank; they differ only in which stages and micro-batches a rank's
two *lanes* stand for.

Lanes.  Lane 0 is the traffic that reaches this rank first: micro-batches that
entered at this rank's own end of the pipeline (DualPipe) or the outbound leg
of the V (DualPipeV).  Lane 1 is the other one: the opposite direction
(DualPipe) or the return leg of the V (DualPipeV).  Each lane works through its
micro-batches in order, so the k-th forward (or backward) a lane runs is for
that lane's k-th micro-batch.

The per-rank program, with L ranks along one leg, the rank at position p on its
leg (0 = at the end where its lane-0 micro-batches enter, L-1 = the turning
point) and C micro-batches per lane:

1. 2(L-p-1) lone lane-0 forwards: fill the pipe ahead of the far ranks.
2. p+1 pairs "F lane 0, F lane 1": lane-1 work starts arriving.
3. L-p-1 triples "I lane 1, W, F lane 1": the first lane-1 gradients come back;
   their weight part runs at once (zero bubble) to keep the rank busy.
4. C-2L+p+1 steady-state rounds "F0+B1 overlapped, F1+B0 overlapped".  On the
   turning-point rank the first F0/B1 pair runs as two lone chunks: the B1
   gradient is needed by the neighbour immediately, so it is not held back by
   the overlap.
5. L-p-1 rounds "lone B lane 1, F1+B0 overlapped": lane 0 has no forwards left.
6. p+1 pairs "B lane 1, B lane 0": the last p+1 of these 2(p+1) backwards are
   split into I + W, the W deferred so the gradients flow out sooner.
7. L-p-1 pairs "W, I lane 0": the deferred weights fill the wait for the next
   lane-0 gradient.
8. p+1 lone W's drain the queue.

Deferred W's run oldest first (the reference's FIFO weight-gradient store).
"""

from __future__ import annotations

from collections import deque

from .ir import FB, Action, Op, Schedule, ScheduleError
from .family import register
from .closed_form import COMMON_RANGE, common_problem, le, mean_costs, result


class _Rank:
    """Emit one rank's actions; tracks per-lane counters and the W queue."""

    def __init__(self, lanes):
        # lanes[k] = (direction, stage, first global micro-batch id of the lane)
        self.lanes = lanes
        self.next_f = [0, 0]
        self.next_b = [0, 0]
        self.pending_w: deque[Op] = deque()
        self.actions: list[Action] = []

    def _op(self, kind: str, lane: int, index: int) -> Op:
        direction, stage, base = self.lanes[lane]
        return Op(kind, base + index, stage, direction)

    def _take_f(self, lane: int) -> Op:
        op = self._op("F", lane, self.next_f[lane])
        self.next_f[lane] += 1
        return op

    def _take_b(self, lane: int, split: bool) -> Op:
        op = self._op("I" if split else "B", lane, self.next_b[lane])
        self.next_b[lane] += 1
        if split:
            self.pending_w.append(op._replace(kind="W"))
        return op

    def forward(self, lane: int) -> None:
        self.actions.append(self._take_f(lane))

    def backward(self, lane: int, split: bool = False) -> None:
        self.actions.append(self._take_b(lane, split))

    def overlapped(self, f_lane: int, b_lane: int) -> None:
        # The backward inside an overlapped pair is always a full B.
        self.actions.append(FB(self._take_f(f_lane), self._take_b(b_lane, split=False)))

    def weight(self) -> None:
        if not self.pending_w:
            raise ScheduleError("dualpipe: a weight chunk was scheduled with no deferred W pending")
        self.actions.append(self.pending_w.popleft())


def _rank_program(rank: _Rank, legs: int, pos: int, per_lane: int) -> tuple[Action, ...]:
    """The eight phases (see the module docstring) for the rank at ``pos`` of ``legs``."""
    ahead = legs - pos - 1  # ranks between this one and the turning point

    for _ in range(2 * ahead):  # 1: lone lane-0 forwards
        rank.forward(0)
    for _ in range(pos + 1):  # 2: both lanes forward
        rank.forward(0)
        rank.forward(1)
    for _ in range(ahead):  # 3: zero-bubble lane-1 backward, its W at once, next lane-1 forward
        rank.backward(1, split=True)
        rank.weight()
        rank.forward(1)
    for i in range(per_lane - 2 * legs + pos + 1):  # 4: steady state, two overlapped pairs
        if i == 0 and ahead == 0:
            rank.forward(0)  # turning point: first pair not overlapped
            rank.backward(1)
        else:
            rank.overlapped(0, 1)
        rank.overlapped(1, 0)
    for _ in range(ahead):  # 5: lane 0 has no forwards left
        rank.backward(1)
        rank.overlapped(1, 0)
    cooldown = 2 * (pos + 1)  # 6: alternate backwards; split the later half
    for j in range(cooldown):
        rank.backward(1 if j % 2 == 0 else 0, split=j >= pos + 1)
    for _ in range(ahead):  # 7: a deferred W while the next lane-0 gradient comes
        rank.weight()
        rank.backward(0, split=True)
    for _ in range(pos + 1):  # 8: drain the W queue
        rank.weight()

    assert not rank.pending_w and rank.next_f == [per_lane] * 2 and rank.next_b == [per_lane] * 2
    return tuple(rank.actions)


DUALPIPE_FORMULA = "(PP/2 - 1)(F&B + B - 3W), PP = stages"
DUALPIPE_RANGE = f"F = I = W; max(F, B) <= F&B <= F + B; {COMMON_RANGE}"


def _analytic(stages: int, microbatches: int, costs) -> dict:
    """DualPipe README's closed forms, with PP = stages (for DualPipeV, 2 x ranks):
    idle per rank (PP/2-1)(F&B+B-3W), peak activation PP+1 stage-activations.
    F, B, W and F&B are stage means (with [chunk], F&B is the simulated pair).

    The README's figure is an accounting of the schedule's gaps, not a timing:
    on the engine it is the most idle rank's time between ops exactly when
    F = I = W (and F&B lies between max(F, B) and F + B); otherwise the
    gaps' sizes depend on which op waits for which, so it is not reported."""
    F, B, W, FB_ = mean_costs(costs, stages)
    I = B - W
    reason = common_problem(costs, stages)
    if reason is None and not (abs(F - I) <= 1e-9 * F and abs(I - W) <= 1e-9 * F):
        reason = "F, I and W differ (the README's gap accounting is exact only when they are equal)"
    if reason is None and not (le(max(F, B), FB_) and le(FB_, F + B)):
        reason = "F&B outside [max(F, B), F + B]"
    return result((stages / 2 - 1) * (FB_ + B - 3 * W), stages + 1, DUALPIPE_FORMULA, DUALPIPE_RANGE, reason)


# -- DualPipe: two directions, S stages on S ranks -------------------------------


def _check_dualpipe(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return f"pipeline.stages: needs an even number >= 2 (half the ranks feed each direction), got {stages}"
    if microbatches < 1 or microbatches % 2:
        return (
            f"pipeline.microbatches: needs an even number >= 1 (half enter from each end), "
            f"got {microbatches}"
        )
    if microbatches < 2 * stages:
        return (
            f"pipeline.microbatches: needs >= 2 * pipeline.stages = {2 * stages}, "
            f"got {microbatches}"
        )
    return None


@register(
    "dualpipe",
    check=_check_dualpipe,
    constraints="stages even; microbatches even and >= 2*stages; S stages on S ranks, 2 per rank",
    description=(
        "DualPipe (DeepSeek-V3): micro-batches fed from both ends, overlapped forward/backward pairs, "
        "zero-bubble weight splitting in warm-up and cool-down"
    ),
    analytic=_analytic,
    splits_weight=True,
)
def dualpipe(stages: int, microbatches: int) -> Schedule:
    error = dualpipe.family.error(stages, microbatches)
    if error is not None:
        raise error
    S, half = stages, microbatches // 2
    ranks = []
    for r in range(S):
        down = (0, r, 0)  # direction 0: enters at rank 0, stage r here, micro-batches 0..M/2-1
        up = (1, S - 1 - r, half)  # direction 1: enters at rank S-1, micro-batches M/2..M-1
        # Lane 0 is the direction entering at this rank's own end of the pipe.
        lanes = (down, up) if r < S // 2 else (up, down)
        pos = min(r, S - 1 - r)  # distance from the nearer end
        ranks.append(_rank_program(_Rank(lanes), S // 2, pos, half))
    return Schedule("dualpipe", S, microbatches, tuple(ranks))


# -- DualPipeV: one direction, S = 2R stages folded into a V on R ranks ----------


def _check_dualpipev(stages: int, microbatches: int) -> str | None:
    if stages < 2 or stages % 2:
        return (
            f"pipeline.stages: needs an even number >= 2 (two stages per rank, stages = 2 * ranks), "
            f"got {stages}"
        )
    if microbatches < stages:
        return (
            f"pipeline.microbatches: needs >= pipeline.stages = 2 * ranks = {stages}, "
            f"got {microbatches}"
        )
    return None


@register(
    "dualpipev",
    check=_check_dualpipev,
    constraints="stages even (R = stages/2 ranks); microbatches >= stages; rank r holds stages r and S-1-r",
    description=(
        "DualPipeV (cut-in-half DualPipe): one direction folded into a V, stages r and S-1-r on rank r, "
        "overlapped forward/backward pairs and zero-bubble weight splitting"
    ),
    analytic=_analytic,
    splits_weight=True,
)
def dualpipev(stages: int, microbatches: int) -> Schedule:
    error = dualpipev.family.error(stages, microbatches)
    if error is not None:
        raise error
    R = stages // 2
    ranks = []
    for r in range(R):
        # Lane 0: outbound leg (stage r); lane 1: return leg (stage S-1-r); same micro-batches.
        lanes = ((0, r, 0), (0, stages - 1 - r, 0))
        ranks.append(_rank_program(_Rank(lanes), R, r, microbatches))
    return Schedule("dualpipev", stages, microbatches, tuple(ranks))
