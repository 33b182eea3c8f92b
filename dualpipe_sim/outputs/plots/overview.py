"""Utilisation bands: a run too long to draw box by box, drawn as heat strips that stay true.

Each rank's compute lane is a solid strip whose colour, column by column, is
what the rank did around that time.  Colour: forward light, backward dark (a
split backward's input- and weight-gradient halves count as backward), in the
box chart's colours.  With two colour families (DualPipe's two directions, or a
V/interleaved rank's first and later stages) the lane is split, the first family
on top and the second below, each as tall as its share of the work, so the two
never blend into a muddy hue.  Strength: the strip is as pale (towards the idle
grey of an empty lane) as the rank was idle; time an op spends waiting for its
own all-to-all counts half, as the box chart draws it pale.

Shares are exact covered time per pixel column (:func:`coverage`), then
averaged over a window of about :data:`BIN_ACTIONS` typical actions (a
triangle: a box of half that width applied twice).  Without the window the
op-by-op flicker of a column (1F1B's F, B, F, B at a pixel or less per op)
would beat against the pixel grid and draw stripes that are not in the run;
with it a column shows the local mix.  The thin lane under each strip mixes the
P2P (grey) and all-to-all (purple) shares the same way, and with [step] work
the optimizer and the compute's slowdown beside the data-parallel collectives
(compute lane, step.dp_comm_sms's SLOWED rows) and the grad and cross-copy
syncs (communication lane) in the Gantt chart's colours.  The image is one artist (a pcolor image,
a few rows per lane and one column per pixel), whatever the size of the run.

:func:`overview_figure` adds the first and the last actions of every rank
(warm-up and cool-down) box by box under the bands, their time windows
outlined on the bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch

from ... import units
from ...engine.trace import A2A, IS_BACKWARD, Trace
from . import canvas
from .gantt import (
    BOTTOM_IN, COMM_H, LANE_H, LEFT_IN, RIGHT_IN, ROW_H, STEP_COLOURS, STEP_LABELS, draw_gantt, frame, rank_axis,
)  # fmt: skip
from .style import COLOURS, COMM_COLOURS, HUE_KINDS, by_chunk, hues, op_rows, spans

IDLE = "#f4f4f4"  # the lane guide's grey: an idle strip is an empty lane
COMM_IDLE = "#ffffff"
LANE_ROWS = 12  # image rows per compute lane: the families' split is drawn to 1/12 of the lane
WAIT_WEIGHT = 0.5  # an op waiting for its own all-to-all is drawn pale: half its colour, half idle
DETAIL_ACTIONS = 6  # each detail window holds at least this many actions of every rank
BIN_ACTIONS = 8  # the averaging window lasts about this many typical (median) actions (see docs/charts.md)
WIDTH_IN = 16.0
BAND_KINDS = ("forward", "backward")  # the strip's colours per family: F light, B (and I, W) dark
# What the two colour families stand for (style.hues): trace meaning -> (family 0, family 1) words.
FAMILY_WORDS = {"dir": ("dir 0", "dir 1"), "chunk": ("rank's 1st stage", "later stages")}


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
    if len(rows) == 0:
        return out
    key = rows["rank"].astype(np.int64) * n + category
    order = np.argsort(key, kind="stable")
    key = key[order]
    cuts = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        sel = order[a:b]
        r, c = divmod(int(key[a]), n)
        out[r, c] = coverage(rows["start"][sel], rows["end"][sel], edges)
    return np.clip(out / (edges[1] - edges[0]), 0.0, 1.0)


def _box_mean(a: np.ndarray, half: int) -> np.ndarray:
    """Mean over the bins i - half .. i + half along the last axis (fewer at the ends:
    there is no time outside the chart to average in)."""
    n = a.shape[-1]
    cs = np.concatenate([np.zeros(a.shape[:-1] + (1,)), np.cumsum(a, axis=-1)], axis=-1)
    i = np.arange(n)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, n)
    return (cs[..., hi] - cs[..., lo]) / (hi - lo)


def smooth(a: np.ndarray, half: int) -> np.ndarray:
    """``a`` averaged along its last axis with a triangle of 4 * half + 1 bins (a box of
    2 * half + 1 bins twice); unchanged when half is 0."""
    return a if half < 1 else _box_mean(_box_mean(a, half), half)


def _mix(weights: np.ndarray, colours: list[str], rest: str) -> np.ndarray:
    """RGB of each bin: the colours weighted by ``weights`` (n, ..., bins), ``rest`` for
    the share left over (shares adding to more than the bin are scaled to fill it)."""
    total = weights.sum(axis=0)
    weights = weights / np.maximum(total, 1.0)
    rgb = np.tensordot(np.array([to_rgb(c) for c in colours]).T, weights, axes=(1, 0))  # (3, ..., bins)
    rgb += np.multiply.outer(np.array(to_rgb(rest)), 1.0 - np.minimum(total, 1.0))
    return np.moveaxis(rgb, 0, -1)


def _union(rows: np.ndarray, ranks: int, edges: np.ndarray) -> np.ndarray:
    """(ranks, bins): share of each bin in which a rank has at least one of ``rows`` going."""
    out = np.zeros((ranks, len(edges) - 1))
    rows = rows[np.lexsort((rows["start"], rows["rank"]))]
    bounds = np.searchsorted(rows["rank"], np.arange(ranks + 1))
    for r in range(ranks):
        mine = rows[bounds[r]:bounds[r + 1]]
        if len(mine) == 0:
            continue
        reach = np.maximum.accumulate(mine["end"])  # the latest end so far: a gap after it starts a new block
        first = np.r_[True, mine["start"][1:] > reach[:-1]]
        last = np.r_[first[1:], True]
        out[r] = coverage(mine["start"][first], reach[last], edges)
    return np.clip(out / (edges[1] - edges[0]), 0.0, 1.0)


@dataclass
class Bands:
    """What the heat strips of a trace show, per rank and time bin, before colouring."""

    edges: np.ndarray  # bin edges (time)
    busy: np.ndarray  # (ranks, bins): the strip's strength: computing, plus WAIT_WEIGHT of waiting inside an action
    compute: np.ndarray  # (ranks, 2 families, 2 BAND_KINDS, bins): the mix of colours (share of the bin in each)
    optimizer: np.ndarray  # (ranks, bins): share in the optimizer step ([step] work; zeros without)
    links: np.ndarray  # (ranks, channels, bins): P2P, all-to-all, then the [step] syncs
    link_names: list[str]  # per channel: "p2p", "a2a" or a step kind name
    meaning: str  # what the two families stand for: "" (one family), "dir" or "chunk"
    slowed: np.ndarray | None = None  # (ranks, bins): share in the SLOWED rows (step.dp_comm_sms); None: zeros

    def idle(self) -> np.ndarray:
        """(ranks, bins): the share of the strip drawn idle grey."""
        return 1.0 - self.busy

    def drawn(self) -> set:
        """Legend keys of what shows: (family, kind) pairs, "idle", channel and step names."""
        eps = 1e-9
        keys = {(f, k) for f in range(2) for k in range(2) if self.compute[:, f, k].max(initial=0) > eps}
        if (self.idle() > eps).any():
            keys.add("idle")
        if self.optimizer.max(initial=0) > eps:
            keys.add("optimizer")
        if self.slowed is not None and self.slowed.max(initial=0) > eps:
            keys.add("slowed")
        keys |= {name for c, name in enumerate(self.link_names) if self.links[:, c].max(initial=0) > eps}
        return keys

    def image(self) -> np.ndarray:
        """RGBA, 2 + LANE_ROWS rows per rank from the bottom rank up: the communication lane,
        the compute lane's rows bottom to top, the (transparent) gap above; one column per bin.
        The lane is stacked from the top: the first family, the second, the slowed compute, the optimizer, each
        as tall as its share of the work in the bin, each in the mix of its colours made as
        pale as the rank was idle."""
        ranks, bins = self.busy.shape
        slowed = np.zeros_like(self.optimizer) if self.slowed is None else self.slowed
        groups = [self.compute[:, 0], self.compute[:, 1], slowed[:, None], self.optimizer[:, None]]  # each (ranks, n, bins)
        palettes = [[COLOURS[f][k] for k in HUE_KINDS] for f in (0, 1)] + [[STEP_COLOURS["slowed"]],
                                                                            [STEP_COLOURS["optimizer"]]]
        strength = np.stack([g.sum(axis=1) for g in groups])  # (groups, ranks, bins)
        # Where each group ends, as a share of the lane from the top.
        cut = np.cumsum(strength, axis=0) / np.maximum(strength.sum(axis=0), 1e-12)
        level = 1.0 - (np.arange(LANE_ROWS) + 0.5) / LANE_ROWS  # each row's height from the top, bottom row first
        which = (level[None, :, None, None] > cut[:-1].transpose(1, 0, 2)[:, None]).sum(axis=2)  # (ranks, rows, bins)
        rgb = np.stack([self._strip(w, palette) for w, palette in zip(groups, palettes)], axis=1)
        out = np.zeros((ranks, LANE_ROWS + 2, bins, 4), np.uint8)
        out[:, 1:LANE_ROWS + 1, :, :3] = np.take_along_axis(rgb, which[..., None], axis=1)  # rgb: (ranks, 3, bins, 3)
        link_colours = [COMM_COLOURS.get(n) or STEP_COLOURS[n] for n in self.link_names]
        out[:, 0, :, :3] = _bytes(_mix(np.moveaxis(self.links, 1, 0), link_colours, COMM_IDLE))
        out[:, :LANE_ROWS + 1, :, 3] = 255
        return out[::-1].reshape(ranks * (LANE_ROWS + 2), bins, 4)

    def _strip(self, weights: np.ndarray, palette: list[str]) -> np.ndarray:
        """(ranks, bins, 3) bytes: one group's colours mixed in proportion to ``weights``
        (ranks, colours, bins), made as pale as the rank was idle."""
        mix = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12) * self.busy[:, None]
        return _bytes(_mix(np.moveaxis(mix, 1, 0), palette, IDLE))


def _bytes(rgb: np.ndarray) -> np.ndarray:
    """Colours 0-1 as 0-255 bytes."""
    return (rgb * 255 + 0.5).astype(np.uint8)


def typical_action(trace: Trace) -> float:
    """The median duration of an action (an op with its all-to-all, or an overlapped pair)."""
    sp = spans(trace)
    return float(np.median(sp["end"] - sp["start"])) if len(sp) else 0.0


def band_shares(trace: Trace, t0: float, t1: float, bins: int, window: float | None = None) -> Bands:
    """The shares of ``bins`` equal bins from t0 to t1, averaged over ``window`` time
    (default :data:`BIN_ACTIONS` typical actions; 0 keeps each bin's own shares)."""
    edges = np.linspace(t0, t1, bins + 1)
    ranks = trace.ranks
    comp = trace.compute
    meaning = "chunk" if by_chunk(trace) else "dir" if len(comp) and (comp["direction"] != 0).any() else ""

    def category(rows):
        return hues(trace, rows).astype(np.int64) * 2 + IS_BACKWARD[rows["kind"]]

    # The mix: each op's computing, plus WAIT_WEIGHT of the rest of its span (waiting for its all-to-all).
    running = _shares(comp, ranks, category(comp), 4, edges)
    ops = op_rows(comp)  # one row per op, from its first component to its last
    span = _shares(ops, ranks, category(ops), 4, edges)
    compute = (running + WAIT_WEIGHT * np.clip(span - running, 0.0, None)).reshape(ranks, 2, 2, bins)
    # The strength: time computing, plus WAIT_WEIGHT of the time inside an action (all-to-all
    # included) not computing; each counted once where pair halves or spans overlap.
    computing = _union(comp, ranks, edges)
    busy = computing + WAIT_WEIGHT * np.clip(_union(spans(trace), ranks, edges) - computing, 0.0, None)
    comm = trace.comm
    links = _shares(comm, ranks, np.where(comm["channel"] == A2A, 1, 0).astype(np.int64), 2, edges)
    names = ["p2p", "a2a"]
    optimizer = slowed = np.zeros((ranks, bins))
    step = trace.step
    if len(step):
        from ...engine.trace import DRAIN, ON_COMPUTE, OPTIMIZER, SLOWED, STEP_KIND_NAMES  # noqa: PLC0415  (only with [step] work)

        shares = _shares(step, ranks, step["kind"].astype(np.int64), len(STEP_KIND_NAMES), edges)
        syncs = [k for k in range(len(STEP_KIND_NAMES)) if k not in ON_COMPUTE]
        optimizer = shares[:, OPTIMIZER]
        slowed = shares[:, SLOWED]  # compute, its own colour: no op's, as it was spread over the pipeline's ops
        busy = busy + slowed
        # the drain is compute: the deferred wgrad GEMMs, backward work (the mix's first hue, its backward half)
        compute[:, 0, 1] += shares[:, DRAIN]
        busy = busy + shares[:, DRAIN]
        links = np.concatenate([links, shares[:, syncs]], axis=1)
        names += [STEP_KIND_NAMES[k] for k in syncs]
    window = BIN_ACTIONS * typical_action(trace) if window is None else window
    half = int(round(window / 4 / (edges[1] - edges[0]))) if bins else 0
    busy = np.clip(smooth(busy + optimizer, half), 0.0, 1.0)
    return Bands(edges, busy, smooth(compute, half), smooth(optimizer, half), smooth(links, half), names, meaning,
                 smooth(slowed, half))


def draw_overview(ax, trace: Trace, *, title: str | None = None, span: tuple[float, float] | None = None,
                  legend: bool = True) -> Bands:
    """Heat strips of ``trace`` on ``ax`` over ``span`` (default 0 to the end of the step), one
    column per pixel: place the axes first.  Returns what was drawn (for a shared legend)."""
    t0, t1 = span or (0.0, trace.end or 1.0)
    pos = ax.get_position()
    bins = max(16, int(round(pos.width * ax.figure.get_figwidth() * canvas.DPI)))
    bands = band_shares(trace, t0, t1, bins)
    y = -np.arange(trace.ranks)[::-1, None] * ROW_H + np.r_[-COMM_H, np.linspace(0.0, LANE_H, LANE_ROWS + 1)]
    y_edges = np.r_[y.ravel(), y[-1, 0] + ROW_H]
    ax.pcolorfast(bands.edges, y_edges, bands.image(), zorder=1)
    rank_axis(ax, trace.ranks, t0, t1)
    frame(ax, title, band_legend([bands]) if legend else None)
    return bands


def band_legend(drawn: list[Bands]) -> list[Patch]:
    """One entry per colour some of the ``drawn`` bands show, in a fixed order, short labels;
    the two families named by what they stand for in the traces drawn."""
    keys = set().union(*(b.drawn() for b in drawn))
    meanings = [m for m in FAMILY_WORDS if any(b.meaning == m for b in drawn)]
    handles = []
    for f in range(2):
        qualifier = " / ".join(FAMILY_WORDS[m][f] for m in meanings)
        for k, word in enumerate(BAND_KINDS):
            if (f, k) in keys:
                label = word + (f", {qualifier}" if qualifier else "")
                handles.append(Patch(facecolor=COLOURS[f][HUE_KINDS[k]], label=label))
    if "idle" in keys:
        handles.append(Patch(facecolor=IDLE, edgecolor="#bbbbbb", label="idle"))
    for name in ("slowed", "optimizer"):
        if name in keys:
            handles.append(Patch(facecolor=STEP_COLOURS[name], label=STEP_LABELS[name]))
    for name, label in (("p2p", "P2P send"), ("a2a", "all-to-all")):
        if name in keys:
            handles.append(Patch(facecolor=COMM_COLOURS[name], label=label))
    handles += [Patch(facecolor=STEP_COLOURS[n], label=STEP_LABELS[n]) for n in ("grad_sync", "cross_copy_sync")
                if n in keys]  # fmt: skip
    return handles


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
    end = trace.end or 1.0
    window = max(BIN_ACTIONS * typical_action(trace), end / (plot_w * canvas.DPI))
    waits = " or waiting for all-to-all" if (trace.comm["channel"] == A2A).any() else ""
    draw_overview(ax, trace, title=title + f"\nheat strips: each column is the mix of what the rank did over about "
                  f"{units.duration(window)}; paler is partly idle{waits}")
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
