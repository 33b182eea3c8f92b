"""Dependency rules and the proof that a schedule can run to the end.

The rules (one micro-batch, one direction, S stages):

* ``F`` at stage s needs ``F`` at stage s-1 (the activation);
* ``B``/``I`` at stage s needs ``F`` at stage s (its saved activations) and the
  ``B``/``I`` at stage s+1 (the gradient), except at the last stage;
* ``W`` at stage s needs the ``I`` at stage s.

:func:`validate` checks completeness (every op exactly once) and replays the
per-rank orders with zero durations: a rank runs its next action as soon as
every op it needs has run somewhere.  If ranks stop with actions left, the
schedule deadlocks and the error names each stuck action and what it waits for.
"""

from __future__ import annotations

from collections import defaultdict

from .ir import FB, Action, Op, Schedule, ScheduleError, ops_of


def dependencies(op: Op, stages: int) -> list[Op]:
    """The ops whose results ``op`` consumes (B and I are interchangeable as producers; see _producer)."""
    m, s, d = op.microbatch, op.stage, op.direction
    if op.kind == "F":
        return [Op("F", m, s - 1, d)] if s > 0 else []
    if op.kind in ("B", "I"):
        deps = [Op("F", m, s, d)]
        if s < stages - 1:
            deps.append(Op("G", m, s + 1, d))  # "G": the gradient from B or I of stage s+1
        return deps
    if op.kind == "W":
        return [Op("I", m, s, d)]
    raise ScheduleError(f"unknown op kind {op.kind!r}")


def produced(op: Op) -> list[Op]:
    """The dependency keys that finishing ``op`` satisfies."""
    if op.kind in ("B", "I"):
        keys = [Op("G", op.microbatch, op.stage, op.direction)]
        if op.kind == "I":
            keys.append(op)
        return keys
    return [op]


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
                if action.forward.kind != "F" or action.backward.kind not in ("B", "I"):
                    raise ScheduleError(f"rank {rank}: {action} must pair an F with a B or I")
                if action.forward.microbatch == action.backward.microbatch:
                    # Its backward would need its own forward finished first: it can never start.
                    raise ScheduleError(f"rank {rank}: {action} overlaps a micro-batch with itself; "
                                        f"an FB pair needs two different micro-batches")
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
    for m in range(M):
        d = direction_of[m]
        if d is None:
            raise ScheduleError(f"micro-batch {m} has no ops at all")
        for s in range(S):
            if ("F", m, s, d) not in where:
                raise ScheduleError(f"missing op {Op('F', m, s, d)}: forward of micro-batch {m} at stage {s}")
            has_b, has_i, has_w = (("B", m, s, d) in where), (("I", m, s, d) in where), (("W", m, s, d) in where)
            if has_b and (has_i or has_w):
                raise ScheduleError(
                    f"micro-batch {m} stage {s} has both a full backward {Op('B', m, s, d)} and a split one"
                )
            if not has_b:
                if not has_i:
                    raise ScheduleError(
                        f"missing op {Op('B', m, s, d)}: backward (B, or I and W) of micro-batch {m} at stage {s}"
                    )
                if not has_w:
                    raise ScheduleError(f"missing op {Op('W', m, s, d)}: weight-gradient part of {Op('I', m, s, d)}")


def describe_wait(action: Action, done: set, stages: int) -> str:
    missing = []
    for op in ops_of(action):
        for dep in dependencies(op, stages):
            if dep not in done:
                missing.append(_dep_name(dep))
    return ", ".join(missing) or "nothing (blocked by its own rank)"


def _dep_name(dep: Op) -> str:
    if dep.kind == "G":
        suffix = f"@{dep.direction}" if dep.direction else ""
        return f"the gradient from {dep.stage}B{dep.microbatch}{suffix} (or its I)"
    return str(dep)


def _blocker(action: Action, done: set, last: int):
    """The first result ``action`` needs that is not in ``done``, or None (it can run)."""
    if isinstance(action, FB):
        # Both halves' inputs must be there before the pair starts (as in the engine).
        fwd, bwd = action
        return _blocker(fwd, done, last) or _blocker(bwd, done, last)
    kind, m, s, d = action  # plain ops: dependencies() inlined, this runs once per op
    if kind == "F":
        key = ("F", m, s - 1, d)
        return key if s and key not in done else None
    key = ("I", m, s, d) if kind == "W" else ("F", m, s, d)
    if key not in done:
        return key
    if kind != "W" and s < last:
        key = ("G", m, s + 1, d)
        if key not in done:
            return key
    return None


def validate(schedule: Schedule) -> None:
    """Raise ScheduleError unless the schedule is complete and runs to the end.

    Linear in the number of ops: each rank's cursor only moves forward, and a
    blocked rank is woken once, by the result it waits for.
    """
    check_complete(schedule)
    last = schedule.stages - 1
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
            blocker = _blocker(action, done, last)
            if blocker is not None:
                waiting_on[blocker].append(rank)
                break
            i += 1
            for op in ops_of(action):
                kind, m, s, d = op
                keys = (("G", m, s, d), op) if kind == "I" else (("G", m, s, d),) if kind == "B" else (op,)
                for key in keys:
                    done.add(key)
                    woken = waiting_on.pop(key, None)
                    if woken:
                        ready.extend(woken)
        pos[rank] = i
    stuck = [(r, schedule.ranks[r][pos[r]]) for r in range(schedule.num_ranks) if pos[r] < len(schedule.ranks[r])]
    if stuck:
        lines = "; ".join(f"rank {r} is stuck at {a} waiting for {describe_wait(a, done, last + 1)}" for r, a in stuck)
        raise ScheduleError(f"schedule deadlocks: {lines}")
