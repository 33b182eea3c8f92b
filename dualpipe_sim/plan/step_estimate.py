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
  two small counts one period apart (``counts``), moved on a period at a time until the
  makespan grows by as much as over the period before and by no less than each rank's own
  compute over the period (``settled``); where M is small it is replayed as is;
* **the step's end** (``step_end_ms``): what step.py adds after the pipeline, from the
  scenario's [step] figures (``Scenario.step_costs``: model/derived_step.py's derived
  grad sync, optimizer and compute slowdown under a data-parallel collective).  The small
  replay's tail, which a longer pipeline only shifts, is written as a trace (``trace_of``:
  a row per op, a pair's two ops one after the other in the shares of its two computes,
  and the P2P transfers) and handed to step.py's own ``simulate_step``: the same buckets,
  launches, cross-copy sums, NIC shared with P2P, optimizer, and the second pass on the
  ranks' compute stretched under their grad syncs (``step.dp_comm_sms``) as a run.  With ZeRO 2's
  reduce-scatters after every earlier backward (StepCosts.every_backward), which load the rank's channel (and
  slow the compute beside them) from the first backward on, it is handed the whole replay, and an extrapolated
  makespan's periods add each rank's stretch and its channel's backlog per period (``_step_input``).

Many candidates of one schedule shape are replayed at once (``replayed_many``, used by
estimate.step_times_of): the replay core's dependencies, read off one replay with unit lengths,
as rounds of independent actions and transfers, evaluated with numpy over the candidates; every
value is the same sum or maximum of the same floats as in the core's loop, so each candidate's
replay is its own to the bit (tests/test_plan_replay_many.py).

The [chunk] model's all-to-all is inside the actions' lengths already (a lone forward or
backward costs its all-to-all in full, an overlapped pair hides what its two channels can),
so no term is added for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ..engine import replay, validate
from ..engine.step import by_end, rows_of, simulate_step
from ..engine.trace import COMM_DTYPE, COMPUTE_DTYPE, IS_BACKWARD, MEMORY_DTYPE, Trace
from ..schedules import registry
from ..schedules.rules import KIND_CODES, KINDS, WEIGHT_GRADS
from ..inputs.costs import deferred_share, kind_length
from .shapes import VIRTUAL_OPTION

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
    back_microbatch: np.ndarray  # per action: the pair's backward's micro-batch (the op's own when lone)
    rank_first: np.ndarray  # per rank: its first action's number
    wgrad_action: np.ndarray  # per weight-gradient op: its action
    wgrad_copy: np.ndarray  # ... and its stage copy (numbered over (direction, stage))
    copy_rank: np.ndarray  # per stage copy: the rank holding it
    copy_stage: np.ndarray  # per stage copy: its stage
    last_wgrad: np.ndarray  # per stage copy: the action of its last weight-gradient op (its rank's latest)
    transfers: object = None  # replay.Plan: the replay core's transfer plan, worked out once per build
    # rank pairs -> the links of ``transfers`` replay.link_hops times at NVLink (_nvlink_links), filled as asked
    nvlink_links: dict = field(default_factory=dict, compare=False, repr=False)


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
    back_mb = np.empty(n, dtype=np.int64)
    head = flat.member == 0  # a lone op, or a pair's forward
    stage[flat.action[head]] = flat.stage[head]
    kind[flat.action[head]] = flat.kind[head]
    back[flat.action[head]] = flat.stage[head]
    back_mb[flat.action[head]] = flat.microbatch[head]
    tail = flat.member == 1  # a pair's backward: the pair's cost reads its kind, stage and micro-batch
    kind[flat.action[tail]] = flat.kind[tail]
    back[flat.action[tail]] = flat.stage[tail]
    back_mb[flat.action[tail]] = flat.microbatch[tail]
    placement = schedule.placement()  # (direction, stage) -> rank
    copies = sorted(placement)
    copy_id = {c: i for i, c in enumerate(copies)}
    wg = np.flatnonzero(np.isin(flat.kind, _WEIGHT_CODES))
    wgrad_copy = np.array([copy_id[(int(d), int(s))] for d, s in zip(flat.direction[wg], flat.stage[wg])],
                          dtype=np.int64)  # fmt: skip
    last = np.full(len(copies), -1, dtype=np.int64)  # a copy sits on one rank, whose actions run in order
    np.maximum.at(last, wgrad_copy, flat.action[wg])
    return Built(schedule, index, lone, kind, stage, back, back_mb, np.asarray(flat.rank_bounds[:-1], dtype=np.int64),
                 flat.action[wg], wgrad_copy, np.array([placement[c] for c in copies], dtype=np.int64),
                 np.array([s for _, s in copies], dtype=np.int64), last,
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
    # the output layer's deferred wgrad (model.defer_embedding_wgrad), as the run's CostModel.deferred: (stage, count,
    # input-gradient ms less, weight-gradient ms less) for the backwards of micro-batches 0 .. count - 1; None: none
    deferred: tuple[int, int, float, float] | None = None
    # per stage, the MoE host share (model/host_pair.py) as the run's Chunk.pair_host for all its layers: (ms its
    # forward's host rows, ms its backward's, ms an overlapped pair takes instead with this stage's forward); (): none
    pair_host: tuple[tuple[float, float, float], ...] = ()
    # per stage, what a lone I carries less and a lone W more (the run's CostModel.apart); (): none
    apart: tuple[tuple[float, float], ...] = ()


def lengths(b: Built, costs: StageCosts) -> np.ndarray:
    """Each action's length: a lone op as CostModel.duration takes it (I = B - W), its all-to-all in
    full; an overlapped pair (F of one stage, B or I of another) as estimate.py works out a stage's
    own pair: the two computes, slowed where an all-to-all runs beside them, or the two all-to-alls
    if they take longer (the [chunk] model's two channels, compute and all-to-all)."""
    return _lengths(b, costs)[0]


def _lengths(b: Built, costs: StageCosts) -> tuple[np.ndarray, np.ndarray]:
    """lengths, and per action the share of it its first op takes (1 when lone; a pair's forward's
    compute over the pair's two computes)."""
    f, bw, w = (np.asarray(x, dtype=float) for x in (costs.forward, costs.backward, costs.weight))
    apart = np.asarray(costs.apart, dtype=float).T if costs.apart else (0.0, 0.0)
    per_kind = np.array([np.broadcast_to(kind_length(k, f, bw, w, apart), f.shape) for k in KINDS])  # by kind code
    out = per_kind[b.kind, np.where(b.lone, b.stage, b.back_stage)]
    if costs.deferred is not None:  # CostModel.duration's lighter backwards: B - less I - less W, I - less I, W - less W
        s, count, less_i, less_w = costs.deferred
        light = IS_BACKWARD[b.kind] & (b.back_stage == s) & (b.back_microbatch < count)
        less = np.array([deferred_share(k, less_i, less_w) for k in KINDS])[b.kind[light]]
        out[light] = out[light] - less[:, 0] - less[:, 1]
    share = np.ones(len(out))
    if not b.lone.all():
        p = ~b.lone
        zero = np.zeros(len(f))
        fa = np.asarray(costs.forward_a2a, dtype=float) if costs.forward_a2a else zero
        ba = np.asarray(costs.backward_a2a, dtype=float) if costs.backward_a2a else zero
        comm = fa[b.stage[p]] + ba[b.back_stage[p]]
        host = np.asarray(costs.pair_host, dtype=float) if costs.pair_host else np.zeros((len(f), 3))
        first = f[b.stage[p]] - fa[b.stage[p]] - host[b.stage[p], 0] + host[b.stage[p], 2]
        # the backward's host row gives way only to a forward stage's share (costs._pair_duration)
        compute = first + out[p] - ba[b.back_stage[p]] - np.where(host[b.stage[p], 2] > 0, host[b.back_stage[p], 1], 0.0)
        share[p] = np.where(compute > 0, first / np.where(compute > 0, compute, 1.0), 0.5)
        out[p] = np.maximum(compute + (costs.slowdown - 1) * np.minimum(compute, comm), comm)
    return out, share


@dataclass(frozen=True)
class Replayed:
    """One replay: its makespan, when each rank's pipeline work ends, when each stage copy's last
    weight-gradient op ends (ms), and what trace_of needs: each action's start and length, its first
    op's share of it (_lengths), each transfer's start and the P2P time."""

    makespan: float
    rank_end: np.ndarray
    copy_ready: np.ndarray
    starts: np.ndarray
    length: np.ndarray
    share: np.ndarray
    begin: object  # array("d"), per transfer
    p2p: float | np.ndarray  # ms, one for every transfer or each one's
    period: Period | None = None  # extrapolated (pipelines): the replay a period shorter, M's periods past this


@dataclass(frozen=True)
class Period:
    """What an extrapolated makespan extends (pipelines): the replay one period (``ranks`` micro-batches) shorter than
    the one it hangs on, its build, and how many periods M lies past the longer one.  step_end_ms extends the
    compute ZeRO 2's earlier backwards' reduce-scatters slow by as many periods."""

    built: Built
    run: Replayed
    periods: float


# One replica's hand-offs: ms for all, or (NIC ms, NVLink ms, the rank pairs in one NVLink domain: model/placement.py)
Hops = float | tuple[float, float, frozenset]


def _link_hops(b: Built, p2p: Hops) -> float | list[float]:
    """``p2p`` as replay.replay takes it: one figure, or each link's (replay.link_hops's list, its NVLink links read
    once per build and rank pairs: a walk over every transfer, done for each of thousands of candidates before)."""
    if isinstance(p2p, (int, float)):
        return float(p2p)
    nic, nvlink, pairs = p2p
    hop = [nic] * len(b.transfers.receiver)
    for link in _nvlink_links(b, pairs):
        hop[link] = nvlink
    return hop


def _nvlink_links(b: Built, pairs: frozenset) -> tuple[int, ...]:
    """The links of ``b``'s transfer plan on which replay.link_hops puts ``nvlink`` (with 0 for the NIC, 1 for NVLink),
    kept on the build (built() caches its Builts) per set of rank pairs."""
    held = b.nvlink_links
    if pairs not in held:
        hop = replay.link_hops(b.transfers, 0.0, 1.0, pairs)
        held[pairs] = tuple(i for i, h in enumerate(hop) if h == 1.0)
    return held[pairs]


def _transfer_hops(b: Built, p2p: Hops) -> float | np.ndarray:
    """``p2p`` per transfer (each one's link's), or the one figure."""
    hop = _link_hops(b, p2p)
    return hop if isinstance(hop, float) else np.asarray(hop, dtype=float)[np.asarray(b.transfers.link, dtype=np.int64)]


def replayed(b: Built, costs: StageCosts, p2p: Hops, blocking: bool) -> Replayed:
    """The replay core run on ``costs`` (engine/replay.py), P2P ``p2p`` ms per transfer (or per link: Hops)."""
    length, share = _lengths(b, costs)
    hop = _link_hops(b, p2p)
    cursor, starts, begin, _ = replay.replay(b.schedule, b.index, length.tolist(), hop, blocking, b.transfers)
    start = np.frombuffer(starts, dtype=float)
    ends = start + length
    rank_end = np.maximum.reduceat(ends, b.rank_first) if len(ends) else np.zeros(len(b.rank_first))
    # a transfer still travelling when its sender's last action ends lands later, but nothing waits for it
    ready = np.zeros(len(b.copy_rank))
    np.maximum.at(ready, b.wgrad_copy, ends[b.wgrad_action])
    return Replayed(float(ends.max()) if len(ends) else 0.0, rank_end, ready, start, length, share, begin,
                    _transfer_hops(b, p2p))  # fmt: skip


# Which way replays many candidates faster (the results are the same): the loop costs about LOOP_US per action
# or transfer and candidate, the rounds about ROUND_US per round and EACH_US per candidate (measured, 2-core VM).
LOOP_US, ROUND_US, EACH_US = 0.3, 25.0, 30.0


class Rounds(NamedTuple):
    """A built schedule's replay as rounds of independent work (``rounds``), for replaying it on many
    candidates' costs at once (``replayed_many``): the actions and transfers of each round need only
    values of earlier rounds."""

    actions: list  # per round: the actions that start in it (numpy indices)
    transfers: list  # per round: the transfers that leave in it
    prev: np.ndarray  # per action: its rank's previous action (n: none, a row of zeros)
    sender: np.ndarray  # per transfer: its action
    prev_on_link: np.ndarray  # per transfer: the transfer before it on its link (len: none, a row of zeros)
    incoming: np.ndarray  # per action, padded: the transfers it waits for (len: none)


@lru_cache(maxsize=None)
def rounds(name: str, stages: int, microbatches: int, virtual: int | None, blocking: bool) -> Rounds | None:
    """The replay's dependencies as rounds: the replay core run once with every action and transfer one
    unit long, so that each one's unit start is the longest chain of actions and transfers before it;
    an action or transfer whose unit start is r needs only ends and landings of earlier rounds (its
    rank's previous action, the transfers it reads, with blocking sends the ones its rank's previous
    action sent; a transfer its action and its link's previous transfer).  None where some rank cannot
    finish (replayed, one candidate at a time, says the same as ever).  Cached like ``built``."""
    b = built(name, stages, microbatches, virtual)
    n = int(b.index.flat.rank_bounds[-1])
    cursor, starts, begin, _ = replay.replay(b.schedule, b.index, [1.0] * n, 1.0, blocking, b.transfers)
    if any(c != len(actions) for c, actions in zip(cursor, b.schedule.ranks)):
        return None
    p = b.transfers
    flat = b.index.flat
    sender = flat.action[p.transfers[3]]  # per transfer: the action whose op sent it
    link = np.asarray(p.link, dtype=np.int64)
    nx = len(link)
    prev_on_link = np.full(nx, nx, dtype=np.int64)
    order = np.lexsort((np.arange(nx), link))  # by link, in sending order
    same = link[order][1:] == link[order][:-1]
    prev_on_link[order[1:][same]] = order[:-1][same]
    rank_first = np.repeat(b.rank_first, np.diff(flat.rank_bounds))  # per action: its rank's first action
    prev = np.where(np.arange(n) > rank_first, np.arange(n) - 1, n)
    # what each action waits for: the transfers it reads, and with blocking sends its rank's previous action's
    reader = np.asarray(p.consumer, dtype=np.int64)
    edges = [(reader, np.arange(nx))]
    if blocking:
        after = sender + 1
        edges.append((np.where((after < n) & (prev[np.minimum(after, n - 1)] == sender), after, n), np.arange(nx)))
    to, x = (np.concatenate(c) for c in zip(*edges))
    keep = to < n
    to, x = to[keep], x[keep]
    order = np.lexsort((x, to))
    to, x = to[order], x[order]
    count = np.bincount(to, minlength=n)
    width = int(count.max(initial=0))
    incoming = np.full((n, max(width, 1)), nx, dtype=np.int64)
    slot = np.arange(len(to)) - np.repeat(np.cumsum(count) - count, count)
    incoming[to, slot] = x
    a_round = np.frombuffer(starts, dtype=float).astype(np.int64)
    x_round = np.frombuffer(begin, dtype=float).astype(np.int64) if len(begin) else np.zeros(0, dtype=np.int64)
    last = int(max(a_round.max(initial=0), x_round.max(initial=0))) + 1
    by_round = lambda r: np.split(np.argsort(r, kind="stable"), np.searchsorted(np.sort(r), np.arange(1, last)))  # noqa: E731
    return Rounds(by_round(a_round), by_round(x_round), prev, sender, prev_on_link, incoming)


def replayed_many(name: str, stages: int, microbatches: int, virtual: int | None, costs: list[StageCosts],
                  p2p: list[Hops], blocking: bool) -> list[Replayed]:  # fmt: skip
    """``replayed`` of the schedule built at ``microbatches`` for each (costs, p2p), all at once: the rounds
    (``rounds``) evaluated with numpy over the candidates, each value the same max or sum of the same floats
    as in the replay core's loop (a max is exact in any order), so each Replayed is ``replayed``'s to the bit."""
    b = built(name, stages, microbatches, virtual)
    r = rounds(name, stages, microbatches, virtual, blocking) if len(costs) > 1 else None
    if r is None or len(costs) * (len(r.prev) + len(r.sender)) * LOOP_US < len(r.actions) * ROUND_US + len(costs) * EACH_US:
        return [replayed(b, c, x, blocking) for c, x in zip(costs, p2p)]
    k = len(costs)
    n, nx = len(r.prev), len(r.sender)
    length, share = (np.stack(c, axis=1) for c in zip(*(_lengths(b, c) for c in costs)))
    end = np.zeros((n + 1, k))  # per action (a spare row of zeros): its end
    start = np.zeros((n, k))
    land = np.zeros((nx + 1, k))  # per transfer (a spare row of zeros): its landing
    go = np.zeros((nx, k))
    each = [_transfer_hops(b, x) for x in p2p]
    hop = np.stack([np.broadcast_to(np.asarray(h, dtype=float), (nx,)) for h in each], axis=1)  # per transfer
    for acts, xs in zip(r.actions, r.transfers):
        if len(acts):
            s = np.maximum(end[r.prev[acts]], land[r.incoming[acts]].max(axis=1))
            start[acts] = s
            end[acts] = s + length[acts]
        if len(xs):
            g = np.maximum(end[r.sender[xs]], land[r.prev_on_link[xs]])
            go[xs] = g
            land[xs] = g + hop[xs]
    out = []
    for j in range(k):
        st, ln, ends = np.ascontiguousarray(start[:, j]), np.ascontiguousarray(length[:, j]), np.ascontiguousarray(end[:n, j])
        rank_end = np.maximum.reduceat(ends, b.rank_first) if n else np.zeros(len(b.rank_first))
        ready = np.zeros(len(b.copy_rank))
        np.maximum.at(ready, b.wgrad_copy, ends[b.wgrad_action])
        begin = np.ascontiguousarray(go[:, j]) if hop[:, j].max(initial=0.0) > 0 else np.empty(0)
        out.append(Replayed(float(ends.max()) if n else 0.0, rank_end, ready, st, ln, np.ascontiguousarray(share[:, j]),
                            begin, each[j]))
    return out


def counts(name: str, stages: int, microbatches: int, virtual: int | None, ranks: int,
           light: int = 0) -> tuple[int, ...]:  # fmt: skip
    """The micro-batch counts to replay: M itself when it is at most 4 x ranks (+ ``light``), else two counts one
    period (``ranks`` micro-batches: an interleaved schedule's group) apart, the first at least
    2 x ranks (past the fill) + ``light``, that leave M a whole number of periods past them and that the family
    accepts (its check), from which the makespan is extrapolated; M alone when there are none.  ``light``: the
    micro-batches whose backward is lighter (StageCosts.deferred, the first ones): both counts replay them all
    and as many steady periods past them, so that the two replays differ by one period of full ones."""
    if microbatches <= 4 * ranks + light:
        return (microbatches,)
    family, options = registry.get(name), _options(virtual)
    fill = 2 * ranks + light
    first = fill + (microbatches - fill) % ranks  # in [fill, fill + ranks), congruent to M
    for m1 in range(first, microbatches - ranks, ranks):
        m2 = m1 + ranks
        if family.check(stages, m1, **options) is None and family.check(stages, m2, **options) is None:
            return (m1, m2)
    return (microbatches,)


def pipeline(name: str, stages: int, microbatches: int, virtual: int | None, ranks: int, costs: StageCosts,
             p2p: Hops, blocking: bool) -> tuple[float, Replayed, int]:  # fmt: skip
    """The makespan at ``microbatches`` (ms), the replay its tail is read from (the last one) and
    that replay's micro-batch count."""
    return pipelines(name, stages, microbatches, virtual, ranks, [costs], [p2p], blocking)[0]


def pipelines(name: str, stages: int, microbatches: int, virtual: int | None, ranks: int, costs: list[StageCosts],
              p2p: list[Hops], blocking: bool) -> list[tuple[float, Replayed, int]]:  # fmt: skip
    """``pipeline`` of each (costs, p2p) on one schedule shape, the replays at each count all at once
    (``replayed_many``).  The line is drawn once the transient is over: the makespan grows over the pair's period by
    as much as over the period before it, and by no less than each rank's work (``settled``); until then the
    candidates are replayed again a period further on, until M (then replayed as is)."""
    light = max((c.deferred[1] for c in costs if c.deferred is not None), default=0)
    ms = counts(name, stages, microbatches, virtual, ranks, light)
    if len(ms) == 1:
        return [(r.makespan, r, microbatches) for r in replayed_many(name, stages, microbatches, virtual, costs, p2p,
                                                                      blocking)]  # fmt: skip
    out: list = [None] * len(costs)
    todo, (m1, m2) = list(range(len(costs))), ms
    shorter = replayed_many(name, stages, m1, virtual, costs, p2p, blocking)
    grew: list = [None] * len(costs)
    while todo:
        if m2 >= microbatches or registry.get(name).check(stages, m2, **_options(virtual)) is not None:
            for i, r in zip(todo, replayed_many(name, stages, microbatches, virtual, [costs[i] for i in todo],
                                                [p2p[i] for i in todo], blocking)):  # fmt: skip
                out[i] = (r.makespan, r, microbatches)
            break
        longer = replayed_many(name, stages, m2, virtual, [costs[i] for i in todo], [p2p[i] for i in todo], blocking)
        k = (microbatches - m2) / (m2 - m1)
        left = []
        for i, r1, r2, g in zip(todo, shorter, longer, grew):
            b1, b2 = built(name, stages, m1, virtual), built(name, stages, m2, virtual)
            growth = r2.makespan - r1.makespan
            if settled((b1, r1), (b2, r2)) and g is not None and abs(growth - g) <= 1e-9 * growth:
                out[i] = (r2.makespan + k * growth, replace(r2, period=Period(b1, r1, k)), m2)
            else:
                left.append((i, r2, growth))
        todo, shorter, grew = [x[0] for x in left], [x[1] for x in left], [x[2] for x in left]
        m1, m2 = m2, m2 + ranks
    return out


def _options(virtual: int | None) -> dict:
    return {VIRTUAL_OPTION: virtual} if virtual else {}


def settled(shorter: tuple[Built, Replayed], longer: tuple[Built, Replayed]) -> bool:
    """Whether the makespan's growth from ``shorter`` to ``longer`` (replays one period apart, each with its build)
    can be the steady one: at least each rank's compute over the period (a rank runs its ops one after another, so
    in the steady state its makespan grows by no less a period).  Less: the transient is not over (ZB-V on uneven
    stages: its busiest rank waits on the others' fill for several periods), and the line would be short."""
    grows = (_busy(*longer) - _busy(*shorter)).max(initial=0.0)
    return longer[1].makespan - shorter[1].makespan >= float(grows) * (1 - 1e-9)


def _busy(b: Built, run: Replayed) -> np.ndarray:
    """Each rank's compute in ``run`` (ms): the lengths of its actions."""
    per_rank = np.diff(np.append(b.rank_first, len(run.length)))
    return np.bincount(np.repeat(np.arange(len(per_rank)), per_rank), weights=run.length, minlength=len(per_rank))


def trace_of(b: Built, run: Replayed, since: float = -np.inf) -> Trace:
    """The replay as a trace, for step.py: a compute row per op (a lone op its action; a pair's forward
    the first ``share`` of the pair, its backward the rest: the [chunk] model interleaves the two,
    which only moves where the pair's weight gradients end inside it) and a P2P row per transfer;
    only the actions and transfers that end at ``since`` or later."""
    flat = b.index.flat
    n_ranks = len(b.rank_first)
    keep = (run.starts + run.length >= since)[flat.action]
    flat_action, flat_member = flat.action[keep], flat.member[keep]
    rank = np.repeat(np.arange(n_ranks), np.diff(flat.rank_bounds))[flat_action]
    start, length, share = run.starts[flat_action], run.length[flat_action], run.share[flat_action]
    second = flat_member == 1
    rows = np.empty(len(flat_action), dtype=COMPUTE_DTYPE)
    rows["rank"], rows["kind"], rows["microbatch"] = rank, flat.kind[keep], flat.microbatch[keep]
    rows["stage"], rows["direction"] = flat.stage[keep], flat.direction[keep]
    rows["start"] = np.where(second, start + length * share, start)
    rows["end"] = np.where(second, start + length, start + length * share)
    rows["action"] = flat_action - b.rank_first[rank]
    rows["overlapped"] = ~b.lone[flat_action]
    rows["part"] = -1
    # without P2P time the replay times no transfer (each lands as its action ends): no rows
    comm = replay.transfer_rows(b.schedule, b.index, b.transfers.transfers, run.begin, run.p2p) if len(run.begin) \
        else np.empty(0, dtype=COMM_DTYPE)
    comm = comm[comm["end"] >= since]
    s = b.schedule
    return Trace(s.name, s.stages, s.microbatches, n_ranks, rows, comm, np.empty(0, dtype=MEMORY_DTYPE),
                 b.index.stages_on_rank, [0.0] * n_ranks)  # fmt: skip


def step_end_ms(b: Built, run: Replayed, step) -> float:
    """What the step's end adds after the pipeline's makespan (ms): step.py's rows (step_rows), their last
    end past the makespan.  ``step``: the scenario's StepCosts (None: nothing)."""
    if step is None or not step.active():
        return 0.0
    trace, ahead, carry = _step_input(b, run, step)
    ends = [x[5] for x in rows_of(trace, step, ahead, carry)]  # step_rows' ends (StepRow.end), neither sorted nor an array
    return max(0.0, float(np.max(ends)) - run.makespan) if ends else 0.0


def step_rows(b: Built, run: Replayed, step) -> np.ndarray:
    """step.py's end-of-step rows (simulate_step) on what step.py reads of the replay (_step_input)."""
    trace, ahead, carry = _step_input(b, run, step)
    return simulate_step(trace, step, ahead, carry)


def every_backward(step) -> bool:
    """Whether ``step`` has ZeRO 2's reduce-scatters after every backward (engine/step.py _earlier_jobs), which load
    the rank's channel from its first backward on: then step.py reads the whole replay, not its tail."""
    return bool(step.every_backward)


def _step_input(b: Built, run: Replayed, step) -> tuple[Trace, object, object]:
    """The trace step.py lays the step's end out on, and per rank the stretch and the channel's backlog the replay
    leaves out (rows_of's ``ahead`` and ``carry``).  Without ZeRO 2's every-backward collectives, the replay's tail
    (``tail``) and neither.  With them, every earlier backward releases collectives onto the rank's channel (which
    slow the compute beside them), from the first backward on: the whole replay; and where the makespan is
    extrapolated (``run.period``), each rank's stretch at its pipeline's end (by_end) grows by the same amount each
    period past the replay (a steady state repeats its period's ops, their releases and so the channel's spans,
    shifted by the makespan's step), and so does its channel's backlog then (a channel that keeps up with a period's
    releases holds the same backlog each period, one that does not holds their excess more), so the periods M adds
    are each one's difference from the replay one period shorter, times their count, as the makespan's line extends;
    a backlog that shrinks from one replay to the next (not yet steady) is kept as the longer one's."""
    if not every_backward(step):
        return tail(b, run), None, None
    whole = trace_of(b, run)
    p = run.period
    if p is None or p.periods == 0:
        return whole, None, None
    slowed, backlog = by_end(trace_of(p.built, p.run), step)
    slows = any(f != 1.0 for f in step.dp_comm_slowdown)
    ahead = (lambda longer: [p.periods * (a - c) for a, c in zip(longer, slowed)]) if slows else None  # whole's
    return whole, ahead, lambda longer: [p.periods * max(0.0, a - c) for a, c in zip(longer, backlog)]


def tail(b: Built, run: Replayed) -> Trace:
    """The replay's trace (trace_of) as step.py reads it without ZeRO 2's every-backward collectives (_step_input).
    No sync starts before the earliest start of a copy's last weight-gradient op (a bucket is released within it at
    the earliest), and nothing that ends before then moves a sync, a stretch, a launch or a rank's end: the trace is
    cut there, and step.py's rows are the whole trace's (tests/test_plan_step_end.py)."""
    last = b.last_wgrad[b.last_wgrad >= 0]
    since = float(run.starts[last].min()) if len(last) else -np.inf
    return trace_of(b, run, since)
