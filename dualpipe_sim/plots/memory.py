"""memory.png: activation memory per rank against time, the peak marked.

Small multiples: one thin panel per rank (rank 0 on top), all on the same
time and memory axes, so 16 or more ranks stay readable where 16 overlapping
lines would not.  Each panel is a step line (the level held until the next
allocation or free) with its own peak dotted and labelled; the peak over all
ranks is drawn in red and named in the title.  Up to 16 ranks per column.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import units  # noqa: E402
from ..exports.timeline import activation_levels, byte_scale  # noqa: E402
from ..trace import Trace  # noqa: E402

ROWS_PER_COLUMN = 16
LINE, FILL, PEAK, TOP = "#1f5f9e", "#cfe0f1", "#d62728", "#444444"


def draw_memory(fig, trace: Trace, *, title: str | None = None) -> None:
    ranks = max(trace.ranks, 1)
    cols = math.ceil(ranks / ROWS_PER_COLUMN)
    rows = math.ceil(ranks / cols)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    levels = [activation_levels(trace, r) for r in range(trace.ranks)]
    end = trace.makespan or 1.0
    peak_bytes = max((float(b.max()) for _, _, b in levels), default=0.0)
    div, unit = byte_scale(peak_bytes)
    # The rank holding the highest peak (first such rank) and when it first got there.
    top = max(range(trace.ranks), key=lambda r: (levels[r][2].max(), -r)) if trace.ranks else 0

    for r in range(rows * cols):
        ax = axes[r % rows][r // rows]
        if r >= trace.ranks:
            ax.set_visible(False)
            continue
        times, units_alive, nbytes = levels[r]
        x = np.append(times, end)
        y = np.append(nbytes, nbytes[-1]) / div
        ax.fill_between(x, y, step="post", color=FILL, linewidth=0)
        ax.step(x, y, where="post", color=LINE, linewidth=1.1)
        i = int(np.argmax(nbytes))  # first time the rank reaches its peak
        colour = PEAK if r == top else TOP
        ax.plot([times[i]], [nbytes[i] / div], "o", color=colour, markersize=4, zorder=3)
        ax.annotate(
            f"{units_alive[i]} ({units.number(nbytes[i] / div, 3)} {unit})",
            (times[i], nbytes[i] / div),
            xytext=(4, 1),
            textcoords="offset points",
            va="bottom",
            fontsize=7,
            color=colour,
            fontweight="bold" if r == top else "normal",
        )
        ax.set_ylabel(f"rank {r}", rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([0, peak_bytes / div] if peak_bytes > 0 else [0])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for c in range(cols):
        last = min(rows, trace.ranks - c * rows) - 1
        axes[last][c].set_xlabel("time (ms)")
        axes[last][c].tick_params(labelbottom=True)  # sharex hides it above the bottom row
    axes[0][0].set_xlim(0, end)
    axes[0][0].set_ylim(0, (peak_bytes / div) * 1.6 if peak_bytes > 0 else 1)
    if trace.ranks:
        t_top, u_top, b_top = levels[top]
        i = int(np.argmax(b_top))
        where = f"highest (red): {u_top[i]} ({units.number(b_top[i] / div, 3)} {unit}) on rank {top} at t={units.duration(t_top[i])}"
    else:
        where = "no ranks"
    fig.suptitle(
        (title + "\n" if title else "")
        + f"activation memory per rank in {unit}; dot = the rank's peak, labelled activations alive ({unit}); {where}",
        fontsize=10,
        x=0.01,
        ha="left",
    )


def save_memory(trace: Trace, metrics, path) -> None:
    cols = math.ceil(max(trace.ranks, 1) / ROWS_PER_COLUMN)
    rows = math.ceil(max(trace.ranks, 1) / cols)
    fig = plt.figure(figsize=(10 * cols ** 0.5 + 2, 1.4 + 0.62 * rows))
    title = (
        f"{metrics.schedule}: {metrics.stages} stages on {metrics.ranks} ranks, "
        f"{metrics.microbatches} micro-batches"
    )
    draw_memory(fig, trace, title=title)
    fig.tight_layout(h_pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
