"""Metrics: pure functions of a trace.

Definitions (also in README.md):

* ``busy`` of a rank: total length of its compute intervals; ``idle`` =
  makespan - busy (the rank's bubble, including the tail after its last op).
* ``bubble_ratio`` = sum of idle / (ranks x makespan).
* ``peak_activation``: the most stage-activations alive at once on a rank (one
  unit = one micro-batch's activations for one stage), and the same in bytes.
* Communication, for P2P and all-to-all together:
  a P2P transfer is *exposed* for the part of it during which the receiving
  rank sat idle waiting for the action that consumes it; an all-to-all phase
  is exposed for the part of it when its rank's compute channel is idle.
  ``hidden`` = total - exposed; ``overlap_ratio`` = hidden / total (null when
  there is no communication).
"""

from __future__ import annotations

import numpy as np

from .trace import A2A, P2P, Trace


def union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Length of the union of intervals [starts[i], ends[i])."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    # A new run starts where an interval begins after everything before it ended.
    new_run = np.empty(len(s), dtype=bool)
    new_run[0] = True
    new_run[1:] = s[1:] > e[:-1]
    run_id = np.cumsum(new_run) - 1
    run_start = s[new_run]
    run_end = np.zeros(run_id[-1] + 1)
    np.maximum.at(run_end, run_id, e)
    return float(np.sum(run_end - run_start))


def intersect_length(a_starts, a_ends, b_starts, b_ends) -> float:
    """Length of (union of A) ∩ (union of B)."""
    return union_length(a_starts, a_ends) + union_length(b_starts, b_ends) - union_length(
        np.concatenate([a_starts, b_starts]), np.concatenate([a_ends, b_ends])
    )


def peak_activation(trace: Trace) -> tuple[list[int], list[float]]:
    units, nbytes = [0] * trace.ranks, [0.0] * trace.ranks
    mem = trace.memory
    for rank in range(trace.ranks):
        rows = mem[mem["rank"] == rank]  # sorted by time, frees first (TraceBuilder)
        if len(rows):
            units[rank] = int(max(0, np.cumsum(rows["units"]).max()))
            nbytes[rank] = float(max(0.0, np.cumsum(rows["bytes"]).max()))
    return units, nbytes


def _action_windows(trace: Trace, rank: int) -> dict[int, tuple[float, float]]:
    """For each action on a rank: (end of the previous action, its own start)."""
    rows = trace.compute_of(rank)
    windows: dict[int, tuple[float, float]] = {}
    prev_end = 0.0
    for action in np.unique(rows["action"]):  # sorted = execution order
        part = rows[rows["action"] == action]
        start, end = float(part["start"].min()), float(part["end"].max())
        windows[int(action)] = (prev_end, start)
        prev_end = end
    return windows


def p2p_exposed(trace: Trace) -> float:
    p2p = trace.comm[trace.comm["channel"] == P2P]
    if len(p2p) == 0:
        return 0.0
    exposed = 0.0
    for rank in np.unique(p2p["peer"]):
        windows = _action_windows(trace, int(rank))
        incoming = p2p[p2p["peer"] == rank]
        for action in np.unique(incoming["action"]):
            if action < 0 or int(action) not in windows:
                continue
            w0, w1 = windows[int(action)]
            feeds = incoming[incoming["action"] == action]
            # Clip each transfer feeding this action to the wait before it.
            s = np.clip(feeds["start"], w0, w1)
            e = np.clip(feeds["end"], w0, w1)
            exposed += union_length(s, e)
    return exposed


def a2a_exposed(trace: Trace) -> float:
    a2a = trace.comm[trace.comm["channel"] == A2A]
    exposed = 0.0
    for rank in np.unique(a2a["rank"]):
        mine = a2a[a2a["rank"] == rank]
        comp = trace.compute_of(int(rank))
        hidden = intersect_length(mine["start"], mine["end"], comp["start"], comp["end"])
        exposed += union_length(mine["start"], mine["end"]) - hidden
    return exposed


def compute_metrics(trace: Trace, analytic: dict | None = None) -> dict:
    """The metrics.json document (see README for every key)."""
    makespan = trace.makespan
    units, nbytes = peak_activation(trace)
    per_rank = []
    for rank in range(trace.ranks):
        rows = trace.compute_of(rank)
        busy = float(np.sum(rows["end"] - rows["start"]))
        per_rank.append(
            {
                "rank": rank,
                "busy": busy,
                "idle": makespan - busy,
                "peak_activation": units[rank],
                "peak_activation_bytes": nbytes[rank],
                "parameter_bytes": trace.parameter_bytes[rank],
                "parameter_copies": len(trace.stages_on_rank[rank]),
                "stages": trace.stages_on_rank[rank],
            }
        )
    comm = trace.comm
    p2p_time = float(np.sum(comm["end"][comm["channel"] == P2P] - comm["start"][comm["channel"] == P2P]))
    a2a_time = float(np.sum(comm["end"][comm["channel"] == A2A] - comm["start"][comm["channel"] == A2A]))
    p2p_exp, a2a_exp = p2p_exposed(trace), a2a_exposed(trace)
    total = p2p_time + a2a_time
    exposed = p2p_exp + a2a_exp
    idle_total = sum(r["idle"] for r in per_rank)
    return {
        "schedule": trace.schedule,
        "stages": trace.stages,
        "ranks": trace.ranks,
        "microbatches": trace.microbatches,
        "makespan": makespan,
        "bubble_ratio": idle_total / (trace.ranks * makespan) if makespan > 0 else 0.0,
        "per_rank": per_rank,
        "comm": {
            "p2p_time": p2p_time,
            "a2a_time": a2a_time,
            "exposed": exposed,
            "hidden": total - exposed,
            "overlap_ratio": (total - exposed) / total if total > 0 else None,
            "p2p_exposed": p2p_exp,
            "a2a_exposed": a2a_exp,
        },
        "analytic": analytic or {"bubble": None, "peak_activation": None},
    }
