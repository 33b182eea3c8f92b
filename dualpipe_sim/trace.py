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
* ``meta["p2p_mode"]``: "async" or "blocking" (the engine's P2P behaviour).
* ``memory``: activation allocations (+) and frees (-) in stage-activation
  units and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .rules import ALLOCATES, FREES, KIND_CODES, Channel

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

    @property
    def makespan(self) -> float:
        ends = [self.compute["end"].max() if len(self.compute) else 0.0]
        if len(self.comm):
            ends.append(self.comm["end"].max())
        return float(max(ends))

    @classmethod
    def of_run(cls, schedule, costs, builder: "TraceBuilder", stages_on_rank: list[list[int]] | None = None) -> "Trace":
        """The trace of a finished run of ``schedule`` on ``costs`` (engine and fast path alike)."""
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
        )

    def compute_of(self, rank: int) -> np.ndarray:
        return self.compute[self.compute["rank"] == rank]


class TraceBuilder:
    """What an engine records while it runs, and the trace arrays it expands to at the end.

    Engines record one entry per action (:meth:`action`: where and when it ran,
    which timeline, stretched by which factor) and one CommRow per P2P transfer.
    An action's rows are its timeline's spans moved to its start, and its memory
    rows follow from rules.ALLOCATES / FREES, so :meth:`arrays` builds them for
    all actions at once with numpy instead of one Python tuple per interval.
    Both engines record through this one class: their traces cannot differ in
    how rows are made, only in when actions start."""

    def __init__(self) -> None:
        self.comm: list[CommRow] = []  # P2P transfers
        self.actions: list[tuple] = []  # one _ACTION_DTYPE record per action
        self.timelines: list = []  # costs.Timeline, by the index actions refer to

    def timeline(self, timeline) -> int:
        """Register a timeline (engines cache the index per kind of action)."""
        self.timelines.append(timeline)
        return len(self.timelines) - 1

    def action(self, rank: int, idx: int, start: float, timeline: int, factor: float, members) -> None:
        """Action ``idx`` of ``rank`` ran from ``start`` for timeline ``timeline``'s length times ``factor``."""
        a, b = members[0], members[-1]
        self.actions.append(
            (timeline, rank, idx, start, factor, len(members) > 1, KIND_CODES[a[0]], a[1], a[2], a[3],
             KIND_CODES[b[0]], b[1], b[2], b[3])
        )  # fmt: skip

    def arrays(self, activation_bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        acts = np.array(self.actions, dtype=_ACTION_DTYPE)
        computes, comms, memories = [], [np.array(self.comm, dtype=COMM_DTYPE)], []
        order = np.argsort(acts["timeline"], kind="stable")
        acts = acts[order]
        cuts = np.flatnonzero(np.diff(acts["timeline"])) + 1
        act_bytes = np.asarray(activation_bytes, dtype="f8")
        for group in np.split(acts, cuts) if len(acts) else []:
            tl = self.timelines[group["timeline"][0]]
            start, factor = group["start"], group["factor"]
            end = start + tl.length * factor  # as the engines advance their clocks
            spans = tl.spans
            member = np.array([sp.member for sp in spans], dtype=bool)
            t0 = np.array([sp.start for sp in spans], dtype="f8")
            t1 = np.array([sp.end for sp in spans], dtype="f8")
            part = np.array([sp.part for sp in spans], dtype="i1")
            channel = np.array([sp.channel for sp in spans], dtype="i1")
            pos = np.arange(len(spans))
            rows = {
                "rank": group["rank"][:, None], "action": group["idx"][:, None],
                "start": start[:, None] + factor[:, None] * t0, "end": start[:, None] + factor[:, None] * t1,
                "overlapped": group["pair"][:, None], "part": part[None, :], "pos": pos[None, :],
            }  # fmt: skip
            for name in ("kind", "microbatch", "stage", "direction"):
                rows[name] = np.where(member[None, :], group[name + "1"][:, None], group[name + "0"][:, None])
            for ch, out, dtype in ((Channel.COMPUTE, computes, _COMPUTE_POS), (Channel.A2A, comms, COMM_DTYPE)):
                cols = channel == ch
                if not cols.any():
                    continue
                table = np.empty((len(group), int(cols.sum())), dtype=dtype)
                for name in dtype.names:
                    if name == "channel":
                        table[name] = ch
                    elif name == "peer":
                        table[name] = rows["rank"]
                    else:
                        table[name] = np.broadcast_to(rows[name], (len(group), len(spans)))[:, cols]
                out.append(table.ravel())
            for which, when, units, sign in ((0, start, 1, 1.0), (1, end, -1, -1.0)):
                for member_no in (0, 1):
                    kinds = group[f"kind{member_no}"]
                    mask = np.isin(kinds, _ALLOC_CODES if which == 0 else _FREE_CODES)
                    if member_no == 1:
                        mask &= group["pair"]  # a lone op's member 1 is itself
                    if mask.any():
                        mem = np.empty(int(mask.sum()), dtype=_MEMORY_POS)
                        mem["time"], mem["rank"], mem["units"] = when[mask], group["rank"][mask], units
                        mem["bytes"] = sign * act_bytes[group[f"stage{member_no}"][mask]]
                        mem["action"] = group["idx"][mask]
                        memories.append(mem)
        compute = np.concatenate(computes) if computes else np.empty(0, dtype=_COMPUTE_POS)
        # Rank and start order; an action's rows in timeline order, actions in their rank's order.
        compute = compute[np.lexsort((compute["pos"], compute["action"], compute["start"], compute["rank"]))]
        comm = np.concatenate(comms)
        # peer last: two sends of one rank starting together (on two links) come
        # out in one order whatever order the engine finished them in.
        comm = comm[np.lexsort((comm["peer"], comm["start"], comm["rank"], comm["channel"]))]
        memory = np.concatenate(memories) if memories else np.empty(0, dtype=_MEMORY_POS)
        # Frees before allocations at the same instant: a B that ends as the next
        # F starts hands its memory over, it does not coexist with it.
        memory = memory[np.lexsort((memory["action"], memory["units"], memory["time"], memory["rank"]))]
        return _drop(compute, COMPUTE_DTYPE), comm, _drop(memory, MEMORY_DTYPE)


def _drop(table: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``table`` with only ``dtype``'s fields (the sort keys used on the way dropped)."""
    out = np.empty(len(table), dtype=dtype)
    for name in dtype.names:
        out[name] = table[name]
    return out


_ACTION_DTYPE = np.dtype(
    [("timeline", "i4"), ("rank", "i4"), ("idx", "i4"), ("start", "f8"), ("factor", "f8"), ("pair", "?"),
     ("kind0", "i1"), ("microbatch0", "i4"), ("stage0", "i4"), ("direction0", "i1"),
     ("kind1", "i1"), ("microbatch1", "i4"), ("stage1", "i4"), ("direction1", "i1")]
)  # fmt: skip
_COMPUTE_POS = np.dtype(COMPUTE_DTYPE.descr + [("pos", "i4")])
_MEMORY_POS = np.dtype(MEMORY_DTYPE.descr + [("action", "i4")])
_ALLOC_CODES = [KIND_CODES[k] for k in ALLOCATES]
_FREE_CODES = [KIND_CODES[k] for k in FREES]
