"""The schedule IR: what a rank executes, in order, as plain data.

Every schedule generator compiles to this form and the engine replays only this
form, so a schedule from a file and one from the registry are treated alike.

An :class:`Op` is one chunk of work for one micro-batch on one stage:

* ``F`` forward, ``B`` full backward,
* ``I`` the input-gradient part of a backward whose weight part runs later,
* ``W`` that weight-gradient part.

``stage`` is the position along the micro-batch's own path (0 = the stage it
enters first) and is also the model stage whose parameters the op uses.
``direction`` is 0 for micro-batches fed at the usual end, 1 for those fed from
the other end (DualPipe, Chimera).

An :class:`FB` is a forward of one micro-batch overlapped with a backward of
another, run as one unit on one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Union

from .rules import KINDS, PAIR_BACKWARDS, PAIR_KIND, Kind
from ..errors import InputError, shown


class Op(NamedTuple):
    kind: str
    microbatch: int
    stage: int
    direction: int = 0

    def __str__(self) -> str:
        # Same shape as torch.distributed.pipelining actions ("0F1" = stage 0,
        # forward, micro-batch 1), with the direction appended when it is not 0.
        suffix = f"@{self.direction}" if self.direction else ""
        return f"{self.stage}{self.kind}{self.microbatch}{suffix}"


class FB(NamedTuple):
    """A forward and a backward chunk of two micro-batches, overlapped."""

    forward: Op
    backward: Op
    kind = PAIR_KIND  # class attribute, not a field: lets code switch on .kind

    def __str__(self) -> str:
        return f"({self.forward};{self.backward})OVERLAP_F_B"

    @property
    def ops(self) -> tuple[Op, Op]:
        return (self.forward, self.backward)


Action = Union[Op, FB]


def ops_of(action: Action) -> tuple[Op, ...]:
    """The plain ops an action consists of (one for an Op, two for an FB)."""
    return action.ops if isinstance(action, FB) else (action,)


@dataclass(frozen=True)
class Schedule:
    """Per-rank ordered action lists, plus the shape they were built for.

    ``stages`` counts model stages along one micro-batch's path; the number of
    ranks is ``len(ranks)``.
    """

    name: str
    stages: int
    microbatches: int
    ranks: tuple[tuple[Action, ...], ...]
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    def num_ops(self) -> int:
        """Plain ops (an FB pair counts two)."""
        return sum(len(ops_of(a)) for actions in self.ranks for a in actions)

    def placement(self) -> dict[tuple[int, int], int]:
        """Map (direction, stage) -> rank, read off the op lists.

        Raises ScheduleError when one (direction, stage) sits on two ranks.
        """
        where: dict[tuple[int, int], int] = {}
        for rank, actions in enumerate(self.ranks):
            for action in actions:
                for op in ops_of(action):
                    key = (op.direction, op.stage)
                    prev = where.setdefault(key, rank)
                    if prev != rank:
                        raise ScheduleError(
                            f"stage {op.stage} (direction {op.direction}) appears on "
                            f"rank {prev} and on rank {rank}: a stage must live on one rank"
                        )
        return where

    def stages_on_rank(self) -> list[list[int]]:
        """Distinct model stages (parameter copies) each rank holds, sorted."""
        held = [set() for _ in self.ranks]
        for rank, actions in enumerate(self.ranks):
            for action in actions:
                for op in ops_of(action):
                    held[rank].add(op.stage)
        return [sorted(s) for s in held]

    # -- serialisation -------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schedule": self.name,
            "stages": self.stages,
            "microbatches": self.microbatches,
            "ranks": [[action_to_json(a) for a in actions] for actions in self.ranks],
        }

    @classmethod
    def from_json(cls, data: dict, name: str | None = None) -> "Schedule":
        listed = data.get("ranks") if isinstance(data, dict) else None
        if not isinstance(listed, list) or not all(isinstance(actions, list) for actions in listed):
            raise ScheduleError(f"schedule JSON: ranks must be a list of each rank's list of actions, got {shown(listed)}")
        try:
            ranks = tuple(tuple(action_from_json(a) for a in actions) for actions in listed)
            stages = _count(data, "stages") or _infer_stages(ranks)
            mbs = _count(data, "microbatches") or _infer_microbatches(ranks)
            return cls(name or str(data.get("schedule", "custom")), stages, mbs, ranks)
        except ScheduleError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: "stages": Infinity
            raise ScheduleError(f"schedule JSON: {exc}") from None

    def to_text(self) -> str:
        return "\n".join(
            f"rank {r}: " + " ".join(str(a) for a in actions) for r, actions in enumerate(self.ranks)
        )


class ScheduleError(InputError):
    """A schedule is malformed, incomplete or cannot run to the end (a family's broken rule
    carries its field, rule and family: errors.InputError)."""


class DeadlockError(ScheduleError):
    """The simulation stopped with actions left on some ranks."""


def action_to_json(action: Action) -> dict:
    if isinstance(action, FB):
        return {"kind": PAIR_KIND, "forward": op_to_json(action.forward), "backward": op_to_json(action.backward)}
    return op_to_json(action)


def op_to_json(op: Op) -> dict:
    return {"kind": op.kind, "microbatch": op.microbatch, "stage": op.stage, "direction": op.direction}


def action_from_json(obj: dict) -> Action:
    if not isinstance(obj, dict):
        raise ScheduleError(f"schedule JSON: an action must be an object, got {shown(obj)}")
    if obj.get("kind") == PAIR_KIND:
        fwd, bwd = op_from_json(obj.get("forward")), op_from_json(obj.get("backward"))
        if fwd.kind != Kind.F or bwd.kind not in PAIR_BACKWARDS:
            raise ScheduleError(f"schedule JSON: FB needs a forward F and a backward B or I, got {shown(obj)}")
        return FB(fwd, bwd)
    return op_from_json(obj)


def op_from_json(obj) -> Op:
    if not isinstance(obj, dict):
        raise ScheduleError(f"schedule JSON: an op must be an object, got {shown(obj)}")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ScheduleError(
            f"schedule JSON: op kind must be one of {', '.join(k.value for k in KINDS)} or {PAIR_KIND}, got {shown(kind)}"
        )
    fields = {}
    for key in ("microbatch", "stage", "direction"):
        value = obj.get(key, 0 if key == "direction" else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ScheduleError(f"schedule JSON: op {key} must be a whole number >= 0, got {shown(value)} in {shown(obj)}")
        fields[key] = value
    if fields["direction"] not in (0, 1):
        raise ScheduleError(f"schedule JSON: op direction must be 0 or 1, got {fields['direction']}")
    return Op(kind, fields["microbatch"], fields["stage"], fields["direction"])


def _count(data: dict, key: str) -> int | None:
    """An optional whole-number field of the schedule JSON (None when absent)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(f"schedule JSON: {key} must be a whole number >= 1, got {str(value)[:40]}")
    return value


def _all_ops(ranks):
    return [op for actions in ranks for a in actions for op in ops_of(a)]


def _infer_stages(ranks) -> int:
    ops = _all_ops(ranks)
    return 1 + max((op.stage for op in ops), default=-1)


def _infer_microbatches(ranks) -> int:
    ops = _all_ops(ranks)
    return 1 + max((op.microbatch for op in ops), default=-1)
