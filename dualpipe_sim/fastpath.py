"""Fast path: the SimPy engine's trace in one linear pass, for simple costs.

With the simple cost model every action has a fixed length, so a simulation is
a max-plus recurrence over the op dependency graph and needs no event queue:

* an action starts at the latest of: the end of the rank's previous action and
  the time each input is available on the rank (the engine's ``_needs``);
* a result crossing ranks goes through its directed link, which carries one
  transfer at a time in request order.  Only the sending rank puts transfers
  on a link, and it finishes its ops in its own order (an FB pair publishes its
  forward, then its backward, at the same instant, as the engine does), so a
  transfer starts at max(its op's end, the link's previous transfer end).

Ranks are walked with per-rank cursors in a topological order (a rank runs
until an input is missing and is woken by the op that produces it), each op
is visited once: linear in the number of ops.  The floats are computed with
the same operations as the SimPy engine (``start + duration``, ``start +
p2p``), so the trace is identical row for row; tests/test_fastpath.py checks
that over random schedules, shapes and costs.

When it applies (:func:`applies`): the simple cost model (no component
``chunk``) and ``comm.p2p_mode = "async"``.  simulation.run uses it then and the
SimPy engine otherwise.  A schedule that cannot finish is handed to the SimPy
engine, which reports where it is stuck (DeadlockError), so errors are the same.
"""

from __future__ import annotations

from .costs import CostModel
from .ir import FB, Op, Schedule, ScheduleError
from .trace import KIND_CODES, P2P, Trace, TraceBuilder


ACT, GRAD, FWD, IDONE = 0, 1, 2, 3  # ACT and GRAD double as the trace's comm kind (0 / 1)


def _engine(schedule: Schedule, costs: CostModel) -> Trace:
    from .engine import Engine  # imported late: the engine is only needed off the fast path

    return Engine(schedule, costs).run()


def applies(costs: CostModel) -> bool:
    """True when the fast path gives the SimPy engine's trace for ``costs``."""
    if getattr(costs, "variability", None) is not None:  # per-action lengths (variability.py): the engine
        return False
    return costs.chunk is None and costs.p2p_mode == "async"


def simulate(schedule: Schedule, costs: CostModel) -> Trace:
    """Same contract and same trace as engine.simulate, for costs where applies() holds."""
    if not applies(costs):
        raise ValueError("fastpath.simulate needs the simple cost model with async P2P")
    if len(costs.forward) < schedule.stages:
        raise ScheduleError(
            f"cost model has {len(costs.forward)} per-stage values but the schedule has {schedule.stages} stages"
        )
    S, n = schedule.stages, schedule.num_ranks
    last, M = S - 1, schedule.microbatches
    # Ops are numbered b = (2 m + d) S + s; the tables below are flat lists on b.
    f_at, b_at, i_at = [-1] * (2 * M * S), [-1] * (2 * M * S), [-1] * (2 * M * S)  # action index of F / B / I
    rank_of = [-1] * (2 * S)  # [d S + s]: the rank holding stage s of direction d (Schedule.placement)
    held: list[set[int]] = [set() for _ in range(n)]
    for rank, actions in enumerate(schedule.ranks):
        for idx, action in enumerate(actions):
            for kind, m, s, d in action if isinstance(action, FB) else (action,):
                if not (0 <= m < M and 0 <= s < S and d in (0, 1)) or rank_of[d * S + s] not in (-1, rank):
                    return _engine(schedule, costs)  # malformed: the engine raises its own error
                rank_of[d * S + s] = rank
                held[rank].add(s)
                table = f_at if kind == "F" else b_at if kind == "B" else i_at if kind == "I" else None
                if table is not None:
                    table[(2 * m + d) * S + s] = idx
    p2p = costs.p2p
    forward, backward, weight, act_bytes = costs.forward, costs.backward, costs.weight, costs.activation_bytes
    rec = TraceBuilder()
    compute, comm, memory = rec.compute, rec.comm, rec.memory

    # When each result is available on the rank that consumes it, at key 4 b + tag
    # (the engine's events): ACT / GRAD = activation / gradient out of op b has
    # arrived; FWD = forward b done (its B/I may run); IDONE = I b done.
    avail: list[float | None] = [None] * (8 * M * S)
    waiting: dict[int, list[int]] = {}  # key -> ranks blocked on it
    link_free: dict[tuple[int, int], float] = {}
    ready = list(range(n))

    def publish(key: int, t: float) -> None:
        avail[key] = t
        if waiting:
            woken = waiting.pop(key, None)
            if woken:
                ready.extend(woken)

    def send(tag: int, b: int, m: int, s: int, d: int, src: int, dst: int, action: int, t: float) -> None:
        if dst == src or dst < 0 or p2p <= 0:
            publish(4 * b + tag, t)
            return
        start = link_free.get((src, dst), t)  # one transfer at a time, in the sender's order
        if start < t:
            start = t
        end = start + p2p
        link_free[(src, dst)] = end
        comm.append((P2P, src, dst, tag, m, s, d, start, end, action, -1))
        publish(4 * b + tag, end)

    def finish(op: Op, rank: int, t: float) -> None:
        kind, m, s, d = op
        b = (2 * m + d) * S + s
        if kind == "F":
            publish(4 * b + FWD, t)
            if s < last:
                send(ACT, b, m, s, d, rank, rank_of[d * S + s + 1], f_at[b + 1], t)
        elif kind != "W":
            if kind == "I":
                publish(4 * b + IDONE, t)
            if s > 0:  # the engine's consumer: the B at s-1, else its I
                action = b_at[b - 1] if b_at[b - 1] >= 0 else i_at[b - 1]
                send(GRAD, b, m, s, d, rank, rank_of[d * S + s - 1], action, t)

    def needs(op: Op) -> tuple[int, ...]:
        kind, m, s, d = op
        b = (2 * m + d) * S + s
        if kind == "F":
            return (4 * (b - 1) + ACT,) if s > 0 else ()
        if kind == "W":
            return (4 * b + IDONE,)
        return (4 * b + FWD, 4 * (b + 1) + GRAD) if s < last else (4 * b + FWD,)

    pair_timing: dict[tuple, tuple[float, float]] = {}  # (F stage, B kind, B stage) -> (length, split)
    cursor, clock = [0] * n, [0.0] * n
    while ready:
        rank = ready.pop()
        actions, idx, t = schedule.ranks[rank], cursor[rank], clock[rank]
        while idx < len(actions):
            action = actions[idx]
            pair = isinstance(action, FB)
            start = t
            for key in needs(action.forward) + needs(action.backward) if pair else needs(action):
                at = avail[key]
                if at is None:
                    waiting.setdefault(key, []).append(rank)
                    break
                if at > start:
                    start = at
            else:
                if pair:
                    fwd, bwd = action
                    memory.append((start, rank, 1, act_bytes[fwd.stage]))
                    shape = (fwd.stage, bwd.kind, bwd.stage)
                    timing = pair_timing.get(shape)
                    if timing is None:  # the engine's timeline: forward half (0, split), backward (split, total)
                        total, rows = costs.timeline(action)
                        timing = pair_timing[shape] = (total, rows[0][4])
                    split, t = start + timing[1], start + timing[0]
                    compute.append((rank, 0, fwd.microbatch, fwd.stage, fwd.direction, start, split, idx, True, -1))
                    compute.append(
                        (rank, KIND_CODES[bwd.kind], bwd.microbatch, bwd.stage, bwd.direction, split, t, idx, True, -1)
                    )
                    memory.append((t, rank, -1, -act_bytes[bwd.stage]))
                    finish(fwd, rank, t)
                    finish(bwd, rank, t)
                else:
                    kind, m, s, d = action
                    if kind == "F":
                        memory.append((start, rank, 1, act_bytes[s]))
                        t = start + forward[s]
                    elif kind == "B":
                        t = start + backward[s]
                    elif kind == "I":
                        t = start + (backward[s] - weight[s])
                    else:
                        t = start + weight[s]
                    compute.append((rank, KIND_CODES[kind], m, s, d, start, t, idx, False, -1))
                    if kind == "B" or kind == "I":
                        memory.append((t, rank, -1, -act_bytes[s]))
                    finish(action, rank, t)
                idx += 1
                continue
            break  # blocked: woken by publish()
        cursor[rank], clock[rank] = idx, t
    if any(cursor[r] < len(schedule.ranks[r]) for r in range(n)):
        return _engine(schedule, costs)  # stuck: the engine names the stuck actions (DeadlockError)

    # The pass already saw every op's stage: no second scan of the schedule.
    return Trace.of_run(schedule, costs, rec, stages_on_rank=[sorted(h) for h in held])
