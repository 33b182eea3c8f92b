"""metrics.json's ``step`` block: the end of a step read off a finished trace.

A reader: it imports the trace and [step]'s input records, nothing of the
simulation (step.py makes the rows it reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..step_costs import StepCosts, Throughput
from ..engine.trace import CROSS_COPY, DRAIN, GRAD_SYNC, OPTIMIZER, SLOWED, Trace, pipeline_ends


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
    # with model.defer_embedding_wgrad, on the rank holding the output layer: its drain's length (the DRAIN rows, the
    # deferred wgrad GEMMs after its pipeline work, slowed beside a grad sync); left out of the JSON on other ranks
    drain: float | None = field(default=None, metadata={"omit_if_none": True})
    # with step.dp_comm_sms slowing compute: how much longer its pipeline's compute ran beside its data-parallel
    # collectives (its SLOWED row, drawn from pipeline_end); left out of the JSON when nothing is slowed
    slowed: float | None = field(default=None, metadata={"omit_if_none": True})


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
    drain: float | None = field(default=None, metadata={"omit_if_none": True})  # max over ranks of RankStep.drain
    slowed: float | None = field(default=None, metadata={"omit_if_none": True})  # max over ranks of RankStep.slowed


def _after(rows: np.ndarray, t: float) -> float:
    """Length of the rows' intervals (disjoint: one channel) that lies after ``t``."""
    return float(np.sum(np.maximum(0.0, rows["end"] - np.maximum(rows["start"], t))))


def step_metrics(trace: Trace, costs: StepCosts, throughput: Throughput | None = None) -> StepMetrics:
    """The ``step`` block.  A sync is *exposed* on a rank for the part of it that runs after the rank's compute has
    ended: its pipeline work, what step.dp_comm_sms's slowdown added to it (the SLOWED row) and its drain (the DRAIN
    rows); the rank has nothing left to do then but wait for it (before, it runs beside the rank's own work).

    So on a rank without cross-copy sums, ``end == pipeline_end + slowed + drain + grad_sync_exposed + optimizer``
    (None as 0): every grad sync is released by the compute's end (its last bucket at the stretched end of the copy's
    last weight-gradient op, or of the rank's pipeline and drain), so from then on its channel runs without a gap,
    the tail follows at once and then the optimizer.  A cross-copy sum can also keep a rank waiting for its pair."""
    ends = pipeline_ends(trace)
    step = trace.step
    slows = any(f != 1.0 for f in costs.dp_comm_slowdown)  # then every rank says how much (0: nothing beside it)
    per_rank = []
    for r in range(trace.ranks):
        mine = step[step["rank"] == r]
        sync, cross, opt, drain, slowed = (mine[mine["kind"] == k] for k in (GRAD_SYNC, CROSS_COPY, OPTIMIZER, DRAIN,
                                                                               SLOWED))
        pend = ends.rank_end[r]
        # its compute's end (the slowed row ends where the drain starts): a sync before it runs beside its own work
        busy = max([pend] + [float(x["end"].max()) for x in (slowed, drain) if len(x)])
        per_rank.append(
            RankStep(
                rank=r,
                pipeline_end=pend,
                grad_sync=float(np.sum(sync["end"] - sync["start"])),
                grad_sync_exposed=_after(sync, busy),
                cross_copy_sync=float(np.sum(cross["end"] - cross["start"])),
                cross_copy_exposed=_after(cross, busy),
                optimizer_start=float(opt["start"][0]) if len(opt) else None,
                optimizer=float(np.sum(opt["end"] - opt["start"])),
                end=max(busy, float(mine["end"].max()) if len(mine) else 0.0),
                drain=float(np.sum(drain["end"] - drain["start"])) if len(drain) else None,
                slowed=float(np.sum(slowed["end"] - slowed["start"])) if slows else None,
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
        drain=max((p.drain for p in per_rank if p.drain is not None), default=None),
        slowed=worst("slowed") if slows else None,
    )
