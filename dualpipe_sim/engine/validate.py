"""Proof that a schedule can run to the end: completeness and a zero-time replay.

The dependency rules themselves live in rules.py, the replay in replay.py.
:func:`index_ops` checks completeness (every micro-batch runs one of
``rules.WORK`` on every stage, each op once) in the scan that finds where each
op sits; :func:`check_complete` words what is wrong.  :func:`validate` then
replays the per-rank orders with zero durations: if ranks stop with actions
left, the schedule deadlocks and the error names each stuck action and what it
waits for (replay.deadlock_error).
"""

from __future__ import annotations

from array import array
from itertools import chain

import numpy as np

from ..errors import shown
from ..schedules.ir import FB, Op, Schedule, ScheduleError, ops_of
from ..schedules.rules import KIND_CODES, KINDS, PAIR_BACKWARDS, RULES, WORK, Kind, pair_problem
from .replay import Flat, OpIndex, deadlock_error, replay


def check_complete(schedule: Schedule) -> None:
    """Every micro-batch runs every stage's F once and its B (or I and W) once."""
    S, M = schedule.stages, schedule.microbatches
    if S < 1 or M < 1:
        raise ScheduleError(f"a schedule needs stages >= 1 and microbatches >= 1, got {S} and {M}")
    # Before sizing anything by M: a file may declare far more micro-batches than it holds.
    count = sum(len(ops_of(a)) for actions in schedule.ranks for a in actions)
    if count < M:
        raise ScheduleError(
            f"the schedule declares {M if M < 10**12 else f'{float(M):.3g}'} micro-batches but holds only {count} ops "
            f"(each micro-batch needs an F and a B, or I and W, on every stage)"
        )
    # Ops are NamedTuples, so plain (kind, microbatch, stage, direction) tuples look them up.
    where: dict[Op, int] = {}
    direction_of: list[int | None] = [None] * M
    for rank, actions in enumerate(schedule.ranks):
        for action in actions:
            if isinstance(action, FB):
                problem = pair_problem(*action)
                if problem:
                    raise ScheduleError(f"rank {rank}: {action} {problem}")
                members = action
            else:
                members = (action,)
            for op in members:
                kind, m, s, d = op
                fields_problem = _fields_problem(kind, m, s, d)  # an API-built Op may hold a float or a text
                if fields_problem:
                    raise ScheduleError(f"rank {rank}: {op} {fields_problem}")
                if not (0 <= s < S):
                    raise ScheduleError(f"rank {rank}: {op} has stage {s}, outside 0..{S - 1}")
                if not (0 <= m < M):
                    raise ScheduleError(f"rank {rank}: {op} has micro-batch {m}, outside 0..{M - 1}")
                dm = direction_of[m]
                if dm is None:
                    direction_of[m] = d
                elif dm != d:
                    raise ScheduleError(
                        f"rank {rank}: {op} runs micro-batch {m} in direction {d}, "
                        f"but it runs in direction {dm} elsewhere"
                    )
                if op in where:
                    raise ScheduleError(f"rank {rank}: {op} appears twice (also on rank {where[op]})")
                where[op] = rank
    schedule.placement()  # one rank per (direction, stage)
    work = [frozenset(w) for w in WORK]
    for m in range(M):
        d = direction_of[m]
        if d is None:
            raise ScheduleError(f"micro-batch {m} has no ops at all")
        for s in range(S):
            present = frozenset(k for k in KINDS if (k, m, s, d) in where)
            if present in work:
                continue
            fits = [w for w in WORK if present <= frozenset(w)]
            if not fits:  # e.g. a full backward and a split one
                ran = " and ".join(str(Op(k, m, s, d)) for k in KINDS if k in present)
                allowed = " or ".join("+".join(k.value for k in w) for w in WORK)
                raise ScheduleError(f"micro-batch {m} stage {s} runs {ran}: it must run {allowed}, each once")
            kind = next(k for k in fits[0] if k not in present)
            raise ScheduleError(
                f"missing op {Op(kind, m, s, d)}: {RULES[kind].words} of micro-batch {m} at stage {s}"
            )


def _fields_problem(kind, m, s, d) -> str | None:
    """None if an op's fields have the types and values index_ops takes, else why not."""
    if kind not in KINDS:
        return f"has kind {shown(kind)}, not one of {', '.join(k.value for k in KINDS)}"
    for name, value in (("micro-batch", m), ("stage", s), ("direction", d)):
        if not isinstance(value, int):
            return f"has {name} {shown(value)}, not a whole number"
    return None if d in (0, 1) else f"has direction {d}, not 0 or 1"


def flat_ops(schedule: Schedule) -> Flat | None:
    """The ops of ``schedule`` as numpy columns (replay.Flat), read off the action objects in
    one pass per rank; None when some action is not an op or pair of a known kind."""
    ranks = schedule.ranks
    if set(map(type, chain.from_iterable(ranks))) == {Op}:  # every action a lone Op
        return _flat_lone_ops(ranks)
    columns, owner, member, bounds = [], [], [], [0]
    try:
        for actions in schedule.ranks:
            first = bounds[-1]
            bounds.append(first + len(actions))
            if FB in set(map(type, actions)):
                ops = [op for a in actions for op in (a if type(a) is FB else (a,))]
                width = np.fromiter((2 if type(a) is FB else 1 for a in actions), dtype=np.int64, count=len(actions))
                owner.append(np.repeat(np.arange(first, bounds[-1]), width))
                second = np.zeros(len(ops), dtype=np.int8)
                second[np.cumsum(width)[width == 2] - 1] = 1
                member.append(second)
            else:
                ops = actions
                owner.append(np.arange(first, bounds[-1]))
                member.append(np.zeros(len(ops), dtype=np.int8))
            if ops:
                kinds, ms, ss, ds = zip(*ops)
                numbers = [np.array(v) for v in (ms, ss, ds)]
                if any(a.dtype.kind not in "iub" for a in numbers):  # a float, a text, an int past int64
                    return None
                columns.append([np.array(list(map(KIND_CODES.__getitem__, kinds)), dtype=np.int64),
                                *(a.astype(np.int64) for a in numbers)])  # fmt: skip
        kind, m, s, d = (np.concatenate([c[i] for c in columns]) if columns else np.empty(0, np.int64)
                         for i in range(4))  # fmt: skip
    except (TypeError, ValueError, KeyError, OverflowError):  # not four fields, an unknown kind, a huge number
        return None
    cat = (lambda parts, t: np.concatenate(parts).astype(t)) if owner else (lambda parts, t: np.empty(0, t))
    return Flat(kind, m, s, d, cat(owner, np.int64), cat(member, np.int8), bounds)


def _flat_lone_ops(ranks: list) -> Flat | None:
    """flat_ops when every action is one Op (four fields each): the fields of all ranks read in
    one pass, each column's type found by numpy as in flat_ops."""
    fields = list(chain.from_iterable(chain.from_iterable(ranks)))
    try:
        kind = np.array(list(map(KIND_CODES.__getitem__, fields[0::4])), dtype=np.int64)
    except (TypeError, KeyError):  # an unknown kind
        return None
    try:  # array("q") takes ints (and bools) only, as flat_ops's dtype check
        numbers = [np.frombuffer(array("q", fields[k::4]), dtype=np.int64) for k in (1, 2, 3)]
    except (TypeError, OverflowError):  # a float, a text, an int past int64
        return None
    bounds = np.cumsum([0, *map(len, ranks)]).tolist()
    return Flat(kind, *numbers, np.arange(bounds[-1]), np.zeros(bounds[-1], np.int8), bounds)


def index_ops(schedule: Schedule) -> OpIndex:
    """Where each op of ``schedule`` sits, found with numpy over its columns (flat_ops), which
    also proves it complete; when it is not, :func:`check_complete` words the first problem."""
    S, M = schedule.stages, schedule.microbatches
    if S < 1 or M < 1 or 2 * sum(len(actions) for actions in schedule.ranks) < M:
        check_complete(schedule)  # raises (and before anything is sized by M)
    flat = flat_ops(schedule)
    if flat is None:
        return _incomplete(schedule)
    kind, m, s, d, member = flat.kind, flat.microbatch, flat.stage, flat.direction, flat.member
    if ((m < 0) | (m >= M) | (s < 0) | (s >= S) | ((d != 0) & (d != 1))).any():
        return _incomplete(schedule)
    back = np.flatnonzero(member == 1)  # a pair's backward half, right after its forward
    fwd = back - 1
    if ((kind[fwd] != _F) | ~np.isin(kind[back], _PAIR_BACKWARDS) | (m[fwd] == m[back])).any():
        return _incomplete(schedule)  # rules.pair_problem
    n = len(schedule.ranks)
    rank_a = np.repeat(np.arange(n), np.diff(flat.rank_bounds))  # per action: its rank and index there
    idx_a = np.arange(flat.rank_bounds[-1]) - np.asarray(flat.rank_bounds[:-1], dtype=np.int64)[rank_a]
    rank = rank_a[flat.action]
    # One rank per (direction, stage) and one direction per micro-batch: smallest = largest.
    place = d * S + s
    low, high = np.full(2 * S, n), np.full(2 * S, -1)
    np.minimum.at(low, place, rank)
    np.maximum.at(high, place, rank)
    d_low, d_high = np.full(M, 2), np.full(M, -1)
    np.minimum.at(d_low, m, d)
    np.maximum.at(d_high, m, d)
    if (low[high >= 0] != high[high >= 0]).any() or (d_low != d_high).any():
        return _incomplete(schedule)  # two ranks for one stage, two directions, a micro-batch with no ops
    cells = S * M
    where = kind * cells + m * S + s  # (kind, cell(m, s, S))
    if len(where) and np.bincount(where, minlength=len(KINDS) * cells).max() > 1:
        return _incomplete(schedule)  # an op twice
    table = np.full(len(KINDS) * cells, -1, dtype=np.int64)
    table[where] = idx_a[flat.action]
    table = table.reshape(len(KINDS), cells)
    if len(kind) != _ops_of_complete(table, S, M):
        return _incomplete(schedule)
    action_of = {k: table[i] for i, k in enumerate(KINDS)}
    rank_of = tuple(np.where(high >= 0, high, -1).reshape(2, S).tolist())
    on = np.zeros(n * S, dtype=bool)  # (rank, stage) held
    on[rank * S + s] = True
    held = np.flatnonzero(on)
    stages_on_rank = [[] for _ in range(n)]
    for r, stage in zip((held // S).tolist(), (held % S).tolist()):
        stages_on_rank[r].append(stage)
    return OpIndex(action_of, rank_of, stages_on_rank, flat)


_F = KIND_CODES[Kind.F]
_PAIR_BACKWARDS = [KIND_CODES[k] for k in PAIR_BACKWARDS]


def _incomplete(schedule: Schedule):
    check_complete(schedule)  # raises for every schedule index_ops refuses
    raise ScheduleError("schedule is incomplete")  # not reached unless the two disagree


def _ops_of_complete(action_of: np.ndarray, stages: int, microbatches: int) -> int:
    """How many ops a complete schedule holding these ops has; -1 if some cell runs a set of
    kinds that is not one of rules.WORK (an op missing, or a B beside an I)."""
    ops_for = np.full(1 << len(KINDS), -1, dtype=np.int64)  # bit mask of kinds -> ops in it, -1: not allowed
    for work in WORK:
        ops_for[sum(1 << KINDS.index(k) for k in work)] = len(work)
    mask = np.zeros(stages * microbatches, dtype=np.int64)
    for bit, kind in enumerate(KINDS):
        mask |= (action_of[bit] >= 0).astype(np.int64) << bit
    got = ops_for[mask]
    return -1 if (got < 0).any() else int(got.sum())


def validate(schedule: Schedule) -> OpIndex:
    """Raise ScheduleError unless the schedule is complete and runs to the end; return its
    OpIndex.  The run to the end is replay.py's replay with every action taking no time
    (whether a rank can go on never depends on durations: a link always delivers)."""
    index = index_ops(schedule)
    stuck = deadlock_error(schedule, replay(schedule, index)[0])
    if stuck:
        raise stuck
    return index
