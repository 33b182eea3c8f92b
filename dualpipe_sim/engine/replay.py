"""The replay core: which action each rank runs next, and when.

Everything that happens *between* actions is decided here, once, for every
user of it:

* the simulation (:func:`simulate`, called by simulation.simulate): an action
  lasts its timeline's length (``CostModel.timeline``, stretched by
  variability's factor) and a result that crosses ranks goes through the
  directed P2P link between them, async or blocking (``comm.p2p_mode``);
* validation (validate.validate): the same replay with zero lengths and no
  links, recording nothing;
* the end of a step (step.py): its channels are :class:`Link` s too.

The rules of the replay (rules.RULES says what each op needs and produces):

* a rank runs its actions in its list's order, one at a time;
* an action starts at the latest of: the end of the rank's previous action,
  the moment each result it needs is on the rank, and, with blocking P2P, the
  landing of the sends its previous action put on links (before each compute
  call the reference runtime waits for the previous call's sends);
* when it ends, each member op's results are published in the SimPy engine's
  order: those kept on the stage (rules.KEPT) at its end, then those sent on
  (rules.SENT): at its end when the consumer is on the same rank or P2P is
  free, else through the :class:`Link` from this rank to the consumer's, one
  transfer at a time in the order they are sent.  Only the sending rank feeds
  a link and it finishes its actions in order, so a transfer starts at
  max(its action's end, the link's previous transfer's end).

Ranks are walked with cursors: a rank runs until a result it needs is not
published yet and is woken by the action that publishes it.  Each action runs
once: linear in the number of ops.  A rank left with actions is stuck, and
:func:`deadlock_error` says at which action and what it waits for.

An action's inside (its components on the rank's channels, channels.py) is
not replayed here: its inputs are all on the rank before it starts and its
outputs leave when it ends, so ``CostModel.timeline`` lays each kind of action
out once and the replay only moves that timeline to the action's start.

simpy_engine.py models the same rules with SimPy events; tests/test_replay.py holds
this core's trace equal to the SimPy engine's bit for bit (the floats come
from the same operations: ``start + length * factor``, ``begin + p2p``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from ..inputs.costs import CostModel, signature
from ..schedules.ir import FB, Action, DeadlockError, Schedule, ScheduleError, ops_of
from ..schedules.rules import KEPT, RULES, SENT, Channel, Data, Kind, key_words, needs, produced
from .trace import Trace, TraceBuilder

P2P = int(Channel.P2P)  # the comm rows' channel code

# -- where each op sits ------------------------------------------------------------------


def cell(microbatch: int, stage: int, stages: int) -> int:
    """The number of a (micro-batch, stage) cell: one micro-batch's stages side by side."""
    return microbatch * stages + stage


class OpIndex(NamedTuple):
    """Where each op of a complete schedule sits (validate.index_ops builds it in one scan)."""

    action_of: dict[Kind, list[int]]  # per kind, per cell: the op's action index in its rank's list (-1: none)
    rank_of: tuple[list[int], list[int]]  # [direction][stage]: the rank holding that stage in that direction
    stages_on_rank: list[list[int]]  # per rank: the stages it holds, ascending


# -- when each result is available ---------------------------------------------------------
# The replay keeps one time per result and place: each datum of a cell is available on
# the rank that produced it (kept) and on the rank that consumes it (sent), at two slots.
SLOTS_PER_CELL = 2 * len(Data)


def slot(cell: int, data: int, on_consumer: bool) -> int:
    """The slot holding when ``data`` of ``cell`` is available on its producer's or consumer's rank."""
    return SLOTS_PER_CELL * cell + 2 * data + on_consumer


class KindPlan(NamedTuple):
    """rules.RULES of one kind, read once as slot steps: slot() is linear in the cell, so a
    need of an op at cell c sits at slot(c, 0, False) + its step (neighbour stages are
    neighbour cells)."""

    needs: tuple[tuple[int, int], ...]  # (stage offset, slot step) of each need
    kept: tuple[int, ...]  # slot steps of the results kept on the op's rank
    sent: tuple[tuple[int, Data, int], ...]  # (slot step, data, stage step to the consumer)


def _plan(rule) -> KindPlan:
    return KindPlan(
        needs=tuple((n.offset, slot(n.offset, n.data, n.offset != 0)) for n in rule.needs),
        kept=tuple(slot(0, data, False) for data in rule.produces if data in KEPT),
        sent=tuple((slot(0, data, True), data, SENT[data][1]) for data in rule.produces if SENT[data][0]),
    )


PLANS: dict[Kind, KindPlan] = {kind: _plan(rule) for kind, rule in RULES.items()}


class Link:
    """A channel that carries one thing at a time, in the order it is given work: P2P links
    between ranks here, step.py's data-parallel channels and pair links."""

    __slots__ = ("free",)

    def __init__(self) -> None:
        self.free = 0.0  # when its last piece of work ends

    def carry(self, ready: float, length: float) -> tuple[float, float]:
        """(start, end) of work ready at ``ready``: it waits for the work given before it."""
        start = ready if ready > self.free else self.free
        self.free = start + length
        return start, self.free


# run_action(rank, index, action, members, start) -> end: how long the action lasts (and recording it)
RunAction = Callable[[int, int, Action, tuple, float], float]


def replay(schedule: Schedule, index: OpIndex, run_action: RunAction, p2p: float = 0.0,
           blocking: bool = False, transfers: list[tuple] | None = None) -> list[int]:
    """Run each rank's actions in order as far as the rules let them (module docstring).
    ``run_action`` says when an action started at ``start`` ends; a transfer costs ``p2p``
    and is appended to ``transfers`` (a CommRow's fields).  Returns each rank's cursor: the length
    of its list when it finished, else the action it is stuck at."""
    S, n = schedule.stages, schedule.num_ranks
    available: list[float | None] = [None] * (SLOTS_PER_CELL * S * schedule.microbatches)
    waiting: dict[int, list[int]] = {}  # slot -> ranks stopped until it is published
    links: dict[tuple[int, int], Link] = {}  # (sender, receiver) -> their P2P link
    cursor, free_at = [0] * n, [0.0] * n
    sends_land = [0.0] * n  # blocking: when the rank's previous action's sends have landed
    runnable = list(range(n))
    rank_of = index.rank_of
    receiver = receiving_actions(index) if transfers is not None else {}

    while runnable:
        rank = runnable.pop()
        actions, idx, t = schedule.ranks[rank], cursor[rank], free_at[rank]
        while idx < len(actions):
            action = actions[idx]
            members = action if type(action) is FB else (action,)
            start = sends_land[rank] if sends_land[rank] > t else t
            missing = -1
            for kind, m, s, _ in members:
                first = SLOTS_PER_CELL * (m * S + s)  # slot(cell(m, s, S), 0, False), written out: the hot loop
                for offset, step in PLANS[kind].needs:
                    if 0 <= s + offset < S:
                        ready = available[first + step]
                        if ready is None:
                            missing = first + step
                            break
                        if ready > start:
                            start = ready
                if missing >= 0:
                    break
            if missing >= 0:
                waiting.setdefault(missing, []).append(rank)
                break  # woken when the slot is published
            t = run_action(rank, idx, action, members, start)
            landed = 0.0
            for kind, m, s, d in members:
                first = SLOTS_PER_CELL * (m * S + s)
                plan = PLANS[kind]
                for step in plan.kept:
                    available[first + step] = t
                    if first + step in waiting:
                        runnable.extend(waiting.pop(first + step))
                for step, data, stage_step in plan.sent:
                    to = s + stage_step
                    if not 0 <= to < S:
                        continue
                    dst = rank_of[d][to]
                    if dst == rank or p2p <= 0:
                        arrive = t
                    else:
                        link = links.get((rank, dst))
                        if link is None:
                            link = links[(rank, dst)] = Link()
                        begin, arrive = link.carry(t, p2p)
                        if arrive > landed:
                            landed = arrive
                        if transfers is not None:  # a CommRow's fields as a plain tuple (cheaper to make)
                            consumer = receiver[data][m * S + to]  # at cell(m, to, S)
                            transfers.append((P2P, rank, dst, data, m, s, d, begin, arrive, consumer, -1))
                    available[first + step] = arrive
                    if first + step in waiting:
                        runnable.extend(waiting.pop(first + step))
            if blocking:
                sends_land[rank] = landed
            idx += 1
        cursor[rank], free_at[rank] = idx, t
    return cursor


def receiving_actions(index: OpIndex) -> dict[Data, list[int]]:
    """Per datum sent across stages, per cell: the index of the action that receives it (the
    trace's P2P ``action``).  A complete cell holds exactly one of the consumer kinds (a B or
    else an I: rules.WORK), and an absent kind's index is -1, so the largest index is it."""
    out = {}
    for data, (kinds, _) in SENT.items():
        if kinds:
            tables = [index.action_of[k] for k in kinds]
            out[data] = tables[0] if len(tables) == 1 else list(map(max, *tables))
    return out


# -- a schedule that cannot finish, in words -------------------------------------------------
def describe_wait(action: Action, done: set, stages: int) -> str:
    """What ``action`` still waits for, given the keys in ``done``, in words."""
    missing = [key_words(key) for op in ops_of(action) for key in needs(*op, stages) if key not in done]
    return ", ".join(missing) or "nothing (blocked by its own rank)"


def deadlock_error(schedule: Schedule, cursor: list[int]) -> DeadlockError | None:
    """None when every rank finished its list, else the error naming each stuck action
    and what it waits for (the results of every action before the cursors are out)."""
    stuck = [(r, actions[cursor[r]]) for r, actions in enumerate(schedule.ranks) if cursor[r] < len(actions)]
    if not stuck:
        return None
    done = {key for r, actions in enumerate(schedule.ranks) for a in actions[: cursor[r]] for op in ops_of(a)
            for key in produced(*op)}  # fmt: skip
    lines = "; ".join(f"rank {r} is stuck at {a} waiting for {describe_wait(a, done, schedule.stages)}"
                      for r, a in stuck)  # fmt: skip
    return DeadlockError(f"schedule deadlocks: {lines}")


# -- the simulation ----------------------------------------------------------------------------
def check_costs_cover(schedule: Schedule, costs: CostModel) -> None:
    """A cost model gives one value per stage: refuse one with fewer than the schedule needs."""
    if len(costs.forward) < schedule.stages:
        raise ScheduleError(
            f"cost model has {len(costs.forward)} per-stage values but the schedule has {schedule.stages} stages"
        )


def simulate(schedule: Schedule, costs: CostModel, index: OpIndex) -> Trace:
    """Replay a complete ``schedule`` (``index`` from validate.index_ops) on ``costs``: its trace.
    Raises DeadlockError (validate's words) when some rank cannot finish."""
    check_costs_cover(schedule, costs)
    vary = getattr(costs, "variability", None)
    scale = vary.bind(schedule, costs) if vary is not None else None
    rec = TraceBuilder()
    timelines: dict[tuple, tuple[int, float]] = {}  # action signature -> (trace index, length) of its timeline

    def run_action(rank: int, idx: int, action: Action, members: tuple, start: float) -> float:
        sig = signature(action)
        found = timelines.get(sig)
        if found is None:
            timeline = costs.timeline(action)
            found = timelines[sig] = (rec.timeline(timeline), timeline.length)
        factor = 1.0 if scale is None else scale.factor(rank, idx)
        rec.action(rank, idx, start, found[0], factor, members)
        return start + found[1] * factor

    cursor = replay(schedule, index, run_action, costs.p2p, costs.p2p_mode == "blocking", rec.comm)
    stuck = deadlock_error(schedule, cursor)
    if stuck:
        raise stuck
    return Trace.of_run(schedule, costs, rec, stages_on_rank=index.stages_on_rank)
