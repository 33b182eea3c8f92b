"""Schedules as PyTorch ``torch.distributed.pipelining`` action strings.

The action form is one line per rank, actions separated by spaces (or commas,
so the CSV that PyTorch's ``_dump_csv`` writes reads too)::

    # dualpipe-sim: schedule=1f1b stages=2 microbatches=2
    0F0 0F1 0B0 0B1
    1F0 1B0 1F1 1B1

An action is PyTorch's ``_Action`` string: stage, kind, micro-batch (``0F1``;
kinds F, B, I, W), or an overlapped pair ``(0F7;3B2)OVERLAP_F_B`` with its
forward first.  The stage is the global stage id; our one extension is a
direction suffix, ``0F5@1`` for a micro-batch fed from the other end
(DualPipe, Chimera), exactly as :class:`~dualpipe_sim.ir.Op` prints.

* Line k (blank and ``#`` lines skipped) is rank k; a line may start with
  ``rank k:`` (the ``schedule --format text`` form), and k must then match.
  The stage-to-rank layout is read off where the ops appear, so one stage per
  rank, the V layout and any other need no declaration.
* The optional header ``# dualpipe-sim: schedule=NAME stages=S
  microbatches=M`` (before the first rank line) gives the name and shape;
  without it the name is ``custom`` and S and M are 1 + the largest stage and
  micro-batch ids in the file.
* PyTorch's communication and sharding actions (``1SEND_F0``, ``2RECV_B3``,
  ``0UNSHARD``, ...) are skipped and counted in ``meta["ignored"]``: the
  simulator derives every transfer from the F/B dependencies itself.  Empty
  cells and ``None`` (PyTorch's idle step) are skipped too.

:func:`read_schedule` tells the JSON form from this one by content and
validates the result, so every problem comes back as one ScheduleError line.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from .schedules.ir import FB, Action, Op, Schedule, ScheduleError, ops_of
from .schedules.rules import KIND_NAMES, PAIR_BACKWARDS, Kind
from .engine.validate import validate
from .errors import cut, shown

HEADER = "# dualpipe-sim:"
_HEADER = re.compile(r"#\s*dualpipe-sim:")
HEADER_KEYS = ("schedule", "stages", "microbatches")
COMM_KINDS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B", "UNSHARD", "RESHARD", "REDUCE_GRAD")

_OP = re.compile(r"(\d+)([" + "".join(KIND_NAMES) + r"])(\d+)(?:@(\d+))?", re.ASCII)  # kinds: rules.Kind
_PAIR = re.compile(r"\(([^;()]*);([^;()]*)\)OVERLAP_F_B")
_COMM = re.compile(r"\d+(?:" + "|".join(COMM_KINDS) + r")\d*(?:@\d+)?", re.ASCII)
_RANK = re.compile(r"rank\s+(\d+)\s*:", re.ASCII)
_SEP = re.compile(r"[\s,]+")
_EXAMPLES = "like 0F1, 3B0, 1I2, 1W2, 0F5@1 or (0F7;3B2)OVERLAP_F_B"


def format_actions(schedule: Schedule) -> str:
    """The header line, then one line of action strings per rank."""
    lines = [f"{HEADER} schedule={schedule.name} stages={schedule.stages} microbatches={schedule.microbatches}"]
    for rank, actions in enumerate(schedule.ranks):
        if not actions:
            raise ScheduleError(f"rank {rank} has no ops; the action form cannot write an empty rank (use json)")
        lines.append(" ".join(str(a) for a in actions))
    return "\n".join(lines) + "\n"


def parse_actions(text: str, source: str = "actions") -> Schedule:
    """Parse the action form (see the module docstring); does not validate."""
    header: dict[str, str] = {}
    ranks: list[tuple[Action, ...]] = []
    ignored: Counter = Counter()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{source}: line {lineno}"
        head = _HEADER.match(line)
        if head:
            if header or ranks:
                raise ScheduleError(f"{where}: the '{HEADER}' header must come once, before the rank lines")
            header = _parse_header(line[head.end():], where)
            continue
        if not line or line.startswith("#"):
            continue
        rank = len(ranks)
        where = f"{where} (rank {rank})"
        prefix = _RANK.match(line)
        if prefix:
            if int(prefix.group(1)) != rank:
                raise ScheduleError(f"{where}: says 'rank {prefix.group(1)}:' but rank lines go 0, 1, ... in order")
            line = line[prefix.end():]
        actions = []
        for token in _SEP.split(line):
            if token in ("", "None"):
                continue
            if _COMM.fullmatch(token):
                ignored[re.sub(r"[\d@]", "", token)] += 1
                continue
            actions.append(_parse_action(token, where))
        ranks.append(tuple(actions))
    if not ranks:
        raise ScheduleError(f"{source}: no rank lines (write one line of actions per rank, {_EXAMPLES})")
    ops = [op for actions in ranks for a in actions for op in ops_of(a)]
    stages = int(header.get("stages", 1 + max((op.stage for op in ops), default=-1)))
    microbatches = int(header.get("microbatches", 1 + max((op.microbatch for op in ops), default=-1)))
    name = header.get("schedule", "custom")
    return Schedule(name, stages, microbatches, tuple(ranks), meta={"ignored": dict(ignored)})


def _parse_header(body: str, where: str) -> dict[str, str]:
    fields = {}
    for item in body.split():
        key, eq, value = item.partition("=")
        if key not in HEADER_KEYS or not eq or not value:
            keys = ", ".join(HEADER_KEYS)
            raise ScheduleError(f"{where}: header item {shown(item)} is not KEY=VALUE with KEY one of {keys}")
        if key != "schedule" and not re.fullmatch("[0-9]*[1-9][0-9]*", value):
            raise ScheduleError(f"{where}: header {cut(key + '=' + value)}: must be a whole number >= 1")
        fields[key] = value
    return fields


def _parse_action(token: str, where: str) -> Action:
    pair = _PAIR.fullmatch(token)
    if pair:
        fwd, bwd = (_parse_op(t, token, where) for t in pair.groups())
        if fwd.kind != Kind.F or bwd.kind not in PAIR_BACKWARDS:
            raise ScheduleError(
                f"{where}: bad token {shown(token)}: OVERLAP_F_B pairs a forward with a backward, forward first: (0F7;3B2)"
            )
        return FB(fwd, bwd)
    return _parse_op(token, token, where)


def _parse_op(text: str, token: str, where: str) -> Op:
    m = _OP.fullmatch(text.strip())
    if not m:
        raise ScheduleError(f"{where}: bad token {shown(token)}: expected STAGE KIND MICROBATCH[@DIRECTION], {_EXAMPLES}")
    stage, kind, microbatch, direction = m.groups()
    if direction not in (None, "0", "1"):
        raise ScheduleError(f"{where}: bad token {shown(token)}: direction must be @0 or @1")
    return Op(kind, int(microbatch), int(stage), int(direction or 0))


def detect_format(text: str) -> str:
    """``json`` when the text is a JSON document (starts with { or [), else ``actions``."""
    return "json" if text.lstrip().startswith(("{", "[")) else "actions"


def read_schedule(text: str, source: str) -> Schedule:
    """Parse either form (told apart by content, not file name), then validate.

    Every problem is one ScheduleError line starting with ``source``.
    """
    if detect_format(text) == "actions":
        schedule = parse_actions(text, source)
    else:
        try:
            data = json.loads(text)
        # ValueError (JSONDecodeError's base) also covers ints over Python's 4300-digit
        # limit; RecursionError, arrays nested thousands deep.
        except (ValueError, RecursionError) as exc:
            raise ScheduleError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or "ranks" not in data:
            raise ScheduleError(f"{source}: expected an object with a \"ranks\" list")
        try:
            schedule = Schedule.from_json(data)
        except ScheduleError as exc:
            raise ScheduleError(f"{source}: {exc}") from None
    try:
        validate(schedule)
    except ScheduleError as exc:
        raise ScheduleError(f"{source}: {exc}") from None
    return schedule


def ignored_note(schedule: Schedule) -> str | None:
    """One line naming the communication actions a file had and we skipped, or None."""
    ignored = schedule.meta.get("ignored") or {}
    if not ignored:
        return None
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(ignored.items()))
    return f"skipped {sum(ignored.values())} communication actions ({kinds}): transfers come from the F/B dependencies"
