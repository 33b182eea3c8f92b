"""gantt.png: the Gantt view a run can be read in.

Box by box (gantt.py) where boxes can be read, else utilisation bands with
the ends in detail (overview.py); with components, one overlapped pair part
by part underneath (pair.py).  This module composes those views, so that none
of them imports another's caller.
"""

from __future__ import annotations

from ...chart_geometry import BOTTOM_IN, LEFT_IN, RIGHT_IN, chart_in, figure_in
from ...engine.trace import Trace
from . import canvas, overview, pair
from .gantt import draw_gantt, figure_width, gantt_title, label_width, too_dense


def save_gantt(trace: Trace, metrics, path, pair_rank: int | None = None) -> None:
    """gantt.png: box by box where boxes can be read, else utilisation bands with the ends in detail;
    with components, one overlapped pair part by part underneath (of ``pair_rank``, default pair.pick's
    typical rank)."""
    if too_dense(trace, (figure_width(trace) - LEFT_IN - RIGHT_IN) * canvas.DPI):
        fig = overview.overview_figure(trace, gantt_title(metrics))
    else:
        width = label_width(trace)  # boxes, then wide enough for their labels
        shown = pair.pick(trace, pair_rank)
        pair_in = pair.HEIGHT_IN if shown is not None else 0.0
        chart = chart_in(trace.ranks, width)  # limits.chart_bytes counts this picture by the same two
        fig = canvas.new_figure(width, figure_in(trace.ranks, width, shown is not None))
        h = fig.get_figheight()
        ax = fig.add_axes((LEFT_IN / width, (BOTTOM_IN + pair_in) / h, 1 - (LEFT_IN + RIGHT_IN) / width, chart / h))
        draw_gantt(ax, trace, title=gantt_title(metrics))
        if shown is not None:
            pair.draw_pair(fig, trace, shown, (LEFT_IN / width, 0.45 / h, 1 - (LEFT_IN + RIGHT_IN) / width,
                                               (pair_in - 1.15) / h))  # fmt: skip
    canvas.save(fig, path)
