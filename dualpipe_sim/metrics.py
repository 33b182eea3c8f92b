"""Metrics: pure functions of a trace.

Definitions (also in README.md):

* ``busy`` of a rank: total length of its compute intervals; ``idle`` =
  makespan - busy (the rank's bubble, including the tail after its last op).
* ``bubble_ratio`` = sum of idle / (ranks x makespan).
* ``peak_activation``: the most stage-activations alive at once on a rank (one
  unit = one micro-batch's activations for one stage), and the same in bytes.
* Communication, for P2P and all-to-all together:
  a P2P transfer is *exposed* for the part of it during which the receiving
  rank sat idle waiting for the action that consumes it (with blocking P2P
  the sender waits for all of it: fully exposed); an all-to-all phase is
  exposed for the part of it when its rank's compute channel is idle.
* ``between_ops`` of a rank: makespan minus the time inside its actions (an
  action spans its first to its last component, all-to-all included).  This is
  what a schedule's closed-form bubble predicts; it equals ``idle`` unless ops
  hold all-to-all with the compute idle (component model).
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


def by_rank(rows: np.ndarray, ranks: int, key: str = "rank") -> list[np.ndarray]:
    """Split trace rows per rank in one linear pass (rows keep their order within a rank).

    Trace arrays come sorted by rank (TraceBuilder); anything else is sorted stably first.
    """
    col = rows[key]
    if len(col) > 1 and np.any(col[1:] < col[:-1]):
        rows = rows[np.argsort(col, kind="stable")]
        col = rows[key]
    bounds = np.searchsorted(col, np.arange(ranks + 1))
    return [rows[bounds[r] : bounds[r + 1]] for r in range(ranks)]


def peak_activation(trace: Trace) -> tuple[list[int], list[float]]:
    units, nbytes = [0] * trace.ranks, [0.0] * trace.ranks
    for rank, rows in enumerate(by_rank(trace.memory, trace.ranks)):  # by time, frees first (TraceBuilder)
        if len(rows):
            units[rank] = int(max(0, np.cumsum(rows["units"]).max()))
            nbytes[rank] = float(max(0.0, np.cumsum(rows["bytes"]).max()))
    return units, nbytes


def _action_windows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one rank's compute rows: its action indices in increasing (= execution)
    order and, for each, the window (end of the previous action, its own start)."""
    if len(rows) == 0:
        return np.empty(0, dtype=rows["action"].dtype), np.empty(0), np.empty(0)
    order = np.lexsort((rows["start"], rows["action"]))
    actions, starts, ends = rows["action"][order], rows["start"][order], rows["end"][order]
    first = np.flatnonzero(np.r_[True, actions[1:] != actions[:-1]])
    last_end = np.maximum.reduceat(ends, first)
    return actions[first], np.r_[0.0, last_end[:-1]], starts[first]


def p2p_exposed(trace: Trace) -> float:
    """Linear in the trace: one vectorised pass per receiving rank."""
    p2p = trace.comm[(trace.comm["channel"] == P2P) & (trace.comm["action"] >= 0)]
    if len(p2p) == 0:
        return 0.0
    exposed = 0.0
    for rows, feeds in zip(by_rank(trace.compute, trace.ranks), by_rank(p2p, trace.ranks, "peer")):
        if len(feeds) == 0:
            continue
        actions, w0, w1 = _action_windows(rows)
        if len(actions) == 0:
            continue
        idx = np.minimum(np.searchsorted(actions, feeds["action"]), len(actions) - 1)
        known = actions[idx] == feeds["action"]
        idx, feeds = idx[known], feeds[known]
        # Clip each transfer to the wait before the action it feeds, then take the
        # union per action.  Sorted by (action, start), one action's clipped
        # transfers all lie before the next action's (its window starts where this
        # action ends), so a running max of the ends never crosses actions.
        s = np.clip(feeds["start"], w0[idx], w1[idx])
        e = np.clip(feeds["end"], w0[idx], w1[idx])
        order = np.lexsort((s, idx))
        idx, s, e = idx[order], s[order], np.maximum.accumulate(e[order])
        new_run = np.r_[True, (s[1:] > e[:-1]) | (idx[1:] != idx[:-1])]
        run_end = e[np.r_[np.flatnonzero(new_run)[1:] - 1, len(e) - 1]]
        exposed += float(np.sum(run_end - s[new_run]))
    return exposed


def a2a_per_rank(trace: Trace) -> tuple[list[float], list[float]]:
    """Per rank: all-to-all time, and the part of it with the rank's compute idle (exposed)."""
    a2a = trace.comm[trace.comm["channel"] == A2A]
    times, exposed = [0.0] * trace.ranks, [0.0] * trace.ranks
    if len(a2a) == 0:
        return times, exposed
    for rank, (mine, comp) in enumerate(zip(by_rank(a2a, trace.ranks), by_rank(trace.compute, trace.ranks))):
        if len(mine):
            times[rank] = float(np.sum(mine["end"] - mine["start"]))
            hidden = intersect_length(mine["start"], mine["end"], comp["start"], comp["end"])
            exposed[rank] = union_length(mine["start"], mine["end"]) - hidden
    return times, exposed


def a2a_exposed(trace: Trace) -> float:
    return float(sum(a2a_per_rank(trace)[1]))


def between_ops(trace: Trace) -> list[float]:
    """Per rank: makespan minus the time spent inside actions, an action lasting
    from its first component to its last (its all-to-all included)."""
    a2a = trace.comm[trace.comm["channel"] == A2A]
    out = []
    for comp, mine in zip(by_rank(trace.compute, trace.ranks), by_rank(a2a, trace.ranks)):
        act = np.concatenate([comp["action"], mine["action"]])
        inside = 0.0
        if len(act):
            order = np.argsort(act, kind="stable")
            act = act[order]
            s = np.concatenate([comp["start"], mine["start"]])[order]
            e = np.concatenate([comp["end"], mine["end"]])[order]
            first = np.flatnonzero(np.r_[True, act[1:] != act[:-1]])
            inside = float(np.sum(np.maximum.reduceat(e, first) - np.minimum.reduceat(s, first)))
        out.append(trace.makespan - inside)
    return out


def compute_metrics(trace: Trace, analytic: dict | None = None) -> dict:
    """The metrics.json document (see README for every key)."""
    makespan = trace.makespan
    units, nbytes = peak_activation(trace)
    a2a_times, a2a_exposed_ = a2a_per_rank(trace)
    outside = between_ops(trace)
    per_rank = []
    for rank, rows in enumerate(by_rank(trace.compute, trace.ranks)):
        busy = float(np.sum(rows["end"] - rows["start"]))
        per_rank.append(
            {
                "rank": rank,
                "busy": busy,
                "idle": makespan - busy,
                "between_ops": outside[rank],
                "peak_activation": units[rank],
                "peak_activation_bytes": nbytes[rank],
                "parameter_bytes": trace.parameter_bytes[rank],
                "parameter_copies": len(trace.stages_on_rank[rank]),
                "stages": trace.stages_on_rank[rank],
                "a2a_time": a2a_times[rank],
                "a2a_exposed": a2a_exposed_[rank],
            }
        )
    comm = trace.comm
    p2p_time = float(np.sum(comm["end"][comm["channel"] == P2P] - comm["start"][comm["channel"] == P2P]))
    a2a_time = float(np.sum(comm["end"][comm["channel"] == A2A] - comm["start"][comm["channel"] == A2A]))
    # Blocking P2P: the sender waits for each of its sends, so all of it is exposed.
    p2p_exp = p2p_time if trace.meta.get("p2p_mode") == "blocking" else p2p_exposed(trace)
    a2a_exp = float(sum(a2a_exposed_))
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
