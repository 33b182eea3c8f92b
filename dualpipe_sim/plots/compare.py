"""compare.png: one Gantt chart per schedule, stacked on a shared time axis.

Every panel is drawn by :func:`draw_gantt` with the same x range (the longest
makespan), so equal lengths mean equal times across schedules and a shorter
schedule ends visibly earlier.  Panel heights follow the rank counts.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .gantt import COMM_H, LANE_H, ROW_GAP, draw_gantt, figure_width, gantt_title  # noqa: E402

ROW_IN = (LANE_H + COMM_H + ROW_GAP) * 0.62  # inches per rank row, as in gantt.png
HEAD_IN = 0.75  # title and gap per panel


def compare_figure(results):
    """``results``: simulation.Result objects, drawn top to bottom in this order."""
    longest = max(r.trace.makespan for r in results) or 1.0
    # Wide enough for the densest chart's labels at the shared scale.
    width = max(figure_width(r.trace) * longest / (r.trace.makespan or longest) for r in results)
    width = min(width, 44)
    heights = [HEAD_IN + r.trace.ranks * ROW_IN for r in results]
    fig, axes = plt.subplots(
        len(results), 1, figsize=(width, sum(heights) + 0.6), sharex=True,
        gridspec_kw={"height_ratios": heights}, squeeze=False,
    )
    for ax, r in zip(axes[:, 0], results):
        draw_gantt(ax, r.trace, title=gantt_title(r.metrics), xlim=longest, width_in=width)
        ax.set_xlabel("")
    axes[-1, 0].set_xlabel("time (ms)")
    for ax in axes[:, 0]:
        ax.tick_params(axis="x", labelbottom=True)  # a time scale under every panel
    fig.tight_layout()
    return fig


def save_compare(results, path) -> None:
    fig = compare_figure(results)
    fig.savefig(path, dpi=110)
    plt.close(fig)
