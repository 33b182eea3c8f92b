"""Gantt chart of a trace: ranks as rows, time on x.

Each rank row has a compute lane (boxes labelled with the micro-batch id) and,
under it, a thin communication lane (P2P sends grey, all-to-all purple).
Direction 0 is drawn in blues, direction 1 in oranges; within a direction F is
light, B dark, I medium and W pale with a hatch.  An overlapped FB pair gets
one thick border around both halves, as in the DualPipe README figure.
Empty space is idle time.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from ..trace import A2A, KIND_NAMES, Trace  # noqa: E402

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


def draw_gantt(ax, trace: Trace, *, title: str | None = None, xlim: float | None = None, width_in: float = 12) -> None:
    comp = trace.compute
    makespan = xlim or trace.makespan or 1.0
    pts_per_time = width_in * 72 * 0.86 / makespan  # for sizing labels to their boxes
    directions = set(np.unique(comp["direction"]).tolist()) if len(comp) else {0}

    rects, faces, hatches = [], [], []
    for row in comp:
        kind = KIND_NAMES[row["kind"]]
        y = _row_y(int(row["rank"]))
        rects.append((row["start"], y, row["end"] - row["start"], LANE_H))
        faces.append(COLOURS[int(row["direction"])][kind])
        hatches.append("////" if kind == "W" else "")
    # Solid boxes in one collection (fast); hatched W boxes drawn one by one.
    solid = [Rectangle((x, y), w, h) for (x, y, w, h), hh in zip(rects, hatches) if not hh]
    ax.add_collection(
        PatchCollection(
            solid,
            facecolors=[f for f, hh in zip(faces, hatches) if not hh],
            edgecolors="#333333",
            linewidths=0.4,
        )
    )
    for (x, y, w, h), f, hh in zip(rects, faces, hatches):
        if hh:
            ax.add_patch(Rectangle((x, y), w, h, facecolor=f, edgecolor="#333333", linewidth=0.4, hatch=hh))

    # One thick border per overlapped pair (same rank, same action index).
    pairs = comp[comp["overlapped"]]
    for rank, action in {(int(r), int(a)) for r, a in zip(pairs["rank"], pairs["action"])}:
        part = pairs[(pairs["rank"] == rank) & (pairs["action"] == action)]
        x0, x1 = part["start"].min(), part["end"].max()
        ax.add_patch(
            Rectangle((x0, _row_y(rank)), x1 - x0, LANE_H, fill=False, edgecolor="black", linewidth=1.6, zorder=3)
        )

    # Micro-batch numbers, sized to the box, skipped where they cannot fit.
    # A component-model op writes several boxes; label only its widest one.
    for row in _label_rows(comp):
        kind = KIND_NAMES[row["kind"]]
        w_pts = (row["end"] - row["start"]) * pts_per_time
        text = str(int(row["microbatch"]))
        size = min(8.5, w_pts / (0.62 * len(text) + 0.4), LANE_H * 72 * 0.38)
        if size < 4.5:
            continue
        ax.text(
            (row["start"] + row["end"]) / 2,
            _row_y(int(row["rank"])) + LANE_H / 2,
            text,
            ha="center",
            va="center",
            fontsize=size,
            color="white" if kind in DARK else "black",
            zorder=4,
        )

    # Communication lane: P2P sends on the sender's row, all-to-all on its rank's row.
    comm = trace.comm
    for channel, name in ((0, "p2p"), (A2A, "a2a")):
        rows = comm[comm["channel"] == channel]
        if len(rows) == 0:
            continue
        boxes = [
            Rectangle((r["start"], _row_y(int(r["rank"])) - COMM_H), r["end"] - r["start"], COMM_H * 0.9)
            for r in rows
        ]
        ax.add_collection(
            PatchCollection(boxes, facecolors=COMM_COLOURS[name], edgecolors="none", alpha=0.85)
        )

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


def _label_rows(comp: np.ndarray) -> np.ndarray:
    if len(comp) == 0 or (comp["part"] < 0).all():
        return comp
    whole = comp[comp["part"] < 0]
    parts = comp[comp["part"] >= 0]
    keep = {}
    for i, r in enumerate(parts):
        key = (int(r["rank"]), int(r["action"]), int(r["kind"]), int(r["microbatch"]))
        w = r["end"] - r["start"]
        if key not in keep or w > keep[key][0]:
            keep[key] = (w, i)
    return np.concatenate([whole, parts[[i for _, i in keep.values()]]])


def _legend(trace: Trace, directions: set[int]) -> list[Patch]:
    kinds_used = {KIND_NAMES[k] for k in np.unique(trace.compute["kind"]).tolist()} if len(trace.compute) else set()
    handles = []
    for d in sorted(directions):
        label = "" if directions == {0} else f" (dir {d})"
        for kind, name in (("F", "forward"), ("B", "backward"), ("I", "input-grad"), ("W", "weight-grad")):
            if kind in kinds_used:
                handles.append(
                    Patch(
                        facecolor=COLOURS[d][kind],
                        edgecolor="#333333",
                        hatch="////" if kind == "W" else "",
                        label=f"{kind} {name}{label}",
                    )
                )
    if trace.compute["overlapped"].any():
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.6, label="overlapped F&B"))
    channels = set(np.unique(trace.comm["channel"]).tolist()) if len(trace.comm) else set()
    if 0 in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["p2p"], label="P2P send"))
    if A2A in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["a2a"], label="all-to-all"))
    return handles


def figure_width(trace: Trace) -> float:
    """Wide enough that each op box can carry a two-digit label."""
    per_rank = len(trace.compute) / max(trace.ranks, 1)
    return float(np.clip(per_rank * 0.3, 10, 44))


def gantt_title(metrics: dict) -> str:
    return (
        f"{metrics['schedule']}: {metrics['stages']} stages on {metrics['ranks']} ranks, "
        f"{metrics['microbatches']} micro-batches, bubble ratio {metrics['bubble_ratio']:.1%}, "
        f"makespan {metrics['makespan']:.4g} ms"
    )


def save_gantt(trace: Trace, metrics: dict, path) -> None:
    width = figure_width(trace)
    height = 1.3 + trace.ranks * (LANE_H + COMM_H + ROW_GAP) * 0.62
    fig, ax = plt.subplots(figsize=(width, height))
    draw_gantt(ax, trace, title=gantt_title(metrics), width_in=width)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
