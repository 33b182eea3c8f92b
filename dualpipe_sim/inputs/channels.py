"""One action's parts laid out on a rank's channels, simulated with SimPy resources.

Each channel of the rank (rules.Channel: COMPUTE, A2A) is a
``simpy.PriorityResource`` of capacity 1, and each part (costs.Part) a SimPy
process that

1. waits for the parts it needs (``Part.needs``: the data dependencies inside
   the action, from the cost model);
2. if its channel has a declared order (``chunk.order``), waits for its turn:
   the part before it in that order must have started;
3. asks its channel and holds it for its duration.  A free channel serves the
   waiting part with the smallest ``Part.priority`` (forward and input-gradient
   parts before weight-gradient parts, then the order the schedule implies;
   rules.PASS_PRIORITY), first come first served among equals.

Overlap is what falls out: while one op's all-to-all holds A2A, the other op's
compute runs on COMPUTE.  With ``slowdown`` > 1 a compute part progresses at
1/slowdown of its speed while any all-to-all part runs beside it.

engine.py explains why one action's inside depends only on the cost model, so
this runs once per kind of action (costs.py caches it), never per op.
"""

from __future__ import annotations

from typing import NamedTuple

from ..schedules.rules import Channel


class Span(NamedTuple):
    """One interval of an action's timeline, relative to the action's start."""

    member: int  # 0: a lone op or a pair's forward; 1: a pair's backward
    part: int  # Component index, -1 for a whole op
    channel: Channel  # COMPUTE or A2A
    start: float
    end: float


class Timeline(NamedTuple):
    """What an action costs: its length and its intervals on the rank's channels."""

    length: float
    spans: tuple[Span, ...]


class OrderError(ValueError):
    """The parts cannot all run: a declared order contradicts the data dependencies."""


def lay_out(parts, slowdown: float = 1.0):
    """Simulate ``parts`` (costs.Part) and return their Timeline, times from 0."""
    return _chain(parts) if _is_chain(parts) else _simulated(parts, slowdown)


def _simulated(parts, slowdown: float) -> Timeline:
    """lay_out by SimPy."""
    import simpy  # here: scenarios import OrderError, and only the component model needs SimPy

    env = simpy.Environment()
    channel = {ch: simpy.PriorityResource(env, capacity=1) for ch in {p.channel for p in parts}}
    done = [env.event() for _ in parts]
    started = [env.event() for _ in parts]
    spans: list[Span] = []
    a2a = _Busy(env)

    def run(i: int):
        part = parts[i]
        for j in part.needs:
            yield done[j]
        if part.turn_after is not None:
            yield started[part.turn_after]
        with channel[part.channel].request(priority=part.priority) as req:
            yield req
            start = env.now
            started[i].succeed()
            if part.channel == Channel.A2A:
                a2a.change(+1)
                yield env.timeout(part.duration)
                a2a.change(-1)
            elif slowdown != 1.0:
                yield from _slowed(env, part.duration, slowdown, a2a)
            else:
                yield env.timeout(part.duration)
            spans.append(Span(part.member, int(part.component), part.channel, start, env.now))
        done[i].succeed()

    for i in range(len(parts)):
        env.process(run(i))
    env.run()
    if len(spans) < len(parts):
        stuck = [f"{p.component.name} (layer {p.layer})" for i, p in enumerate(parts) if not done[i].triggered]
        raise OrderError(f"the declared order cannot run: {', '.join(stuck[:4])} never start")
    length = max((s.end for s in spans), default=0.0)
    return Timeline(length, tuple(sorted(spans, key=lambda s: s.start)))


def _is_chain(parts) -> bool:
    """Each part waits for the one before it and for nothing else (a lone op, costs.Chunk.parts), and none
    is negative (SimPy refuses a negative delay)."""
    return all(p.turn_after is None and p.needs == ((i - 1,) if i else ()) and p.duration >= 0
               for i, p in enumerate(parts))


def _chain(parts) -> Timeline:
    """lay_out of a chain without SimPy: one part runs at a time, so none waits for its channel and no
    compute runs beside an all-to-all (no slowdown); each starts as the one before it ends.  The same
    sums as SimPy's clock (its ``now`` starts at the int 0, then now + duration), so the same Timeline
    to the bit (tests/test_channels_chain.py)."""
    now, spans = 0, []
    for p in parts:
        end = now + p.duration
        spans.append(Span(p.member, int(p.component), p.channel, now, end))
        now = end
    return Timeline(max((s.end for s in spans), default=0.0), tuple(sorted(spans, key=lambda s: s.start)))


class _Busy:
    """How many all-to-all parts run now, and an event that fires when that changes."""

    def __init__(self, env) -> None:
        self.env, self.count, self.changed = env, 0, env.event()

    def change(self, step: int) -> None:
        self.count += step
        fired, self.changed = self.changed, self.env.event()
        fired.succeed()


def _slowed(env, work: float, slowdown: float, a2a: _Busy):
    """Run ``work`` of compute at 1/slowdown of its speed while an all-to-all runs beside it."""
    while True:
        factor = slowdown if a2a.count else 1.0
        begun = env.now
        finish = env.timeout(work * factor)
        yield finish | a2a.changed
        if finish.processed:
            return
        work -= (env.now - begun) / factor
        if work <= 0.0:
            return
