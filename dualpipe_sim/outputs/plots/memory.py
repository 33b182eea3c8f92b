"""memory.png: memory per rank against time, the peaks marked.

One band per rank (rank 0 on top), all on one time axis and one memory
scale, in a single axes: 64 ranks cost one set of ticks, not 64 subplots
re-scaling each other.  In each band the rank's parameters (static, every
stage it holds) are the grey base and its activations the blue step area on
top (the level held until the next allocation or free).  Each band's peak of
activations is dotted and labelled with the activations alive and their
bytes; the highest over all ranks is red and named in the title.  With a
``capacity`` (bytes per device) a red dashed line in every band marks it while
the fullest rank uses half of it or more; under half, the bands stop above the
fullest rank and the title names the device (style.memory_axis).
With [step] work the axis runs to the end of the training step and each band
shades its rank's end-of-step work in the Gantt chart's colours: the
activations are seen to be freed before the optimizer runs.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from matplotlib.collections import LineCollection, PolyCollection

from ... import units
from ..exports.timeline import activation_levels
from ...engine.trace import Trace
from ...units import byte_scale
from . import canvas
from .style import device_words, memory_axis
from .gantt import time_axis

LINE, FILL, STATIC, PEAK, TOP = "#1f5f9e", "#cfe0f1", "#c8c8c8", "#d62728", "#444444"
BAND = 0.8  # a band's height in rank rows; the rest is the gap to the next rank
# behind a peak's label: the capacity line it may sit on is hidden there, not struck through the text
LABEL_BACKING = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"}
ROW_IN_MAX, ROW_IN_MIN = 0.62, 0.16


def draw_memory(fig, trace: Trace, *, title: str | None = None, capacity: float | None = None,
                static: list[float] | None = None, static_words: str | None = None):  # fmt: skip
    """Draw on ``fig`` (one axes, placed to fill it); returns (axes, bytes per band height).
    ``static``: bytes per rank under the activations (default: the trace's parameter bytes)."""
    ax = fig.add_subplot()
    ranks = trace.ranks
    levels = [activation_levels(trace, r) for r in range(ranks)]
    end = trace.end or 1.0
    full = static is not None  # parameters, gradients and optimizer states (a [model] scenario)
    static = [float(b) for b in (static if full else trace.parameter_bytes)]
    static += [0.0] * max(0, ranks - len(static))
    highest = max([s + float(b.max()) for s, (_, _, b) in zip(static, levels)] + [1.0])
    # bytes per band height, 1.25 x the top: room for the peak labels; the device's line only while the fullest
    # rank uses half of it or more (style.memory_axis), else its size in the title
    scale, cap_drawn = memory_axis(highest, capacity, 1.25)
    top = scale / 1.25
    div, unit = byte_scale(top)

    areas, face, steps, dots, dot_colours = [], [], [], [], []
    best = max(range(ranks), key=lambda r: (levels[r][2].max(), -r)) if ranks else 0
    for r in range(ranks):
        times, alive, nbytes = levels[r]
        base = -r + static[r] / scale * BAND
        x = np.repeat(np.append(times, end), 2)[1:-1]
        y = base + np.repeat(nbytes, 2) / scale * BAND
        areas.append(np.column_stack([np.r_[x, x[::-1]], np.r_[y, np.full(len(x), base)]]))
        face.append(FILL)
        steps.append(np.column_stack([x, y]))
        if static[r] > 0:
            areas.append(np.array([[0, -r], [end, -r], [end, base], [0, base]]))
            face.append(STATIC)
        i = int(np.argmax(nbytes))  # first time the rank reaches its peak
        dots.append((times[i], base + nbytes[i] / scale * BAND))
        dot_colours.append(PEAK if r == best else TOP)
        if ranks <= 32 or r == best:
            ax.annotate(f"{alive[i]} ({units.number(nbytes[i] / div, 3)} {unit})", dots[-1], xytext=(4, 1),
                        textcoords="offset points", va="bottom", fontsize=7, color=dot_colours[-1],
                        fontweight="bold" if r == best else "normal",
                        bbox=LABEL_BACKING)  # fmt: skip
    ax.add_collection(PolyCollection(areas, facecolors=face, edgecolors="none"), autolim=False)
    ax.add_collection(LineCollection(steps, colors=LINE, linewidths=1.0), autolim=False)
    if dots:
        xy = np.array(dots)
        for colour in (TOP, PEAK):
            sel = np.array(dot_colours) == colour
            if sel.any():
                ax.plot(xy[sel, 0], xy[sel, 1], "o", color=colour, markersize=4, zorder=3, linestyle="none")
    if cap_drawn:
        y = -np.arange(ranks) + capacity / scale * BAND
        ax.add_collection(LineCollection([[(0, v), (end, v)] for v in y], colors=PEAK, linewidths=1.0,
                                         linestyles="--"), autolim=False)  # fmt: skip
    ax.hlines(-np.arange(ranks), 0, end, color="#888888", linewidth=0.6)  # each band's zero
    ax.set_xlim(0, end)
    ax.set_ylim(-ranks + 1 - 0.15, BAND + 0.05)
    step = max(1, int(np.ceil(ranks / 32)))
    ax.set_yticks([-r + BAND / 2 for r in range(0, ranks, step)], [f"rank {r}" for r in range(0, ranks, step)],
                  fontsize=8)  # fmt: skip
    ax.tick_params(axis="y", length=0)
    time_axis(ax)  # as the Gantt chart: 243,992 ms, not 2.44e5
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if ranks:
        t_top, u_top, b_top = levels[best]
        i = int(np.argmax(b_top))
        where = (f"the highest (red): {u_top[i]} ({units.number(b_top[i] / div, 3)} {unit}) on rank {best} "
                 f"at t={units.duration(t_top[i])}")
    else:
        where = "no ranks"
    grey = (static_words or "parameters, gradients, optimizer states") if full else "parameters"
    # the static terms on a line of their own: with every memory term they no longer fit beside the rest
    parts = "static (grey) + activations (blue)" if any(static) else "activations"
    grey_line = f"grey: {grey}\n" if any(static) else ""
    cap = f"; red dashed: capacity {units.nbytes(capacity)}" if cap_drawn else ""
    if full and ranks:  # the red dot is the largest activation peak, not always the rank nearest capacity
        totals = [s + float(b.max()) for s, (_, _, b) in zip(static, levels)]
        fullest = max(range(ranks), key=lambda r: (totals[r], -r))
        cap += f"; fullest: rank {fullest}, {units.number(totals[fullest] / div, 3)} {unit}"
    device = device_words(highest, capacity) + "\n" if capacity and not cap_drawn else ""
    if len(trace.step):
        _shade_step(ax, trace.step)
    # Its own line: beside the rest it ran past the figure's right edge.
    from ...engine.trace import DRAIN, SLOWED  # noqa: PLC0415  (as _shade_step's)

    drained = bool(len(trace.step)) and bool((trace.step["kind"] == DRAIN).any())  # model.defer_embedding_wgrad
    slowed = bool(len(trace.step)) and bool((trace.step["kind"] == SLOWED).any())  # step.dp_comm_sms
    shaded = ("\nshaded: grad sync (green), cross-copy sync (teal), optimizer (olive)"
              + (", deferred wgrad drain (purple)" if drained else "")
              + (", compute slowed beside data-parallel collectives (dark red)" if slowed else "")) if len(trace.step) else ""
    fig.suptitle(
        (title + "\n" if title else "")
        + f"memory per rank: {parts}, each band 0 to {units.number(scale / div, 3)} {unit}{cap}\n{device}{grey_line}"
        + (shaded[1:] + "\n" if shaded else "")
        + f"dot = the rank's activation peak, labelled stage-activations alive ({unit}); {where}",
        fontsize=10, x=0.01, ha="left",
    )  # fmt: skip
    return ax, scale / BAND


def _shade_step(ax, step: np.ndarray) -> None:
    """Each end-of-step row as a band behind its rank's memory."""
    from ...engine.trace import STEP_KIND_NAMES  # noqa: PLC0415  (only runs with [step] work)
    from .gantt import STEP_COLOURS  # noqa: PLC0415

    boxes = [np.array([[r["start"], -r["rank"]], [r["end"], -r["rank"]], [r["end"], -r["rank"] + BAND],
                       [r["start"], -r["rank"] + BAND]]) for r in step]  # fmt: skip
    colours = [STEP_COLOURS[STEP_KIND_NAMES[k]] for k in step["kind"]]
    ax.add_collection(PolyCollection(boxes, facecolors=colours, edgecolors="none", alpha=0.25, zorder=0), autolim=False)


def static_words(mem, deferred: bool = False) -> str:
    """What the grey band (total - activation peak) holds, for the title: the terms ``total`` sums that are not
    zero on every rank, the buffers as what dynamic_peak adds to the activation peak (naming p2p_buffers and
    dynamic_peak as terms would read as if buffers and activations were in the grey twice); ``deferred``: the run
    defers output-layer wgrad GEMMs, whose buffers dynamic_peak also holds (model/buffers.py)."""
    summed = [k for k in asdict(mem[0]) if k not in ("total", "activations_peak", "p2p_buffers", "a2a_buffers",
                                                      "dynamic_peak") and any(getattr(m, k) for m in mem)]
    names = [n.replace("_", " ") + (" states" if n == "optimizer" else "") for n in summed]
    if any(m.dynamic_peak > m.activations_peak for m in mem):
        names.append(f"P2P / all-to-all{' / deferred wgrad' if deferred else ''} buffers (dynamic peak - activation peak)")
    return ", ".join(names)


def save_memory(trace: Trace, metrics, path, capacity: float | None = None, deferred: bool = False) -> None:
    """memory.png; ``deferred``: the run's cost model defers output-layer wgrad GEMMs (CostModel.deferred)."""
    ranks = max(trace.ranks, 1)
    row = float(np.clip(8.0 / ranks, ROW_IN_MIN, ROW_IN_MAX))
    fig = canvas.new_figure(12, 1.5 + 0.5 + row * ranks)
    title = (
        f"{metrics.schedule}: {units.layout(metrics.stages, metrics.ranks, metrics.microbatches)}"
    )
    # With a [model], the static memory is all of it and the capacity the device's (metrics.json).
    mem = [r.memory for r in metrics.per_rank]
    # Everything per_rank[].memory counts but the activation peak (a term added there is counted here).
    static = [m.total - m.activations_peak for m in mem] if all(mem) and mem else None
    words = static_words(mem, deferred) if static is not None else None
    capacity = capacity if capacity is not None else metrics.device_memory
    draw_memory(fig, trace, title=title, capacity=capacity, static=static, static_words=words)
    # 0.2 inch a title line past four (the shaded step work's, the device's when it is off the scale)
    extra = 0.2 * max(0, fig.get_suptitle().count("\n") + 1 - 4)
    fig.set_size_inches(12, 1.5 + 0.5 + extra + row * ranks)
    canvas.place(fig, left=0.8, right=0.3, top=0.95 + extra, bottom=0.5)
    canvas.save(fig, path)
