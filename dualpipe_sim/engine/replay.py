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

Ranks are walked with cursors: a rank runs until a result it needs has not
landed yet and is woken by the transfer that brings its last one.  Each action
runs once: linear in the number of ops.  A rank left with actions is stuck, and
:func:`deadlock_error` says at which action and what it waits for.

Two facts make the loop small.  A result an action needs from an earlier action
of its own rank is there by the time it starts (its rank's clock is past that
action's end), so only the other needs are counted (``Plan.missing``): results
from other ranks, and one from a later action of the same rank, which never
comes (that rank is stuck first).  And only results crossing ranks move: each
through its link, pushed to the one action that reads it (each result has one
reader), which keeps the latest arrival and counts down.  Without P2P time the
same path serves: a link's previous transfer, from an earlier action of the
sender, has landed by the time the next one leaves, so it lands as its action
ends.  With blocking P2P the rank's clock after an action is the latest of its
end and its sends' landings.

Speed: the loop is the only per-action Python.  Before it, :func:`plan` reads
the counts, the transfers, their links and readers off the ops' numpy columns
(validate.flat_ops); starts are written into C doubles (``array("d")``) that
become the trace's columns with numpy without a copy (:func:`simulate`,
TraceBuilder.arrays).  The order in which ranks are walked changes nothing but
the order of work: every time is a max and a sum of the same floats, and a
link's transfers come in its sender's action order.

An action's inside (its components on the rank's channels, channels.py) is
not replayed here: its inputs are all on the rank before it starts and its
outputs leave when it ends, so ``CostModel.timeline`` lays each kind of action
out once and the replay only moves that timeline to the action's start.

simpy_engine.py models the same rules with SimPy events; tests/test_replay.py holds
this core's trace equal to the SimPy engine's bit for bit (the floats come
from the same operations: ``start + length * factor``, ``begin + p2p``).
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

import numpy as np

from ..inputs.costs import CostModel
from ..schedules.ir import Action, DeadlockError, Schedule, ScheduleError, ops_of
from ..schedules.rules import KEPT, KIND_CODES, RULES, SENT, Channel, Data, Kind, key_words, needs, produced
from .trace import COMM_DTYPE, IS_BACKWARD, Trace, TraceBuilder

P2P = int(Channel.P2P)  # the comm rows' channel code

# -- where each op sits ------------------------------------------------------------------


def cell(microbatch: int, stage: int, stages: int) -> int:
    """The number of a (micro-batch, stage) cell: one micro-batch's stages side by side."""
    return microbatch * stages + stage


class OpIndex(NamedTuple):
    """Where each op of a complete schedule sits (validate.index_ops builds it with numpy)."""

    action_of: dict[Kind, np.ndarray]  # per kind, per cell: the op's action index in its rank's list (-1: none)
    rank_of: tuple[list[int], list[int]]  # [direction][stage]: the rank holding that stage in that direction
    stages_on_rank: list[list[int]]  # per rank: the stages it holds, ascending
    flat: "Flat"  # the ops as columns, in rank and action order


# -- which result is which -------------------------------------------------------------------
# Each datum of a cell has two slots: on the rank that produced it (kept) and on the rank
# that consumes it (sent).  plan() matches each need to the action that writes its slot.
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
    """A channel that carries one thing at a time, in the order it is given work: step.py's
    data-parallel channels and pair links; :func:`replay` keeps its P2P links' ``free`` in a
    list (``link_free``) and does ``carry`` inline, the hot loop's one call saved."""

    __slots__ = ("free",)

    def __init__(self) -> None:
        self.free = 0.0  # when its last piece of work ends

    def carry(self, ready: float, length: float) -> tuple[float, float]:
        """(start, end) of work ready at ``ready``: it waits for the work given before it."""
        start = ready if ready > self.free else self.free
        self.free = start + length
        return start, self.free


class Flat(NamedTuple):
    """A schedule's ops as numpy columns, one row per op, ranks' lists one after the other
    (validate.flat_ops reads them off the action objects once; everything after is arrays)."""

    kind: np.ndarray  # rules.KIND_CODES
    microbatch: np.ndarray
    stage: np.ndarray
    direction: np.ndarray
    action: np.ndarray  # the op's action, numbered over all ranks (rank 0's list first)
    member: np.ndarray  # 0, or 1 for a pair's backward half
    rank_bounds: list[int]  # rank r's actions are numbers rank_bounds[r] .. rank_bounds[r+1]-1


class Plan(NamedTuple):
    """What the replay loop reads: per action (numbered as in Flat, one spare entry at the end
    for a result nobody reads) and per transfer (a result crossing ranks, numbered in the order
    sent: action, member, then rules order, so each action's transfers are consecutive)."""

    missing: list  # per action: how many of its needs come from another rank or a later action
    sent_upto: list  # per action: the number of transfers of all actions up to it, itself included
    link: list  # per transfer: its link (one per pair of sender and receiver ranks)
    receiver: list  # per link: its receiving rank
    consumer: list  # per transfer: the action that needs it (the spare entry when none)
    transfers: tuple  # per transfer, numpy columns: sender, receiver, data, op row (into Flat), stage, reader


# rules.RULES read as slot steps (KindPlan), one array per need or result (column j),
# indexed by kind code: a 1-D gather each, with numpy.
_CODES = len(KIND_CODES)
_WIDTH = max(max(len(p.needs), len(p.kept) + len(p.sent)) for p in PLANS.values())  # most needs or results of a kind
_NEED_OFFSET = np.zeros((_WIDTH, _CODES), dtype=np.int64)
_NEED_STEP = np.zeros((_WIDTH, _CODES), dtype=np.int64)
_NEED_ANY = np.zeros((_WIDTH, _CODES), dtype=bool)
_OUT_STEP = np.zeros((_WIDTH, _CODES), dtype=np.int64)  # kept first, then sent (the SimPy engine's order)
_OUT_STAGE = np.zeros((_WIDTH, _CODES), dtype=np.int64)  # stage step to the consumer (0: kept)
_OUT_DATA = np.zeros((_WIDTH, _CODES), dtype=np.int64)
_OUT_SENT = np.zeros((_WIDTH, _CODES), dtype=bool)
_OUT_ANY = np.zeros((_WIDTH, _CODES), dtype=bool)
for _kind, _p in PLANS.items():
    _c = KIND_CODES[_kind]
    for _j, (_offset, _step) in enumerate(_p.needs):
        _NEED_OFFSET[_j, _c], _NEED_STEP[_j, _c], _NEED_ANY[_j, _c] = _offset, _step, True
    for _j, (_step, _sent, _data, _stage) in enumerate(
        [(s, False, 0, 0) for s in _p.kept] + [(s, True, int(d), st) for s, d, st in _p.sent]
    ):
        _OUT_STEP[_j, _c], _OUT_SENT[_j, _c], _OUT_DATA[_j, _c], _OUT_STAGE[_j, _c] = _step, _sent, _data, _stage
        _OUT_ANY[_j, _c] = True


def plan(schedule: Schedule, index: OpIndex) -> Plan:
    """Read off ``index.flat`` with numpy what the loop needs: a need met by an earlier action
    of the same rank is met by the time its reader starts (the rank's clock is past it), so
    only the others are counted (``missing``), and only results crossing ranks are handed on,
    each through the link from its rank to its reader's."""
    flat = index.flat
    S, n = schedule.stages, flat.rank_bounds[-1]
    kind, s, action = flat.kind, flat.stage, flat.action
    rank_a = np.repeat(np.arange(len(flat.rank_bounds) - 1), np.diff(flat.rank_bounds))  # per action
    rank_first = np.asarray(flat.rank_bounds[:-1], dtype=np.int64)[rank_a]  # per action: its rank's first
    rank = rank_a[action]
    cell_slot = SLOTS_PER_CELL * (flat.microbatch * S + s)
    rank_of = np.asarray(index.rank_of, dtype=np.int64).ravel()  # [direction * S + stage]
    place = flat.direction * S  # rank_of[place + stage]: the rank holding that stage in the op's direction
    writer = np.full(SLOTS_PER_CELL * S * schedule.microbatches, -1, dtype=np.int64)  # slot -> its action
    reader = np.full(len(writer), n, dtype=np.int64)  # slot -> the action reading it (n: the spare)
    crossing = []  # per result column: (ops, their slots, their consumers' stages)
    for j in range(_WIDTH):
        to = s + _OUT_STAGE[j][kind]
        ops = np.flatnonzero(_OUT_ANY[j][kind] & (to >= 0) & (to < S))
        slot_j = cell_slot[ops] + _OUT_STEP[j][kind[ops]]
        writer[slot_j] = action[ops]
        to = to[ops]
        sent = _OUT_SENT[j][kind[ops]] & (rank_of[place[ops] + to] != rank[ops])
        crossing.append((ops[sent], slot_j[sent], to[sent]))
    missing = np.zeros(n + 1, dtype=np.int64)
    for j in range(_WIDTH):
        at = s + _NEED_OFFSET[j][kind]
        ops = np.flatnonzero(_NEED_ANY[j][kind] & (at >= 0) & (at < S))
        slot_j = cell_slot[ops] + _NEED_STEP[j][kind[ops]]
        me = action[ops]
        reader[slot_j] = me
        maker = writer[slot_j]
        met = (maker >= rank_first[me]) & (maker < me)  # an earlier action of the same rank (-1: none)
        missing += np.bincount(me[~met], minlength=n + 1)
    # transfers in the order sent: by op, then result column
    op = np.concatenate([c[0] for c in crossing])
    column = np.repeat(np.arange(_WIDTH), [len(c[0]) for c in crossing])
    order = np.argsort(op * _WIDTH + column, kind="stable")
    op, column = op[order], column[order]
    slot_t = np.concatenate([c[1] for c in crossing])[order]
    to = np.concatenate([c[2] for c in crossing])[order]
    sender = rank[op]
    receiver = rank_of[place[op] + to]
    links, link = dense_ids(sender * len(flat.rank_bounds) + receiver, len(flat.rank_bounds) ** 2)
    sent_upto = np.cumsum(np.bincount(action[op], minlength=n))
    reads = reader[slot_t]
    transfers = (sender, receiver, _OUT_DATA[column, kind[op]], op, to, reads)
    return Plan(missing.tolist(), sent_upto.tolist(), link.tolist(), (links % len(flat.rank_bounds)).tolist(),
                reads.tolist(), transfers)


def dense_ids(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) for keys in 0..size-1: through a table when it is
    small beside the keys (no sort), else np.unique."""
    if size > 4 * len(keys) + 1024:
        return np.unique(keys, return_inverse=True)
    seen = np.zeros(size, dtype=bool)
    seen[keys] = True
    number = np.cumsum(seen) - 1
    return np.flatnonzero(seen), number[keys]


# A rank stopped at an action adds this to the action's count of missing needs: the result
# that brings the count down to it wakes the rank.
_STOPPED = 1 << 40


def replay(schedule: Schedule, index: OpIndex, length: array | list[float] | None = None,
           p2p: float | list[float] = 0.0, blocking: bool = False,
           planned: Plan | None = None) -> tuple[list[int], array, array, tuple]:
    """Run each rank's actions in order as far as the rules let them (module docstring).
    ``length``: per action (numbered as in index.flat) how long it lasts (None: no time, no
    links: validation).  A transfer costs ``p2p``, or ``p2p[link]`` per link (link_hops).  Returns each rank's cursor (the length of
    its list when it finished, else the action it is stuck at), each action's start, each
    transfer's start and Plan.transfers (who sent what to whom; empty without links).  ``planned``:
    ``plan(schedule, index)`` worked out once for many replays of one schedule (plan's estimate)."""
    p = plan(schedule, index) if planned is None else planned
    bounds = index.flat.rank_bounds
    n = len(bounds) - 1
    if length is None:
        length, p2p = [0.0] * bounds[-1], 0.0
    # Without P2P time a transfer lands as its action ends: a link's previous transfer, from an
    # earlier action of the same rank, has landed by then, so the loop below needs no other path.
    missing, sent_upto, transfer_link, receiver, consumer = p.missing, p.sent_upto, p.link, p.receiver, p.consumer
    if planned is not None:
        missing = list(missing)  # the loop counts it down: a shared plan keeps its own
    ready = [0.0] * len(missing)  # per action: when its last counted need landed on its rank
    link_free = [0.0] * len(receiver)  # when each link's last transfer ends
    hop = [float(p2p)] * len(receiver) if isinstance(p2p, (int, float)) else p2p  # per link: one transfer's time
    # Starts written into C doubles: numpy reads them without a copy, and no float object outlives its action.
    begin = array("d", bytes(8 * len(transfer_link)))  # each transfer's start
    starts = array("d", bytes(8 * bounds[-1]))
    cursor, free_at = bounds[:-1], [0.0] * n
    sent = [sent_upto[b - 1] if b else 0 for b in cursor]  # per rank: its next transfer's number
    runnable = list(range(n))
    stopped = _STOPPED

    while runnable:
        rank = runnable.pop()
        i, end, t, x = cursor[rank], bounds[rank + 1], free_at[rank], sent[rank]
        while i < end:
            if missing[i]:
                missing[i] += stopped  # woken when its last need lands
                break
            start = ready[i]
            if t > start:
                start = t
            starts[i] = start
            t = start + length[i]
            upto = sent_upto[i]
            if x < upto:
                landed = t
                while x < upto:  # its transfers, each through its link, one at a time (Link.carry, unrolled)
                    link = transfer_link[x]
                    free = link_free[link]
                    go = t if t > free else free
                    arrive = link_free[link] = go + hop[link]
                    begin[x] = go
                    if arrive > landed:
                        landed = arrive
                    c = consumer[x]
                    if arrive > ready[c]:
                        ready[c] = arrive
                    left = missing[c] - 1
                    if left == stopped:
                        left = 0
                        runnable.append(receiver[link])
                    missing[c] = left
                    x += 1
                if blocking:  # the rank's next action waits for these sends to land too
                    t = landed
            i += 1
        cursor[rank], free_at[rank], sent[rank] = i, t, x
    transfers = p.transfers
    if not max(hop, default=0.0) > 0:  # no links: nothing to record
        begin, transfers = array("d"), tuple(column[:0] for column in transfers)
    return [c - b for c, b in zip(cursor, bounds)], starts, begin, transfers


def link_hops(p: Plan, nic: float, nvlink: float = 0.0, pairs: frozenset = frozenset()) -> list[float]:
    """Per link of ``p``: one transfer's time on it, ``nvlink`` between the (sender, receiver) ranks in ``pairs``
    (one NVLink domain: model/placement.py), else ``nic``."""
    hop = [nic] * len(p.receiver)
    if pairs:
        for link, sender in zip(p.link, p.transfers[0].tolist()):
            if (sender, p.receiver[link]) in pairs:
                hop[link] = nvlink
    return hop


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
    flat, S = index.flat, schedule.stages
    bounds = flat.rank_bounds
    rank = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))  # per action
    idx = np.arange(bounds[-1]) - np.asarray(bounds[:-1])[rank]
    head = np.flatnonzero(flat.member == 0)  # each action's first op; a pair's backward follows it
    pair = np.zeros(len(head), dtype=bool)
    pair[flat.action[flat.member == 1]] = True
    tail = head + pair
    # One timeline per kind of action (costs.signature, as codes): laid out once, moved to each start.
    k0, s0, k1, s1 = flat.kind[head], flat.stage[head], flat.kind[tail], flat.stage[tail]
    sig = np.where(pair, ((k1 + 1) * S + s0) * S + s1 + len(KIND_CODES) * S, k0 * S + s0)
    size = (len(KIND_CODES) + 1) * S * S + len(KIND_CODES) * S
    if getattr(costs, "deferred", None) is not None:  # a backward whose output-layer wgrad is deferred: its own kind (costs.signature)
        stage, count = costs.deferred[:2]
        light = IS_BACKWARD[k1] & (flat.stage[tail] == stage) & (flat.microbatch[tail] < count)
        sig, size = sig + light * size, 2 * size
    kinds_of_action, which = dense_ids(sig, size)
    first = np.zeros(len(kinds_of_action), dtype=np.int64)
    first[which] = np.arange(len(which))  # an action of each kind (all of a kind have one timeline)
    rec = TraceBuilder()
    timeline, tl_length = [], []
    for a in first.tolist():
        tl = costs.timeline(schedule.ranks[int(rank[a])][int(idx[a])])
        timeline.append(rec.timeline(tl))
        tl_length.append(tl.length)
    vary = getattr(costs, "variability", None)
    if vary is not None:
        factors = vary.bind(schedule, costs).factors
        factor = np.array([f for row in factors for f in row], dtype="f8")
    else:
        factor = np.ones(len(head))
    length = np.asarray(tl_length, dtype="f8")[which] * factor  # the SimPy engine's length * factor
    p = plan(schedule, index)
    hop = link_hops(p, costs.p2p, costs.p2p_nvlink, costs.nvlink_pairs[0] if costs.nvlink_pairs else frozenset())
    cursor, starts, begin, transfers = replay(schedule, index, array("d", length.tobytes()), hop,
                                              costs.p2p_mode == "blocking", p)
    stuck = deadlock_error(schedule, cursor)
    if stuck:
        raise stuck
    columns = {"timeline": np.asarray(timeline, dtype=np.int64)[which], "rank": rank, "idx": idx,
               "start": np.frombuffer(starts, dtype="f8"), "factor": factor, "pair": pair}  # fmt: skip
    for member, op in (("0", head), ("1", tail)):
        lone = len(op) == len(flat.kind)  # no pairs: the op columns are the action columns
        for name, values in (("kind", flat.kind), ("microbatch", flat.microbatch), ("stage", flat.stage),
                             ("direction", flat.direction)):  # fmt: skip
            columns[name + member] = values if lone else values[op]
    rec.columns = columns  # numbered rank by rank: in each rank's order
    rec.comm = transfer_rows(schedule, index, transfers, begin, np.asarray(hop)[p.link] if len(begin) else costs.p2p)
    return Trace.of_run(schedule, costs, rec, stages_on_rank=index.stages_on_rank)


def transfer_rows(schedule: Schedule, index: OpIndex, transfers: tuple, begin: array,
                  p2p: float | np.ndarray) -> np.ndarray:
    """The P2P rows (CommRow fields) of the replay's transfers; ``p2p``: each one's time, or one for all."""
    sender, receiver, data, op, _, reader = transfers
    flat = index.flat
    rows = np.empty(len(op), dtype=COMM_DTYPE)
    rows["channel"], rows["rank"], rows["peer"], rows["kind"] = P2P, sender, receiver, data
    rows["microbatch"], rows["stage"], rows["direction"] = flat.microbatch[op], flat.stage[op], flat.direction[op]
    start = np.frombuffer(begin, dtype="f8")
    rows["start"], rows["end"], rows["part"] = start, start + p2p, -1
    # the reading action's index in its rank's list (-1: none, Plan's spare action)
    first = np.asarray(flat.rank_bounds[:-1], dtype=np.int64)
    rows["action"] = np.where(reader < flat.rank_bounds[-1], reader - first[receiver], -1)
    return rows
