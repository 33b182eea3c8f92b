"""compare.png: one Gantt chart per schedule, stacked on a shared time axis.

Every panel has the same x range (the longest makespan, or with [step] work
the longest training step), so equal lengths mean
equal times across schedules and a shorter schedule ends visibly earlier.
Panels are drawn box by box (:func:`draw_gantt`) while the densest of them
still has readable boxes at the shared scale, else all as heat strips
(overview.py), so they compare like with like.  Box by box, the figure widens
as gantt.png does (gantt.widen_for_labels, up to 45 in) until every panel's
narrowest F, B or I box has room for its number, unless the rows are too short
for a number lying down anyway.  One legend for all panels lists
each colour once: the strips' colours that some panel shows, or the box
legends merged by look.  Rows shrink as the total rank
count grows, so eight schedules of 16 ranks stay a picture of sane size.
"""

from __future__ import annotations

import re

from . import canvas
from .gantt import (
    BOTTOM_IN, FLAT_SHARE, LABEL_FLOOR, LANE_H, LEFT_IN, RIGHT_IN, ROW_H, ROW_IN, draw_gantt, figure_width, gantt_title, legend_for,
    too_dense, widen_for_labels,
)  # fmt: skip
from .style import COLOURS

HEAD_IN = 0.75  # title and time axis per panel
MAX_CHARTS_IN = 16.0  # the rows of all panels together, at most (rows shrink to fit, down to MIN_ROW_IN)
MIN_ROW_IN = 0.14
MAX_WIDTH_IN = 24.0
QUALIFIED = re.compile(r"^(.*) \((dir \d|rank's \w+ stage)\)$")  # a box legend label naming a colour family
SHORT = {"rank's first stage": "1st stage", "rank's later stage": "later stages"}  # as the heat strips' legend


def compare_figure(results):
    """``results``: simulation.Result objects, drawn top to bottom in this order."""
    from .overview import BIN_ACTIONS, band_legend, draw_overview

    longest = max(r.trace.end for r in results) or 1.0  # end: the whole step with [step] work
    # Wide enough for the densest chart's labels at the shared scale.
    width = max(figure_width(r.trace) * longest / (r.trace.end or longest) for r in results)
    width = min(width, MAX_WIDTH_IN)
    plot_px = (width - LEFT_IN - RIGHT_IN) * canvas.DPI
    bands = any(too_dense(r.trace, plot_px, (r.trace.end or longest) / longest) for r in results)
    ranks = sum(r.trace.ranks for r in results)
    row = max(MIN_ROW_IN, min(ROW_IN, MAX_CHARTS_IN / max(ranks, 1)))
    if not bands and row * LANE_H / ROW_H * 72 * FLAT_SHARE >= LABEL_FLOOR:  # as label_fit: a lane a number fits lying in
        # Boxes, as gantt.png: wider (up to gantt.MAX_WIDTH_IN) until every panel's narrowest F, B or I box
        # has room for its number at the shared scale.  The bands switch above keeps the old width.
        width = widen_for_labels(width, [r.trace for r in results], longest)
    heights = [r.trace.ranks * row for r in results]
    fig = canvas.new_figure(width, sum(heights) + HEAD_IN * len(results) + 0.3)
    h = fig.get_figheight()
    y = h - 0.3
    handles, drawn = {}, []  # one legend for all panels, in the right margin
    for r, chart in zip(results, heights):
        y -= HEAD_IN - BOTTOM_IN + chart
        ax = fig.add_axes((LEFT_IN / width, y / h, 1 - (LEFT_IN + RIGHT_IN) / width, chart / h))
        y -= BOTTOM_IN
        if bands:
            drawn.append(draw_overview(ax, r.trace, title=gantt_title(r.metrics), span=(0.0, longest), legend=False))
        else:
            draw_gantt(ax, r.trace, title=gantt_title(r.metrics), xlim=longest, legend=False)
            for patch in legend_for(r.trace):
                handles.setdefault(patch.get_label(), patch)
    title = None
    if bands:
        waits = "\nor waiting for all-to-all" if any("a2a" in b.drawn() for b in drawn) else ""
        title = f"strip colour: the mix over\n~{BIN_ACTIONS} actions; paler: partly idle{waits}"
    fig.legend(handles=band_legend(drawn) if bands else _one_per_colour(handles.values()), loc="upper left",
               fontsize=8, frameon=False, title=title, title_fontsize=8, alignment="left",
               bbox_to_anchor=(1 - (RIGHT_IN - 0.05) / width, 1 - 0.3 / h))  # fmt: skip
    return fig


def _one_per_colour(patches) -> list:
    """The panels' box legends merged: one entry per look, its family qualifiers joined
    ("F forward" of 1F1B and "F forward (dir 0)" of DualPipe are one blue: "F forward (dir 0)"),
    the op colours first, direction 0 / first stage before 1, each in kind order."""
    merged: dict[tuple, tuple] = {}  # look -> (first patch, its label without qualifier, qualifiers)
    for patch in patches:
        look = (patch.get_facecolor(), patch.get_hatch(), patch.get_edgecolor(), patch.get_linewidth())
        found = QUALIFIED.match(patch.get_label())
        base, qualifier = found.groups() if found else (patch.get_label(), None)
        qualifiers = merged.setdefault(look, (patch, base, []))[2]
        qualifier = SHORT.get(qualifier, qualifier)
        if qualifier and qualifier not in qualifiers:
            qualifiers.append(qualifier)
    for first, base, qualifiers in merged.values():
        if qualifiers:
            first.set_label(f"{base} ({' / '.join(qualifiers)})")
    ops = {_rgba(c): (f, i) for f in (0, 1) for i, c in enumerate(COLOURS[f].values())}
    entries = [first for first, _, _ in merged.values()]
    return sorted(entries, key=lambda p: ops.get(tuple(p.get_facecolor()), (2, 0)))  # stable: the rest as met


def _rgba(colour: str) -> tuple[float, ...]:
    """'#rrggbb' as the RGBA a patch reports."""
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)) + (1.0,)


def save_compare(results, path) -> None:
    canvas.save(compare_figure(results), path)
