"""What a simulation recorded: time intervals per channel and memory events.

Kept as numpy structured arrays (one row per interval), not one object per
event: metrics, charts and exports are vectorised functions of these arrays.

* ``compute``: one row per compute interval on a rank.  A plain op is one row;
  an FB pair is at least two rows (its forward and backward parts) sharing an
  ``action`` index; the component model writes one row per component.
* ``comm``: one row per transfer: P2P sends between ranks (``channel`` P2P,
  ``rank`` = sender, ``peer`` = receiver) and all-to-all phases on a rank
  (``channel`` A2A, ``peer`` = rank).  ``action`` is the index, in the
  receiving rank's list, of the action that consumes it (-1 when none); for
  an all-to-all, the action it is part of, with ``kind`` that op's kind and
  ``part`` the component index.
* ``consumer``: per comm row, the ``compute`` row its transfer feeds (the
  first row, in row order, of the receiver running that action with the same
  micro-batch and direction, a forward for an activation), -1 when none
  (all-to-all rows, unconsumed sends).  Set by the engines; None in a trace
  built by hand (``consumer_rows`` computes it).
* ``meta["p2p_mode"]``: "async" or "blocking" (the engine's P2P behaviour).
* ``memory``: activation allocations (+) and frees (-) in stage-activation
  units and bytes.
* ``step``: the end-of-step work after the pipeline (step.py), empty unless
  the scenario has [step] figures: one row per grad sync of a stage copy
  (``kind`` StepKind.GRAD_SYNC), per rank of a cross-copy sync (CROSS_COPY,
  ``peer`` = the other copy's rank), per optimizer step (OPTIMIZER,
  ``stage`` -1), per deferred output-layer wgrad drain (DRAIN, ``stage``
  the head's) and per rank whose compute step.dp_comm_sms slowed (SLOWED,
  ``stage`` -1: from the rank's pipeline end, as long as the slowdown accrued
  by then).  ``makespan`` stays the pipeline's; ``end`` includes these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from ..schedules.rules import ALLOCATES, BACKWARDS, FORWARDS, FREES, KIND_CODES, KINDS, RECEIVES, WEIGHT_GRADS, Channel

P2P, A2A = Channel.P2P, Channel.A2A  # the comm rows' channel codes


class ComputeRow(NamedTuple):
    """One compute interval on a rank (a whole op, a pair's half, or one component)."""

    rank: int
    kind: int  # rules.KIND_CODES
    microbatch: int
    stage: int
    direction: int
    start: float
    end: float
    action: int  # index of the action in its rank's list
    overlapped: bool  # part of an FB pair
    part: int  # component index (costs.Component), -1 = whole op


class CommRow(NamedTuple):
    """One transfer: a P2P send between ranks, or an all-to-all phase on a rank."""

    channel: int  # rules.Channel: P2P or A2A
    rank: int  # P2P: the sender; A2A: the rank
    peer: int  # P2P: the receiver; A2A: the rank again
    kind: int  # P2P: rules.Data (0 activation, 1 gradient); A2A: the op's kind code
    microbatch: int
    stage: int  # P2P: the producing op's stage
    direction: int
    start: float
    end: float
    action: int  # P2P: the consuming action's index in the receiver's list (-1 none); A2A: its own action
    part: int  # A2A: component index; P2P: -1


class StepKind(IntEnum):
    """What an end-of-step row is: the trace's ``step["kind"]`` codes."""

    GRAD_SYNC = 0  # on the rank's Channel.GRAD_SYNC
    CROSS_COPY = 1  # on Channel.CROSS_COPY, the pair's link (a row on each rank of the pair)
    OPTIMIZER = 2  # on the rank's Channel.COMPUTE, after its pipeline work
    DRAIN = 3  # on the rank's Channel.COMPUTE: the output layer's deferred wgrad GEMMs after its pipeline work
    # on the rank's Channel.COMPUTE, from its pipeline's end: how much longer its compute ran beside its data-parallel
    # collectives (step.dp_comm_sms), spread over the pipeline but charged, and drawn, where it moves the step's end
    SLOWED = 4


GRAD_SYNC, CROSS_COPY, OPTIMIZER, DRAIN, SLOWED = StepKind
STEP_KIND_NAMES = ("grad_sync", "cross_copy_sync", "optimizer", "drain", "slowed")  # metrics.json / chart names, by code
ON_COMPUTE = (OPTIMIZER, DRAIN, SLOWED)  # the step kinds on the rank's compute (drawn in its compute lane); the rest are syncs


class StepRow(NamedTuple):
    """End-of-step work on a rank after the pipeline (step.py): a sync or its optimizer step."""

    kind: int  # StepKind: GRAD_SYNC, CROSS_COPY, OPTIMIZER, DRAIN or SLOWED
    rank: int
    peer: int  # CROSS_COPY: the rank holding the stage's other copy; else the rank again
    stage: int  # the stage copy synced (DRAIN: the stage holding the output layer); OPTIMIZER, SLOWED: -1 (all the rank holds)
    start: float
    end: float


class MemoryRow(NamedTuple):
    """An activation allocation (+) or free (-) on a rank."""

    time: float
    rank: int
    units: int
    bytes: float


# numpy types of the row fields; each array's dtype is its row's fields in order,
# so a row type and its array cannot disagree.
_FIELD_TYPES = {
    "rank": "i4", "peer": "i4", "channel": "i1", "kind": "i1", "microbatch": "i4", "stage": "i4",
    "direction": "i1", "start": "f8", "end": "f8", "action": "i4", "overlapped": "?", "part": "i1",
    "time": "f8", "units": "i4", "bytes": "f8",
}  # fmt: skip


def _dtype(row: type) -> np.dtype:
    return np.dtype([(name, _FIELD_TYPES[name]) for name in row._fields])


COMPUTE_DTYPE = _dtype(ComputeRow)
COMM_DTYPE = _dtype(CommRow)
MEMORY_DTYPE = _dtype(MemoryRow)
STEP_DTYPE = _dtype(StepRow)


@dataclass
class Trace:
    schedule: str
    stages: int
    microbatches: int
    ranks: int
    compute: np.ndarray
    comm: np.ndarray
    memory: np.ndarray
    stages_on_rank: list[list[int]]
    parameter_bytes: list[float]  # per rank: parameters of every stage it holds
    meta: dict = field(default_factory=dict)
    step: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=STEP_DTYPE))
    consumer: np.ndarray | None = None  # per comm row, the compute row it feeds (-1 none); consumer_rows()

    @property
    def makespan(self) -> float:
        ends = [self.compute["end"].max() if len(self.compute) else 0.0]
        if len(self.comm):
            ends.append(self.comm["end"].max())
        return float(max(ends))

    @property
    def end(self) -> float:
        """When the whole step is over: the makespan, or the last end-of-step row."""
        return max(self.makespan, float(self.step["end"].max())) if len(self.step) else self.makespan

    @classmethod
    def of_run(cls, schedule, costs, builder: "TraceBuilder", stages_on_rank: list[list[int]] | None = None) -> "Trace":
        """The trace of a finished run of ``schedule`` on ``costs`` (the replay core and the SimPy engine alike)."""
        compute, comm, memory = builder.arrays(costs.activation_bytes)
        held = schedule.stages_on_rank() if stages_on_rank is None else stages_on_rank
        return cls(
            schedule=schedule.name,
            stages=schedule.stages,
            microbatches=schedule.microbatches,
            ranks=schedule.num_ranks,
            compute=compute,
            comm=comm,
            memory=memory,
            stages_on_rank=held,
            parameter_bytes=[float(sum(costs.parameter_bytes[s] for s in stages)) for stages in held],
            meta={"p2p_mode": costs.p2p_mode},
            consumer=consumer_rows(compute, comm),
        )

    def compute_of(self, rank: int) -> np.ndarray:
        return self.compute[self.compute["rank"] == rank]


class TraceBuilder:
    """What an engine records while it runs, and the trace arrays it expands to at the end.

    Engines record one entry per action (:meth:`action`: where and when it ran,
    which timeline, stretched by which factor; the replay core hands the same as
    numpy columns, ``columns``) and one CommRow per P2P transfer (or their array).
    An action's rows are its timeline's spans moved to its start, and its memory
    rows follow from rules.ALLOCATES / FREES, so :meth:`arrays` builds them for
    all actions at once with numpy instead of one Python tuple per interval.
    Both engines record through this one class: their traces cannot differ in
    how rows are made, only in when actions start."""

    def __init__(self) -> None:
        self.comm: list[tuple] | np.ndarray = []  # P2P transfers: CommRow, a plain tuple of its fields, or a COMM_DTYPE array
        self.actions: list[tuple] = []  # one _ACTION_DTYPE record per action
        self.columns: dict[str, np.ndarray] | None = None  # or the same as columns, in (rank, idx) order
        self.timelines: list = []  # costs.Timeline, by the index actions refer to
        self._index: dict = {}  # timeline -> its index: equal timelines share one (expanded together)

    def timeline(self, timeline) -> int:
        """The index of ``timeline`` (engines cache it per kind of action)."""
        index = self._index.get(timeline)
        if index is None:
            index = self._index[timeline] = len(self.timelines)
            self.timelines.append(timeline)
        return index

    def action(self, rank: int, idx: int, start: float, timeline: int, factor: float, members) -> None:
        """Action ``idx`` of ``rank`` ran from ``start`` for timeline ``timeline``'s length times ``factor``."""
        a, b = members[0], members[-1]
        self.actions.append(
            (timeline, rank, idx, start, factor, len(members) > 1, KIND_CODES[a[0]], a[1], a[2], a[3],
             KIND_CODES[b[0]], b[1], b[2], b[3])
        )  # fmt: skip

    def arrays(self, activation_bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Each rank's actions in its order.  A rank runs one action at a time and a timeline's
        # spans are sorted by start, so the rows come out sorted by (rank, start) as they are made.
        col = self.columns if self.columns is not None else _action_columns(self.actions)
        timeline = col["timeline"]
        spans = [sp for tl in self.timelines for sp in tl.spans]
        sp_member = np.array([sp.member for sp in spans], dtype=bool)
        sp_t0 = np.array([sp.start for sp in spans], dtype="f8")
        sp_t1 = np.array([sp.end for sp in spans], dtype="f8")
        sp_part = np.array([sp.part for sp in spans], dtype="i1")
        sp_channel = np.array([sp.channel for sp in spans], dtype="i1")
        count = np.array([len(tl.spans) for tl in self.timelines], dtype=np.int64)
        offset = np.cumsum(count) - count
        # Row r belongs to action a[r] and is span pos[r] of its timeline.
        per_action = count[timeline]
        if len(count) and (count == 1).all():  # one span per action (simple costs): row r is action r
            a, span = np.arange(len(timeline)), offset[timeline]
        else:
            a = np.repeat(np.arange(len(timeline)), per_action)
            first = np.cumsum(per_action) - per_action
            span = offset[timeline][a] + (np.arange(len(a)) - first[a])
        on = sp_channel[span]
        tables = {}
        for ch, dtype in ((Channel.COMPUTE, COMPUTE_DTYPE), (Channel.A2A, COMM_DTYPE)):
            sel = np.flatnonzero(on == ch)
            ra, rs = a[sel], span[sel]  # this channel's rows: their actions and spans
            table = np.empty(len(sel), dtype=dtype)
            start, factor = col["start"][ra], col["factor"][ra]
            table["rank"], table["action"] = col["rank"][ra], col["idx"][ra]
            table["start"], table["end"] = start + factor * sp_t0[rs], start + factor * sp_t1[rs]
            table["part"] = sp_part[rs]
            member = sp_member[rs]  # a pair's second member's rows read the actions' second columns
            both = ra + member * len(timeline) if member.any() else None
            for name in ("kind", "microbatch", "stage", "direction"):
                table[name] = col[name + "0"][ra] if both is None else np.concatenate([col[name + "0"], col[name + "1"]])[both]
            if ch == Channel.COMPUTE:
                table["overlapped"] = col["pair"][ra]
            else:
                table["channel"], table["peer"] = ch, table["rank"]
            tables[ch] = table
        compute, a2a = tables[Channel.COMPUTE], tables[Channel.A2A]
        p2p = np.asarray(self.comm, dtype=COMM_DTYPE)
        # peer last: two sends of one rank starting together (on two links) come
        # out in one order whatever order the engine finished them in.
        comm = _sorted(p2p, ("peer", "start", "rank", "channel"))
        if len(a2a):  # P2P (channel 0) before A2A (1): each part in order is the whole in order
            comm = np.concatenate([comm, _sorted(a2a, ("peer", "start", "rank", "channel"))])
        length = np.array([tl.length for tl in self.timelines], dtype="f8")
        memory = _memory(col, col["start"] + length[timeline] * col["factor"], np.asarray(activation_bytes, dtype="f8"))
        compute = _sorted(compute, ("start", "rank"))
        # Frees before allocations at the same instant: a B that ends as the next
        # F starts hands its memory over, it does not coexist with it.
        memory = _sorted(memory, ("units", "time", "rank"))
        return compute, comm, memory


def _action_columns(actions: list[tuple]) -> dict[str, np.ndarray]:
    """TraceBuilder.action's records as columns, in each rank's order."""
    acts = _sorted(np.asarray(actions, dtype=_ACTION_DTYPE), ("idx", "rank"))
    return {name: np.ascontiguousarray(acts[name]) for name in _ACTION_DTYPE.names}


def _memory(col: dict[str, np.ndarray], ends: np.ndarray, act_bytes: np.ndarray) -> np.ndarray:
    """Per action in rank order: its allocations at its start, then its frees at its end
    (member 0 before member 1): four places per action, the empty ones dropped."""
    pair = col["pair"]
    places = np.stack([_ALLOCATES[col["kind0"]], _ALLOCATES[col["kind1"]] & pair,
                       _FREES[col["kind0"]], _FREES[col["kind1"]] & pair], axis=1)  # fmt: skip
    at = np.flatnonzero(places)  # in action order, then place order
    a, place = at >> 2, at & 3
    alloc, second = place < 2, (place & 1).astype(bool)
    rows = np.empty(len(at), dtype=MEMORY_DTYPE)
    rows["time"] = np.where(alloc, col["start"][a], ends[a])
    rows["rank"] = col["rank"][a]
    units = np.where(alloc, 1, -1)
    rows["units"] = units
    rows["bytes"] = units * act_bytes[np.where(second, col["stage1"][a], col["stage0"][a])]
    return rows


def consumer_rows(compute: np.ndarray, comm: np.ndarray) -> np.ndarray:
    """Per comm row, the compute row that consumes its transfer, -1 for none: for a P2P send
    naming an action, the first compute row (row order) of its receiver (``peer``) with that
    ``action``, micro-batch and direction, of a kind that reads that data from another stage
    (rules.RECEIVES: a forward for an activation, a B or I for a gradient)."""
    out = np.full(len(comm), -1, dtype=np.int64)
    sends = np.flatnonzero((comm["channel"] == P2P) & (comm["action"] >= 0))
    if not len(sends) or not len(compute):
        return out
    rows = comm[sends]
    ckeys = [compute["rank"], compute["action"], RECEIVED[compute["kind"]], compute["microbatch"], compute["direction"]]
    skeys = [rows["peer"], rows["action"], rows["kind"], rows["microbatch"], rows["direction"]]
    packed = _pack(ckeys, skeys)
    if packed is None:  # too wide to pack in 64 bits: a dict, first row of each key
        first: dict[tuple, int] = {}
        for i, key in enumerate(zip(*(c.tolist() for c in ckeys))):
            first.setdefault(key, i)
        out[sends] = [first.get(key, -1) for key in zip(*(c.tolist() for c in skeys))]
        return out
    ckey, skey = packed
    order = np.argsort(ckey, kind="stable")  # equal keys stay in row order: the first row first
    ckey = ckey[order]
    at = np.minimum(np.searchsorted(ckey, skey), len(ckey) - 1)
    out[sends] = np.where(ckey[at] == skey, order[at], -1)
    return out


def _pack(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Both key lists packed into int64s (mixed radix over the fields' joint range, so equal keys
    and only they pack equal), None when the ranges need more than 62 bits."""
    low = [min(int(x.min()), int(y.min())) for x, y in zip(a, b)]
    size = [max(int(x.max()), int(y.max())) - lo + 1 for x, y, lo in zip(a, b, low)]
    if math.prod(size) >= 2**62:
        return None
    packed = []
    for cols in (a, b):
        key = np.zeros(len(cols[0]), dtype=np.int64)
        for c, lo, n in zip(cols, low, size):
            key = key * n + (c.astype(np.int64) - lo)
        packed.append(key)
    return packed[0], packed[1]


def _sorted(table: np.ndarray, keys: tuple[str, ...]) -> np.ndarray:
    """``table`` in np.lexsort order of ``keys`` (last key first); rows are made in that
    order already, so this only checks it, and sorts (stably) if a row is out of place."""
    if len(table) < 2:
        return table
    ok = np.zeros(len(table) - 1, dtype=bool)  # row i+1 strictly after row i on some key
    tied = np.ones(len(table) - 1, dtype=bool)
    for name in reversed(keys):
        col = table[name]
        ok |= tied & (col[1:] > col[:-1])
        tied &= col[1:] == col[:-1]
    if (ok | tied).all():
        return table
    return table[np.lexsort(tuple(table[k] for k in keys))]


_ACTION_DTYPE = np.dtype(
    [("timeline", "i4"), ("rank", "i4"), ("idx", "i4"), ("start", "f8"), ("factor", "f8"), ("pair", "?"),
     ("kind0", "i1"), ("microbatch0", "i4"), ("stage0", "i4"), ("direction0", "i1"),
     ("kind1", "i1"), ("microbatch1", "i4"), ("stage1", "i4"), ("direction1", "i1")]
)  # fmt: skip


# rules.RULES's sets as tables by kind code, for the trace's ``kind`` columns (a lookup costs less than np.isin):
# readers of a trace ask these, never a kind's letter, what a kind is.
def by_code(kinds) -> np.ndarray:
    """Per kind code: whether the kind is in ``kinds``."""
    return np.array([k in kinds for k in KINDS], dtype=bool)


_ALLOCATES = by_code(ALLOCATES)
_FREES = by_code(FREES)
IS_FORWARD = by_code(FORWARDS)  # runs the forward pass: a pair's upper half, a direction's forward hue
IS_BACKWARD = by_code(BACKWARDS)  # B, I, W: what model.defer_embedding_wgrad lightens
# per kind code: the rules.Data code it reads from another stage (a P2P row's ``kind``), -1 for none
RECEIVED = np.array([-1 if RECEIVES[k] is None else int(RECEIVES[k]) for k in KINDS], dtype=np.int64)


# -- what the end of a step waits for (step.py simulates it, step_metrics.py reads it) ---------
# per kind code: whether the op produces weight gradients
IS_WEIGHT_GRAD = by_code(WEIGHT_GRADS)


@dataclass(frozen=True)
class PipelineEnds:
    """When each rank's pipeline work ends and each stage copy's gradients are complete."""

    rank_end: list[float]  # per rank: its last compute, all-to-all or outgoing P2P send
    last_weight: dict[tuple[int, int], tuple[float, float]]  # (rank, stage) -> (start, end) of its last B or W
    holders: dict[int, list[int]]  # stage -> the ranks holding a copy of it, ascending


def pipeline_ends(trace: Trace) -> PipelineEnds:
    """Read off a pipeline trace what the end-of-step work waits for.

    A rank's pipeline work includes its outgoing P2P sends: before its
    optimizer may change the weights, a rank waits for what it sent to land.
    """
    rank_end = [0.0] * trace.ranks
    # Comm rows carry the sender (P2P) or the rank itself (all-to-all) in "rank".
    for rows in (trace.compute, trace.comm):
        if len(rows):
            ends = np.full(trace.ranks, -np.inf)
            np.maximum.at(ends, rows["rank"], rows["end"])
            rank_end = [max(a, float(b)) for a, b in zip(rank_end, ends)]
    # The last weight-gradient op of each (rank, stage): the group's latest row, spread
    # back to the first row of the same action (component rows of one op share it).
    grads = trace.compute[IS_WEIGHT_GRAD[trace.compute["kind"]]]
    last_weight: dict[tuple[int, int], tuple[float, float]] = {}
    if len(grads):
        grads = grads[np.lexsort((grads["end"], grads["stage"], grads["rank"]))]
        key = grads["rank"].astype(np.int64) << 32 | grads["stage"]
        bounds = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1], [True])))
        first, last = bounds[:-1], bounds[1:] - 1  # each group's first and last (latest-ending) row
        # the rows of each group's last op: the action of its last row, spread over the group (one pass)
        action = grads["action"]
        of_last = action == np.repeat(action[last], np.diff(bounds))
        start = np.minimum.reduceat(np.where(of_last, grads["start"], np.inf), first)
        last_weight = {(r, s): (a, b) for r, s, a, b in zip(grads["rank"][first].tolist(), grads["stage"][first].tolist(),
                                                            start.tolist(), grads["end"][last].tolist())}  # fmt: skip
    holders: dict[int, list[int]] = {}
    for r, stages in enumerate(trace.stages_on_rank):
        for s in stages:
            holders.setdefault(s, []).append(r)
    return PipelineEnds(rank_end, last_weight, holders)
