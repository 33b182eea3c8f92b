"""Proof that a schedule can run to the end: completeness and a zero-time replay.

The dependency rules themselves live in rules.py.  :func:`validate` checks
completeness (every micro-batch runs one of ``rules.WORK`` on every stage, each
op once) and replays the per-rank orders with zero durations: a rank runs its
next action as soon as every key it needs has been produced somewhere.  If ranks
stop with actions left, the schedule deadlocks and the error names each stuck
action and what it waits for.
"""

from __future__ import annotations

from collections import defaultdict

from ..schedules.ir import FB, Action, Op, Schedule, ScheduleError, ops_of
from ..schedules.rules import KINDS, RULES, WORK, key_words, needs, pair_problem


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


def describe_wait(action: Action, done: set, stages: int) -> str:
    """What ``action`` still waits for, given the keys in ``done``, in words."""
    missing = [key_words(key) for op in ops_of(action) for key in needs(*op, stages) if key not in done]
    return ", ".join(missing) or "nothing (blocked by its own rank)"


def validate(schedule: Schedule) -> None:
    """Raise ScheduleError unless the schedule is complete and runs to the end.

    Linear in the number of ops: each rank's cursor only moves forward, and a
    blocked rank is woken once, by the key it waits for.
    """
    check_complete(schedule)
    stages = schedule.stages
    # Per kind: (data, offset) of each need, and what it produces (rules.RULES, read once).
    wants = {k: tuple((n.data, n.offset) for n in r.needs) for k, r in RULES.items()}
    makes = {k: r.produces for k, r in RULES.items()}
    done: set = set()
    pos = [0] * schedule.num_ranks
    waiting_on: dict[tuple, list[int]] = defaultdict(list)
    ready = list(range(schedule.num_ranks))
    while ready:
        rank = ready.pop()
        actions = schedule.ranks[rank]
        i = pos[rank]
        while i < len(actions):
            action = actions[i]
            blocker = None
            for kind, m, s, d in action if isinstance(action, FB) else (action,):
                for data, offset in wants[kind]:
                    if 0 <= s + offset < stages and (data, m, s + offset, d) not in done:
                        blocker = (data, m, s + offset, d)
                        break
                if blocker is not None:
                    break
            if blocker is not None:
                waiting_on[blocker].append(rank)
                break
            i += 1
            for kind, m, s, d in action if isinstance(action, FB) else (action,):
                for data in makes[kind]:
                    key = (data, m, s, d)
                    done.add(key)
                    woken = waiting_on.pop(key, None)
                    if woken:
                        ready.extend(woken)
        pos[rank] = i
    stuck = [(r, schedule.ranks[r][pos[r]]) for r in range(schedule.num_ranks) if pos[r] < len(schedule.ranks[r])]
    if stuck:
        lines = "; ".join(f"rank {r} is stuck at {a} waiting for {describe_wait(a, done, stages)}" for r, a in stuck)
        raise ScheduleError(f"schedule deadlocks: {lines}")
