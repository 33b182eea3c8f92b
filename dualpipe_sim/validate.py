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

from collections import Counter, defaultdict

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
    seen: Counter = Counter()
    where: dict[Op, int] = {}
    direction_of: dict[int, int] = {}
    for rank, actions in enumerate(schedule.ranks):
        for action in actions:
            if isinstance(action, FB) and (action.forward.kind != "F" or action.backward.kind not in ("B", "I")):
                raise ScheduleError(f"rank {rank}: {action} must pair an F with a B or I")
            for op in ops_of(action):
                if not (0 <= op.stage < S):
                    raise ScheduleError(f"rank {rank}: {op} has stage {op.stage}, outside 0..{S - 1}")
                if not (0 <= op.microbatch < M):
                    raise ScheduleError(f"rank {rank}: {op} has micro-batch {op.microbatch}, outside 0..{M - 1}")
                d = direction_of.setdefault(op.microbatch, op.direction)
                if d != op.direction:
                    raise ScheduleError(
                        f"rank {rank}: {op} runs micro-batch {op.microbatch} in direction {op.direction}, "
                        f"but it runs in direction {d} elsewhere"
                    )
                seen[op] += 1
                if seen[op] > 1:
                    raise ScheduleError(f"rank {rank}: {op} appears twice (also on rank {where[op]})")
                where[op] = rank
    schedule.placement()  # one rank per (direction, stage)
    for m in range(M):
        d = direction_of.get(m)
        if d is None:
            raise ScheduleError(f"micro-batch {m} has no ops at all")
        for s in range(S):
            f, b, i, w = (Op(k, m, s, d) for k in "FBIW")
            if not seen[f]:
                raise ScheduleError(f"missing op {f}: forward of micro-batch {m} at stage {s}")
            if seen[b] and (seen[i] or seen[w]):
                raise ScheduleError(f"micro-batch {m} stage {s} has both a full backward {b} and a split one")
            if not seen[b]:
                if not seen[i]:
                    raise ScheduleError(f"missing op {b}: backward (B, or I and W) of micro-batch {m} at stage {s}")
                if not seen[w]:
                    raise ScheduleError(f"missing op {w}: weight-gradient part of {i}")


def describe_wait(action: Action, done: set, stages: int) -> str:
    missing = []
    members = set(ops_of(action))
    for op in ops_of(action):
        for dep in dependencies(op, stages):
            if dep not in done and not _satisfied_within(dep, members):
                missing.append(_dep_name(dep))
    return ", ".join(missing) or "nothing (blocked by its own rank)"


def _satisfied_within(dep: Op, members: set) -> bool:
    return any(dep in produced(op) for op in members)


def _dep_name(dep: Op) -> str:
    if dep.kind == "G":
        suffix = f"@{dep.direction}" if dep.direction else ""
        return f"the gradient from {dep.stage}B{dep.microbatch}{suffix} (or its I)"
    return str(dep)


def validate(schedule: Schedule) -> None:
    """Raise ScheduleError unless the schedule is complete and runs to the end."""
    check_complete(schedule)
    S = schedule.stages
    done: set[Op] = set()
    pos = [0] * schedule.num_ranks
    waiting_on: dict[Op, list[int]] = defaultdict(list)
    ready = list(range(schedule.num_ranks))
    while ready:
        rank = ready.pop()
        actions = schedule.ranks[rank]
        while pos[rank] < len(actions):
            action = actions[pos[rank]]
            members = ops_of(action)
            blocker = None
            for op in members:
                for dep in dependencies(op, S):
                    if dep not in done and not any(dep in produced(o) for o in members):
                        blocker = dep
                        break
                if blocker:
                    break
            if blocker is not None:
                waiting_on[blocker].append(rank)
                break
            pos[rank] += 1
            for op in members:
                for key in produced(op):
                    done.add(key)
                    ready.extend(waiting_on.pop(key, ()))
    stuck = [(r, schedule.ranks[r][pos[r]]) for r in range(schedule.num_ranks) if pos[r] < len(schedule.ranks[r])]
    if stuck:
        lines = "; ".join(f"rank {r} is stuck at {a} waiting for {describe_wait(a, done, S)}" for r, a in stuck)
        raise ScheduleError(f"schedule deadlocks: {lines}")
