"""Fast path: the SimPy engine's trace in one linear pass, without an event queue.

An action's inside depends only on the cost model (engine.py): its inputs are
all on the rank before it starts and its outputs leave when it ends, so its
length and intervals are ``CostModel.timeline(action)`` (stretched by
variability's factor), asked once per kind of action, exactly as the SimPy
engine asks.  Between actions a simulation with async P2P is a max-plus
recurrence over the op dependency graph (rules.RULES):

* an action starts at the latest of: the end of the rank's previous action and
  the time each key it needs is on the rank;
* a result crossing ranks goes through its directed link, which carries one
  transfer at a time in request order.  Only the sending rank puts transfers
  on a link, and it finishes its actions in order (an FB pair publishes its
  forward's results, then its backward's, at the same instant, as the engine
  does), so a transfer starts at max(its op's end, the link's previous
  transfer end).

Ranks are walked with per-rank cursors in a topological order (a rank runs
until a key is missing and is woken by the op that produces it); each op is
visited once: linear in the number of ops.  The floats are computed with the
same operations as the SimPy engine (``start + length``, ``start + p2p``), so
the trace is identical row for row; tests/test_fastpath.py checks that over
random schedules, shapes, simple and component costs, and variability.

The pass also proves the schedule complete (each micro-batch runs one of
rules.WORK on every stage, each op once) and able to finish, so nothing else
need replay it first.  When it finds a problem it hands the schedule to
validate.py, which raises the same one-line error as everywhere else.

When it applies (:func:`applies`): ``comm.p2p_mode = "async"`` (blocking sends
make a rank wait on its own transfers: the SimPy engine).
"""

from __future__ import annotations

from ..inputs.costs import CostModel, signature
from ..schedules.ir import FB, DeadlockError, Schedule, ScheduleError
from ..schedules.rules import KEPT, KINDS, RULES, SENT, WORK, Channel, Data, pair_problem
from .trace import CommRow, Trace, TraceBuilder
from .validate import check_complete, validate

ND = len(Data)  # a key (data, m, s, d) is the integer ND * b + data, with b = (2 m + d) S + s


def applies(costs: CostModel) -> bool:
    """True when the fast path gives the SimPy engine's trace for ``costs``."""
    return costs.p2p_mode == "async"


def _refuse(schedule: Schedule) -> None:
    """The pass found the schedule malformed or stuck: raise validate()'s words."""
    validate(schedule)  # raises for every schedule the pass refuses
    raise DeadlockError("simulation cannot finish")  # not reached unless the pass and validate() disagree


def simulate(schedule: Schedule, costs: CostModel) -> Trace:
    """Same contract and same trace as engine.simulate (after validate), for costs where applies() holds."""
    if not applies(costs):
        raise ValueError("fastpath.simulate needs comm.p2p_mode = async")
    if len(costs.forward) < schedule.stages:
        raise ScheduleError(
            f"cost model has {len(costs.forward)} per-stage values but the schedule has {schedule.stages} stages"
        )
    S, n = schedule.stages, schedule.num_ranks
    M = schedule.microbatches
    if S < 1 or M < 1 or 2 * sum(len(actions) for actions in schedule.ranks) < M:
        check_complete(schedule)  # raises (and before anything is sized by M)
    size = 2 * M * S  # ops b = (2 m + d) S + s
    at = {k: [-1] * size for k in KINDS}  # action index of each op, per kind (-1: not in the schedule)
    rank_of = [-1] * (2 * S)  # [d S + s]: the rank holding stage s of direction d (Schedule.placement)
    direction_of = [-1] * M
    held: list[set[int]] = [set() for _ in range(n)]
    ops = 0
    for rank, actions in enumerate(schedule.ranks):
        for idx, action in enumerate(actions):
            pair = isinstance(action, FB)
            if pair and pair_problem(*action):
                _refuse(schedule)
            for kind, m, s, d in action if pair else (action,):
                ops += 1
                table = at.get(kind)
                if table is None or not (0 <= m < M and 0 <= s < S and d in (0, 1)):
                    _refuse(schedule)
                b = (2 * m + d) * S + s
                if rank_of[d * S + s] not in (-1, rank) or direction_of[m] not in (-1, d) or table[b] >= 0:
                    _refuse(schedule)
                rank_of[d * S + s], direction_of[m], table[b] = rank, d, idx
                held[rank].add(s)
    if -1 in direction_of or ops != _ops_needed(at, direction_of, S):
        _refuse(schedule)

    p2p = costs.p2p
    scale = costs.variability.bind(schedule, costs) if getattr(costs, "variability", None) is not None else None
    rec = TraceBuilder()
    comm = rec.comm
    # Availability of key (data, m, s, d) in `avail` at 2 (ND b + data) + 1 on the producing
    # rank (local) and at 2 (ND b + data) on the consuming rank, b = (2 m + d) S + s.
    # Per kind, read once from rules.RULES: (stage offset, index offset) of each need; the
    # index offsets of what it keeps locally; (index offset, data, stage step, where the
    # consumer kinds sit) of what it sends.
    wants = {k: tuple((nd.offset, 2 * (ND * nd.offset + nd.data) + (nd.offset == 0)) for nd in r.needs)
             for k, r in RULES.items()}  # fmt: skip
    kept = {k: tuple(2 * data + 1 for data in r.produces if data in KEPT) for k, r in RULES.items()}
    sent = {k: tuple((2 * data, data, SENT[data][1], tuple(at[c] for c in SENT[data][0]))
                     for data in r.produces if SENT[data][0]) for k, r in RULES.items()}  # fmt: skip
    avail: list[float | None] = [None] * (2 * ND * size)
    waiting: dict[int, list[int]] = {}  # avail index -> ranks blocked on it
    link_free: dict[int, float] = {}  # src * n + dst -> when the link is free
    P2P = Channel.P2P
    ready = list(range(n))

    timelines: dict[tuple, tuple[int, float]] = {}  # signature -> (trace index, length) of costs.timeline, as in the engine
    cursor, clock = [0] * n, [0.0] * n
    while ready:
        rank = ready.pop()
        actions, idx, t = schedule.ranks[rank], cursor[rank], clock[rank]
        while idx < len(actions):
            action = actions[idx]
            pair = isinstance(action, FB)
            members = action if pair else (action,)
            start = t
            blocked = -1
            for kind, m, s, d in members:
                base = 2 * ND * ((2 * m + d) * S + s)
                for offset, koff in wants[kind]:
                    if 0 <= s + offset < S:
                        at_ = avail[base + koff]
                        if at_ is None:
                            blocked = base + koff
                            break
                        if at_ > start:
                            start = at_
                if blocked >= 0:
                    break
            if blocked >= 0:
                waiting.setdefault(blocked, []).append(rank)
                break  # woken when the key is published
            sig = signature(action)
            found = timelines.get(sig)
            if found is None:
                timeline = costs.timeline(action)
                found = timelines[sig] = (rec.timeline(timeline), timeline.length)
            factor = 1.0 if scale is None else scale.factor(rank, idx)
            t = start + found[1] * factor
            rec.action(rank, idx, start, found[0], factor, members)
            # Publish each member's results: locally, then towards their consumers (the engine's order).
            for kind, m, s, d in members:
                bm = (2 * m + d) * S
                base = 2 * ND * (bm + s)
                for koff in kept[kind]:
                    avail[base + koff] = t
                    if waiting:
                        woken = waiting.pop(base + koff, None)
                        if woken:
                            ready.extend(woken)
                for koff, data, step, tables in sent[kind]:
                    s2 = s + step
                    if not 0 <= s2 < S:
                        continue
                    dst = rank_of[d * S + s2]
                    if dst == rank or p2p <= 0:
                        arrive = t
                    else:  # one transfer at a time on a link, in the sender's order
                        link = rank * n + dst
                        begin = link_free.get(link, t)
                        if begin < t:
                            begin = t
                        arrive = link_free[link] = begin + p2p
                        consumer = -1  # the B, else the I
                        for table in tables:
                            if table[bm + s2] >= 0:
                                consumer = table[bm + s2]
                                break
                        comm.append(CommRow(P2P, rank, dst, data, m, s, d, begin, arrive, consumer, -1))
                    avail[base + koff] = arrive
                    if waiting:
                        woken = waiting.pop(base + koff, None)
                        if woken:
                            ready.extend(woken)
            idx += 1
        cursor[rank], clock[rank] = idx, t
    if any(cursor[r] < len(schedule.ranks[r]) for r in range(n)):
        _refuse(schedule)  # stuck: validate() names the stuck actions

    # The pass already saw every op's stage: no second scan of the schedule.
    return Trace.of_run(schedule, costs, rec, stages_on_rank=[sorted(h) for h in held])


def _ops_needed(at: dict, direction_of: list[int], S: int) -> int:
    """How many ops a complete schedule with these ops holds; -1 if some (micro-batch, stage)
    runs a set of kinds that is not one of rules.WORK (a missing or conflicting op)."""
    import numpy as np

    sizes = np.full(1 << len(KINDS), -1, dtype=np.int64)  # bit mask of kinds -> ops, -1 not allowed
    for work in WORK:
        sizes[sum(1 << KINDS.index(k) for k in work)] = len(work)
    m = np.arange(len(direction_of))
    b = ((2 * m + np.asarray(direction_of))[:, None] * S + np.arange(S)[None, :]).ravel()
    mask = np.zeros(len(b), dtype=np.int64)
    for bit, kind in enumerate(KINDS):
        mask |= (np.asarray(at[kind])[b] >= 0).astype(np.int64) << bit
    got = sizes[mask]
    return -1 if (got < 0).any() else int(got.sum())
