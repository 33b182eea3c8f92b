"""Gantt chart of a trace: ranks as rows, time on x.

Each rank row has a compute lane (boxes labelled with the micro-batch id) and,
under it, a thin communication lane (P2P sends grey, all-to-all purple).
Direction 0 is drawn in blues, direction 1 in oranges; within a direction F is
light, B dark, I medium and W pale with a hatch.  A one-direction schedule that
puts several stages on a rank (DualPipeV, ZB-V, interleaved) uses the blues for
each rank's first stage and the oranges for its later ones instead.  An overlapped FB pair gets
one thick border around both halves, as in the DualPipe README figure.
Empty space is idle time.

With [step] work (step.py) the chart runs to the end of the training step:
each rank's grad syncs (green, upper half) and cross-copy sums (teal, lower
half, drawn on both ranks of the pair) go in its communication lane, its
optimizer step (olive, "opt") in its compute lane after its pipeline work.  With
step.dp_comm_sms, what the rank's compute was slowed beside its data-parallel
collectives is a dark red box ("slowed") in its compute lane from its pipeline's
end: the compute boxes keep their unslowed times, and the slowdown is charged
where it moves the step's end (the drain, the exposed syncs and the optimizer
follow it).

With the component model ([chunk]) an op is many boxes, one per compute
component, drawn without edges; the weight-gradient components of a B are drawn
as W.  An op gets one label, centred on its span, and a thin outline from its
first to its last component (all-to-all included); under the components its span
is filled with a pale tint of its colour, so pale inside an outline is compute
waiting for the op's own all-to-all and forward still reads apart from backward
when the components are thin stripes.  In an FB pair the forward's
components fill the upper half of the lane and the backward's the lower half,
so the two interleaved streams read as two rows under the pair's border.

Labels are drawn as glyph outlines in one collection (one artist for all of
them, not one text object per box), each sized to its box (:func:`label_fit`):
lying down where it fits at :data:`LABEL_FLOOR` points or more, else upright in
a box too narrow for that but wider than the digits are tall, else left out.
:func:`label_width` widens gantt.png (up to :data:`MAX_WIDTH_IN`) until the
narrowest F, B or I box has room for its number lying down.

Above :data:`MIN_BOX_PX` pixels per action the boxes cannot be read, and
drawing them anyway aliases into grey bands; ``gantt_file.save_gantt`` then draws
the run as utilisation bands (see overview.py) with the warm-up and the
cool-down in detail below it.  With components, a pair view (pair.py) shows
one overlapped pair part by part under the whole-run chart.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.path import Path
from matplotlib.textpath import TextPath
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Affine2D

from ... import units
from ...chart_geometry import (  # noqa: F401  (the layout's numbers; the chart modules read them from here too)
    BASE_MAX_IN, BOTTOM_IN, COMM_H, LANE_H, LEFT_IN, MAX_WIDTH_IN, MIN_BOX_PX, RIGHT_IN, ROW_GAP, ROW_H, ROW_IN, TOP_IN,
)  # fmt: skip
from ...schedules.components import WEIGHT_PARTS
from ...schedules.rules import KIND_CODES, KIND_NAMES
from ...engine.trace import A2A, IS_FORWARD, Trace
from .style import (  # noqa: F401  (COLOURS and the rest stay importable from here)
    COLOURS, COMM_COLOURS, DARK, HATCHED, KIND_WORDS, STEP_COLOURS, STEP_LABELS, STEP_WORDS, WEIGHT_PASS_KIND,
    actions_per_rank, direction_label, drawn_kind, hues, op_rows, spans,
)  # fmt: skip

_HATCHED_CODES = [KIND_CODES[k] for k in HATCHED]  # the trace's kind codes of the kinds drawn hatched (rules.Look)

LABEL_FLOOR, LABEL_MAX, LABEL_PAD = 4.5, 8.5, 3.0  # label sizes (points) and the box left beside a label
FLAT_SHARE = 0.45  # a number lying down is at most this share of its box's height
UPRIGHT_PAD = 1.5  # across an upright label: the narrow boxes it is for have no 3 pt to spare
UPRIGHT_MAX = 6.0  # an upright label stands among lying ones near the floor: larger, it would stand out
STEP_WORD_MAX = 7.0  # the step's words ("opt", "drain"): smaller than the numbers' most, they read as a box's name


def _row_y(rank: int) -> float:
    """Bottom of a rank's compute lane; rank 0 at the top."""
    return -rank * ROW_H


def time_axis(ax) -> None:
    """The x axis in ms, ticks as units.number writes them: 243,992 ms with its thousands separator,
    not -8 + 2.44e5; past 1e15 units' engineering form (800e18), not 21 digits per tick."""
    ax.set_xlabel("time (ms)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: units.number(v)))


def boxes(x0, x1, y, h, **style):
    """Rectangles [x0, x1] x [y, y + h] as one artist.  With one face colour they are one
    compound path (one Path object for all of them: a collection of 90,000 rectangles
    spends more time building Path objects than drawing); with a colour per box, a
    PolyCollection."""
    x0, x1, y = np.broadcast_arrays(np.asarray(x0, float), np.asarray(x1, float), np.asarray(y, float))
    y1 = y + h
    corners = [np.stack([x0, y], -1), np.stack([x1, y], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)]
    faces = style.get("facecolors")
    if isinstance(faces, (list, np.ndarray)) and len(faces) and not isinstance(faces[0], (int, float)):
        return PolyCollection(np.stack(corners, 1), **style)
    verts = np.stack(corners + [corners[0]], 1).reshape(-1, 2)
    codes = np.tile(np.array([Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY], Path.code_type),
                    len(x0))  # fmt: skip
    return PathCollection([Path(verts, codes)], **style)


def _geometry(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, height) of each compute row's box: a full lane, or for a component
    of an FB pair the upper (forward) or lower (backward) half."""
    y = -rows["rank"] * ROW_H
    half = (rows["part"] >= 0) & rows["overlapped"]
    upper = half & IS_FORWARD[rows["kind"]]
    return y + np.where(upper, LANE_H / 2, 0.0), np.where(half, LANE_H / 2, LANE_H)


def _tint(colour: str, amount: float = 0.5) -> tuple[float, float, float]:
    """``colour`` mixed with white."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return tuple(rgb + (1 - rgb) * amount)


def _draw_boxes(ax, rows: np.ndarray, hue: np.ndarray, edges: bool, tint: bool = False) -> None:
    if len(rows) == 0:
        return
    ys, hs = _geometry(rows)
    kind = drawn_kind(rows)
    for d in (0, 1):
        for k, name in enumerate(KIND_NAMES):
            sel = (hue == d) & (kind == k)
            if not sel.any():
                continue
            # Hatching costs Agg ~1 ms a box: only whole ops of a hatched kind (W) get it, W components stay plain.
            hatch = "////" if name in HATCHED and edges else None
            colour = _tint(COLOURS[d][name]) if tint else COLOURS[d][name]
            ax.add_collection(
                boxes(rows["start"][sel], rows["end"][sel], ys[sel], hs[sel], facecolors=colour,
                       edgecolors="#333333" if edges or hatch else "none", linewidths=0.4 if edges else 0.0,
                       hatch=hatch, zorder=1.9 if tint else 2),
                autolim=False,
            )  # fmt: skip


def _draw_outlines(ax, spans: np.ndarray) -> None:
    """A thick border per overlapped pair; a thin one per lone component op."""
    for mask, width, colour in ((spans["overlapped"], 1.6, "black"),
                                (~spans["overlapped"] & spans["components"], 0.6, "#555555")):  # fmt: skip
        sel = spans[mask]
        if len(sel):
            y = -sel["rank"] * ROW_H
            ax.add_collection(
                boxes(sel["start"], sel["end"], y, LANE_H, facecolors="none", edgecolors=colour, linewidths=width,
                       zorder=3),
                autolim=False,
            )  # fmt: skip


_FONT: list[FontProperties] = []
_GLYPHS: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}


def glyph(text: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Outline of ``text`` at 1 pt (vertices centred on 0, codes), its width and its height in pt."""
    g = _GLYPHS.get(text)
    if g is None:
        if not _FONT:
            _FONT.append(FontProperties(family="DejaVu Sans"))
        path = TextPath((0, 0), text, size=1, prop=_FONT[0])
        # The box of the control points, not Path.get_extents (which solves every curve
        # for its extrema: a third of a large chart's label time).  Fonts put on-curve
        # points at a glyph's extremes: for DejaVu Sans "0" to "999" the two are equal.
        points = path.vertices[path.codes != Path.CLOSEPOLY]
        lo, hi = points.min(0), points.max(0)
        g = _GLYPHS[text] = (path.vertices - (lo + hi) / 2, path.codes, float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    return g


def draw_texts(ax, x, y, texts, sizes, colours, zorder: float = 4, upright=None) -> None:
    """Short texts centred on data points (x, y), ``sizes`` in points, as one collection of glyph outlines;
    where ``upright`` is true, turned a quarter left (read bottom to top)."""
    if len(texts) == 0:
        return
    paths = []
    turn = np.zeros(len(texts), bool) if upright is None else np.asarray(upright, bool)
    for text, size, up in zip(texts, sizes, turn):
        v, codes, _, _ = glyph(text)
        paths.append(Path((v[:, ::-1] * [-1, 1] if up else v) * size, codes))
    coll = PathCollection(paths, offsets=np.column_stack([x, y]), offset_transform=ax.transData,
                          facecolors=colours, edgecolors="none", zorder=zorder)  # fmt: skip
    coll.set_transform(Affine2D().scale(1 / 72) + ax.figure.dpi_scale_trans)  # path units: points
    ax.add_collection(coll, autolim=False)


def lying_size(wide, w_pts, h_pts, most: float):
    """A text's size in points lying down in boxes ``w_pts`` wide and ``h_pts`` tall (``wide``: its width at
    1 pt): LABEL_PAD left beside it, at most FLAT_SHARE of the height and ``most``."""
    return np.minimum(np.minimum(most, (w_pts - LABEL_PAD) / wide), h_pts * FLAT_SHARE)


def label_fit(rows: np.ndarray, pts_per_time: float, pts_per_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Per op row: its micro-batch label's size in points (0: no label) and whether it stands upright.
    Lying down where it fits at LABEL_FLOOR or more; else upright, if the box is wider than the
    digits are tall and its lane taller than the number is long; else none."""
    _, hs = _geometry(rows)
    mbs, inverse = np.unique(rows["microbatch"], return_inverse=True)
    wide, tall = (np.array([glyph(str(int(m)))[i] for m in mbs])[inverse] for i in (2, 3))
    w_pts, h_pts = (rows["end"] - rows["start"]) * pts_per_time, hs * pts_per_y
    flat = lying_size(wide, w_pts, h_pts, LABEL_MAX)
    up = np.minimum(np.minimum(UPRIGHT_MAX, (w_pts - UPRIGHT_PAD) / tall), (h_pts * 0.8 - LABEL_PAD) / wide)
    upright = (flat < LABEL_FLOOR) & (up >= LABEL_FLOOR)
    return np.where(flat >= LABEL_FLOOR, flat, np.where(upright, up, 0.0)), upright


def _draw_labels(ax, comp: np.ndarray, pts_per_time: float, pts_per_y: float) -> None:
    """Micro-batch numbers, sized to the box, left out where they cannot fit."""
    rows = op_rows(comp)
    if len(rows) == 0:
        return
    size, upright = label_fit(rows, pts_per_time, pts_per_y)
    ok = size > 0
    if not ok.any():
        return
    rows, size, upright = rows[ok], size[ok], upright[ok]
    ys, hs = _geometry(rows)
    texts = [str(int(m)) for m in rows["microbatch"]]
    across = np.array([glyph(t)[3] if up else glyph(t)[2] for t, up in zip(texts, upright)])  # along the time axis
    components = rows["part"] >= 0
    mid = (rows["start"] + rows["end"]) / 2
    dark = np.isin(rows["kind"], [KIND_CODES[k] for k in DARK]) & ~components
    backed = components | np.isin(rows["kind"], _HATCHED_CODES)  # striped or hatched boxes: the number needs a backing
    if backed.any():
        pad = np.where(upright[backed], UPRIGHT_PAD, LABEL_PAD)
        half_w = (across[backed] * size[backed] + pad) / 2 / pts_per_time
        ax.add_collection(
            boxes(mid[backed] - half_w, mid[backed] + half_w, ys[backed] + hs[backed] * 0.15, hs[backed] * 0.7,
                   facecolors="white", edgecolors="none", alpha=0.85, zorder=3.5),
            autolim=False,
        )  # fmt: skip
    draw_texts(ax, mid, ys + hs / 2, texts, size,
               np.where(dark[:, None], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 1.0]]), upright=upright)


def _axes_points(ax) -> tuple[float, float]:
    """(width, height) of the axes in points, from its place in the figure."""
    pos = ax.get_position()
    w, h = ax.figure.get_size_inches()
    return pos.width * w * 72, pos.height * h * 72


def _window(rows: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """The rows that show between t0 and t1."""
    return rows[(rows["end"] > t0) & (rows["start"] < t1)]


def draw_gantt(ax, trace: Trace, *, title: str | None = None, xlim: float | None = None,
               window: tuple[float, float] | None = None, legend: bool = True) -> None:
    """Draw the trace on ``ax`` box by box; ``window`` = (t0, t1) draws only that time range
    (default: 0 to ``xlim`` or the end of the step, the makespan without [step] work).  Place
    the axes in the figure first: labels are sized to the boxes from the axes' size."""
    t0, t1 = window if window else (0.0, xlim or trace.end or 1.0)
    width_pt, height_pt = _axes_points(ax)
    ranks = trace.ranks
    pts_per_time = width_pt / max(t1 - t0, 1e-12)
    pts_per_y = height_pt / (ranks * ROW_H)
    comp = _window(trace.compute, t0, t1)
    hue = hues(trace, comp)

    whole = comp["part"] < 0
    _draw_boxes(ax, comp[whole], hue[whole], edges=True)
    _draw_boxes(ax, comp[~whole], hue[~whole], edges=False)
    if (~whole).any():  # the pale span of each component op under its components
        merged = op_rows(comp[~whole])
        _draw_boxes(ax, merged, hues(trace, merged), edges=False, tint=True)
    _draw_outlines(ax, _window(spans(trace), t0, t1))
    _draw_labels(ax, comp, pts_per_time, pts_per_y)

    # Communication lane: P2P sends on the sender's row, all-to-all on its rank's row.
    comm = _window(trace.comm, t0, t1)
    for channel, name in ((0, "p2p"), (A2A, "a2a")):
        rows = comm[comm["channel"] == channel]
        if len(rows) == 0:
            continue
        y = -rows["rank"] * ROW_H - COMM_H
        ax.add_collection(
            boxes(rows["start"], rows["end"], y, COMM_H * 0.9, facecolors=COMM_COLOURS[name], edgecolors="none",
                   alpha=0.85),
            autolim=False,
        )  # fmt: skip

    _draw_step(ax, _window(trace.step, t0, t1), pts_per_time, pts_per_y)
    rank_axis(ax, ranks, t0, t1)
    frame(ax, title, legend_for(trace) if legend else None)


def _draw_step(ax, step: np.ndarray, pts_per_time: float, pts_per_y: float) -> None:
    """End-of-step rows: syncs in the communication lane, the optimizer, the drain and the compute's slowdown beside
    the data-parallel collectives in the compute lane."""
    from ...engine.trace import GRAD_SYNC, ON_COMPUTE, STEP_KIND_NAMES  # noqa: PLC0415  (only with [step] work)

    for kind, name in enumerate(STEP_KIND_NAMES):
        rows = step[step["kind"] == kind]
        if len(rows) == 0:
            continue
        y = -rows["rank"] * ROW_H
        if kind in ON_COMPUTE:
            ax.add_collection(boxes(rows["start"], rows["end"], y, LANE_H, facecolors=STEP_COLOURS[name],
                                     edgecolors="#333333", linewidths=0.4), autolim=False)  # fmt: skip
            word = STEP_WORDS[name]
            size = step_word_size(word, (rows["end"] - rows["start"]) * pts_per_time, LANE_H * pts_per_y)
            fits = size > 0
            if fits.any():
                mid = (rows["start"][fits] + rows["end"][fits]) / 2
                draw_texts(ax, mid, y[fits] + LANE_H / 2, [word] * int(fits.sum()), size[fits],
                           [[1.0, 1.0, 1.0, 1.0]])  # fmt: skip
        else:  # the two syncs run on separate channels and may overlap: half the lane each
            y0 = y - COMM_H + (COMM_H * 0.45 if kind == GRAD_SYNC else 0.0)
            ax.add_collection(boxes(rows["start"], rows["end"], y0, COMM_H * 0.45, facecolors=STEP_COLOURS[name],
                                     edgecolors="white", linewidths=0.5), autolim=False)  # fmt: skip


def step_word_size(word: str, w_pts: np.ndarray, h_pts: float) -> np.ndarray:
    """Per end-of-step box ``w_pts`` wide: its word's size in points, sized to the box as a micro-batch
    number lying down (up to STEP_WORD_MAX), 0 (left out) below LABEL_FLOOR: a box is labelled when its
    word fits, not above a fixed width."""
    size = lying_size(glyph(word)[2], np.asarray(w_pts, float), h_pts, STEP_WORD_MAX)
    return np.where(size >= LABEL_FLOOR, size, 0.0)


def frame(ax, title: str | None, handles: list | None) -> None:
    """Title on the left above the chart, legend (if any) in the right margin."""
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)


def rank_axis(ax, ranks: int, t0: float, t1: float) -> None:
    """Time on x, one row per rank (rank 0 on top) with a faint guide behind each lane."""
    ax.set_xlim(t0, t1)
    ax.set_ylim(_row_y(ranks - 1) - COMM_H - ROW_GAP / 2, LANE_H + ROW_GAP / 2)
    step = max(1, int(np.ceil(ranks / 32)))  # at most ~32 rank names
    shown = range(0, ranks, step)
    ax.set_yticks([_row_y(r) + LANE_H / 2 for r in shown], [f"rank {r}" for r in shown], fontsize=8 if ranks > 16 else 10)
    ax.tick_params(axis="y", length=0)
    guides = np.arange(ranks)
    ax.add_collection(
        boxes(np.full(ranks, t0 - (t1 - t0)), np.full(ranks, t1 + (t1 - t0)), -guides * ROW_H - COMM_H,
               LANE_H + COMM_H, facecolors="#f4f4f4", edgecolors="none", zorder=0),
        autolim=False,
    )  # fmt: skip
    time_axis(ax)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def legend_for(trace: Trace) -> list[Patch]:
    """Legend entries for what the box-by-box chart of ``trace`` uses."""
    comp = trace.compute
    directions = set(np.unique(hues(trace, comp)).tolist()) if len(comp) else {0}
    kinds_used = {KIND_NAMES[k] for k in np.unique(comp["kind"]).tolist()} if len(comp) else set()
    whole = {KIND_NAMES[k] for k in np.unique(comp["kind"][comp["part"] < 0]).tolist()} if len(comp) else set()
    if len(comp) and np.isin(comp["part"], list(WEIGHT_PARTS)).any():
        kinds_used.add(WEIGHT_PASS_KIND.value)
    handles = []
    for d in sorted(directions):
        for kind, name in KIND_WORDS.items():
            if kind in kinds_used:
                handles.append(Patch(facecolor=COLOURS[d][kind], edgecolor="#333333",
                                     hatch="////" if kind in HATCHED and kind in whole else "",
                                     label=f"{kind} {name}{direction_label(trace, directions, d)}"))  # fmt: skip
    if len(comp) and (comp["part"] >= 0).any():
        handles.append(Patch(facecolor=_tint(COLOURS[0]["F"]), edgecolor="#555555", linewidth=0.6,
                             label="pale: op waiting for\nits own all-to-all"))  # fmt: skip
    if len(comp) and comp["overlapped"].any():
        split = "forward above, backward below" if (comp["part"] >= 0).any() else "forward, then backward"
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.6, label=f"overlapped F&B\n({split})"))
    handles += comm_legend(trace)
    handles += step_legend(trace)
    return handles


def step_legend(trace: Trace) -> list[Patch]:
    """Entries for the end-of-step rows the trace has ([step] work)."""
    from ...engine.trace import STEP_KIND_NAMES  # noqa: PLC0415

    kinds = np.unique(trace.step["kind"]).tolist() if len(trace.step) else []
    return [Patch(facecolor=STEP_COLOURS[STEP_KIND_NAMES[k]], edgecolor="#333333", label=STEP_LABELS[STEP_KIND_NAMES[k]])
            for k in kinds]  # fmt: skip


def comm_legend(trace: Trace, suffix: str = "") -> list[Patch]:
    channels = set(np.unique(trace.comm["channel"]).tolist()) if len(trace.comm) else set()
    handles = []
    if 0 in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["p2p"], label="P2P send" + suffix))
    if A2A in channels:
        handles.append(Patch(facecolor=COMM_COLOURS["a2a"], label="all-to-all" + suffix))
    return handles


def figure_width(trace: Trace) -> float:
    """Wide enough that each action's box can carry a two-digit label."""
    return float(np.clip(actions_per_rank(trace) * 0.3, 10, BASE_MAX_IN))


def label_width(trace: Trace) -> float:
    """gantt.png's width: :func:`figure_width`, or wider (up to MAX_WIDTH_IN) until the narrowest
    F, B or I box has room for its micro-batch number lying down at LABEL_FLOOR."""
    return widen_for_labels(figure_width(trace), [trace], trace.end or 1.0)


def widen_for_labels(base: float, traces, span: float) -> float:
    """A figure ``base`` inches wide, or wider (up to MAX_WIDTH_IN) until the narrowest F, B or I
    box of any of ``traces`` has room for its number lying down at LABEL_FLOOR, the axes spanning
    ``span`` (gantt.png: one trace over its own end; compare.png: every panel over the longest).  A hatched
    kind's box (rules.Look.hatched: W) does not count: its number sits on a white backing."""
    need = 0.0  # points of axes per unit of time
    for trace in traces:
        ops = op_rows(trace.compute)
        ops = ops[~np.isin(ops["kind"], _HATCHED_CODES) & (ops["end"] > ops["start"])]
        if not len(ops):
            continue
        mbs, inverse = np.unique(ops["microbatch"], return_inverse=True)
        need_pts = np.array([glyph(str(int(m)))[2] for m in mbs])[inverse] * LABEL_FLOOR + LABEL_PAD
        with np.errstate(over="ignore"):  # an op of 1e-300 ms needs an infinite width: the cap
            need = max(need, float((need_pts / (ops["end"] - ops["start"])).max()))
    if not need:
        return base
    with np.errstate(over="ignore"):
        axes_in = span * need / 72
    return float(min(max(base, axes_in + LEFT_IN + RIGHT_IN), max(base, MAX_WIDTH_IN)))


def too_dense(trace: Trace, width_px: float, share: float = 1.0) -> bool:
    """Boxes narrower than MIN_BOX_PX on average (``share``: this trace's makespan over the axis span)."""
    return actions_per_rank(trace) * MIN_BOX_PX > width_px * share


def gantt_title(metrics) -> str:
    return (
        f"{metrics.schedule}: {units.layout(metrics.stages, metrics.ranks, metrics.microbatches)}, bubble ratio {units.percent(metrics.bubble_ratio)}, "
        f"makespan {units.duration(metrics.makespan)}"
        + (f", step {units.duration(metrics.step.total)}" if metrics.step is not None else "")
    )
