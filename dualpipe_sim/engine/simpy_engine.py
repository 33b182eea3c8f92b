"""The SimPy engine: the reference the replay core (replay.py) is held equal to.

simulation.simulate replays schedules with replay.py; this engine models the
same rules with SimPy events and processes, and tests/test_replay.py checks
that both give the same trace, bit for bit, on random schedules and costs.

Each rank is a SimPy process that walks its action list in order on its
compute channel.  An action starts once everything it needs (rules.RULES: a
forward the previous stage's activation, a backward its own forward and the
next stage's gradient, a W its I) is on the rank.

When an op finishes, its result is delivered to the rank that consumes it: at
once on the same rank, otherwise through the directed P2P link between the two
ranks.  A link carries one transfer at a time (transfers queue FIFO) and runs
beside compute, so a send costs the sender nothing and the receiver only waits
if the data is late.

What an action costs comes from ``CostModel.timeline``: one row for a plain
op, a forward and a backward half for an FB pair, or, with the component
model, one row per component, laid out on the rank's compute and all-to-all
channels by channels.py (a SimPy PriorityResource per channel, a process per
component: overlap falls out of that simulation).  An action's inside depends
only on the cost model: its inputs are all on the rank before it starts and its
outputs leave after it ends.  So each kind of action is simulated once (costs.py
caches it; the same chunk on every stage gives a handful of simulations per
run) and this engine only advances the rank's clock by the action's length: one
SimPy timeout per action, whatever the number of components.  The trace rows
are the timeline moved to the action's start (trace.TraceBuilder).

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

from .. import limits
from ..inputs.costs import CostModel, Timeline, signature
from ..schedules.ir import DeadlockError, Op, Schedule, ops_of
from ..schedules.rules import KEPT, RULES, SENT, Channel, produced
from .trace import CommRow, Trace, TraceBuilder
from .replay import check_costs_cover, describe_wait

__all__ = ["DeadlockError", "Engine", "simulate"]


class Engine:
    def __init__(self, schedule: Schedule, costs: CostModel) -> None:
        self.schedule = schedule
        self.costs = costs
        self.env = simpy.Environment()
        self.placement = schedule.placement()
        self.stages = schedule.stages
        self.rec = TraceBuilder()
        self.links: dict[tuple[int, int], deque] = {}  # (src, dst) -> transfers queued on that link
        # Data availability per rules key (data, microbatch, stage, direction):
        # `local` fires on the producing rank (for data in rules.KEPT), `remote`
        # on the consuming rank once the transfer has landed.
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
        self.timelines: dict[tuple, tuple[int, Timeline]] = {}  # action signature -> (trace index, costs.timeline)
        vary = getattr(costs, "variability", None)  # jitter and slow ranks: variability.py
        self.scale = vary.bind(schedule, costs) if vary is not None else None

    # -- events ---------------------------------------------------------------
    def _event(self, table: dict, key: tuple) -> simpy.Event:
        ev = table.get(key)
        if ev is None:
            ev = table[key] = self.env.event()
        return ev

    def _needs(self, op: Op) -> list[simpy.Event]:
        kind, m, s, d = op
        out = []
        for data, offset in RULES[kind].needs:
            if 0 <= s + offset < self.stages:
                out.append(self._event(self.local if offset == 0 else self.remote, (data, m, s + offset, d)))
        return out

    def _finish(self, op: Op, rank: int) -> None:
        """Publish an op's results: locally, then towards the ranks that consume them."""
        kind, m, s, d = op
        made = RULES[kind].produces
        for data in made:
            if data in KEPT:
                self._event(self.local, (data, m, s, d)).succeed()
        for data in made:
            kinds, step = SENT[data]
            if kinds and 0 <= s + step < self.stages:
                consumer = next((c for c in (Op(k, m, s + step, d) for k in kinds) if c in self.position), None)
                self._deliver((data, m, s, d), rank, consumer or Op(kinds[-1], m, s + step, d))

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
        start, (_, src, dst, _, _) = self.env.now, queue[0]
        self.env.timeout(self.costs.link_p2p(src, dst)).callbacks.append(lambda _: self._landed(queue, start))

    def _landed(self, queue: deque, start: float) -> None:
        key, src, dst, consumer, arrived = queue.popleft()
        data, m, s, d = key
        action = self.position.get(consumer, (dst, -1))[1]
        self.rec.comm.append(CommRow(Channel.P2P, src, dst, data, m, s, d, start, self.env.now, action, -1))
        arrived.succeed()
        if queue:
            self._send(queue)

    # -- ranks ------------------------------------------------------------------
    def _timeline(self, action) -> tuple[int, Timeline]:
        key = signature(action, self.costs)
        found = self.timelines.get(key)
        if found is None:
            timeline = self.costs.timeline(action)
            found = self.timelines[key] = (self.rec.timeline(timeline), timeline)
        return found

    def _rank(self, rank: int):
        env, rec = self.env, self.rec
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
            index, timeline = self._timeline(action)
            factor = 1.0 if self.scale is None else self.scale.factor(rank, idx)
            yield env.timeout(timeline.length * factor)  # the action's inside: costs.timeline, stretched
            rec.action(rank, idx, start, index, factor, members)
            for op in members:
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
        done_keys = {k for op in done for k in produced(*op)}
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


def simulate(schedule: Schedule, costs: CostModel) -> Trace:
    """Replay ``schedule`` on ``costs`` and return the trace."""
    check_costs_cover(schedule, costs)
    return Engine(schedule, costs).run()
