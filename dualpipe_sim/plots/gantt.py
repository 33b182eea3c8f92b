"""Gantt chart of a trace: ranks as rows, time on x.

Each rank row has a compute lane (boxes labelled with the micro-batch id) and,
under it, a thin communication lane (P2P sends grey, all-to-all purple).
Direction 0 is drawn in blues, direction 1 in oranges; within a direction F is
light, B dark, I medium and W pale with a hatch.  A one-direction schedule that
puts several stages on a rank (DualPipeV, ZB-V, interleaved) uses the blues for
each rank's first stage and the oranges for its later ones instead.  An overlapped FB pair gets
one thick border around both halves, as in the DualPipe README figure.
Empty space is idle time.

With the component model ([chunk]) an op is many boxes, one per compute
component, drawn without edges; the weight-gradient components of a B are drawn
as W.  An op gets one label, centred on its span, and a thin outline from its
first to its last component (all-to-all included), so white inside an outline
is compute waiting for the op's own all-to-all.  In an FB pair the forward's
components fill the upper half of the lane and the backward's the lower half,
so the two interleaved streams read as two rows under the pair's border.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .. import units  # noqa: E402
from ..costs import WEIGHT_PARTS  # noqa: E402
from ..rules import KIND_CODES, KIND_NAMES  # noqa: E402
from ..trace import A2A, Trace  # noqa: E402

COLOURS = {
    0: {"F": "#a6cee3", "B": "#1f5f9e", "I": "#4f8fc9", "W": "#dcebf5"},
    1: {"F": "#fdc98a", "B": "#c1500a", "I": "#ec8a3c", "W": "#fdebd6"},
}
DARK = {"B", "I"}  # kinds drawn dark enough to need white text
COMM_COLOURS = {"p2p": "#9a9a9a", "a2a": "#8e6bbf"}
LANE_H, COMM_H, ROW_GAP = 0.62, 0.16, 0.22


def _row_y(rank: int) -> float:
    """Bottom of a rank's compute lane; rank 0 at the top."""
    return -rank * (LANE_H + COMM_H + ROW_GAP)


def _boxes(x0, x1, y, h, **style) -> PolyCollection:
    """Rectangles [x0, x1] x [y, y + h] as one collection (arrays in, no per-box objects)."""
    x0, x1, y = np.asarray(x0, float), np.asarray(x1, float), np.asarray(y, float)
    y1 = y + h
    verts = np.stack([np.stack([x0, y], -1), np.stack([x1, y], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)], 1)
    return PolyCollection(verts, **style)


def _geometry(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, height) of each compute row's box: a full lane, or for a component
    of an FB pair the upper (forward) or lower (backward) half."""
    y = -rows["rank"] * (LANE_H + COMM_H + ROW_GAP)
    half = (rows["part"] >= 0) & rows["overlapped"]
    upper = half & (rows["kind"] == KIND_CODES["F"])
    return y + np.where(upper, LANE_H / 2, 0.0), np.where(half, LANE_H / 2, LANE_H)


def _by_chunk(trace: Trace) -> bool:
    """One direction but several stages on a rank (V shapes, interleaving): the
    two hues then tell a rank's first stage from its later ones."""
    one_direction = not len(trace.compute) or (trace.compute["direction"] == 0).all()
    return one_direction and any(len(s) > 1 for s in trace.stages_on_rank)


def _hues(trace: Trace, rows: np.ndarray) -> np.ndarray:
    """Colour family per row: its direction, or (see _by_chunk) 0 for the rank's
    first stage and 1 for its later stages."""
    if not _by_chunk(trace):
        return rows["direction"]
    first = np.array([min(s) if s else 0 for s in trace.stages_on_rank])
    return (rows["stage"] != first[rows["rank"]]).astype(np.int8)


def _draw_boxes(ax, rows: np.ndarray, hues: np.ndarray, edges: bool) -> None:
    if len(rows) == 0:
        return
    ys, hs = _geometry(rows)
    # A weight-gradient component of a B is drawn as W.
    kind = np.where(np.isin(rows["part"], list(WEIGHT_PARTS)), KIND_CODES["W"], rows["kind"])
    for d in (0, 1):
        for k, name in enumerate(KIND_NAMES):
            sel = (hues == d) & (kind == k)
            if not sel.any():
                continue
            # Hatching costs Agg ~1 ms a box: only whole W ops get it, W components stay plain.
            hatch = "////" if name == "W" and edges else None
            ax.add_collection(
                _boxes(rows["start"][sel], rows["end"][sel], ys[sel], hs[sel], facecolors=COLOURS[d][name],
                       edgecolors="#333333" if edges or hatch else "none", linewidths=0.4 if edges else 0.0,
                       hatch=hatch)
            )  # fmt: skip


def _spans(trace: Trace) -> np.ndarray:
    """One entry per action: rank, action, start, end (all-to-all included), overlapped, has components."""
    comp = trace.compute
    a2a = trace.comm[trace.comm["channel"] == A2A]
    rank = np.concatenate([comp["rank"], a2a["rank"]])
    action = np.concatenate([comp["action"], a2a["action"]])
    start = np.concatenate([comp["start"], a2a["start"]])
    end = np.concatenate([comp["end"], a2a["end"]])
    over = np.concatenate([comp["overlapped"], np.zeros(len(a2a), bool)])
    parts = np.concatenate([comp["part"] >= 0, np.ones(len(a2a), bool)])
    if len(rank) == 0:
        return np.empty(0, dtype=[("rank", "i4")])
    order = np.lexsort((action, rank))
    rank, action = rank[order], action[order]
    first = np.flatnonzero(np.r_[True, (rank[1:] != rank[:-1]) | (action[1:] != action[:-1])])
    out = np.empty(len(first), dtype=[("rank", "i4"), ("action", "i4"), ("start", "f8"), ("end", "f8"),
                                      ("overlapped", "?"), ("components", "?")])  # fmt: skip
    out["rank"], out["action"] = rank[first], action[first]
    out["start"] = np.minimum.reduceat(start[order], first)
    out["end"] = np.maximum.reduceat(end[order], first)
    out["overlapped"] = np.maximum.reduceat(over[order], first)
    out["components"] = np.maximum.reduceat(parts[order], first)
    return out


def _draw_outlines(ax, spans: np.ndarray) -> None:
    """A thick border per overlapped pair; a thin one per lone component op."""
    for mask, width, colour in ((spans["overlapped"], 1.6, "black"),
                                (~spans["overlapped"] & spans["components"], 0.6, "#555555")):  # fmt: skip
        sel = spans[mask]
        if len(sel):
            y = -sel["rank"] * (LANE_H + COMM_H + ROW_GAP)
            ax.add_collection(
                _boxes(sel["start"], sel["end"], y, LANE_H, facecolors="none", edgecolors=colour, linewidths=width,
                       zorder=3)
            )  # fmt: skip


def _label_rows(comp: np.ndarray) -> np.ndarray:
    """What to label: each whole-op row, and for a component op one row spanning
    its components (same rank, action and op)."""
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


def _draw_labels(ax, comp: np.ndarray, pts_per_time: float) -> None:
    """Micro-batch numbers, sized to the box, skipped where they cannot fit."""
    rows = _label_rows(comp)
    if len(rows) == 0:
        return
    ys, hs = _geometry(rows)
    tags = []  # (x0, x1, y, h): white tags under the numbers of striped component ops
    for row, y, h in zip(rows, ys, hs):
        kind = KIND_NAMES[row["kind"]]
        w_pts = (row["end"] - row["start"]) * pts_per_time
        text = str(int(row["microbatch"]))
        size = min(8.5, w_pts / (0.62 * len(text) + 0.4), h * 72 * 0.38 * (1.3 if h < LANE_H else 1))
        if size < 4.5:
            continue
        components = row["part"] >= 0
        mid = (row["start"] + row["end"]) / 2
        if components or kind == "W":  # striped or hatched boxes: the number needs a backing
            half_w = (0.62 * len(text) + 0.5) * size / 2 / pts_per_time
            tags.append((mid - half_w, mid + half_w, y + h * 0.15, h * 0.7))
        ax.text(mid, y + h / 2, text, ha="center", va="center", fontsize=size, zorder=4,
                color="white" if kind in DARK and not components else "black")  # fmt: skip
    if tags:
        x0, x1, y, h = np.array(tags).T
        ax.add_collection(_boxes(x0, x1, y, h, facecolors="white", edgecolors="none", alpha=0.85, zorder=3.5))


def draw_gantt(ax, trace: Trace, *, title: str | None = None, xlim: float | None = None, width_in: float = 12) -> None:
    comp = trace.compute
    makespan = xlim or trace.makespan or 1.0
    pts_per_time = width_in * 72 * 0.86 / makespan  # for sizing labels to their boxes
    hues = _hues(trace, comp)
    directions = set(np.unique(hues).tolist()) if len(comp) else {0}

    whole = comp["part"] < 0
    _draw_boxes(ax, comp[whole], hues[whole], edges=True)
    _draw_boxes(ax, comp[~whole], hues[~whole], edges=False)
    _draw_outlines(ax, _spans(trace))
    _draw_labels(ax, comp, pts_per_time)

    # Communication lane: P2P sends on the sender's row, all-to-all on its rank's row.
    comm = trace.comm
    for channel, name in ((0, "p2p"), (A2A, "a2a")):
        rows = comm[comm["channel"] == channel]
        if len(rows) == 0:
            continue
        y = -rows["rank"] * (LANE_H + COMM_H + ROW_GAP) - COMM_H
        ax.add_collection(
            _boxes(rows["start"], rows["end"], y, COMM_H * 0.9, facecolors=COMM_COLOURS[name], edgecolors="none",
                   alpha=0.85)
        )  # fmt: skip

    ranks = trace.ranks
    ax.set_xlim(0, makespan)
    ax.set_ylim(_row_y(ranks - 1) - COMM_H - ROW_GAP / 2, LANE_H + ROW_GAP / 2)
    ax.set_yticks([_row_y(r) + LANE_H / 2 for r in range(ranks)])
    ax.set_yticklabels([f"rank {r}" for r in range(ranks)])
    ax.tick_params(axis="y", length=0)
    for r in range(ranks):  # faint lane guides make idle gaps read as gaps
        y = _row_y(r)
        ax.axhspan(y - COMM_H, y + LANE_H, color="#f4f4f4", zorder=0, linewidth=0)
    ax.set_xlabel("time (ms)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    ax.legend(
        handles=_legend(trace, directions),
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=8,
        frameon=False,
    )


def _legend(trace: Trace, directions: set[int]) -> list[Patch]:
    comp = trace.compute
    kinds_used = {KIND_NAMES[k] for k in np.unique(comp["kind"]).tolist()} if len(comp) else set()
    hatch_w = bool(len(comp)) and ((comp["kind"] == KIND_CODES["W"]) & (comp["part"] < 0)).any()
    if len(comp) and np.isin(comp["part"], list(WEIGHT_PARTS)).any():
        kinds_used.add("W")
    handles = []
    for d in sorted(directions):
        if directions == {0}:
            label = ""
        elif _by_chunk(trace):
            label = " (rank's first stage)" if d == 0 else " (rank's later stage)"
        else:
            label = f" (dir {d})"
        for kind, name in (("F", "forward"), ("B", "backward"), ("I", "input-grad"), ("W", "weight-grad")):
            if kind in kinds_used:
                handles.append(
                    Patch(
                        facecolor=COLOURS[d][kind],
                        edgecolor="#333333",
                        hatch="////" if kind == "W" and hatch_w else "",
                        label=f"{kind} {name}{label}",
                    )
                )
    if comp["overlapped"].any():
        split = "forward above, backward below" if (comp["part"] >= 0).any() else "forward, then backward"
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.6, label=f"overlapped F&B\n({split})"))
    channels = set(np.unique(trace.comm["channel"]).tolist()) if len(trace.comm) else set()
    if 0 in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["p2p"], label="P2P send"))
    if A2A in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["a2a"], label="all-to-all"))
    return handles


def figure_width(trace: Trace) -> float:
    """Wide enough that each action's box can carry a two-digit label."""
    comp = trace.compute
    actions = len(np.unique(comp["rank"].astype(np.int64) << 32 | comp["action"].astype(np.int64))) if len(comp) else 0
    return float(np.clip(actions / max(trace.ranks, 1) * 0.3, 10, 30))


def gantt_title(metrics) -> str:
    return (
        f"{metrics.schedule}: {metrics.stages} stages on {metrics.ranks} ranks, "
        f"{metrics.microbatches} micro-batches, bubble ratio {metrics.bubble_ratio:.1%}, "
        f"makespan {units.duration(metrics.makespan)}"
    )


def save_gantt(trace: Trace, metrics, path) -> None:
    width = figure_width(trace)
    # Few ranks but a wide chart: taller rows, or the picture is a thin strip.
    height = max(1.3 + trace.ranks * (LANE_H + COMM_H + ROW_GAP) * 0.62, width / 6)
    fig, ax = plt.subplots(figsize=(width, height))
    draw_gantt(ax, trace, title=gantt_title(metrics), width_in=width)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
