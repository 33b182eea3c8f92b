"""compare.png: one Gantt chart per schedule, stacked on a shared time axis.

Every panel has the same x range (the longest makespan, or with [step] work
the longest training step), so equal lengths mean
equal times across schedules and a shorter schedule ends visibly earlier.
Panels are drawn box by box (:func:`draw_gantt`) while the densest of them
still has readable boxes at the shared scale, else all as utilisation bands
(overview.py), so they compare like with like.  Rows shrink as the total rank
count grows, so eight schedules of 16 ranks stay a picture of sane size.
"""

from __future__ import annotations

from . import canvas
from .gantt import BOTTOM_IN, LEFT_IN, RIGHT_IN, ROW_IN, draw_gantt, figure_width, gantt_title, legend_for, too_dense

HEAD_IN = 0.75  # title and time axis per panel
MAX_CHARTS_IN = 16.0  # the rows of all panels together, at most (rows shrink to fit, down to MIN_ROW_IN)
MIN_ROW_IN = 0.14
MAX_WIDTH_IN = 24.0


def compare_figure(results):
    """``results``: simulation.Result objects, drawn top to bottom in this order."""
    from .overview import draw_overview, legend_handles

    longest = max(r.trace.end for r in results) or 1.0  # end: the whole step with [step] work
    # Wide enough for the densest chart's labels at the shared scale.
    width = max(figure_width(r.trace) * longest / (r.trace.end or longest) for r in results)
    width = min(width, MAX_WIDTH_IN)
    plot_px = (width - LEFT_IN - RIGHT_IN) * canvas.DPI
    bands = any(too_dense(r.trace, plot_px, (r.trace.end or longest) / longest) for r in results)
    ranks = sum(r.trace.ranks for r in results)
    row = max(MIN_ROW_IN, min(ROW_IN, MAX_CHARTS_IN / max(ranks, 1)))
    heights = [r.trace.ranks * row for r in results]
    fig = canvas.new_figure(width, sum(heights) + HEAD_IN * len(results) + 0.3)
    h = fig.get_figheight()
    y = h - 0.3
    handles = {}  # one legend for all panels, in the right margin: label -> patch
    for r, chart in zip(results, heights):
        y -= HEAD_IN - BOTTOM_IN + chart
        ax = fig.add_axes((LEFT_IN / width, y / h, 1 - (LEFT_IN + RIGHT_IN) / width, chart / h))
        y -= BOTTOM_IN
        if bands:
            draw_overview(ax, r.trace, title=gantt_title(r.metrics), span=(0.0, longest), legend=False)
            shown = legend_handles(r.trace)
        else:
            draw_gantt(ax, r.trace, title=gantt_title(r.metrics), xlim=longest, legend=False)
            shown = legend_for(r.trace)
        for patch in shown:
            handles.setdefault(patch.get_label(), patch)
    fig.legend(handles=list(handles.values()), loc="upper left", fontsize=8, frameon=False,
               bbox_to_anchor=(1 - (RIGHT_IN - 0.05) / width, 1 - 0.3 / h))
    return fig


def save_compare(results, path) -> None:
    canvas.save(compare_figure(results), path)
