"""gantt.png's geometry, in inches and pixels, without matplotlib.

The chart code (outputs/plots: canvas, gantt, gantt_file, pair, compare) lays its pictures
out by these numbers, and limits.py counts gantt.png's pixels and boxes by the same ones
before anything runs: a size guard must not import matplotlib, so the numbers live in this
leaf that both import.
"""

from __future__ import annotations

DPI = 110  # every PNG chart's dots per inch (canvas.py)

LANE_H, COMM_H, ROW_GAP = 0.62, 0.16, 0.22  # a rank's compute lane, its comm lane, the gap (data units)
ROW_H = LANE_H + COMM_H + ROW_GAP  # one rank's row in data units
ROW_IN = ROW_H * 0.62  # inches per rank row in gantt.png
LEFT_IN, RIGHT_IN, TOP_IN, BOTTOM_IN = 0.8, 2.55, 0.45, 0.55  # fixed margins: rank labels, legend, title, axis
BASE_MAX_IN = 30.0  # gantt.figure_width's widest: 0.3 in an action, from 10 in up to this
# gantt.png grows up to this for its labels (4,950 px at DPI 110): wider, a viewer shows it scaled
# down until the numbers are too small to read anyway, and the file only grows.
MAX_WIDTH_IN = 45.0
PAIR_IN = 2.4  # the pair view under a chart of components: its share of the figure, axes and titles included
MIN_BOX_PX = 8.0  # narrower than this per action on average (edges and borders swamp them), boxes give way to bands

# The most actions a rank's row holds while gantt.png still draws boxes: its widest base figure's
# axes, (30 - 0.8 - 2.55) in x 110 dpi = 2,931.5 px, at MIN_BOX_PX each (gantt.too_dense): 366.
BOX_ACTIONS_PER_RANK = int((BASE_MAX_IN - LEFT_IN - RIGHT_IN) * DPI / MIN_BOX_PX)


def chart_in(ranks: int, width: float) -> float:
    """The box-by-box chart's axes height for ``ranks`` rows on a figure ``width`` inches wide:
    a row each, but at least width / 6 - 1.3 in, so that few ranks on a wide chart are no thin strip."""
    return max(ranks * ROW_IN, width / 6 - 1.3)


def figure_in(ranks: int, width: float, pair: bool) -> float:
    """The box-by-box gantt.png's height: title, chart, axis, and the pair view when ``pair``."""
    return TOP_IN + chart_in(ranks, width) + BOTTOM_IN + (PAIR_IN if pair else 0.0)
