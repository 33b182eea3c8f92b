"""In-flight communication buffers per rank, read off a finished trace, and their joint peak
with the activations.

* **P2P**: a boundary tensor (one micro-batch's activation or its gradient,
  ``act_bytes x tokens x hidden / tensor``) is held by its sender while the
  transfer runs, and by its receiver from the transfer's start (the receive
  buffer is posted) until the action that consumes it starts (the activation
  rows take it over there).
* **All-to-all**: each phase of an MoE layer holds a send and a receive buffer of
  the micro-batch's routed token copies (``2 x tokens / tensor x top-k x
  hidden``, FP8 where the phase carries FP8) while it runs.

The activation rows (trace.memory) and these intervals are summed over time per
rank; ``joint`` is that sum's peak, which is what the rank's total adds (the
separate peaks need not coincide).  docs/model.md, "Memory per rank", says why.
"""

from __future__ import annotations

import numpy as np

from ..costs import Component
from ..trace import A2A, P2P, Trace
from .derive import FP8_SCALE_OVERHEAD, Setup

_FP8_PHASES = (Component.dispatch_forward, Component.combine_backward)  # FP8 in an FP8 model (DeepSeek-V3 Sec. 3.3.2)


def p2p_bytes(st: Setup) -> float:
    """One boundary tensor on one rank."""
    return st.act_bytes * st.tokens * st.cfg.hidden_size / st.sharding.tensor


def a2a_bytes(st: Setup) -> dict[int, float]:
    """Send + receive buffers of one all-to-all phase, by component index."""
    cfg = st.cfg
    copies = st.tokens / st.sharding.tensor * cfg.experts_per_token * cfg.hidden_size
    fp8 = 1.0 + FP8_SCALE_OVERHEAD if cfg.fp8 else st.act_bytes
    phases = (Component.dispatch_forward, Component.combine_forward, Component.dispatch_backward, Component.combine_backward)
    return {int(c): 2 * copies * (fp8 if c in _FP8_PHASES else st.act_bytes) for c in phases}


def _peak(times: np.ndarray, deltas: np.ndarray) -> float:
    """Largest running sum of ``deltas`` in time order, frees first at equal times."""
    if len(times) == 0:
        return 0.0
    order = np.lexsort((deltas > 0, times))
    return float(max(0.0, np.cumsum(deltas[order]).max()))


def _action_starts(trace: Trace) -> dict[tuple[int, int], float]:
    """(rank, action index) -> when that action's first compute starts."""
    c = trace.compute
    starts: dict[tuple[int, int], float] = {}
    for rank, action, start in zip(c["rank"].tolist(), c["action"].tolist(), c["start"].tolist()):
        key = (rank, action)
        if start < starts.get(key, np.inf):
            starts[key] = start
    return starts


def per_rank(trace: Trace, st: Setup) -> list[dict]:
    """Per rank: the peak of P2P buffers, of all-to-all buffers, and of both with the activations."""
    ranks = trace.ranks
    events: dict[str, list[list]] = {k: [[] for _ in range(ranks)] for k in ("act", "p2p", "a2a")}

    def hold(kind: str, rank: int, t0: float, t1: float, nbytes: float) -> None:
        events[kind][rank] += [(t0, nbytes), (t1, -nbytes)]

    for row in trace.memory:
        events["act"][int(row["rank"])].append((float(row["time"]), float(row["bytes"])))
    comm = trace.comm
    p2p = comm[comm["channel"] == P2P]
    if len(p2p):
        size, starts = p2p_bytes(st), _action_starts(trace)
        for row in p2p:
            t0, t1 = float(row["start"]), float(row["end"])
            hold("p2p", int(row["rank"]), t0, t1, size)
            used = starts.get((int(row["peer"]), int(row["action"])), t1)
            hold("p2p", int(row["peer"]), t0, max(t1, used), size)
    a2a = comm[comm["channel"] == A2A]
    if len(a2a):
        sizes = a2a_bytes(st)
        for row in a2a:
            hold("a2a", int(row["rank"]), float(row["start"]), float(row["end"]), sizes.get(int(row["part"]), 0.0))
    out = []
    for r in range(ranks):
        peaks = {}
        for kind in ("p2p", "a2a"):
            ev = np.array(events[kind][r], dtype="f8").reshape(-1, 2)
            peaks[kind] = _peak(ev[:, 0], ev[:, 1])
        every = np.array(events["act"][r] + events["p2p"][r] + events["a2a"][r], dtype="f8").reshape(-1, 2)
        peaks["joint"] = _peak(every[:, 0], every[:, 1])
        out.append(peaks)
    return out
