"""The estimated step time of one candidate: its schedule replayed on the stage costs.

Two terms, each from the engine's own rules and the model's figures, never fitted to simulations:

* **the pipeline** (``pipeline``): the family's schedule, built at a small
  micro-batch count, replayed by the engine's replay core (engine/replay.py: the
  same dependency rules, P2P links and blocking sends as a run) on the candidate's
  per-stage costs: F, B, I = B - W, W, and an overlapped pair from its two stages'
  compute and all-to-all (``lengths``).  Its makespan holds every bubble, the
  fill and drain of uneven stages and each P2P transfer (``derived.p2p`` per
  transfer, blocking where ``comm.p2p_mode`` says so).  Replaying at the real
  M would cost as much as the run; a schedule in steady state adds the same time per
  extra period of micro-batches, so the makespan at M is extrapolated linearly from
  two small counts one period apart (``counts``); where M is small it is replayed as is;
* **the step's end** (``step_end_ms``): what step.py adds after the pipeline, from the
  scenario's [step] figures (``Scenario.step_costs``: model/step_figures.py's derived
  grad sync and optimizer).  Each stage copy's grad sync starts when its last
  weight-gradient op ends (``step.overlap_grad_sync``, else when its rank's pipeline
  ends), one at a time on its rank's data-parallel channel; the rank's optimizer
  follows.  Read off the small replay's tail, which a longer pipeline only shifts.
  A stage held twice (DualPipe, Chimera) first sums its two copies on their ranks' link.
  Left out: grad-sync buckets (each sync is released whole), Megatron's pp-aligned
  launches and the grad sync yielding to P2P.

The [chunk] model's all-to-all is inside the actions' lengths already (a lone forward or
backward costs its all-to-all in full, an overlapped pair hides what its two channels can),
so no term is added for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..engine import replay, validate
from ..schedules import registry
from ..schedules.rules import KIND_CODES, WEIGHT_GRADS, Kind
from .shapes import VIRTUAL_OPTION

_F, _B, _I, _W = (KIND_CODES[k] for k in (Kind.F, Kind.B, Kind.I, Kind.W))
_WEIGHT_CODES = np.array(sorted(KIND_CODES[k] for k in WEIGHT_GRADS))


@dataclass(frozen=True)
class Built:
    """A schedule built once for replays: which cost each action takes and where it sits."""

    schedule: object  # ir.Schedule
    index: object  # replay.OpIndex
    lone: np.ndarray  # per action: True for one op, False for an overlapped pair
    kind: np.ndarray  # per action: the lone op's kind code, or the pair's backward's
    stage: np.ndarray  # per action: the lone op's stage, or the pair's forward's
    back_stage: np.ndarray  # per action: the pair's backward's stage (the op's own when lone)
    rank_first: np.ndarray  # per rank: its first action's number
    wgrad_action: np.ndarray  # per weight-gradient op: its action
    wgrad_copy: np.ndarray  # ... and its stage copy (numbered over (direction, stage))
    copy_rank: np.ndarray  # per stage copy: the rank holding it
    copy_stage: np.ndarray  # per stage copy: its stage
    copy_twin: np.ndarray  # per stage copy: the other copy of its stage (DualPipe, Chimera), else -1
    transfers: object = None  # replay.Plan: the replay core's transfer plan, worked out once per build


@lru_cache(maxsize=None)
def built(name: str, stages: int, microbatches: int, virtual: int | None) -> Built:
    """``name`` built at ``microbatches`` and indexed for the replay core (cached: the estimate
    replays each shape for many layouts)."""
    schedule = registry.build(name, stages, microbatches, **({VIRTUAL_OPTION: virtual} if virtual else {}))
    index = validate.index_ops(schedule)
    flat = index.flat
    n = flat.rank_bounds[-1]
    lone = np.ones(n, dtype=bool)
    lone[flat.action[flat.member == 1]] = False
    kind = np.empty(n, dtype=np.int64)
    stage = np.empty(n, dtype=np.int64)
    back = np.empty(n, dtype=np.int64)
    head = flat.member == 0  # a lone op, or a pair's forward
    stage[flat.action[head]] = flat.stage[head]
    kind[flat.action[head]] = flat.kind[head]
    back[flat.action[head]] = flat.stage[head]
    tail = flat.member == 1  # a pair's backward: the pair's cost reads its kind and stage
    kind[flat.action[tail]] = flat.kind[tail]
    back[flat.action[tail]] = flat.stage[tail]
    placement = schedule.placement()  # (direction, stage) -> rank
    copies = sorted(placement)
    copy_id = {c: i for i, c in enumerate(copies)}
    wg = np.flatnonzero(np.isin(flat.kind, _WEIGHT_CODES))
    wgrad_copy = np.array([copy_id[(int(d), int(s))] for d, s in zip(flat.direction[wg], flat.stage[wg])],
                          dtype=np.int64)  # fmt: skip
    twin = [next((j for j, (_, t) in enumerate(copies) if t == s and j != i), -1) for i, (_, s) in enumerate(copies)]
    return Built(schedule, index, lone, kind, stage, back, np.asarray(flat.rank_bounds[:-1], dtype=np.int64),
                 flat.action[wg], wgrad_copy, np.array([placement[c] for c in copies], dtype=np.int64),
                 np.array([s for _, s in copies], dtype=np.int64), np.array(twin, dtype=np.int64),
                 replay.plan(schedule, index))  # fmt: skip


@dataclass(frozen=True)
class StageCosts:
    """Per stage (ms): forward, whole backward, its weight-gradient part, and the all-to-all time
    inside the forward and the backward (the [chunk] model's dispatch and combine; 0 for a dense
    model), with the slowdown of compute that runs beside an all-to-all (derive's
    comm_compute_slowdown)."""

    forward: tuple[float, ...]
    backward: tuple[float, ...]
    weight: tuple[float, ...]
    forward_a2a: tuple[float, ...] = ()
    backward_a2a: tuple[float, ...] = ()
    slowdown: float = 1.0


def lengths(b: Built, costs: StageCosts) -> np.ndarray:
    """Each action's length: a lone op as CostModel.duration takes it (I = B - W), its all-to-all in
    full; an overlapped pair (F of one stage, B or I of another) as estimate.py works out a stage's
    own pair: the two computes, slowed where an all-to-all runs beside them, or the two all-to-alls
    if they take longer (the [chunk] model's two channels, compute and all-to-all)."""
    f, bw, w = (np.asarray(x, dtype=float) for x in (costs.forward, costs.backward, costs.weight))
    per_kind = np.zeros((max(_F, _B, _I, _W) + 1, len(f)))
    per_kind[_F], per_kind[_B], per_kind[_I], per_kind[_W] = f, bw, bw - w, w
    out = per_kind[b.kind, np.where(b.lone, b.stage, b.back_stage)]
    if not b.lone.all():
        p = ~b.lone
        zero = np.zeros(len(f))
        fa = np.asarray(costs.forward_a2a, dtype=float) if costs.forward_a2a else zero
        ba = np.asarray(costs.backward_a2a, dtype=float) if costs.backward_a2a else zero
        comm = fa[b.stage[p]] + ba[b.back_stage[p]]
        compute = f[b.stage[p]] - fa[b.stage[p]] + out[p] - ba[b.back_stage[p]]
        out[p] = np.maximum(compute + (costs.slowdown - 1) * np.minimum(compute, comm), comm)
    return out


@dataclass(frozen=True)
class Replayed:
    """One replay: its makespan, when each rank's pipeline work ends, and when each stage copy's
    last weight-gradient op ends (ms)."""

    makespan: float
    rank_end: np.ndarray
    copy_ready: np.ndarray


def replayed(b: Built, costs: StageCosts, p2p: float, blocking: bool) -> Replayed:
    """The replay core run on ``costs`` (engine/replay.py), P2P ``p2p`` ms per transfer."""
    length = lengths(b, costs)
    cursor, starts, _, _ = replay.replay(b.schedule, b.index, length.tolist(), p2p, blocking, b.transfers)
    ends = np.frombuffer(starts, dtype=float) + length
    rank_end = np.maximum.reduceat(ends, b.rank_first) if len(ends) else np.zeros(len(b.rank_first))
    # a transfer still travelling when its sender's last action ends lands later, but nothing waits for it
    ready = np.zeros(len(b.copy_rank))
    np.maximum.at(ready, b.wgrad_copy, ends[b.wgrad_action])
    return Replayed(float(ends.max()) if len(ends) else 0.0, rank_end, ready)


def counts(name: str, stages: int, microbatches: int, virtual: int | None, ranks: int) -> tuple[int, ...]:
    """The micro-batch counts to replay: M itself when it is at most 4 x ranks, else two counts one
    period (``ranks`` micro-batches: an interleaved schedule's group) apart, the first at least
    2 x ranks (past the fill), that leave M a whole number of periods past them and that the family
    accepts (its check), from which the makespan is extrapolated; M alone when there are none."""
    if microbatches <= 4 * ranks:
        return (microbatches,)
    family = registry.get(name)
    options = {VIRTUAL_OPTION: virtual} if virtual else {}
    first = 2 * ranks + (microbatches - 2 * ranks) % ranks  # in [2 ranks, 3 ranks), congruent to M
    for m1 in range(first, microbatches - ranks, ranks):
        m2 = m1 + ranks
        if family.check(stages, m1, **options) is None and family.check(stages, m2, **options) is None:
            return (m1, m2)
    return (microbatches,)


def pipeline(name: str, stages: int, microbatches: int, virtual: int | None, ranks: int, costs: StageCosts,
             p2p: float, blocking: bool) -> tuple[float, Replayed, int]:  # fmt: skip
    """The makespan at ``microbatches`` (ms), the replay its tail is read from (the last one) and
    that replay's micro-batch count."""
    ms = counts(name, stages, microbatches, virtual, ranks)
    runs = [replayed(built(name, stages, m, virtual), costs, p2p, blocking) for m in ms]
    if len(ms) == 1:
        return runs[0].makespan, runs[0], microbatches
    (m1, m2), (r1, r2) = ms, runs
    return r2.makespan + (microbatches - m2) / (m2 - m1) * (r2.makespan - r1.makespan), r2, m2


def step_end_ms(b: Built, run: Replayed, step) -> float:
    """What the step's end adds after the pipeline's makespan (ms), as step.py lays it out: a stage
    held twice first sums its two copies' gradients (one sum at a time per pair of ranks, from both
    copies' last weight-gradient op with ``step.cross_copy_eager``, else both ranks' end); then per
    rank its copies' grad syncs one at a time in release order on its data-parallel channel; then
    its optimizer over every copy it holds.  ``step``: the scenario's StepCosts (None: nothing)."""
    if step is None or not step.active():
        return 0.0
    grad = np.asarray(step.grad_sync, dtype=float)[b.copy_stage]
    cross = np.asarray(step.cross_copy_sync, dtype=float)[b.copy_stage]
    optimizer = np.asarray(step.optimizer, dtype=float)[b.copy_stage]
    ends = run.rank_end[b.copy_rank]
    release = run.copy_ready if step.overlap_grad_sync else ends
    done = run.rank_end.copy()
    summed = np.zeros(len(grad))  # per copy: when its stage's cross-copy sum ends
    pairs = [c for c in range(len(grad)) if c < b.copy_twin[c]]
    if pairs and cross.any():
        start = run.copy_ready if step.cross_copy_eager else ends
        link: dict[tuple, float] = {}
        for c in sorted(pairs, key=lambda c: (max(start[c], start[b.copy_twin[c]]), c)):
            t = b.copy_twin[c]
            key = tuple(sorted((int(b.copy_rank[c]), int(b.copy_rank[t]))))
            summed[c] = summed[t] = link[key] = max(link.get(key, 0.0), start[c], start[t]) + cross[c]
        np.maximum.at(done, b.copy_rank, summed)
        release = np.maximum(release, summed)  # a copy's grad sync reduces the summed gradient
    channel = np.zeros(len(run.rank_end))
    for c in np.lexsort((np.arange(len(release)), release)):
        r = b.copy_rank[c]
        channel[r] = max(channel[r], release[c]) + grad[c]
        done[r] = max(done[r], channel[r])
    done += np.bincount(b.copy_rank, weights=optimizer, minlength=len(done))
    return max(0.0, float(done.max()) - run.makespan)
