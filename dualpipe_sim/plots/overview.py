"""Utilisation bands: a run too long to draw box by box, drawn so it stays true.

Time is cut into bins: one per pixel column, or as many as make a bin last
about four typical actions when that is fewer (shorter bins would show the op
mix of an instant, striped).  For each rank and bin the exact
share of the bin spent in each kind of op (forward, backward, ... per colour
family, as in the box-by-box chart) is stacked from the bottom of the rank's
lane, so a column's coloured height is the rank's utilisation in that bin and
the light grey above it is idle.  The communication lane under it shows the
share of the bin spent sending P2P (grey) or in all-to-all (purple), and with
[step] work the optimizer (compute lane) and the grad and cross-copy syncs
(communication lane) in the Gantt chart's colours.  Nothing
is drawn narrower than a pixel, so nothing aliases: a thousand tiny P2P sends
show as the thin share of time they take, not as solid grey blocks.

:func:`overview_figure` adds the first and the last actions of every rank
(warm-up and cool-down) box by box under the bands, their time windows
outlined on the bands.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch

from .. import units
from ..rules import KIND_NAMES
from ..trace import A2A, Trace
from . import canvas
from .gantt import (
    BOTTOM_IN, COMM_H, LANE_H, LEFT_IN, RIGHT_IN, ROW_GAP, STEP_COLOURS, _row_y, comm_legend, draw_gantt, frame,
    rank_axis, step_legend,
)  # fmt: skip
from .style import COLOURS, COMM_COLOURS, KIND_WORDS, direction_label, drawn_kind, hues, spans

IDLE = "#f4f4f4"
# One rank's row in image pixels: gap above, compute lane, comm lane, gap below (as ROW_GAP/LANE_H/COMM_H).
TOP_PX, LANE_PX, COMM_PX, BOTTOM_PX = 5, 31, 8, 6
DETAIL_ACTIONS = 6  # each detail window holds at least this many actions of every rank
BIN_ACTIONS = 4  # a bin lasts at least this many typical (median) actions
WIDTH_IN = 16.0


def coverage(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time covered by the intervals [starts, ends) inside each bin between ``edges``
    (overlapping intervals count twice).  Covered time up to t is the sum over
    intervals begun by t of (t - start), less the same over intervals ended by t."""
    s, e = np.sort(starts), np.sort(ends)
    cs, ce = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(e)])
    ns, ne = np.searchsorted(s, edges), np.searchsorted(e, edges)
    covered = (ns * edges - cs[ns]) - (ne * edges - ce[ne])
    return np.diff(covered)


def _shares(rows: np.ndarray, ranks: int, category: np.ndarray, n: int, edges: np.ndarray) -> np.ndarray:
    """(ranks, n, bins): share of each bin each rank spends in each category."""
    out = np.zeros((ranks, n, len(edges) - 1))
    key = rows["rank"].astype(np.int64) * n + category
    order = np.argsort(key, kind="stable")
    key = key[order]
    cuts = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        sel = order[a:b]
        r, c = divmod(int(key[a]), n)
        out[r, c] = coverage(rows["start"][sel], rows["end"][sel], edges)
    return np.clip(out / (edges[1] - edges[0]), 0.0, 1.0)


def _stack(shares: np.ndarray, rows_px: int, palette: np.ndarray) -> np.ndarray:
    """(ranks, rows_px, bins, 4): each bin's shares stacked from the bottom pixel row up,
    the rest in the palette's last colour."""
    cum = np.cumsum(shares, axis=1)  # (ranks, n, bins)
    levels = (np.arange(rows_px)[::-1] + 0.5) / rows_px  # top pixel row first
    idx = (cum[:, None, :, :] <= levels[None, :, None, None]).sum(axis=2)
    return palette[idx]


def _category(trace: Trace, comp: np.ndarray) -> np.ndarray:
    """Each compute row's colour: its colour family x the number of kinds + its drawn kind."""
    return hues(trace, comp).astype(np.int64) * len(KIND_NAMES) + drawn_kind(comp)


def band_image(trace: Trace, t0: float, t1: float, bins: int) -> np.ndarray:
    """The RGBA image of every rank's bands, rank 0 on top, rows as in the Gantt chart.
    With [step] work the optimizer is one more share of the compute lane and the grad and
    cross-copy syncs two more of the communication lane."""
    edges = np.linspace(t0, t1, bins + 1)
    comp = trace.compute
    ranks = trace.ranks
    compute = _shares(comp, ranks, _category(trace, comp), 2 * len(KIND_NAMES), edges)
    comm = trace.comm
    links = _shares(comm, ranks, np.where(comm["channel"] == A2A, 1, 0).astype(np.int64), 2, edges)
    palette = [to_rgba(COLOURS[d][k]) for d in (0, 1) for k in KIND_NAMES]
    comm_palette = [to_rgba(COMM_COLOURS["p2p"]), to_rgba(COMM_COLOURS["a2a"])]
    step = trace.step
    if len(step):
        from ..step import OPTIMIZER, STEP_KIND_NAMES  # noqa: PLC0415  (only with [step] work)

        shares = _shares(step, ranks, step["kind"].astype(np.int64), len(STEP_KIND_NAMES), edges)
        syncs = [k for k in range(len(STEP_KIND_NAMES)) if k != OPTIMIZER]
        compute = np.concatenate([compute, shares[:, [OPTIMIZER]]], axis=1)
        links = np.concatenate([links, shares[:, syncs]], axis=1)
        palette.append(to_rgba(STEP_COLOURS["optimizer"]))
        comm_palette += [to_rgba(STEP_COLOURS[STEP_KIND_NAMES[k]]) for k in syncs]
    # Channels of one lane can run at once (two P2P links, a sync beside a send): where their
    # shares add up to more than the bin, scale them to fill it, keeping their proportions.
    total = links.sum(axis=1, keepdims=True)
    links = np.where(total > 1, links / np.maximum(total, 1e-12), links)
    image = np.zeros((ranks, TOP_PX + LANE_PX + COMM_PX + BOTTOM_PX, bins, 4))
    image[:, TOP_PX:TOP_PX + LANE_PX] = _stack(compute, LANE_PX, np.array(palette + [to_rgba(IDLE)]))
    image[:, TOP_PX + LANE_PX:TOP_PX + LANE_PX + COMM_PX] = _stack(links, COMM_PX,
                                                                   np.array(comm_palette + [to_rgba("#fbfbfb")]))
    return image.reshape(ranks * image.shape[1], bins, 4)


def bin_count(trace: Trace, span: float, pixels: int) -> int:
    """One bin per pixel column, but no bin shorter than BIN_ACTIONS typical actions: a bin of
    a fraction of an op would show the op mix of that instant, and the beat between op length
    and bin length would draw stripes that are not in the run."""
    sp = spans(trace)
    typical = float(np.median(sp["end"] - sp["start"])) if len(sp) else 0.0
    if typical <= 0:
        return max(16, pixels)
    return int(np.clip(span / (BIN_ACTIONS * typical), 16, max(16, pixels)))


def draw_overview(ax, trace: Trace, *, title: str | None = None, span: tuple[float, float] | None = None,
                  legend: bool = True) -> None:
    """Utilisation bands of ``trace`` on ``ax`` over ``span`` (default 0 to the end of the step).
    Place the axes first: bins are pixel columns, or wider (see :func:`bin_count`)."""
    t0, t1 = span or (0.0, trace.end or 1.0)
    pos = ax.get_position()
    bins = bin_count(trace, t1 - t0, int(round(pos.width * ax.figure.get_figwidth() * canvas.DPI)))
    ranks = trace.ranks
    top = LANE_H + ROW_GAP / 2
    bottom = _row_y(ranks - 1) - COMM_H - ROW_GAP / 2
    ax.imshow(band_image(trace, t0, t1, bins), extent=(t0, t1, bottom, top), aspect="auto",
              interpolation="antialiased", zorder=1)  # fmt: skip
    rank_axis(ax, ranks, t0, t1)
    frame(ax, title, legend_handles(trace) if legend else None)


def legend_handles(trace: Trace) -> list[Patch]:
    comp = trace.compute
    used = set(np.unique(_category(trace, comp)).tolist()) if len(comp) else set()
    n = len(KIND_NAMES)
    directions = {c // n for c in used} or {0}
    handles = [Patch(facecolor=COLOURS[c // n][KIND_NAMES[c % n]],
                     label=f"{KIND_NAMES[c % n]} {KIND_WORDS[KIND_NAMES[c % n]]}{direction_label(trace, directions, c // n)}")
               for c in sorted(used)]  # fmt: skip
    handles.append(Patch(facecolor=IDLE, edgecolor="#bbbbbb", label="idle"))
    handles += comm_legend(trace, " (share of time)")
    return handles + step_legend(trace)


def detail_windows(trace: Trace, k: int = DETAIL_ACTIONS) -> tuple[tuple[float, float], tuple[float, float]]:
    """(warm-up, cool-down) time windows: from 0 until every rank has finished k actions,
    and from when the first rank is down to its last k actions to the end."""
    sp = spans(trace)
    end = trace.end
    warm, cool = 0.0, end
    for r in range(trace.ranks):
        mine = sp[sp["rank"] == r]
        if len(mine):
            warm = max(warm, float(mine["end"][min(k, len(mine)) - 1]))
            cool = min(cool, float(mine["start"][max(len(mine) - k, 0)]))
    return (0.0, warm), (cool, end)


def overview_figure(trace: Trace, title: str):
    """The bands over the whole run, the warm-up and the cool-down box by box underneath."""
    ranks = trace.ranks
    row_in = float(np.clip(6.0 / max(ranks, 1), 0.11, 0.5))
    chart = max(ranks * row_in, 1.2)
    top, gap = 0.75, 0.85
    fig = canvas.new_figure(WIDTH_IN, top + chart + gap + chart + BOTTOM_IN)
    h = fig.get_figheight()
    plot_w = WIDTH_IN - LEFT_IN - RIGHT_IN
    ax = fig.add_axes((LEFT_IN / WIDTH_IN, (BOTTOM_IN + chart + gap) / h, plot_w / WIDTH_IN, chart / h))
    bins = bin_count(trace, trace.end or 1.0, int(plot_w * canvas.DPI))
    draw_overview(ax, trace, title=title + f"\nutilisation bands: in each time bin ({units.duration((trace.end or 1.0) / bins)}) "
                  "the coloured height is the share of it spent in each kind of op; grey above it is idle")
    warm, cool = detail_windows(trace)
    half = (plot_w - 0.5) / 2
    for i, (label, (t0, t1)) in enumerate((("warm-up", warm), ("cool-down", cool))):
        ax.axvspan(t0, t1, fill=False, edgecolor="black", linestyle="--", linewidth=1.0, zorder=5)
        ax.text(t1 if i == 0 else t0, 0.0, f" {label} " + ("\u2192" if i else "\u2190"), transform=ax.get_xaxis_transform(),
                ha="left" if i == 0 else "right", va="bottom", fontsize=8, zorder=6,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
        detail = fig.add_axes(((LEFT_IN + i * (half + 0.5)) / WIDTH_IN, BOTTOM_IN / h, half / WIDTH_IN, chart / h))
        draw_gantt(detail, trace, window=(t0, t1), legend=i == 1,
                   title=f"{label}, box by box: {units.number(t0)} to {units.duration(t1)}")
        if i:
            detail.set_yticklabels([])
    return fig
