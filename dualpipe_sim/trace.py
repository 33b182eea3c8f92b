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

import numpy as np

KIND_CODES = {"F": 0, "B": 1, "I": 2, "W": 3}
KIND_NAMES = ("F", "B", "I", "W")
P2P, A2A = 0, 1
CHANNEL_NAMES = ("p2p", "a2a")

# What an interval is of and when: shared by compute and comm rows, in this
# order (rows are appended as positional tuples).
_OP_SPAN = [
    ("kind", "i1"),
    ("microbatch", "i4"),
    ("stage", "i4"),
    ("direction", "i1"),
    ("start", "f8"),
    ("end", "f8"),
    ("action", "i4"),  # compute: index of the action in its rank's list; comm: of the consuming action
]
COMPUTE_DTYPE = np.dtype(
    [("rank", "i4"), *_OP_SPAN,
     ("overlapped", "?"),  # part of an FB pair
     ("part", "i1")]  # component index (see costs.COMPONENTS), -1 = whole op
)  # fmt: skip
COMM_DTYPE = np.dtype([("channel", "i1"), ("rank", "i4"), ("peer", "i4"), *_OP_SPAN, ("part", "i1")])
MEMORY_DTYPE = np.dtype([("time", "f8"), ("rank", "i4"), ("units", "i4"), ("bytes", "f8")])


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
        compute, comm, memory = builder.arrays()
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
    """Appends rows as plain tuples while the engine runs; arrays at the end."""

    def __init__(self) -> None:
        self.compute: list[tuple] = []
        self.comm: list[tuple] = []
        self.memory: list[tuple] = []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        compute = np.array(self.compute, dtype=COMPUTE_DTYPE)
        comm = np.array(self.comm, dtype=COMM_DTYPE)
        memory = np.array(self.memory, dtype=MEMORY_DTYPE)
        compute = compute[np.lexsort((compute["start"], compute["rank"]))]
        # peer last: two sends of one rank starting together (on two links) come
        # out in one order whatever order the engine finished them in.
        comm = comm[np.lexsort((comm["peer"], comm["start"], comm["rank"], comm["channel"]))]
        # Frees before allocations at the same instant: a B that ends as the next
        # F starts hands its memory over, it does not coexist with it.
        memory = memory[np.lexsort((memory["units"], memory["time"], memory["rank"]))]
        return compute, comm, memory
