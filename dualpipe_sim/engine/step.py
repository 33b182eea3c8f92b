"""The end of a training step: gradient sync, cross-copy sync, optimizer.

The pipeline's trace ends when the last backward does; a training step ends
when every rank has updated its weights.  This module takes a finished
pipeline trace and adds what happens in between, as rows of the trace's
``step`` table (docs/step.md gives the model and what it leaves out):

* **grad sync** (``GRAD_SYNC``): each stage copy's gradients are reduced over
  the data-parallel replicas, ``step.grad_sync[s]`` long, on its rank's
  data-parallel channel (one collective at a time, in the order they become
  ready).  It may start when the copy's last weight-gradient ends on its rank
  (``step.overlap_grad_sync``), else when the rank's pipeline work has ended.
  With ``step.grad_sync_buckets = n`` it is n equal collectives, and when
  overlapped bucket k is ready k/n of the way through that last
  weight-gradient op (Megatron's --overlap-grad-reduce buckets).
* **cross-copy sync** (``CROSS_COPY``): a stage held on two ranks (DualPipe,
  Chimera: one copy per direction) has its two gradients summed between the
  two ranks, ``step.cross_copy_sync[s]`` long, on the link between that pair
  (one sum at a time per pair).  It starts when both copies' last
  weight-gradients have ended (``step.cross_copy_eager``), else when both
  ranks' pipeline work has ended.  A copy's grad sync reduces the summed
  gradient, so it waits for its stage's cross-copy sum.
* **optimizer** (``OPTIMIZER``): a rank's optimizer step updates every copy it
  holds, lasting the sum of ``step.optimizer[s]`` over them, on its compute
  channel once its pipeline work and every sync of its stages have ended.

The data-parallel channels and the pair links are separate from each other
and from P2P and all-to-all: nothing here contends with the pipeline's own
traffic.  That is exact when the data-parallel collectives use the scale-out
network, the cross-copy sum a link inside the pipeline replica, and neither
shares a link with P2P or all-to-all; docs/step.md says what changes when
they do.  It also means overlapped grad sync is never slower than not: the
cross-copy sums do not depend on it, and each rank's data-parallel channel is
one server fed in release order whose last end only moves earlier when every
release does.  Eager cross-copy sums carry no such guarantee: a long sum
released early can hold a pair's link when a short one would have gone
first (tests/test_step.py has a case).

Each channel is one server fed in order of release time and the
dependencies run one way (cross-copy -> grad sync -> optimizer), so one pass
over the jobs in that order gives the event simulation's exact times.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np

from ..schedules.rules import KIND_CODES, WEIGHT_GRADS, Channel
from .trace import STEP_DTYPE, StepRow, Trace


class StepKind(IntEnum):
    """What an end-of-step row is: the trace's ``step["kind"]`` codes."""

    GRAD_SYNC = 0  # on the rank's Channel.GRAD_SYNC
    CROSS_COPY = 1  # on Channel.CROSS_COPY, the pair's link (a row on each rank of the pair)
    OPTIMIZER = 2  # on the rank's Channel.COMPUTE, after its pipeline work

    @property
    def channel(self) -> Channel:
        return (Channel.GRAD_SYNC, Channel.CROSS_COPY, Channel.COMPUTE)[self]


GRAD_SYNC, CROSS_COPY, OPTIMIZER = StepKind
STEP_KIND_NAMES = ("grad_sync", "cross_copy_sync", "optimizer")  # metrics.json / chart names, by code
_WEIGHT_KINDS = tuple(KIND_CODES[k] for k in sorted(WEIGHT_GRADS))  # ops that produce weight gradients


@dataclass(frozen=True)
class StepCosts:
    """What the end of a step costs, per model stage (the scenario's [step])."""

    grad_sync: tuple[float, ...]  # per stage copy: reduce its gradients over data-parallel replicas
    cross_copy_sync: tuple[float, ...]  # per stage held on two ranks: sum the two copies' gradients
    optimizer: tuple[float, ...]  # per stage copy: its share of its rank's optimizer step
    overlap_grad_sync: bool = False
    cross_copy_eager: bool = False
    grad_sync_buckets: int = 1  # a copy's grad sync in this many equal collectives

    def active(self) -> bool:
        """False when every figure is zero: the step is then the pipeline, nothing is added."""
        return any(self.grad_sync) or any(self.cross_copy_sync) or any(self.optimizer)


@dataclass(frozen=True)
class PipelineEnds:
    """When each rank's pipeline work ends and each stage copy's gradients are complete."""

    rank_end: list[float]  # per rank: its last compute, all-to-all or outgoing P2P send
    last_weight: dict[tuple[int, int], tuple[float, float]]  # (rank, stage) -> (start, end) of its last B or W
    holders: dict[int, list[int]]  # stage -> the ranks holding a copy of it, ascending


def pipeline_ends(trace: Trace) -> PipelineEnds:
    """Read off a pipeline trace what the end-of-step work waits for.

    A rank's pipeline work includes its outgoing P2P sends: before its
    optimizer may change the weights, a rank waits for what it sent to land.
    """
    rank_end = [0.0] * trace.ranks
    # Comm rows carry the sender (P2P) or the rank itself (all-to-all) in "rank".
    for rows in (trace.compute, trace.comm):
        if len(rows):
            ends = np.full(trace.ranks, -np.inf)
            np.maximum.at(ends, rows["rank"], rows["end"])
            rank_end = [max(a, float(b)) for a, b in zip(rank_end, ends)]
    # The last weight-gradient op of each (rank, stage): the group's latest row, spread
    # back to the first row of the same action (component rows of one op share it).
    grads = trace.compute[np.isin(trace.compute["kind"], _WEIGHT_KINDS)]
    last_weight: dict[tuple[int, int], tuple[float, float]] = {}
    if len(grads):
        grads = grads[np.lexsort((grads["end"], grads["stage"], grads["rank"]))]
        key = grads["rank"].astype(np.int64) << 32 | grads["stage"]
        bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            group = grads[a:b]
            op = group[group["action"] == group["action"][-1]]
            last_weight[(int(op["rank"][0]), int(op["stage"][0]))] = (float(op["start"].min()), float(op["end"][-1]))
    holders: dict[int, list[int]] = {}
    for r, stages in enumerate(trace.stages_on_rank):
        for s in stages:
            holders.setdefault(s, []).append(r)
    return PipelineEnds(rank_end, last_weight, holders)


def _fifo(jobs: list[tuple[float, int, int, float]]) -> list[tuple[int, float, float]]:
    """One server; jobs (release, stage, part, length) served in release order, ties
    by stage then part: (stage, start, end) each.  Never idle while a released job waits."""
    free, out = 0.0, []
    for release, s, _, length in sorted(jobs):
        start = max(release, free)
        free = start + length
        out.append((s, start, free))
    return out


def simulate_step(trace: Trace, costs: StepCosts) -> np.ndarray:
    """The end-of-step rows (trace.STEP_DTYPE) of a finished pipeline trace."""
    ends = pipeline_ends(trace)
    rows: list[StepRow] = []

    def done(rank: int, stage: int, early: bool) -> float:
        # early: when this copy's gradients are complete; else when the rank's pipeline work is.
        return ends.last_weight.get((rank, stage), (0.0, ends.rank_end[rank]))[1] if early else ends.rank_end[rank]

    # 1. Cross-copy sums, FIFO on each pair's link.
    per_link: dict[tuple[int, int], list] = {}
    for s, ranks in sorted(ends.holders.items()):
        if len(ranks) == 2 and costs.cross_copy_sync[s] > 0:
            t = max(done(r, s, costs.cross_copy_eager) for r in ranks)
            per_link.setdefault((ranks[0], ranks[1]), []).append((t, s, 0, costs.cross_copy_sync[s]))
    summed: dict[int, float] = {}  # stage -> end of its cross-copy sum
    for (a, b), jobs in sorted(per_link.items()):
        for s, t0, t1 in _fifo(jobs):
            summed[s] = t1
            rows += [StepRow(CROSS_COPY, a, b, s, t0, t1), StepRow(CROSS_COPY, b, a, s, t0, t1)]

    # 2. Grad sync of each copy, bucket by bucket, FIFO on its rank's data-parallel
    # channel, after its stage's sum.  Overlapped, bucket k of n is ready k/n of the
    # way through the copy's last weight-gradient op (it yields its gradients evenly).
    n = costs.grad_sync_buckets
    synced = [0.0] * trace.ranks  # per rank: when every sync of its stages has ended
    for r, stages in enumerate(trace.stages_on_rank):
        synced[r] = max([summed.get(s, 0.0) for s in stages], default=0.0)
        jobs = []
        for s in stages:
            if costs.grad_sync[s] <= 0:
                continue
            t0, t1 = ends.last_weight.get((r, s), (ends.rank_end[r], ends.rank_end[r]))
            for k in range(1, n + 1):
                ready = (t1 if k == n else t0 + (t1 - t0) * k / n) if costs.overlap_grad_sync else ends.rank_end[r]
                jobs.append((max(ready, summed.get(s, 0.0)), s, k, costs.grad_sync[s] / n))
        for s, t0, t1 in _fifo(jobs):
            rows.append(StepRow(GRAD_SYNC, r, r, s, t0, t1))
            synced[r] = max(synced[r], t1)

    # 3. Each rank's optimizer step, over every copy it holds.
    for r, stages in enumerate(trace.stages_on_rank):
        length = float(sum(costs.optimizer[s] for s in stages))
        if length > 0:
            start = max(ends.rank_end[r], synced[r])
            rows.append(StepRow(OPTIMIZER, r, r, -1, start, start + length))

    out = np.array(rows, dtype=STEP_DTYPE)
    return out[np.lexsort((out["stage"], out["start"], out["kind"], out["rank"]))]


def with_step(trace: Trace, costs: StepCosts | None) -> Trace:
    """The trace with its end-of-step rows (the same trace when there is no [step] work)."""
    if costs is None or not costs.active():
        return trace
    return replace(trace, step=simulate_step(trace, costs))


# -- metrics ---------------------------------------------------------------------
@dataclass(frozen=True)
class SyncMetrics:
    """One kind of sync: the most any one rank spends on it, and the most of that exposed."""

    time: float  # max over ranks of the rank's total time in it
    exposed: float  # max over ranks of the part after the rank's pipeline work ended


@dataclass(frozen=True)
class RankStep:
    """One rank's end of step (metrics.json ``step.per_rank``)."""

    rank: int
    pipeline_end: float  # its last compute, all-to-all or outgoing send
    grad_sync: float
    grad_sync_exposed: float
    cross_copy_sync: float
    cross_copy_exposed: float
    optimizer_start: float | None  # None when it has no optimizer time
    optimizer: float
    end: float  # when its step is over


@dataclass(frozen=True)
class StepMetrics:
    """metrics.json ``step``: a whole training step, the pipeline and what follows it."""

    pipeline: float  # the pipeline's makespan
    grad_sync: SyncMetrics
    cross_copy_sync: SyncMetrics
    optimizer: float  # max over ranks of the optimizer step's length
    total: float  # the step: when the last rank's step is over
    overlap_grad_sync: bool
    cross_copy_eager: bool
    per_rank: list[RankStep]
    # With a [model] (and [hardware] for mfu): see Throughput; left out of the JSON otherwise.
    tokens_per_second: float | None = field(default=None, metadata={"omit_if_none": True})
    mfu: float | None = field(default=None, metadata={"omit_if_none": True})


def _after(rows: np.ndarray, t: float) -> float:
    """Length of the rows' intervals (disjoint: one channel) that lies after ``t``."""
    return float(np.sum(np.maximum(0.0, rows["end"] - np.maximum(rows["start"], t))))


def step_metrics(trace: Trace, costs: StepCosts, throughput: "Throughput | None" = None) -> StepMetrics:
    """The ``step`` block.  A sync is *exposed* on a rank for the part of it that
    runs after the rank's pipeline work has ended: the rank has nothing left to
    do then but wait for it (before, it runs beside the rank's own work)."""
    ends = pipeline_ends(trace)
    step = trace.step
    per_rank = []
    for r in range(trace.ranks):
        mine = step[step["rank"] == r]
        sync, cross, opt = (mine[mine["kind"] == k] for k in (GRAD_SYNC, CROSS_COPY, OPTIMIZER))
        pend = ends.rank_end[r]
        per_rank.append(
            RankStep(
                rank=r,
                pipeline_end=pend,
                grad_sync=float(np.sum(sync["end"] - sync["start"])),
                grad_sync_exposed=_after(sync, pend),
                cross_copy_sync=float(np.sum(cross["end"] - cross["start"])),
                cross_copy_exposed=_after(cross, pend),
                optimizer_start=float(opt["start"][0]) if len(opt) else None,
                optimizer=float(np.sum(opt["end"] - opt["start"])),
                end=max(pend, float(mine["end"].max()) if len(mine) else 0.0),
            )
        )

    def worst(name: str) -> float:
        return max((getattr(p, name) for p in per_rank), default=0.0)

    total = max(trace.makespan, worst("end"))
    tps = mfu = None
    if throughput is not None and total > 0:
        tps = throughput.tokens / (total / 1e3)  # times are in ms
        if throughput.peak:
            mfu = tps * throughput.flops_per_token / (trace.ranks * throughput.devices_per_rank * throughput.peak)
    return StepMetrics(
        pipeline=trace.makespan,
        grad_sync=SyncMetrics(worst("grad_sync"), worst("grad_sync_exposed")),
        cross_copy_sync=SyncMetrics(worst("cross_copy_sync"), worst("cross_copy_exposed")),
        optimizer=worst("optimizer"),
        total=total,
        overlap_grad_sync=costs.overlap_grad_sync,
        cross_copy_eager=costs.cross_copy_eager,
        per_rank=per_rank,
        tokens_per_second=tps,
        mfu=mfu,
    )


# -- throughput: model/step_figures.py fills this in from [model] and [hardware] -----------
@dataclass(frozen=True)
class Throughput:
    """What tokens per second and MFU need besides the step time."""

    tokens: float  # per step over all data-parallel replicas: M x micro_batch_size x seq_length x data
    flops_per_token: float  # model FLOPs of training, no recomputation (model/flops.py: 3 x forward)
    devices_per_rank: int  # GPUs behind one pipeline rank: tensor x data
    peak: float | None  # dense peak FLOP/s per GPU of the precision the linears run in; None without [hardware]
