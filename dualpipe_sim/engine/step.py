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
  weight-gradient op (Megatron's --overlap-grad-reduce buckets); with
  ``grad_sync_shares`` the collectives are those shares of it instead.
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
* **tail** (``grad_sync_tail``): a copy's reduction part that runs only once its rank's pipeline work and
  every other sync of the rank have ended (Megatron's finalize_model_grads after finish_grad_sync: the
  tensor-parallel all-reduce of the sequence-parallel gradients, the tied embedding's all-reduce; NeMo's held
  bucket group on apex, its fp32 embedding all-reduce), on the same channel, stage by stage.
* **drain** (``DRAIN``, ``StepCosts.drain``): compute a rank runs after its pipeline work and before anything
  there that waits for the pipeline's end (a sync not overlapped, the tail, the optimizer): the output layer's
  deferred wgrad GEMMs (model/deferred_wgrad.py), one row on the rank's compute channel from its pipeline's end.
  Overlapped syncs released earlier, pp-aligned launches past the rank's last weight-gradient op included, run
  beside it, unordered against it as Megatron-core runs them (docs/model.md, "The output layer's deferred weight
  gradients"), and slow it as they slow the pipeline's compute (_stretch).
* **ZeRO 2's earlier backwards** (``every_backward``): each of a copy's weight-gradient ops but its last releases
  the copy's whole reduce-scatter, unit by unit as its last op releases the grad sync (_earlier_jobs); they are
  grad sync rows on the same channel, one at a time in release order, so the last op's wait behind whatever
  backlog the trace's own backwards left there.
* **SMs** (``step.dp_comm_sms``): the compute a grad sync overlaps runs
  ``dp_comm_slowdown[s]`` times slower (NCCL's CTAs hold SMs); a second pass lays the step out on each rank's
  times stretched by it (_stretch).
  What the stretch charged a rank by its pipeline's end is a ``SLOWED`` row on its compute, from that end
  (the pipeline's compute rows keep their unslowed times) to its stretched end, where a drain starts.

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

Each channel is one server fed in order of release time (a replay.Link, the
replay core's FIFO channel) and the dependencies run one way (cross-copy ->
grad sync -> optimizer), so one pass over the jobs in that order gives the
event simulation's exact times.

The step is split by layer: its inputs are step_costs.py (imported by the
scenario), this module simulates them, and step_metrics.py reads the rows
(metrics.json ``step``); the row kinds (``StepKind``) and what the step waits
for in the pipeline trace (``pipeline_ends``) are trace.py's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..step_costs import StepCosts
from .trace import (CROSS_COPY, DRAIN, GRAD_SYNC, IS_WEIGHT_GRAD, OPTIMIZER, P2P, SLOWED, STEP_DTYPE, PipelineEnds,
                    StepRow, Trace, pipeline_ends)


def _fifo(jobs: list[tuple[float, int, int, float]]) -> list[tuple[int, float, float]]:
    """One channel (a replay.Link, as the P2P links) fed jobs (release, stage, part, length) in
    release order, ties by stage then part: (stage, start, end) each."""
    out, free = [], 0.0  # Link.carry inline: the grad syncs' hundreds of buckets a rank make it hot
    for release, s, _, length in sorted(jobs):
        start = release if release > free else free
        free = start + length
        out.append((s, start, free))
    return out


def _weight_ops(trace: Trace) -> list[tuple[list[float], list[int]]]:
    """Per rank, each of its weight-gradient actions' latest (end, stage) of its rows: their ends and their
    stages, by action.  Read once per step, for both passes of _aligned_launches."""
    rows = trace.compute[IS_WEIGHT_GRAD[trace.compute["kind"]]]
    rows = rows[np.lexsort((rows["stage"], rows["end"], rows["action"], rows["rank"]))]
    rank, action = rows["rank"], rows["action"]
    # each (rank, action)'s last row: its max (end, stage), as a max over tuples
    last = rows[np.flatnonzero(np.concatenate(((rank[1:] != rank[:-1]) | (action[1:] != action[:-1]), [True])))] \
        if len(rows) else rows
    bounds = np.searchsorted(last["rank"], np.arange(trace.ranks + 1))
    ends, stages = last["end"].tolist(), last["stage"].tolist()
    return [(ends[a:b], stages[a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def _aligned_launches(trace: Trace, rank_end: list[float], maps=None, ops=None) -> dict[tuple[int, int], float]:
    """(rank, stage) -> when Megatron's interleaved schedule launches that copy's overlapped grad sync.

    Rank r launches a copy's reduction after its r-th weight-gradient op past the copy's last one
    (``grad_sync_microbatch_id = microbatch_id - pipeline_parallel_rank``, so that the ranks of a
    pipeline launch together); a launch past the rank's last such op happens once its pipeline
    work is over (the loop's "remaining grad reductions").  Megatron-core schedules.py @ df72712,
    apex PR #1611 (docs/step.md).  ``maps``: per rank, its stretched times (_stretch), or None; ``ops``:
    _weight_ops(trace), when the caller has it."""
    out: dict[tuple[int, int], float] = {}
    for r, (ends, stages) in enumerate(_weight_ops(trace) if ops is None else ops):
        if maps:  # one call for the rank's ops (plan's estimate lays out thousands of steps)
            ends = maps[r](np.array(ends)).tolist()
        order = sorted(zip(ends, stages))
        last = {stage: i for i, (_, stage) in enumerate(order)}
        for stage, i in last.items():
            out[(r, stage)] = order[i + r][0] if i + r < len(order) else rank_end[r]
    return out


def _p2p_busy(trace: Trace, rank: int) -> np.ndarray:
    """The rank's link busy with its P2P sends or receives: merged (start, end) rows, in order."""
    c = trace.comm
    mine = c[(c["channel"] == P2P) & ((c["rank"] == rank) | (c["peer"] == rank))]
    merged: list[list[float]] = []
    for a, b in sorted(zip(mine["start"].tolist(), mine["end"].tolist())):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.array(merged, dtype=float).reshape(-1, 2)


def _yielding(jobs: list[tuple[float, int, int, float]], busy: np.ndarray) -> list[tuple[int, float, float]]:
    """_fifo on a link that the P2P transfers ``busy`` hold first: a job runs only while none is
    on it, so each ends ``length`` of free link time after it starts."""
    free, out = 0.0, []
    ends = busy[:, 1] if len(busy) else np.empty(0)
    for release, s, _, length in sorted(jobs):
        start = t = max(release, free)
        left = length
        i = int(np.searchsorted(ends, t, side="right"))  # the first transfer not over by t
        while left > 0:
            if i < len(busy) and busy[i, 0] <= t:  # inside a transfer: wait for its end
                t = busy[i, 1]
                i += 1
                continue
            gap = (busy[i, 0] - t) if i < len(busy) else left
            step = min(gap, left)
            t, left = t + step, left - step
        free = t
        out.append((s, start, t))
    return out


def _earlier_jobs(trace: Trace, costs: StepCosts) -> list[list[tuple[float, int, int, float]]]:
    """Per rank, the collectives each of its copies' weight-gradient ops but the copy's last releases
    (``costs.every_backward``: ZeRO 2's reduce-scatters after every backward) as its channel's jobs (release, stage,
    part, length) on the pipeline's own times, released as the last op's grad syncs are (_bucket_readies: share k of
    n k/n of the way through the op, the last at its end); [] each without them.  _step_rows queues them with the
    grad syncs on the rank's one channel, one at a time in release order: what they have not run when the last
    backward's are released, the backlog, is that channel's own, not a figure."""
    out: list[list] = [[] for _ in range(trace.ranks)]
    if not any(costs.every_backward):
        return out
    rows = trace.compute[IS_WEIGHT_GRAD[trace.compute["kind"]]]
    # per op (rank, action): its rows' (an op's parts) first start, last end and its first row's stage
    rows = rows[np.lexsort((rows["action"], rows["rank"]))]  # stable: each op's rows in the table's order
    rank, action = rows["rank"], rows["action"]
    first = np.flatnonzero(np.concatenate(([True], (rank[1:] != rank[:-1]) | (action[1:] != action[:-1])))) \
        if len(rows) else np.zeros(0, dtype=np.int64)
    op_start = np.minimum.reduceat(rows["start"], first).tolist() if len(rows) else []
    op_end = np.maximum.reduceat(rows["end"], first).tolist() if len(rows) else []
    copies: dict[tuple[int, int], list[tuple[float, float]]] = {}  # (rank, stage) -> its ops' (end, start)
    for r, s, t0, t1 in zip(rank[first].tolist(), rows["stage"][first].tolist(), op_start, op_end):
        if costs.every_backward[s]:
            copies.setdefault((r, s), []).append((t1, t0))
    for (r, s), done in copies.items():
        shares = costs.every_backward[s]
        n = len(shares)
        for t1, t0 in sorted(done)[:-1]:  # the copy's last op releases the grad sync rows instead
            out[r] += [(t1 if k == n else t0 + (t1 - t0) * k / n, s, k, length) for k, length in enumerate(shares, 1)]
    return out


def _union(spans: list[tuple[float, float]]) -> np.ndarray:
    """Intervals as (start, end) rows, overlapping ones merged: compute beside two collectives at once is slowed once
    (one that starts as another ends is kept apart: one channel's FIFO rows go through as they are, bit for bit)."""
    if not spans:
        return np.empty((0, 2))
    x = np.array(spans, dtype=float).reshape(-1, 2)
    x = x[np.lexsort((x[:, 1], x[:, 0]))]  # sorted(spans)
    # in that order an interval starts a new one where it starts at or past every end before it (each end >= its
    # start: the ends before it are its own group's); the group's end is its members' max
    reach = np.maximum.accumulate(x[:, 1])
    first = np.flatnonzero(np.concatenate(([True], x[1:, 0] >= reach[:-1])))
    return np.column_stack((x[first, 0], np.maximum.reduceat(x[:, 1], first)))


def _stretch(trace: Trace, rows: list[tuple], slowdown: tuple[float, ...]):
    """Per rank, the map from the pipeline's times to its times with its compute slowed under its grad syncs.

    A compute row of stage s that overlaps the rank's grad sync rows for d ms takes (slowdown[s] - 1) x d ms
    longer (the collective's CTAs hold SMs the compute kernels would use), and what follows on the rank moves
    by as much: t -> t + sum over those overlaps before t of (f - 1) x their length.  The overlaps are the
    first pass's (the syncs as timed on the unslowed pipeline); docs/step.md, "Data-parallel collectives take SMs".
    A first-pass DRAIN row is the rank's compute too (after its pipeline's rows), slowed by its stage's factor.
    The grad sync rows hold ZeRO 2's earlier backwards' reduce-scatters too (_earlier_jobs)."""
    maps = []
    c = trace.compute
    syncs: list[list[tuple[float, float]]] = [[] for _ in range(trace.ranks)]
    drains: list[list[tuple[float, float, int]]] = [[] for _ in range(trace.ranks)]  # per rank: its drain rows
    for kind, rank, _, stage, start, end in rows:
        if kind == GRAD_SYNC:
            syncs[rank].append((start, end))
        elif kind == DRAIN:
            drains[rank].append((start, end, stage))
    by_rank = np.argsort(c["rank"], kind="stable")  # each rank's rows, in the table's order
    bounds = np.searchsorted(c["rank"][by_rank], np.arange(trace.ranks + 1)).tolist()
    less = np.asarray(slowdown, dtype=float) - 1.0  # per stage: slowdown[s] - 1.0
    # the columns read, in that order once (a rank's rows are then slices, not copies of the table's)
    starts, ends, weights = c["start"][by_rank], c["end"][by_rank], less[c["stage"][by_rank]]
    for r in range(trace.ranks):
        busy = _union(syncs[r])
        mine = slice(bounds[r], bounds[r + 1])
        weight = weights[mine]
        # the rows some sync overlaps
        near = (weight != 0.0) & (ends[mine] > busy[:, 0].min(initial=np.inf)) & (starts[mine] < busy[:, 1].max(initial=-np.inf))
        start, end, weight = starts[mine][near], ends[mine][near], weight[near]
        if drains[r]:  # the drain after the pipeline's rows: compute like theirs
            d = np.array(drains[r], dtype=float).reshape(-1, 3)
            start, end = np.concatenate((start, d[:, 0])), np.concatenate((end, d[:, 1]))
            weight = np.concatenate((weight, less[d[:, 2].astype(np.int64)]))
        # busy is sorted and disjoint (_union), so each row can overlap only the syncs from the first that ends past
        # its start to the last that starts before its end: those pairs alone, sync by sync, row by row
        first = np.searchsorted(busy[:, 1], start, side="right")
        count = np.maximum(np.searchsorted(busy[:, 0], end, side="left") - first, 0)
        row = np.repeat(np.arange(len(start)), count)
        sync = np.repeat(first, count) + np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)
        order = np.lexsort((row, sync))
        row, sync = row[order], sync[order]
        a, b = np.maximum(start[row], busy[sync, 0]), np.minimum(end[row], busy[sync, 1])
        keep = b > a
        lo, hi, w = a[keep], b[keep], weight[row][keep]
        # t a time or an array of times (the same sums, bit for bit)
        maps.append(lambda t, lo=lo, hi=hi, w=w: t + np.sum(w * np.clip(np.subtract.outer(t, lo), 0.0, hi - lo), axis=-1))
    return maps


def simulate_step(trace: Trace, costs: StepCosts, ahead=None, carry=None) -> np.ndarray:
    """The end-of-step rows (trace.STEP_DTYPE) of a finished pipeline trace.  With compute slowed under the
    data-parallel collectives (``costs.dp_comm_slowdown``), a second pass on each rank's stretched times
    (``ahead``, ``carry``: rows_of's)."""
    out = np.array(rows_of(trace, costs, ahead, carry), dtype=STEP_DTYPE)
    return out[np.lexsort((out["stage"], out["start"], out["kind"], out["rank"]))]


def rows_of(trace: Trace, costs: StepCosts, ahead=None, carry=None) -> list[tuple]:
    """simulate_step's rows, unsorted, each a tuple of StepRow's fields (plan's estimate reads only their last
    end; a plain tuple is the cheaper to make, and a step lays out thousands).  ``ahead``: per rank, ms its compute
    was slowed before the trace by collectives not in it, added to every stretched time (plan's estimate: the
    periods of micro-batches its replay leaves out, plan/step_estimate.step_end_ms), or a function giving them from
    the trace's own stretch by each rank's end (by_end's first; worked out here once for both); None: none.
    ``carry``: per rank, ms of collectives its channel has queued from micro-batches not in the trace (plan's
    estimate: ZeRO 2's backlog over the periods its replay leaves out), run after the rest of the channel's pipeline
    work, or a function giving them from the trace's own backlog (by_end's second); None: none."""
    return _passes(trace, costs, ahead, carry)[0]


def _passes(trace: Trace, costs: StepCosts, ahead=None, carry=None) -> tuple[list[tuple], list[float], list[float]]:
    """rows_of's rows, with per rank what its stretch charged by its pipeline's end (on the first pass) and its
    channel's backlog then (on the last pass before any ``carry``): by_end's two."""
    ends = pipeline_ends(trace)
    aligned = costs.overlap_grad_sync and costs.grad_sync_launch == "pp-aligned"
    ops = _weight_ops(trace) if aligned else None  # read once for every pass
    earlier = _earlier_jobs(trace, costs)
    backlog = [0.0] * trace.ranks
    rows = _step_rows(trace, costs, ends, None, ops, earlier, backlog=backlog)
    maps = _maps(trace, costs, rows)
    slowed = _slowed_at(maps, ends.rank_end)
    if callable(ahead):
        ahead = ahead(slowed)
    if ahead is not None and any(ahead):
        maps = [lambda t, m=m, a=a: (t if m is None else m(t)) + a for m, a in zip(maps or [None] * trace.ranks, ahead)]
    if maps is not None:
        rows = _step_rows(trace, costs, ends, maps, ops, earlier, backlog=backlog)
    if callable(carry):
        carry = carry(list(backlog))
    if carry is not None and any(c > 0 for c in carry):
        rows = _step_rows(trace, costs, ends, maps, ops, earlier, carry)
    return rows, slowed, backlog


def _maps(trace: Trace, costs: StepCosts, rows: list[tuple]) -> list | None:
    """_stretch's maps on the first pass's ``rows``, or None where nothing is slowed (every factor 1, or no
    collective on any rank's channel)."""
    if all(f == 1.0 for f in costs.dp_comm_slowdown) or not any(x[0] == GRAD_SYNC for x in rows):
        return None
    return _stretch(trace, rows, costs.dp_comm_slowdown)


def by_end(trace: Trace, costs: StepCosts) -> tuple[list[float], list[float]]:
    """Per rank, (slowed, backlog): how much later its pipeline work ends on its stretched times (ms:
    the compute its collectives slowed before then, 0.0 where nothing is slowed), and how much work (ms) its channel
    still has from its pipeline's jobs at that stretched end (ZeRO 2's earlier backwards' reduce-scatters and the
    grad syncs, not the tail; 0.0 where it is done by then).  plan's estimate extends the difference of two replays
    one period apart (plan/step_estimate.step_end_ms)."""
    _, slowed, backlog = _passes(trace, costs)
    return slowed, backlog


def _slowed_at(maps: list | None, rank_end: list[float]) -> list[float]:
    """by_end's slowed, from the ranks' maps (_maps)."""
    if maps is None:
        return [0.0] * len(rank_end)
    return [float(m(np.array([t]))[0]) - t for m, t in zip(maps, rank_end)]


def _bucket_readies(trace: Trace, costs: StepCosts, raw: PipelineEnds,
                    drains: list[float]) -> list[list[list[float]]]:  # fmt: skip
    """Per rank, per stage copy it holds with a grad sync (in its order): when each of the copy's buckets is ready,
    on the pipeline's own times.  Overlapped, bucket k of n is ready k/n of the way through the copy's last
    weight-gradient op (it yields its gradients evenly); else at the end of the rank's pipeline work and its drain."""
    out = []
    for r, stages in enumerate(trace.stages_on_rank):
        mine = []
        for s in stages:
            if costs.grad_sync[s] <= 0:
                continue
            t0, t1 = raw.last_weight.get((r, s), (raw.rank_end[r], raw.rank_end[r]))
            n = len(_durations(costs, s))
            if costs.overlap_grad_sync:
                mine.append([(t1 if k == n else t0 + (t1 - t0) * k / n) for k in range(1, n + 1)])
            else:
                mine.append([raw.rank_end[r] + drains[r]] * n)
        out.append(mine)
    return out


def _durations(costs: StepCosts, stage: int) -> list[float]:
    """A stage copy's grad sync collectives in release order (ms): its ``grad_sync_shares`` of it where given,
    else ``grad_sync_buckets`` equal ones."""
    if costs.grad_sync_shares and costs.grad_sync_shares[stage]:
        return [costs.grad_sync[stage] * share for share in costs.grad_sync_shares[stage]]
    per_stage = costs.grad_sync_buckets  # one count for every stage, or one per stage
    n = per_stage[stage] if isinstance(per_stage, tuple) else per_stage
    return [costs.grad_sync[stage] / n] * n


def _step_rows(trace: Trace, costs: StepCosts, ends: PipelineEnds, maps, ops=None, earlier=None, carry=None,
               backlog: list[float] | None = None) -> list[tuple]:  # fmt: skip
    """One pass over the cross-copy sums, the grad syncs and the optimizer steps, given when each rank's
    pipeline work and each copy's last weight-gradient op end (``ends``); ``maps``: per rank, its times
    stretched (_stretch), applied to every time read off the pipeline, or None; ``ops``: _weight_ops(trace);
    ``earlier``: _earlier_jobs(trace, costs), queued on the channel with the grad syncs; ``carry``: rows_of's, a job
    released at the rank's end; ``backlog``: per rank, filled with its channel's work left at its end (by_end)."""
    rows: list[tuple] = []  # StepRow's fields
    raw = ends  # the buckets' readiness is interpolated on the pipeline's own times, then stretched
    aligned = costs.overlap_grad_sync and costs.grad_sync_launch == "pp-aligned"
    drains = costs.drains(trace.stages_on_rank)
    readies = _bucket_readies(trace, costs, raw, drains)
    if maps is not None:  # every time read off the pipeline stretched, one call per rank
        times = [[t] for t in raw.rank_end]
        for (r, _), pair in raw.last_weight.items():
            times[r] += pair
        if not aligned:  # the buckets' readiness too (pp-aligned, they go at their copy's launch)
            for r, per_copy in enumerate(readies):
                for ts in per_copy:
                    times[r] += ts
        moved = [iter(maps[r](np.array(ts)).tolist()) for r, ts in enumerate(times)]
        ends = PipelineEnds([next(m) for m in moved],
                            {(r, s): (next(moved[r]), next(moved[r])) for r, s in raw.last_weight}, raw.holders)
        if not aligned:
            readies = [[[next(moved[r]) for _ in ts] for ts in per_copy] for r, per_copy in enumerate(readies)]

    # what the stretch charged each rank by its pipeline's end, as a row from that end (the unslowed trace's) to its
    # stretched end: the time was spent spread over the pipeline's compute beside the collectives, but the compute rows
    # keep their unslowed times, and the step's end is what it moves; the drain starts where it ends
    if maps is not None:
        for r, (unslowed, slowed) in enumerate(zip(raw.rank_end, ends.rank_end)):
            if slowed > unslowed:
                rows.append((SLOWED, r, r, -1, unslowed, slowed))

    # each rank's pipeline work and then its drain (the deferred wgrad GEMMs, after the loop's last launches of
    # overlapped grad syncs: those go at ends.rank_end), a DRAIN row per stage copy with one on the rank's compute;
    # stretched, its end is the map of its unstretched end (the map counts the first pass's drain row as compute
    # beside the syncs that overlap it)
    drained = list(ends.rank_end)
    for r, stages in enumerate(trace.stages_on_rank):
        if not drains[r]:
            continue
        at = raw.rank_end[r]
        for s in stages:
            if costs.drain[s] > 0:
                at += costs.drain[s]
                end = float(maps[r](np.array([at]))[0]) if maps is not None else at
                rows.append((DRAIN, r, r, s, drained[r], end))
                drained[r] = end

    def done(rank: int, stage: int, early: bool) -> float:
        # early: when this copy's gradients are complete; else when the rank's pipeline work is.
        return ends.last_weight.get((rank, stage), (0.0, drained[rank]))[1] if early else drained[rank]

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
            rows += [(CROSS_COPY, a, b, s, t0, t1), (CROSS_COPY, b, a, s, t0, t1)]

    # 2. Grad sync of each copy, bucket by bucket, FIFO on its rank's data-parallel
    # channel, after its stage's sum.  Overlapped, bucket k of n is ready k/n of the
    # way through the copy's last weight-gradient op (it yields its gradients evenly).
    synced = [0.0] * trace.ranks  # per rank: when every sync of its stages has ended
    launches = _aligned_launches(trace, ends.rank_end, maps, ops) if aligned else {}
    durations: dict[int, list[float]] = {}  # per stage: _durations, worked out once for every copy and rank
    for r, stages in enumerate(trace.stages_on_rank):
        synced[r] = max([summed.get(s, 0.0) for s in stages], default=0.0)
        jobs = list(earlier[r]) if earlier else []  # ZeRO 2's earlier backwards', on the same channel
        if jobs and maps is not None:
            moved = maps[r](np.array([j[0] for j in jobs])).tolist()
            jobs = [(t, s, k, length) for t, (_, s, k, length) in zip(moved, jobs)]
        for s, copy_readies in zip([s for s in stages if costs.grad_sync[s] > 0], readies[r]):
            if s not in durations:
                durations[s] = _durations(costs, s)
            after = summed.get(s, 0.0)
            if aligned:  # every bucket goes at the copy's launch (one grad_sync_func call)
                release = max(launches.get((r, s), ends.rank_end[r]), after)
                jobs += [(release, s, k, length) for k, length in enumerate(durations[s], 1)]
            else:
                jobs += [(max(ready, after), s, k, length)
                         for k, (ready, length) in enumerate(zip(copy_readies, durations[s]), 1)]
        if carry and carry[r] > 0:  # after every job the rank's pipeline released (none is released past its end)
            jobs.append((ends.rank_end[r], stages[0], len(jobs) + 1, carry[r]))
        busy = _p2p_busy(trace, r) if costs.nic_shared else None
        if busy is not None and maps is not None:  # the rank's P2P moves with its stretched compute
            busy = maps[r](busy).reshape(-1, 2)  # every start and end at once (elementwise: the same sums)
        last = synced[r]
        for s, t0, t1 in _yielding(jobs, busy) if costs.nic_shared else _fifo(jobs):
            rows.append((GRAD_SYNC, r, r, s, t0, t1))
            if t1 > last:  # max(last, t1)
                last = t1
        synced[r] = last
        if backlog is not None:
            backlog[r] = max(0.0, last - ends.rank_end[r])
        # then the tail: released once the rank's pipeline and every sync above have ended (NeMo's
        # _finish_bucket_grad_sync, then apex's grad_sync()), one after another in stage order
        after = max(drained[r], synced[r])
        tail = [(after, s, 0, costs.grad_sync_tail[s]) for s in stages if costs.grad_sync_tail and costs.grad_sync_tail[s] > 0]
        for s, t0, t1 in _yielding(tail, busy) if costs.nic_shared else _fifo(tail):
            rows.append((GRAD_SYNC, r, r, s, t0, t1))
            synced[r] = max(synced[r], t1)

    # 3. Each rank's optimizer step, over every copy it holds.
    for r, stages in enumerate(trace.stages_on_rank):
        length = float(sum(costs.optimizer[s] for s in stages))
        if length > 0:
            start = max(drained[r], synced[r])
            rows.append((OPTIMIZER, r, r, -1, start, start + length))
    return rows


def with_step(trace: Trace, costs: StepCosts | None) -> Trace:
    """The trace with its end-of-step rows (the same trace when there is no [step] work)."""
    if costs is None or not costs.active():
        return trace
    return replace(trace, step=simulate_step(trace, costs))
