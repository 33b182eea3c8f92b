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
published yet and is woken by the action that publishes it (each result has
one reader, so one waiting rank per slot).  Each action runs once: linear in
the number of ops.  A rank left with actions is stuck, and
:func:`deadlock_error` says at which action and what it waits for.

Speed: the loop is the only per-action Python.  Before it, :func:`plan` reads
each action's needed slots and published slots off the ops' numpy columns
(validate.flat_ops), a transfer written ``~its number`` among the published
ones; after it, the starts it returns become the trace's columns with numpy
(:func:`simulate`, TraceBuilder.arrays).  The order in which ranks are walked
changes nothing but the order of work: every time is a max and a sum of the
same floats, and a link's transfers come in its sender's action order.

An action's inside (its components on the rank's channels, channels.py) is
not replayed here: its inputs are all on the rank before it starts and its
outputs leave when it ends, so ``CostModel.timeline`` lays each kind of action
out once and the replay only moves that timeline to the action's start.

simpy_engine.py models the same rules with SimPy events; tests/test_replay.py holds
this core's trace equal to the SimPy engine's bit for bit (the floats come
from the same operations: ``start + length * factor``, ``begin + p2p``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..inputs.costs import CostModel
from ..schedules.ir import Action, DeadlockError, Schedule, ScheduleError, ops_of
from ..schedules.rules import KEPT, KIND_CODES, RULES, SENT, Channel, Data, Kind, key_words, needs, produced
from .trace import _ACTION_DTYPE, COMM_DTYPE, Trace, TraceBuilder

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
    """What the replay loop reads per action (numbered as in Flat): the slots it needs and
    what it publishes when it ends; and per transfer (a result crossing ranks through a link)
    its slot and its link."""

    needs: list  # per action: the slots it waits for, in member then rules order (padded: replay)
    outs: list  # per action: slots published at its end (kept, same rank, or P2P free), and
    #             ~transfer for each transfer, in the order sent (member, then rules order)
    slot: np.ndarray  # per transfer: the slot it publishes on arrival
    link: np.ndarray  # per transfer: its link (one per pair of sender and receiver ranks)
    transfers: tuple  # per transfer, numpy columns: sender, receiver, data, op row (into Flat), stage


# Per kind code: rules.RULES read as slot steps (KindPlan), as arrays indexed by kind code.
_CODES = len(KIND_CODES)
_NEED_OFFSET = np.zeros((_CODES, 2), dtype=np.int64)
_NEED_STEP = np.zeros((_CODES, 2), dtype=np.int64)
_NEED_ANY = np.zeros((_CODES, 2), dtype=bool)
_OUT_STEP = np.zeros((_CODES, 2), dtype=np.int64)  # kept first, then sent (the SimPy engine's order)
_OUT_STAGE = np.zeros((_CODES, 2), dtype=np.int64)  # stage step to the consumer (0: kept)
_OUT_DATA = np.zeros((_CODES, 2), dtype=np.int64)
_OUT_SENT = np.zeros((_CODES, 2), dtype=bool)
_OUT_ANY = np.zeros((_CODES, 2), dtype=bool)
for _kind, _p in PLANS.items():
    _c = KIND_CODES[_kind]
    for _j, (_offset, _step) in enumerate(_p.needs):
        _NEED_OFFSET[_c, _j], _NEED_STEP[_c, _j], _NEED_ANY[_c, _j] = _offset, _step, True
    for _j, (_step, _sent, _data, _stage) in enumerate(
        [(s, False, 0, 0) for s in _p.kept] + [(s, True, int(d), st) for s, d, st in _p.sent]
    ):
        _OUT_STEP[_c, _j], _OUT_SENT[_c, _j], _OUT_DATA[_c, _j], _OUT_STAGE[_c, _j] = _step, _sent, _data, _stage
        _OUT_ANY[_c, _j] = True


def _per_action(values: np.ndarray, valid: np.ndarray, flat: Flat, pad: int) -> list[list[int]]:
    """Per action, its ops' ``values`` (ops x k) where ``valid``, else ``pad``: a list of k ints
    for a lone op, 2k when the schedule has pairs (members side by side), made in C by tolist."""
    values = np.where(valid, values, pad)
    actions = flat.rank_bounds[-1]
    if len(values) == actions:  # no pairs: one op per action
        return values.tolist()
    rows = np.full((actions, 2, values.shape[1]), pad, dtype=values.dtype)
    rows[flat.action, flat.member] = values
    return rows.reshape(actions, -1).tolist()


def plan(schedule: Schedule, index: OpIndex, with_links: bool) -> Plan:
    """Read each action's needs and results off ``index.flat`` with numpy (``with_links``:
    results for a stage on another rank go through a link, else they are there at once)."""
    flat = index.flat
    S = schedule.stages
    kind, m, s, d = flat.kind, flat.microbatch, flat.stage, flat.direction
    first = SLOTS_PER_CELL * (m * S + s)
    # needs: (ops, 2) columns, a need outside the pipeline dropped
    need_stage = s[:, None] + _NEED_OFFSET[kind]
    need_ok = _NEED_ANY[kind] & (need_stage >= 0) & (need_stage < S)
    pad = SLOTS_PER_CELL * S * schedule.microbatches  # past the last slot: see replay()
    needs = _per_action(first[:, None] + _NEED_STEP[kind], need_ok, flat, pad)
    # results: kept, and sent to the consumer's stage when there is one
    to = s[:, None] + _OUT_STAGE[kind]
    out_ok = _OUT_ANY[kind] & (to >= 0) & (to < S)
    rank_of = np.asarray(index.rank_of, dtype=np.int64)  # [direction, stage]
    rank = np.repeat(np.arange(len(flat.rank_bounds) - 1), np.diff(flat.rank_bounds))[flat.action]
    dst = rank_of[d[:, None], np.clip(to, 0, S - 1)]
    crossing = out_ok & _OUT_SENT[kind] & (dst != rank[:, None]) & with_links
    slots = first[:, None] + _OUT_STEP[kind]
    op, j = np.nonzero(crossing)  # row-major: in action, member, then rules order
    sender, receiver = rank[op], dst[op, j]
    _, link = np.unique(sender * len(flat.rank_bounds) + receiver, return_inverse=True)
    # A transfer is written ~number (negative) among the action's results, in its place.
    slots[op, j] = ~np.arange(len(op))
    outs = _per_action(slots, out_ok, flat, pad + 1)
    transfers = (sender, receiver, _OUT_DATA[kind[op], j], op, to[op, j])
    return Plan(needs, outs, first[op] + _OUT_STEP[kind[op], j], link, transfers)


def replay(schedule: Schedule, index: OpIndex, length: list[float] | None = None, p2p: float = 0.0,
           blocking: bool = False) -> tuple[list[int], list[float], list[float], tuple]:
    """Run each rank's actions in order as far as the rules let them (module docstring).
    ``length``: per action (numbered as in index.flat) how long it lasts (None: no time, no
    links: validation).  A transfer costs ``p2p``.  Returns each rank's cursor (the length of
    its list when it finished, else the action it is stuck at), each action's start, each
    transfer's start and Plan.transfers (who sent what to whom)."""
    links = length is not None and p2p > 0
    p = plan(schedule, index, links)
    bounds = index.flat.rank_bounds
    n = len(bounds) - 1
    if length is None:
        length = [0.0] * bounds[-1]
    needs, outs = p.needs, p.outs
    transfer_slot, transfer_link = p.slot.tolist(), p.link.tolist()
    # Per slot, when it is available (None: not yet).  Plan pads each action's lists to one
    # length with two more slots: a need of time 0 (never waited for) and a result nobody reads.
    available: list[float | None] = [None] * (SLOTS_PER_CELL * schedule.stages * schedule.microbatches) + [0.0, 0.0]
    waiting = [-1] * len(available)  # slot -> the rank stopped until it is published (its one reader)
    link_free = [0.0] * (max(transfer_link) + 1 if transfer_link else 0)  # when each link's last transfer ends
    begin = [0.0] * len(transfer_link)  # each transfer's start
    starts = [0.0] * bounds[-1]
    cursor, free_at = bounds[:-1], [0.0] * n
    sends_land = [0.0] * n  # blocking: when the rank's previous action's sends have landed
    runnable = list(range(n))

    while runnable:
        rank = runnable.pop()
        i, end, t = cursor[rank], bounds[rank + 1], free_at[rank]
        while i < end:
            start = sends_land[rank] if blocking and sends_land[rank] > t else t
            for sl in needs[i]:
                ready = available[sl]
                if ready is None:
                    break
                if ready > start:
                    start = ready
            else:
                t = start + length[i]
                starts[i] = start
                landed = 0.0
                for sl in outs[i]:
                    if sl < 0:  # a transfer: through its link, one at a time (Link.carry, unrolled)
                        sent = ~sl
                        link = transfer_link[sent]
                        free = link_free[link]
                        go = t if t > free else free
                        arrive = link_free[link] = go + p2p
                        begin[sent] = go
                        if arrive > landed:
                            landed = arrive
                        sl = transfer_slot[sent]
                        available[sl] = arrive
                    else:
                        available[sl] = t
                    if waiting[sl] >= 0:
                        runnable.append(waiting[sl])
                if blocking:
                    sends_land[rank] = landed
                i += 1
                continue
            waiting[sl] = rank
            break  # woken when the slot is published
        cursor[rank], free_at[rank] = i, t
    return [c - b for c, b in zip(cursor, bounds)], starts, begin, p.transfers


def receiving_actions(index: OpIndex) -> dict[Data, np.ndarray]:
    """Per datum sent across stages, per cell: the index of the action that receives it (the
    trace's P2P ``action``).  A complete cell holds exactly one of the consumer kinds (a B or
    else an I: rules.WORK), and an absent kind's index is -1, so the largest index is it."""
    out = {}
    for data, (kinds, _) in SENT.items():
        if kinds:
            out[data] = np.max([index.action_of[k] for k in kinds], axis=0)
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
    _, first, which = np.unique(sig, return_index=True, return_inverse=True)
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
    cursor, starts, begin, transfers = replay(schedule, index, length.tolist(), costs.p2p,
                                              costs.p2p_mode == "blocking")
    stuck = deadlock_error(schedule, cursor)
    if stuck:
        raise stuck
    acts = np.empty(len(head), dtype=_ACTION_DTYPE)
    acts["timeline"] = np.asarray(timeline, dtype=np.int64)[which]
    acts["rank"], acts["idx"], acts["start"], acts["factor"], acts["pair"] = rank, idx, starts, factor, pair
    for member, op in (("0", head), ("1", tail)):
        acts["kind" + member], acts["microbatch" + member] = flat.kind[op], flat.microbatch[op]
        acts["stage" + member], acts["direction" + member] = flat.stage[op], flat.direction[op]
    rec.actions = acts
    rec.comm = _transfers(schedule, index, transfers, begin, costs.p2p)
    return Trace.of_run(schedule, costs, rec, stages_on_rank=index.stages_on_rank)


def _transfers(schedule: Schedule, index: OpIndex, transfers: tuple, begin: list[float], p2p: float) -> np.ndarray:
    """The P2P rows (CommRow fields) of the replay's transfers."""
    sender, receiver, data, op, to = transfers
    flat, S = index.flat, schedule.stages
    rows = np.empty(len(op), dtype=COMM_DTYPE)
    rows["channel"], rows["rank"], rows["peer"], rows["kind"] = P2P, sender, receiver, data
    m = flat.microbatch[op]
    rows["microbatch"], rows["stage"], rows["direction"] = m, flat.stage[op], flat.direction[op]
    start = np.asarray(begin, dtype="f8")
    rows["start"], rows["end"], rows["part"] = start, start + p2p, -1
    consumer = np.full((len(Data), S * schedule.microbatches), -1, dtype=np.int64)
    for d, table in receiving_actions(index).items():
        consumer[d] = table
    rows["action"] = consumer[data, m * S + to]
    return rows
