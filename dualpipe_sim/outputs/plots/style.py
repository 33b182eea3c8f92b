"""What the charts share and need no drawing library for: colours, and the trace
regrouped as the charts show it (one row per op, one span per action).

gantt.png, the utilisation bands, the pair view and report.html all colour an
op by its colour family (:func:`hues`) and kind (:func:`drawn_kind`), so one
op looks the same in every chart; report.html uses this module without
importing matplotlib.
"""

from __future__ import annotations

import numpy as np

from ... import units
from ...schedules.components import WEIGHT_PARTS
from ...schedules.rules import KIND_CODES, RULES, Kind
from ...engine.trace import A2A, Trace

# Each kind's look as its rules.RULES entry declares it (rules.Look), by letter, in kind order.
COLOURS = {d: {k.value: r.look.colours[d] for k, r in RULES.items()} for d in (0, 1)}
DARK = {k.value for k, r in RULES.items() if r.look.dark}  # white text on its box
HATCHED = {k.value for k, r in RULES.items() if r.look.hatched}  # pale and hatched, its number on a white backing
KIND_WORDS = {k.value: r.look.word for k, r in RULES.items()}  # legends and hover text
# The kinds whose colours stand for a direction's forward and its backward work where a chart draws only those two
# (the bands: rules.FORWARDS / BACKWARDS): any kind is drawn there in one of these, so a new kind needs no entry.
HUE_KINDS = ("F", "B")
COMM_COLOURS = {"p2p": "#9a9a9a", "a2a": "#8e6bbf"}
STEP_COLOURS = {"grad_sync": "#4daf4a", "cross_copy_sync": "#1b9e9e", "optimizer": "#8c8c2e", "drain": "#6a3d9a",
                "slowed": "#a50f15"}  # trace.STEP_KIND_NAMES
STEP_LABELS = {"grad_sync": "grad sync (data-parallel)", "cross_copy_sync": "cross-copy sync", "optimizer": "optimizer",
               "drain": "deferred wgrad (drain)", "slowed": "slowed beside DP collectives"}
STEP_WORDS = {"optimizer": "opt", "drain": "drain", "slowed": "slowed"}  # the word on a compute-lane step box (trace.ON_COMPUTE)
# Sweep charts: one fixed colour per schedule name, the same in every chart and every sweep
# (not the order a grid happens to list them in); other names get one by a stable hash.
SCHEDULE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                    "#e6550d", "#31a354", "#756bb1", "#636363")  # fmt: skip
# Append new schedules at the end (never reorder): a name keeps its colour across versions.
SCHEDULE_ORDER = ("1f1b", "chimera", "dualpipe", "dualpipev", "gpipe", "interleaved-1f1b", "zb-h1",
                  "zb-h1-megatron", "zb-h2", "zbv", "1f1b-overlap", "interleaved-1f1b-overlap",
                  "chimera-doubling")  # fmt: skip


# Memory charts (memory.png, report.html's memory chart): the device's line is drawn while the fullest rank uses at
# least this share of the device.  Below it, an axis up to the device squashes the curve into the bottom of each band
# (s19g's walk: 61 GB of a 192 GB B200 drawn on a 240 GB band, a flat line at the bottom), so the axis then stops
# above the fullest rank and the device is named in words instead (:func:`device_words`).
DEVICE_IN_VIEW = 0.5


def memory_axis(top: float, capacity: float | None, room: float) -> tuple[float, bool]:
    """(the memory axis' top in bytes, whether the device's line is on it) for a chart whose fullest rank peaks at
    ``top`` bytes: ``room`` x the larger of ``top`` and the device when the device is drawn, else ``room`` x ``top``."""
    shown = bool(capacity) and top >= DEVICE_IN_VIEW * capacity
    return room * (max(top, capacity) if shown else top), shown


def device_words(top: float, capacity: float) -> str:
    """What a memory chart says of a device it leaves off its axis: its size and the fullest rank's share of it."""
    return (f"device memory {units.nbytes(capacity)}: off the scale (the fullest rank, {units.nbytes(top)}, "
            f"uses {units.percent(top / capacity, 0)} of it)")

def schedule_colour(name: str) -> str:
    """The fixed colour of a schedule in sweep charts."""
    if name in SCHEDULE_ORDER:
        return SCHEDULE_PALETTE[SCHEDULE_ORDER.index(name)]
    import zlib  # noqa: PLC0415

    return SCHEDULE_PALETTE[zlib.crc32(name.encode()) % len(SCHEDULE_PALETTE)]


def by_chunk(trace: Trace) -> bool:
    """One direction but several stages on a rank (V shapes, interleaving): the
    two hues then tell a rank's first stage from its later ones."""
    one_direction = not len(trace.compute) or (trace.compute["direction"] == 0).all()
    return one_direction and any(len(s) > 1 for s in trace.stages_on_rank)


def hues(trace: Trace, rows: np.ndarray) -> np.ndarray:
    """Colour family per row: its direction, or (see _by_chunk) 0 for the rank's
    first stage and 1 for its later stages."""
    if not by_chunk(trace):
        return rows["direction"]
    first = np.array([min(s) if s else 0 for s in trace.stages_on_rank])
    return (rows["stage"] != first[rows["rank"]]).astype(np.int8)


# A weight-gradient [chunk] component is drawn as the kind that runs the weight-gradient pass alone: the pass is
# named by that kind (rules.Rule.passes), so this letter names a pass, not a kind's property.
WEIGHT_PASS_KIND = Kind.W


def drawn_kind(rows: np.ndarray) -> np.ndarray:
    """Kind code each row is drawn as: a weight-gradient component of a B is drawn as W (:data:`WEIGHT_PASS_KIND`)."""
    return np.where(np.isin(rows["part"], list(WEIGHT_PARTS)), KIND_CODES[WEIGHT_PASS_KIND.value], rows["kind"])


def spans(trace: Trace) -> np.ndarray:
    """One entry per action: rank, action, start, end (all-to-all included), overlapped, has components."""
    comp = trace.compute
    a2a = trace.comm[trace.comm["channel"] == A2A]
    rank = np.concatenate([comp["rank"], a2a["rank"]])
    action = np.concatenate([comp["action"], a2a["action"]])
    start = np.concatenate([comp["start"], a2a["start"]])
    end = np.concatenate([comp["end"], a2a["end"]])
    over = np.concatenate([comp["overlapped"], np.zeros(len(a2a), bool)])
    parts = np.concatenate([comp["part"] >= 0, np.ones(len(a2a), bool)])
    dtype = [("rank", "i4"), ("action", "i4"), ("start", "f8"), ("end", "f8"), ("overlapped", "?"),
             ("components", "?")]  # fmt: skip
    if len(rank) == 0:
        return np.empty(0, dtype=dtype)
    order = np.lexsort((action, rank))
    rank, action = rank[order], action[order]
    first = np.flatnonzero(np.r_[True, (rank[1:] != rank[:-1]) | (action[1:] != action[:-1])])
    out = np.empty(len(first), dtype=dtype)
    out["rank"], out["action"] = rank[first], action[first]
    out["start"] = np.minimum.reduceat(start[order], first)
    out["end"] = np.maximum.reduceat(end[order], first)
    out["overlapped"] = np.maximum.reduceat(over[order], first)
    out["components"] = np.maximum.reduceat(parts[order], first)
    return out


def op_rows(comp: np.ndarray) -> np.ndarray:
    """One row per op: each whole-op row as it is, and for a component op one row
    spanning its components (same rank, action and kind)."""
    if len(comp) == 0 or (comp["part"] < 0).all():
        return comp
    whole, parts = comp[comp["part"] < 0], comp[comp["part"] >= 0]
    order = np.lexsort((parts["kind"], parts["action"], parts["rank"]))
    parts = parts[order]
    key = np.stack([parts["rank"], parts["action"], parts["kind"]])
    first = np.flatnonzero(np.r_[True, (key[:, 1:] != key[:, :-1]).any(axis=0)])
    merged = parts[first].copy()
    merged["start"] = np.minimum.reduceat(parts["start"], first)
    merged["end"] = np.maximum.reduceat(parts["end"], first)
    return np.concatenate([whole, merged])


def direction_label(trace: Trace, directions: set[int], d: int) -> str:
    if directions == {0}:
        return ""
    if by_chunk(trace):
        return " (rank's first stage)" if d == 0 else " (rank's later stage)"
    return f" (dir {d})"


def actions_per_rank(trace: Trace) -> int:
    """The most actions any rank runs (an overlapped pair is one action)."""
    comp = trace.compute
    if not len(comp):
        return 0
    keys = np.unique(comp["rank"].astype(np.int64) << 32 | comp["action"].astype(np.int64))
    return int(np.bincount((keys >> 32).astype(np.int64)).max())
