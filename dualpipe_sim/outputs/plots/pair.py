"""One overlapped pair, part by part: what the whole-run chart is made of.

In the whole-run Gantt chart a pair of a component-costed run is a few
pixels of stripes.  This view takes one overlapped F&B pair from the middle of
a typical rank's run (:func:`pick`) and draws its forward parts on one lane and its backward parts on
the other, compute and all-to-all alike, each part named, on that pair's own
time scale: which compute hides which all-to-all can be read off directly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...schedules.components import A2A_PARTS, COMPONENTS, WEIGHT_PARTS
from ... import units
from ...chart_geometry import PAIR_IN
from ...engine.trace import A2A, IS_FORWARD, Trace
from .gantt import boxes, glyph, draw_texts, time_axis
from .style import COLOURS, WEIGHT_PASS_KIND, hues

HEIGHT_IN = PAIR_IN  # the pair view's share of the figure, axes and titles included (chart_geometry)
A2A_COLOURS = {"F": "#c9b3e6", "B": "#6a3d9a"}
NAMES = {
    "attn_forward": "attn", "dispatch_forward": "dispatch", "mlp_forward": "mlp", "combine_forward": "combine",
    "combine_backward": "combine", "mlp_backward_input": "mlp", "mlp_backward_weight": "mlp W",
    "dispatch_backward": "dispatch", "attn_backward_input": "attn", "attn_backward_weight": "attn W",
}  # fmt: skip


def pick(trace: Trace, rank: int | None = None) -> tuple[int, int] | None:
    """(rank, action) of the overlapped component pair nearest the middle of ``rank``'s run, or of
    the typical rank's (:func:`typical_rank`); None without such pairs.  ValueError if ``rank``
    is given and runs none."""
    comp = trace.compute
    pairs = comp[(comp["part"] >= 0) & comp["overlapped"]]
    if rank is None:
        rank = typical_rank(trace, np.unique(pairs["rank"]).tolist())
        if rank is None:
            return None
    elif not 0 <= rank < trace.ranks:
        raise ValueError(f"{rank} is not a rank of this run (0 to {trace.ranks - 1})")
    actions = np.unique(pairs["action"][pairs["rank"] == rank])
    if not len(actions):
        raise ValueError(f"rank {rank} runs no overlapped forward+backward pair with [chunk] components to draw")
    return rank, int(actions[len(actions) // 2])


def typical_rank(trace: Trace, candidates: list[int]) -> int | None:
    """Of the ranks in ``candidates``, the one nearest the middle rank ((ranks - 1) / 2, the lower on a
    tie) that holds neither the first nor the last stage of the pipeline: not the embedding or the
    head (or, in DualPipe, both), whose ops are cheaper or dearer than most.  If every candidate
    holds one, the one nearest the middle."""
    if not candidates:
        return None
    last = max((max(s) for s in trace.stages_on_rank if s), default=0)
    ordinary = [r for r in candidates if not {0, last} & set(trace.stages_on_rank[r])]
    middle = (trace.ranks - 1) / 2
    return min(ordinary or candidates, key=lambda r: (abs(r - middle), r))


class PairBoxes(NamedTuple):
    """What the pair view draws, one entry per part (compute rows, then all-to-all rows)."""

    x0: list[float]
    x1: list[float]
    y: list[float]  # bottom edge: forward lane 1..2, backward lane 0..1; compute on top
    h: list[float]
    colours: list[str]
    texts: list[str]  # the part's short name (NAMES)
    dark: list[bool]  # white text on it


def pair_boxes(trace: Trace, which: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, PairBoxes]:
    """The pair's compute rows, its all-to-all rows and the box of each part."""
    rank, action = which
    comp = trace.compute
    comm = trace.comm
    rows = comp[(comp["rank"] == rank) & (comp["action"] == action)]
    a2a = comm[(comm["channel"] == A2A) & (comm["rank"] == rank) & (comm["action"] == action)]
    # Each op in its own colour family, as in the whole-run chart (a DualPipe pair's F and B
    # are often of different directions); an all-to-all takes its op's row's family.
    family = {(int(r["kind"]), int(r["microbatch"])): int(h) for r, h in zip(rows, hues(trace, rows))}
    lane = {"F": 1.0, "B": 0.0}  # the pair's forward above, its backward (B or I) below
    # In an op's lane, compute on top and all-to-all below: a weight-gradient part runs beside
    # its own op's all-to-all (nothing waits for it), so the two must not share a strip.
    out = PairBoxes([], [], [], [], [], [], [])
    for r in list(rows) + list(a2a):
        part = int(r["part"])
        kind = "F" if IS_FORWARD[r["kind"]] else "B"
        hue = family.get((int(r["kind"]), int(r["microbatch"])), 0)
        if part in A2A_PARTS:
            colour = A2A_COLOURS[kind]
        else:
            colour = COLOURS[hue][WEIGHT_PASS_KIND.value if part in WEIGHT_PARTS else kind]
        out.x0.append(float(r["start"]))
        out.x1.append(float(r["end"]))
        out.y.append(lane[kind] + (0.08 if part in A2A_PARTS else 0.47))
        out.h.append(0.36 if part in A2A_PARTS else 0.45)
        out.colours.append(colour)
        out.texts.append(NAMES.get(COMPONENTS[part], COMPONENTS[part]))  # a new component: its full name
        out.dark.append(colour in (A2A_COLOURS["B"], COLOURS[hue]["B"]))
    return rows, a2a, out


def draw_pair(fig, trace: Trace, which: tuple[int, int], rect) -> None:
    rank, _ = which
    rows, a2a, parts = pair_boxes(trace, which)
    x0, x1, y, h, colours, texts, dark = parts
    t0 = float(min(rows["start"].min(), a2a["start"].min() if len(a2a) else np.inf))
    t1 = float(max(rows["end"].max(), a2a["end"].max() if len(a2a) else -np.inf))
    ax = fig.add_axes(rect)
    h = np.array(h)
    ax.add_collection(boxes(x0, x1, y, h, facecolors=colours, edgecolors="white", linewidths=0.6), autolim=False)
    pts_per_time = ax.get_position().width * fig.get_figwidth() * 72 / (t1 - t0)
    width = np.array([glyph(t)[2] for t in texts])
    size = np.minimum(8.0, ((np.array(x1) - np.array(x0)) * pts_per_time - 2) / np.maximum(width, 1e-9))
    ok = size >= 4.0
    draw_texts(ax, ((np.array(x0) + x1) / 2)[ok], (np.array(y) + h / 2)[ok], [t for t, k in zip(texts, ok) if k],
               size[ok], [(1, 1, 1, 1) if d else (0, 0, 0, 1) for d, k in zip(dark, ok) if k])
    ax.set_xlim(t0, t1)
    ax.set_ylim(-0.05, 2.0)
    forward = IS_FORWARD[rows["kind"]]
    f, b = rows[forward], rows[~forward]
    ax.set_yticks([1.5, 0.5], [f"F mb {int(f['microbatch'][0])}" if len(f) else "F",
                               f"B mb {int(b['microbatch'][0])}" if len(b) else "B"], fontsize=9)  # fmt: skip
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    time_axis(ax)  # as the chart above: 4,650 ms, not 4650
    stages = ", ".join(f"{k} on stage {int(r['stage'][0])}" for k, r in (("F", f), ("B", b)) if len(r))
    ax.set_title(f"one overlapped pair part by part (rank {rank}, {stages}, "
                 # the key on a line of its own: on one line it ran past a 4-rank chart's right edge
                 f"{units.number(t0)} to {units.duration(t1)}):\nforward parts above, backward below; "
                 "compute on top, all-to-all (purple) below; weight-gradient parts pale",
                 fontsize=10, loc="left")  # fmt: skip
