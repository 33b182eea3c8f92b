"""The SimPy engine: replays a schedule on a cost model and records a trace.

Each rank is a SimPy process that walks its action list in order on its
compute channel.  An action starts once everything it consumes is on the rank:

* a forward needs the previous stage's activation;
* a backward (B or I) needs its own stage's forward and the next stage's
  gradient;
* a W needs its I.

When an op finishes, its result is delivered to the rank that consumes it: at
once on the same rank, otherwise through the directed P2P link between the two
ranks.  A link carries one transfer at a time (transfers queue FIFO) and runs
beside compute, so a send costs the sender nothing and the receiver only waits
if the data is late.

What an action costs comes from ``CostModel.timeline``: one row for a plain
op, a forward and a backward half for an FB pair, or, with the component
model, one row per component on the rank's compute or all-to-all channel.  An
action's inside depends only on the cost model (its inputs are all on the rank
before it starts, its outputs leave after it ends), so its timeline is worked
out once per kind of action and the engine only advances the clock by its
length: one SimPy timeout per action, whatever the number of components.

``comm.p2p_mode = "blocking"`` is the reference runtime's behaviour: before
each compute call a rank issues the sends queued by its previous call together
with the receives this call needs, and waits for all of them.  A send still
starts as soon as it is issued (receives are not modelled as a rendezvous), so
the only change from "async" is that the sender waits for its own sends.

A schedule that cannot finish leaves SimPy with no events; the engine then
reports which action each unfinished rank is stuck at and what it waits for.
It cannot hang: SimPy stops when the event queue is empty, and ``run`` stops
anyway after ``limits.max_events`` steps (naming where each rank was).
"""

from __future__ import annotations

from collections import deque

import simpy

from . import limits
from .costs import CostModel
from .ir import FB, Op, Schedule, ScheduleError, ops_of
from .trace import A2A, KIND_CODES, P2P, Trace, TraceBuilder
from .validate import describe_wait


class DeadlockError(ScheduleError):
    """The simulation stopped with actions left on some ranks."""


class Engine:
    def __init__(self, schedule: Schedule, costs: CostModel) -> None:
        self.schedule = schedule
        self.costs = costs
        self.env = simpy.Environment()
        self.placement = schedule.placement()
        self.last_stage = schedule.stages - 1
        self.rec = TraceBuilder()
        self.links: dict[tuple[int, int], deque] = {}  # (src, dst) -> transfers queued on that link
        # Data availability, keyed by (what, microbatch, stage, direction):
        # "F" = activation out of a forward, "G" = gradient out of a B/I,
        # "I" = an I is done (its W may run).  `local` fires on the producing
        # rank, `remote` on the consuming rank once the transfer has landed.
        self.local: dict[tuple, simpy.Event] = {}
        self.remote: dict[tuple, simpy.Event] = {}
        # Where each op sits, so a transfer knows which action it feeds.
        self.position: dict[Op, tuple[int, int]] = {}
        for rank, actions in enumerate(schedule.ranks):
            for idx, action in enumerate(actions):
                for op in ops_of(action):
                    self.position[op] = (rank, idx)
        self.cursor = [0] * schedule.num_ranks
        self.blocking = costs.p2p_mode == "blocking"
        self.outbox: list[list[simpy.Event]] = [[] for _ in schedule.ranks]  # blocking: sends to wait for
        self.timelines: dict[tuple, tuple] = {}  # action signature -> costs.timeline(action)
        vary = getattr(costs, "variability", None)  # jitter and slow ranks: variability.py
        self.scale = vary.bind(schedule, costs) if vary is not None else None

    # -- events ---------------------------------------------------------------
    def _event(self, table: dict, key: tuple) -> simpy.Event:
        ev = table.get(key)
        if ev is None:
            ev = table[key] = self.env.event()
        return ev

    def _needs(self, op: Op) -> list[simpy.Event]:
        m, s, d = op.microbatch, op.stage, op.direction
        if op.kind == "F":
            return [self._event(self.remote, ("F", m, s - 1, d))] if s > 0 else []
        if op.kind == "W":
            return [self._event(self.local, ("I", m, s, d))]
        needs = [self._event(self.local, ("F", m, s, d))]
        if s < self.last_stage:
            needs.append(self._event(self.remote, ("G", m, s + 1, d)))
        return needs

    def _finish(self, op: Op, rank: int) -> None:
        """Publish an op's results: locally, and towards the rank that consumes them."""
        m, s, d = op.microbatch, op.stage, op.direction
        if op.kind == "W":
            return
        if op.kind == "F":
            self._event(self.local, ("F", m, s, d)).succeed()
            if s < self.last_stage:
                self._deliver(("F", m, s, d), rank, Op("F", m, s + 1, d))
            return
        if op.kind == "I":
            self._event(self.local, ("I", m, s, d)).succeed()
        if s > 0:
            consumer = Op("B", m, s - 1, d)
            if consumer not in self.position:
                consumer = Op("I", m, s - 1, d)
            self._deliver(("G", m, s, d), rank, consumer)

    def _deliver(self, key: tuple, src: int, consumer: Op) -> None:
        dst = self.placement.get((key[3], consumer.stage), src)
        arrived = self._event(self.remote, key)
        if dst == src or self.costs.p2p <= 0:
            arrived.succeed()
            return
        if self.blocking:
            self.outbox[src].append(arrived)
        # The link is a FIFO queue of transfers; the head one is on the wire.
        # One timeout per transfer and no SimPy process or Resource: the queue
        # gives the same start times (the previous transfer's end, or now).
        queue = self.links.get((src, dst))
        if queue is None:
            queue = self.links[(src, dst)] = deque()
        queue.append((key, src, dst, consumer, arrived))
        if len(queue) == 1:
            self._send(queue)

    def _send(self, queue: deque) -> None:
        """Put the transfer at the head of a link's queue on the wire."""
        start = self.env.now
        self.env.timeout(self.costs.p2p).callbacks.append(lambda _: self._landed(queue, start))

    def _landed(self, queue: deque, start: float) -> None:
        key, src, dst, consumer, arrived = queue.popleft()
        _, m, s, d = key
        kind = 0 if key[0] == "F" else 1
        action = self.position.get(consumer, (dst, -1))[1]
        self.rec.comm.append((P2P, src, dst, kind, m, s, d, start, self.env.now, action, -1))
        arrived.succeed()
        if queue:
            self._send(queue)

    # -- ranks ------------------------------------------------------------------
    def _timeline(self, action) -> tuple:
        if isinstance(action, FB):
            key = (action.forward.stage, action.backward.kind, action.backward.stage)
        else:
            key = (action.kind, action.stage)
        tl = self.timelines.get(key)
        if tl is None:
            tl = self.timelines[key] = self.costs.timeline(action)
        return tl

    def _rank(self, rank: int):
        env, costs, rec = self.env, self.costs, self.rec
        outbox = self.outbox[rank]
        for idx, action in enumerate(self.schedule.ranks[rank]):
            self.cursor[rank] = idx
            members = ops_of(action)
            pending = [ev for op in members for ev in self._needs(op) if not ev.triggered]
            if outbox:  # blocking: the previous call's sends are in this call's batch
                pending += [ev for ev in outbox if not ev.triggered]
                outbox.clear()
            for ev in pending:  # waiting for each in turn ends at the last one: no Condition needed
                if not ev.processed:
                    yield ev
            start = env.now
            for op in members:
                if op.kind == "F":
                    rec.memory.append((start, rank, 1, costs.activation_bytes[op.stage]))
            total, rows = self._timeline(action)
            if self.scale is not None:  # this action's factor stretches its whole timeline
                total, rows = self.scale(rank, idx, total, rows)
            yield env.timeout(total)
            pair = isinstance(action, FB)
            for member, part, on_a2a, t0, t1 in rows:
                op = members[member]
                if on_a2a:
                    rec.comm.append(
                        (A2A, rank, rank, KIND_CODES[op.kind], op.microbatch, op.stage, op.direction,
                         start + t0, start + t1, idx, part)
                    )  # fmt: skip
                else:
                    rec.compute.append(_row(rank, op, start + t0, start + t1, idx, pair, part))
            end = env.now
            for op in members:
                if op.kind in ("B", "I"):
                    rec.memory.append((end, rank, -1, -costs.activation_bytes[op.stage]))
                self._finish(op, rank)
        self.cursor[rank] = len(self.schedule.ranks[rank])
        if outbox:  # blocking: the last call's sends are flushed and waited for
            yield env.all_of(list(outbox))
            outbox.clear()

    # -- driver -------------------------------------------------------------------
    def run(self) -> Trace:
        for rank in range(self.schedule.num_ranks):
            self.env.process(self._rank(rank))
        self._run_bounded()
        self._check_finished()
        return Trace.of_run(self.schedule, self.costs, self.rec)

    def _run_bounded(self) -> None:
        """``env.run()``, stopped after limits.max_events steps: nothing can loop forever."""
        bound = limits.max_events(len(self.position), self.schedule.num_ranks)
        step = self.env.step
        try:
            for _ in range(bound):
                step()
        except simpy.core.EmptySchedule:
            return  # the usual end: no events left
        at = "; ".join(
            f"rank {r} at action {i} {self.schedule.ranks[r][i]}"
            for r, i in enumerate(self.cursor)
            if i < len(self.schedule.ranks[r])
        )
        raise DeadlockError(f"simulation did not finish within {bound} events (livelock guard): {at or 'all ranks done'}")

    def _check_finished(self) -> None:
        if all(self.cursor[r] == len(actions) for r, actions in enumerate(self.schedule.ranks)):
            return  # the usual case: no need to work out what was done
        stuck = []
        done = {op for op, (rank, idx) in self.position.items() if idx < self.cursor[rank]}
        from .validate import produced

        done_keys = {k for op in done for k in produced(op)}
        for rank, actions in enumerate(self.schedule.ranks):
            idx = self.cursor[rank]
            if idx < len(actions):
                action = actions[idx]
                stuck.append(
                    f"rank {rank} is stuck at action {idx} {action} waiting for "
                    f"{describe_wait(action, done_keys, self.schedule.stages)}"
                )
        if stuck:
            raise DeadlockError("simulation cannot finish: " + "; ".join(stuck))


def _row(rank: int, op: Op, start: float, end: float, idx: int, overlapped: bool, part: int = -1) -> tuple:
    return (rank, KIND_CODES[op.kind], op.microbatch, op.stage, op.direction, start, end, idx, overlapped, part)


def simulate(schedule: Schedule, costs: CostModel) -> Trace:
    """Replay ``schedule`` on ``costs`` and return the trace."""
    if len(costs.forward) < schedule.stages:
        raise ScheduleError(
            f"cost model has {len(costs.forward)} per-stage values but the schedule has {schedule.stages} stages"
        )
    return Engine(schedule, costs).run()
