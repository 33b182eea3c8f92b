"""plan.png: throughput against peak memory for every simulated candidate.

One dot per simulated candidate, coloured by schedule; the Pareto front of
those that fit the device (no other is both faster and lighter) joined by a line; the top K
numbered; the device's memory as a dashed line.
"""

from __future__ import annotations

from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D
from matplotlib.path import Path
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ..outputs.plots.canvas import new_figure, place, save
from ..outputs.plots.style import SCHEDULE_ORDER, schedule_colour

# A shape per schedule besides its colour (the sweep charts' colours: plots/style.py): among 13
# schedules some colours are close (interleaved-1f1b-overlap's olive, chimera-doubling's brown), so
# no two schedules share both.  Indexed like SCHEDULE_ORDER; other names take "o".
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d")
# The front runs through the top K (they are mostly on it): black with a white halo, above the other dots,
# its own candidates' dots drawn again on it, then the top K's rings, wider than a dot and hollow, so the
# line shows through them; the leader lines to the labels are light and dotted, so none is taken for the front.
RING_AREA, RING_WIDTH = 130, 1.1  # a top K ring: its scatter size (points squared) and its line's width (points)
FRONT = {"color": "black", "lw": 1.6, "zorder": 2,
         "path_effects": [patheffects.withStroke(linewidth=3.2, foreground="white")]}  # fmt: skip


def schedule_marker(name: str) -> str:
    return MARKERS[SCHEDULE_ORDER.index(name) % len(MARKERS)] if name in SCHEDULE_ORDER else "o"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (less memory x, more throughput y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fitting_front(points: list[tuple[float, float]], limit: float | None) -> list[int]:
    """The Pareto front of the points whose memory x is within ``limit`` (all if None): a layout
    over the device is no choice, however fast, so it must not bend the front."""
    fitting = [i for i, (x, _) in enumerate(points) if limit is None or x <= limit]
    return [fitting[i] for i in pareto([points[i] for i in fitting])]


def device_label(ax, device: float, avoid: list, renderer) -> None:
    """"device memory" beside its dashed line at x = ``device`` GB, inside the axes, on the side with room: right of
    the line in the left half (left of it, near the axis, it ran into the top K's column of labels), left of it in
    the right half (right of a line near the right edge it ran into the legend beside the axes: s19g's 256-GPU B200
    plan, the line at 192 GB on a 0-200 GB axis).  At the top of the line, or the first place that clears ``avoid``
    (display-space Bboxes and Paths: the top K's numbers, leader lines and rings; at the top left of its line it lay on
    DeepSeek-V3's #1, s21e): the other side of the line at that height if it fits inside the axes there, else lower
    down; at the top on its side if nothing clears."""
    x0, x1 = ax.get_xlim()
    left = (device - x0) / (x1 - x0) > 0.5
    label = ax.annotate("device memory", (device, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-4 if left else 4, -12), textcoords="offset points", ha="right" if left else "left",
                        fontsize=8, color="0.3",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})  # fmt: skip
    axes = ax.get_window_extent(renderer)
    for drop in range(12, int(axes.height * 72 / ax.figure.dpi) - 6, 4):  # points, 4 at a time down to the bottom
        for on_left in (left, not left):
            label.set_horizontalalignment("right" if on_left else "left")
            label.xyann = (-4 if on_left else 4, -drop)
            box = label.get_window_extent(renderer)
            inside = axes.x0 <= box.x0 and box.x1 <= axes.x1 and axes.y0 <= box.y0
            if inside and not any(box.overlaps(a) if isinstance(a, Bbox) else a.intersects_bbox(box, filled=False)
                                  for a in avoid):  # fmt: skip
                return
    label.set_horizontalalignment("right" if left else "left")
    label.xyann = (-4 if left else 4, -12)


def top_k_marks(ax, top: list, renderer) -> list:
    """The top K's rings, numbers and leader lines (a column of numbers at the top left, where a Pareto chart is
    empty: nothing there is both lighter and faster), and what they cover on the canvas: each number's and ring's
    box and each leader line as a display-space Bbox or Path (device_label keeps clear of them)."""
    ring = (RING_AREA**0.5 + RING_WIDTH) / 2 * ax.figure.dpi / 72  # its outer radius in pixels
    covered = []
    for k, r in enumerate(top, 1):
        x, y = r.peak_memory / 1e9, r.tokens_per_second_per_gpu
        ax.scatter([x], [y], s=RING_AREA, facecolors="none", edgecolors="0.15", linewidths=RING_WIDTH, zorder=4)
        number = ax.annotate(f"#{k}", (x, y), xytext=(0.03, 0.97 - 0.045 * (k - 1)), textcoords="axes fraction",
                             fontsize=8, ha="left", va="center", zorder=2,
                             arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6, "ls": ":"})  # fmt: skip
        at = ax.transData.transform((x, y))
        # the number's own box (an Annotation's box spans its leader line too, which is a Path here)
        covered += [Text.get_window_extent(number, renderer), Bbox.from_extents(*(at - ring), *(at + ring)),
                    Path([ax.transAxes.transform(number.xyann), at])]
    return covered


def draw(plan, path) -> None:
    rows = [r for r in plan.rows if r.ok and r.tokens_per_second_per_gpu]
    fig = new_figure(9.0, 5.6)
    place(fig, left=0.9, right=2.3, top=0.75, bottom=0.7)  # a two-line title
    ax = fig.add_subplot(1, 1, 1)
    pts = [(r.peak_memory / 1e9, r.tokens_per_second_per_gpu) for r in rows]
    names = sorted({r.candidate.schedule for r in rows})
    front = fitting_front(pts, plan.device_memory / 1e9 if plan.device_memory else None)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], **FRONT)
    for name in names:
        for on_front, z in ((False, 1), (True, 3)):
            mine = [pts[i] for i, r in enumerate(rows) if r.candidate.schedule == name and (i in front) == on_front]
            ax.scatter([x for x, _ in mine], [y for _, y in mine], s=22, color=schedule_colour(name), alpha=0.8,
                       marker=schedule_marker(name), linewidths=0, zorder=z, label=None if on_front else name)  # fmt: skip
    if plan.device_memory:
        ax.axvline(plan.device_memory / 1e9, color="0.4", ls="--", lw=1.0)
    top, notes = plan.top, []
    if plan.device_memory and pts:
        right = max(x for x, _ in pts)
        edge = 1.6 * plan.device_memory / 1e9
        if right > edge:  # layouts far over the device only squash the ones that fit
            beyond = sum(x > edge for x, _ in pts)
            ax.set_xlim(0, edge)
            notes.append(ax.annotate(f"{beyond} layouts over {edge:.0f} GB not shown", (1.0, 0.0),
                                     xycoords="axes fraction", xytext=(-4, 4), textcoords="offset points", ha="right",
                                     fontsize=8, color="0.3"))  # fmt: skip
    # the labels placed clear of each other on the canvas, once the axes' limits are settled (get_xlim settles
    # what autoscaling left pending: the transforms read them)
    ax.get_xlim()
    renderer = FigureCanvasAgg(fig).get_renderer()
    marks = top_k_marks(ax, top, renderer) + [note.get_window_extent(renderer) for note in notes]
    if plan.device_memory:
        device_label(ax, plan.device_memory / 1e9, marks, renderer)
    ax.set_xlabel("peak memory per rank (GB): static bytes, activations, buffers, runtime allowance")
    ax.set_ylabel("tokens / s per GPU")
    ax.set_title(f"{len(rows)} simulated layouts on {plan.gpus} GPUs: throughput against memory\n"
                 f"(line: Pareto front of those that fit; circles: top {len(plan.top)})", fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], **FRONT),
                Line2D([], [], ls="", marker="o", ms=11, mfc="none", mec="0.15", mew=RING_WIDTH)]  # fmt: skip
    labels += ["Pareto front (fitting)", f"top {len(top)}"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    save(fig, path)
