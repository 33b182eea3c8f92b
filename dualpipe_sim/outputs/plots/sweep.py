"""Sweep charts, drawn from the rows of results.csv.

* bubble ratio vs micro-batches: one panel per stage count, one line per schedule;
* peak activation per rank vs stages: one line per schedule (max over ranks
  and over the micro-batch counts swept, i.e. the schedule's steady-state peak);
* bubble-ratio heatmap over stages x micro-batches, one panel per schedule;
  grey cells are points the schedule could not take (skipped) or that failed.

Only ``ok`` rows are drawn, and only against axes the grid sweeps (two or more
values): :func:`charts` picks them.  Every other swept key gets ``vs_KEY.png``,
a line per schedule against it (numbers on a number line; anything else, e.g.
``memory.recompute=none,full``, one position per value, in grid order).  The
charts show the slice at the first value of each axis they do not plot, and say
so in their title.  A schedule keeps one colour in every chart and every sweep
(style.schedule_colour); lines of more than MAX_MARKED_POINTS points have no
markers; a schedule whose values equal an earlier one's is drawn nested under it
and its legend entry says ``= that schedule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from ... import units  # noqa: E402
from .canvas import PNG_METADATA  # noqa: E402
from .style import schedule_colour  # noqa: E402

SHAPE = ("pipeline.schedule", "pipeline.stages", "pipeline.microbatches")
MAX_MARKED_POINTS = 24  # lines with more points than this are drawn without markers


@dataclass(frozen=True)
class SweepView:
    """The ok points of one slice of a sweep, as numbers, plus every (schedule, S, M) tried."""

    schedules: list[str]
    stages: list[int]
    microbatches: list[int]
    bubble: dict[tuple[str, int, int], float]
    peak_bytes: dict[tuple[str, int, int], float]
    note: str  # "" or "slice: costs.forward=1.0"

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]], axes) -> "SweepView":
        extra = [a.key for a in axes if a.key not in SHAPE]
        first = {}
        for row in rows:  # rows are in point order: the first seen is the axis's first value
            for key in extra:
                first.setdefault(key, row[key])
        rows = [r for r in rows if all(r[k] == v for k, v in first.items())]
        bubble, peak = {}, {}
        for r in rows:
            if r["status"] == "ok":
                key = (r["pipeline.schedule"], int(r["pipeline.stages"]), int(r["pipeline.microbatches"]))
                bubble[key] = float(r["bubble_ratio"])
                peak[key] = float(r["peak_activation_bytes"])
        return cls(
            schedules=list(dict.fromkeys(r["pipeline.schedule"] for r in rows)),
            stages=sorted({int(r["pipeline.stages"]) for r in rows if r["pipeline.stages"].isdigit()}),
            microbatches=sorted({int(r["pipeline.microbatches"]) for r in rows if r["pipeline.microbatches"].isdigit()}),
            bubble=bubble,
            peak_bytes=peak,
            note=("slice: " + ", ".join(f"{k}={v}" for k, v in first.items())) if first else "",
        )

    def colour(self, schedule: str):
        return schedule_colour(schedule)

    def dense(self) -> bool:
        """More points per line than markers can show apart: lines only."""
        return max(len(self.microbatches), len(self.stages)) > MAX_MARKED_POINTS

    def style(self, schedule: str) -> dict:
        """Colour and marker; earlier schedules get bigger hollow markers and wider lines,
        so schedules with identical values show as nested markers, not one hidden line."""
        i = self.schedules.index(schedule)
        n = len(self.schedules)
        if self.dense():  # markers would merge into a thick band: widths alone keep equal lines visible
            return {"color": self.colour(schedule), "marker": None, "lw": 1.2 + 1.2 * (n - 1 - i), "alpha": 0.85}
        return {
            "color": self.colour(schedule),
            "marker": "osD^v<>p*h"[i % 10],
            "ms": 4 + 2.2 * (n - 1 - i),
            "mfc": "none" if i < n - 1 else self.colour(schedule),
            "mew": 1.6,
            "lw": 1.4 + 0.6 * (n - 1 - i),
            "alpha": 0.9,
        }


def _title(fig, text: str, note: str) -> None:
    fig.suptitle(text + (f"\n{note}" if note else ""), fontsize=13)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _empty(ax, text="no point ran") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def bubble_vs_microbatches(view: SweepView, path) -> None:
    nrows, ncols = _grid(max(len(view.stages), 1))
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.8, 3.3 * nrows + 1.0),
                            squeeze=False, sharey=True)
    twins = same_as(_by_schedule(view.bubble, view.schedules))
    for ax, stages in zip(axs.flat, view.stages):
        _lines(ax, view, lambda sch: [(m, view.bubble[(sch, stages, m)]) for m in view.microbatches
                                      if (sch, stages, m) in view.bubble])
        ax.set_title(f"{stages} stages", fontsize=11)
        ax.set_xlabel("micro-batches")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.05 * max(view.bubble.values(), default=1.0) or 1.0)
    for ax in axs[:, 0]:
        ax.set_ylabel("bubble ratio")
    for ax in list(axs.flat)[len(view.stages):]:
        ax.axis("off")
    _legend(fig, view, twins)
    _title(fig, "Bubble ratio vs micro-batches (one panel per stage count)", view.note)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def peak_activation_vs_stages(view: SweepView, path) -> None:
    fig, ax = plt.subplots(figsize=(10, 5))

    def steady_peaks(sch):
        per_stage = {s: [v for (n, s2, _), v in view.peak_bytes.items() if n == sch and s2 == s] for s in view.stages}
        return [(s, max(vals)) for s, vals in per_stage.items() if vals]

    twins = same_as({sch: dict(steady_peaks(sch)) for sch in view.schedules})
    drawn = _lines(ax, view, steady_peaks, twins)
    ax.set_xlabel("pipeline stages")
    ax.set_ylabel("peak activation on the fullest rank")
    ax.set_xticks(view.stages)
    ax.yaxis.set_major_formatter(FuncFormatter(_bytes_tick))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if drawn:  # beside the axes: inside, "upper left" covered a line that peaks at the fewest stages (s15o)
        ax.legend(title="schedule", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _title(fig, "Peak activation memory per rank vs stages\n(max over ranks and over the micro-batch counts swept)",
           view.note)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def bubble_heatmap(view: SweepView, path) -> None:
    n_m, n_s = max(len(view.microbatches), 1), max(len(view.stages), 1)
    nrows, ncols = _grid(max(len(view.schedules), 1), 2)
    # Panel size follows the cell count, within bounds that keep labels readable.
    panel_w = min(9.0, max(3.8, 0.55 * n_m + 1.4))
    panel_h = min(6.0, max(2.6, 0.45 * n_s + 1.3))
    fig, axs = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                            figsize=(panel_w * ncols + 1.3, panel_h * nrows + 0.8))
    vmax = max(view.bubble.values(), default=1.0) or 1.0
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = None
    annotate = n_m <= 14 and n_s <= 14
    skipped = False
    for ax, sch in zip(axs.flat, view.schedules):
        grid = np.full((len(view.stages), len(view.microbatches)), np.nan)
        for i, s in enumerate(view.stages):
            for j, m in enumerate(view.microbatches):
                grid[i, j] = view.bubble.get((sch, s, m), np.nan)
        skipped = skipped or bool(np.isnan(grid).any())
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=vmax, aspect="auto",
                          origin="lower", interpolation="nearest")
        if annotate:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8,
                            color="white" if v < 0.6 * vmax else "black")
        ax.set_title(sch, fontsize=12)
        _ticks(ax.set_xticks, ax.set_xticklabels, view.microbatches, max_labels=14)
        _ticks(ax.set_yticks, ax.set_yticklabels, view.stages, max_labels=14)
        ax.set_xlabel("micro-batches")
        ax.set_ylabel("stages")
    for ax in list(axs.flat)[len(view.schedules):]:
        ax.axis("off")
    if image is not None:
        bar = fig.colorbar(image, ax=axs, shrink=0.9, format=PercentFormatter(1.0))
        # On one line the grey note ran off a short figure (s19g): wrapped, and only where a cell is grey
        bar.set_label("bubble ratio" + ("\n(grey: skipped, the schedule\ncannot take the shape)" if skipped else ""))
    _title(fig, "Bubble ratio over stages x micro-batches", view.note)
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def axis_chart_name(key: str) -> str:
    """File name of the chart against swept axis ``key``: ``vs_comm.p2p.png``."""
    return f"vs_{key}.png"


def numeric_axes(rows: list[dict[str, str]], axes) -> list[str]:
    """Swept keys besides schedule, stages and micro-batches whose values are all numbers (at least two)."""
    return [a.key for a in other_axes(axes) if _numeric(a)]


def other_axes(axes) -> list:
    """Swept axes (two or more values) besides schedule, stages and micro-batches: each gets vs_KEY.png."""
    return [a for a in axes if a.key not in SHAPE and len(a.values) >= 2]


def _numeric(axis) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis.values)


def _swept(axes, key: str) -> bool:
    return any(a.key == key and len(a.values) >= 2 for a in axes)


def charts(rows: list[dict[str, str]], axes) -> dict[str, object]:
    """file name -> draw(path): the charts of this grid, each against an axis it sweeps.
    bubble_vs_microbatches.png needs micro-batches swept, peak_activation_vs_stages.png stages,
    bubble_heatmap.png both; vs_KEY.png for every other swept key."""
    view = SweepView.from_rows(rows, axes)
    out = {}
    if _swept(axes, "pipeline.microbatches"):
        out["bubble_vs_microbatches.png"] = lambda p: bubble_vs_microbatches(view, p)
    if _swept(axes, "pipeline.stages"):
        out["peak_activation_vs_stages.png"] = lambda p: peak_activation_vs_stages(view, p)
    if _swept(axes, "pipeline.microbatches") and _swept(axes, "pipeline.stages"):
        out["bubble_heatmap.png"] = lambda p: bubble_heatmap(view, p)
    for a in other_axes(axes):
        out[axis_chart_name(a.key)] = lambda p, a=a: against_axis(rows, axes, a.key, p)
    return out


def against_axis(rows: list[dict[str, str]], axes, key: str, path) -> None:
    """Makespan and bubble ratio against swept axis ``key`` (e.g. comm.p2p), one line per schedule;
    every other swept key (stages and micro-batches included) at its first value, said in the title."""
    others = [a.key for a in axes if a.key not in (key, "pipeline.schedule")]
    first: dict[str, str] = {}
    for row in rows:  # rows are in point order: the first seen is the axis's first value
        for k in others:
            first.setdefault(k, row[k])
    kept = [r for r in rows if all(r[k] == v for k, v in first.items())]
    axis = next(a for a in axes if a.key == key)
    numeric = _numeric(axis)
    if numeric:
        xs = sorted({float(r[key]) for r in kept})
        where = float
    else:  # one position per value, in the grid's order, labelled with the value as results.csv has it
        from ...sweep.results import format_value  # noqa: PLC0415

        labels = [format_value(v) for v in axis.values]
        xs = list(range(len(labels)))
        where = labels.index
    # Only colours and line styles are used from this view (dense() counts the x values).
    view = SweepView(list(dict.fromkeys(r["pipeline.schedule"] for r in rows)), [], xs, {}, {}, "")
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    # With [step] work the time that matters is the whole training step (docs/step.md).
    step = any(r.get("step.total") for r in kept)
    time, time_label = ("step.total", "training step (ms)") if step else ("makespan", "makespan (ms)")
    twins = {}
    for ax, metric, label in ((axs[0], time, time_label), (axs[1], "bubble_ratio", "bubble ratio")):
        def points(sch, metric=metric):
            return sorted((where(r[key]), float(r[metric] or r["makespan"])) for r in kept
                          if r["pipeline.schedule"] == sch and r["status"] == "ok")  # fmt: skip
        pair = same_as({sch: dict(points(sch)) for sch in view.schedules})
        twins = pair if metric == time else {s: t for s, t in twins.items() if pair.get(s) == t}  # equal in both
        _lines(ax, view, points)
        if not numeric:
            long = max(len(t) for t in labels) > 12  # e.g. a table value: slanted, so neighbours do not overlap
            ax.set_xticks(xs, labels, rotation=15 if long else 0, ha="right" if long else "center")
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        top = max((y for sch in view.schedules for _, y in points(sch)), default=0.0)
        ax.set_ylim(0, 1.08 * top if top > 0 else 1.0)  # room above the highest marker
        if metric == "bubble_ratio":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles = [plt.Line2D([], [], **view.style(s)) for s in view.schedules]
    axs[1].legend(handles, [_label(s, twins) for s in view.schedules], title="schedule", frameon=False, loc="best")
    note = ("slice: " + ", ".join(f"{k}={v}" for k, v in first.items())) if first else ""
    _title(fig, f"{'Training step' if step else 'Makespan'} and bubble ratio vs {key}", note)
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def same_as(series: dict[str, dict]) -> dict[str, str]:
    """schedule -> the earlier schedule whose values it equals at every point (equal series hide
    one another; the legend says so).  ``series``: schedule -> {point: value}, in legend order."""
    out, seen = {}, []
    for sch, values in series.items():
        twin = next((o for o in seen if values and series[o].keys() == values.keys()
                     and all(math.isclose(series[o][k], v, rel_tol=1e-12, abs_tol=1e-15) for k, v in values.items())),
                    None)  # fmt: skip
        if twin is None:
            seen.append(sch)
        else:
            out[sch] = twin
    return out


def _label(sch: str, twins: dict[str, str]) -> str:
    return f"{sch} (= {twins[sch]})" if sch in twins else sch


def _lines(ax, view: SweepView, points_of, twins: dict[str, str] | None = None) -> bool:
    """One line per schedule from ``points_of(schedule) -> [(x, y), ...]``; says so when none ran."""
    drawn = False
    for sch in view.schedules:
        pts = points_of(sch)
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, label=_label(sch, twins or {}), **view.style(sch))
            drawn = True
    if not drawn:
        _empty(ax)
    return drawn


def _ticks(set_ticks, set_labels, values, max_labels: int) -> None:
    step = max(1, math.ceil(len(values) / max_labels))
    idx = list(range(0, len(values), step))
    set_ticks(idx)
    set_labels([str(values[i]) for i in idx])


def _legend(fig, view: SweepView, twins: dict[str, str] | None = None) -> None:
    handles = [plt.Line2D([], [], **view.style(s)) for s in view.schedules]
    fig.legend(handles, [_label(s, twins or {}) for s in view.schedules], title="schedule", loc="center right",
               frameon=False)  # fmt: skip


def _by_schedule(values: dict[tuple, float], schedules: list[str]) -> dict[str, dict]:
    return {sch: {k[1:]: v for k, v in values.items() if k[0] == sch} for sch in schedules}


def _bytes_tick(value: float, _pos) -> str:
    return units.nbytes(value, digits=4)
