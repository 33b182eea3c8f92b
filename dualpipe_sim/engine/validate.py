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

import numpy as np

from ..schedules.ir import FB, Op, Schedule, ScheduleError, ops_of
from ..schedules.rules import KINDS, RULES, WORK, Kind, pair_problem
from .replay import OpIndex, deadlock_error, replay


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
                _, m, s, d = op
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


def index_ops(schedule: Schedule) -> OpIndex:
    """Where each op of ``schedule`` sits, in one scan that also proves it complete; when it
    is not, :func:`check_complete` words the first problem."""
    S, M = schedule.stages, schedule.microbatches
    if S < 1 or M < 1 or 2 * sum(len(actions) for actions in schedule.ranks) < M:
        check_complete(schedule)  # raises (and before anything is sized by M)
    cells = S * M
    action_of: dict[Kind, list[int]] = {k: [-1] * cells for k in KINDS}
    rank_of = ([-1] * S, [-1] * S)
    direction_of = [-1] * M
    held: list[set[int]] = [set() for _ in schedule.ranks]
    ops = 0
    for rank, actions in enumerate(schedule.ranks):
        for idx, action in enumerate(actions):
            pair = type(action) is FB
            if pair and pair_problem(*action):
                return _incomplete(schedule)
            for kind, m, s, d in action if pair else (action,):
                ops += 1
                where = action_of.get(kind)
                if where is None or not (0 <= m < M and 0 <= s < S and d in (0, 1)):
                    return _incomplete(schedule)
                c = m * S + s  # cell(m, s, S), written out: once per op
                if rank_of[d][s] not in (-1, rank) or direction_of[m] not in (-1, d) or where[c] >= 0:
                    return _incomplete(schedule)  # two ranks for one stage, two directions, an op twice
                rank_of[d][s], direction_of[m], where[c] = rank, d, idx
                held[rank].add(s)
    if -1 in direction_of or ops != _ops_of_complete(action_of, S, M):
        return _incomplete(schedule)
    return OpIndex(action_of, rank_of, [sorted(h) for h in held])


def _incomplete(schedule: Schedule):
    check_complete(schedule)  # raises for every schedule index_ops refuses
    raise ScheduleError("schedule is incomplete")  # not reached unless the two disagree


def _ops_of_complete(action_of: dict[Kind, list[int]], stages: int, microbatches: int) -> int:
    """How many ops a complete schedule holding these ops has; -1 if some cell runs a set of
    kinds that is not one of rules.WORK (an op missing, or a B beside an I)."""
    ops_for = np.full(1 << len(KINDS), -1, dtype=np.int64)  # bit mask of kinds -> ops in it, -1: not allowed
    for work in WORK:
        ops_for[sum(1 << KINDS.index(k) for k in work)] = len(work)
    mask = np.zeros(stages * microbatches, dtype=np.int64)
    for bit, kind in enumerate(KINDS):
        mask |= (np.asarray(action_of[kind]) >= 0).astype(np.int64) << bit
    got = ops_for[mask]
    return -1 if (got < 0).any() else int(got.sum())


def validate(schedule: Schedule) -> OpIndex:
    """Raise ScheduleError unless the schedule is complete and runs to the end; return its
    OpIndex.  The run to the end is replay.py's replay with every action taking no time
    (whether a rank can go on never depends on durations: a link always delivers)."""
    index = index_ops(schedule)
    stuck = deadlock_error(schedule, replay(schedule, index, lambda rank, idx, action, members, start: start))
    if stuck:
        raise stuck
    return index
