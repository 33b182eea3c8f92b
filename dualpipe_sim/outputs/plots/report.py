"""report.html: one self-contained, offline, interactive page of a run or a comparison.

Plotly (plotly.js, embedded whole in the page: no server, no network) draws

* the Gantt chart: one horizontal bar per op (an overlapped pair's forward
  and backward halves are two bars, forward above), coloured as in
  gantt.png; hovering a bar gives its kind, micro-batch, stage, rank, start,
  end and, with [chunk], its components; drag to zoom, double-click to reset.
  P2P sends and all-to-all phases are thin bars under each rank (all-to-all
  phases only up to :data:`MAX_A2A_BARS`; each op's hover lists them anyway).  A
  comparison puts every schedule's ranks on one time axis, one block of rows
  per schedule;
* the memory timeline per rank (a step line per rank: activations over
  everything else the rank holds, with a [model] every term of
  ``per_rank[].memory``, so its peak is ``memory.total``), with the device
  capacity as a dashed line when it is known (on the axis by memory.png's
  rule, style.memory_axis: else named above the chart);
* the metrics table (Metrics.scalars(), one row per metric, one column per
  schedule; ratios as percentages).

Only plotly.js is taken from the ``plotly`` Python package (the ``html``
extra); figures are written as plain plotly.js JSON, so no plotly Python
objects are built per op.  Runs with more than :data:`MAX_BARS` ops show the
warm-up and cool-down windows of gantt.png's large-run view instead of
every op, and say so.  After drawing, the page writes how many op bars it
drew into ``data-ops-drawn`` on <body> (the browser test reads it).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from importlib import resources

import numpy as np

from ... import units
from ...model import validation_band
from ...schedules.components import A2A_PARTS, COMPONENTS
from ..exports.timeline import activation_levels
from ...schedules.rules import KIND_NAMES
from ...inputs.scenario import activation_bytes_given
from ...engine.trace import A2A, IS_FORWARD, Trace
from .style import (COLOURS, COMM_COLOURS, KIND_WORDS, STEP_COLOURS, STEP_LABELS, device_words, direction_label,
                    drawn_kind, hues, memory_axis, op_rows)  # fmt: skip

MAX_BARS = 40_000  # op bars per page: beyond, SVG bars make the browser crawl
MAX_A2A_BARS = 20_000  # all-to-all phase bars per page (a component run has several per op)
ROW_PX = 22
# The top strip of a chart left to plotly's toolbar (the modebar, about 25 px high at the top right, shown on hover):
# the Gantt chart's legend starts below it; at the chart's top edge the toolbar covered its right-hand entries (s19g).
MODEBAR_PX = 30
# Under a memory metric's name in the table: what it counts, in a reader's words (peak_memory_bytes beside
# memory.total read as two answers to one question; README's metrics.json keys, docs/sweep.md).
METRIC_WORDS = {
    "peak_activation_bytes": "activations alone, at their peak",
    "parameter_bytes": "weights alone",
    "peak_memory_bytes": "weights + activations at their peak; no gradients, optimizer states, buffers or runtime",
    "memory.total": "all the rank holds at its peak: weights, gradients, optimizer states, buffers, runtime "
                    "and activations; what must fit the device",
    "device_memory": "the GPU's memory ([hardware])",
    "fits": "memory.total within device_memory",
}


class MissingPlotly(RuntimeError):
    """report.html needs the optional ``plotly`` package."""


def plotly_js() -> str:
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise MissingPlotly("report.html needs plotly: pip install 'dualpipe-sim[html]'") from exc


def _parts_text(trace: Trace) -> dict[tuple[int, int, int], str]:
    """(rank, action, kind) -> '<br>'-joined components of a component op: each component's
    name, how many times it ran (once per layer) and its total time; all-to-all marked."""
    comp = trace.compute[trace.compute["part"] >= 0]
    a2a = trace.comm[(trace.comm["channel"] == A2A) & (trace.comm["part"] >= 0)]
    totals: dict[tuple[int, int, int], dict[int, list[float]]] = {}
    for block in (comp, a2a):
        keys = zip(block["rank"].tolist(), block["action"].tolist(), block["kind"].tolist(), block["part"].tolist())
        for (rank, action, kind, part), d in zip(keys, (block["end"] - block["start"]).tolist()):
            entry = totals.setdefault((rank, action, kind), {}).setdefault(part, [0, 0.0])
            entry[0] += 1
            entry[1] += d
    return {key: "<br>".join(f"{COMPONENTS[p]}{' (all-to-all)' if p in A2A_PARTS else ''}: {n}x, {units.duration(t)}"
                             for p, (n, t) in sorted(parts.items())) for key, parts in totals.items()}  # fmt: skip


def _window_rows(rows: np.ndarray, windows) -> np.ndarray:
    if windows is None:
        return rows
    keep = np.zeros(len(rows), bool)
    for t0, t1 in windows:
        keep |= (rows["end"] > t0) & (rows["start"] < t1)
    return rows[keep]


def gantt_traces(trace: Trace, label: str, offset: int, windows=None, a2a_bars: bool = True) -> tuple[list[dict], int]:
    """plotly.js bar traces of one run's ops and transfers, rows from ``offset``; and the op count.
    ``a2a_bars=False`` leaves out the all-to-all phases (each op's hover still lists them)."""
    ops = _window_rows(op_rows(trace.compute), windows)
    hue = hues(trace, ops)
    kind = drawn_kind(ops) if len(ops) else ops["kind"]
    parts = _parts_text(trace) if (trace.compute["part"] >= 0).any() else {}
    half = ops["overlapped"]
    forward = IS_FORWARD[ops["kind"]]
    y = offset + ops["rank"] + np.where(half, np.where(forward, -0.17, 0.17), 0.0) - 0.08
    width = np.where(half, 0.32, 0.66)
    traces = []
    directions = set(np.unique(hue).tolist()) or {0}
    family = {d: direction_label(trace, directions, d) for d in (0, 1)}  # " (dir 1)", " (rank's later stage)", ...
    for d in (0, 1):
        for k, name in enumerate(KIND_NAMES):
            sel = np.flatnonzero((hue == d) & (kind == k))
            if not len(sel):
                continue
            rows = ops[sel]
            text = [
                f"{label}<br><b>{name} {KIND_WORDS[name]}</b>, micro-batch {int(r['microbatch'])}, stage {int(r['stage'])}, "
                f"rank {int(r['rank'])}{' (overlapped pair)' if r['overlapped'] else ''}<br>"
                f"start {units.duration(float(r['start']))}, end {units.duration(float(r['end']))}"
                + (f"<br>components:<br>{parts[key]}" if (key := (int(r['rank']), int(r['action']), int(r['kind']))) in parts else "")
                for r in rows
            ]  # fmt: skip
            traces.append({
                "type": "bar", "orientation": "h", "name": f"{name} {KIND_WORDS[name]}{family[d]}",
                "legendgroup": f"{name}{family[d]}",
                "base": rows["start"].tolist(), "x": (rows["end"] - rows["start"]).tolist(),
                "y": y[sel].tolist(), "width": width[sel].tolist(),
                "marker": {"color": COLOURS[d][name], "line": {"width": 0.5, "color": "#333333"}},
                "hovertext": text, "hoverinfo": "text", "meta": "op",
            })  # fmt: skip
    comm = _window_rows(trace.comm, windows)
    for channel, name in ((0, "p2p"), (A2A, "a2a")):
        rows = comm[comm["channel"] == channel]
        if not len(rows) or (channel == A2A and not a2a_bars):
            continue
        text = [f"{label}<br>{'P2P send' if channel == 0 else 'all-to-all'} rank {int(r['rank'])}"
                + (f" -> {int(r['peer'])}" if channel == 0 else "")
                + f", micro-batch {int(r['microbatch'])}<br>start {units.duration(float(r['start']))}, "
                  f"end {units.duration(float(r['end']))}" for r in rows]  # fmt: skip
        traces.append({
            "type": "bar", "orientation": "h", "name": "P2P send" if channel == 0 else "all-to-all",
            "legendgroup": name,
            "base": rows["start"].tolist(), "x": (rows["end"] - rows["start"]).tolist(),
            "y": (offset + rows["rank"] + 0.36).tolist(), "width": 0.12,
            "marker": {"color": COMM_COLOURS[name], "line": {"width": 0}},
            "hovertext": text, "hoverinfo": "text", "meta": "comm",
        })  # fmt: skip
    step = _window_rows(trace.step, windows)
    if len(step):
        from ...engine.trace import ON_COMPUTE, STEP_KIND_NAMES  # noqa: PLC0415  (only with [step] work)

        for kind, name in enumerate(STEP_KIND_NAMES):
            rows = step[step["kind"] == kind]
            if not len(rows):
                continue
            text = [f"{label}<br>{STEP_LABELS[name]} rank {int(r['rank'])}<br>start {units.duration(float(r['start']))}, "
                    f"end {units.duration(float(r['end']))}" for r in rows]  # fmt: skip
            lane = 0.0 if kind in ON_COMPUTE else 0.36
            traces.append({
                "type": "bar", "orientation": "h", "name": STEP_LABELS[name], "legendgroup": name, "base": rows["start"].tolist(), "x": (rows["end"] - rows["start"]).tolist(),
                "y": (offset + rows["rank"] + lane - (0.08 if kind in ON_COMPUTE else 0)).tolist(),
                "width": 0.66 if kind in ON_COMPUTE else 0.12,
                "marker": {"color": STEP_COLOURS[name], "line": {"width": 0}},
                "hovertext": text, "hoverinfo": "text", "meta": "step",
            })  # fmt: skip
    return traces, len(ops)


def static_memory(metrics, rank: int) -> tuple[float, str]:
    """(bytes, hover words) a rank holds besides its activations: with a [model], every term of
    ``per_rank[].memory`` but the activation peak (read from the dict, so a new term is counted
    as soon as metrics has it); without, the parameter bytes the trace knows."""
    mem = metrics.per_rank[rank].memory if rank < len(metrics.per_rank) else None
    if mem is None:
        static = metrics.per_rank[rank].parameter_bytes if rank < len(metrics.per_rank) else 0.0
        return static, f"parameters {units.nbytes(static)}"
    terms = {k: v for k, v in asdict(mem).items() if k not in ("total", "activations_peak")}
    # total = the rank's peak of everything: all but the activation peak is held the whole step.
    static = mem.total - mem.activations_peak
    return static, ", ".join(f"{k.replace('_', ' ')} {units.nbytes(v)}" for k, v in terms.items())


def memory_traces(trace: Trace, label: str, metrics=None) -> list[dict]:
    out = []
    for r in range(trace.ranks):
        times, alive, nbytes = activation_levels(trace, r)
        if metrics is not None:
            static, words = static_memory(metrics, r)
        else:
            static = trace.parameter_bytes[r] if r < len(trace.parameter_bytes) else 0.0
            words = f"parameters {units.nbytes(static)}"
        x = np.append(times, trace.end)
        y = (np.append(nbytes, nbytes[-1]) + static) / 1e9
        out.append({
            "type": "scatter", "mode": "lines", "line": {"shape": "hv", "width": 1.2}, "name": f"{label} rank {r}",
            "x": x.tolist(), "y": y.tolist(),
            "hovertemplate": f"{label} rank {r}<br>t %{{x}} ms<br>%{{y:.4g}} GB ({words} + activations)<extra></extra>",
        })  # fmt: skip
    return out


# results.csv names whose values are ratios in [0, 1]: shown as percentages.
PERCENT_KEYS = ("bubble_ratio", "span_bubble_rate", "comm.overlap_ratio", "throughput.mfu")


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and key in PERCENT_KEYS:
        return units.percent(v)
    # device_memory is a whole number of bytes (an int): a size all the same (s19g)
    if isinstance(v, (int, float)) and (key.endswith("bytes") or key in ("memory.total", "device_memory")):
        return units.nbytes(v)
    return units.number(v) if isinstance(v, float) else str(v)


def _words(key: str) -> str:
    return f"<br><span class=words>{html.escape(METRIC_WORDS[key])}</span>" if key in METRIC_WORDS else ""


def _scalars(metrics) -> dict:
    """Metrics.scalars() with the step's later parts (step.slowed, step.drain) after the step's others."""
    row = {}
    for key, value in metrics.scalars().items():
        row[key] = value
        if key == "step.optimizer":
            row.update(metrics.later_step_scalars())
    return row


def _table(results) -> str:
    """_scalars with one row per metric and one column per schedule (readable at any width)."""
    rows = [_scalars(r.metrics) for r in results]
    for row, r in zip(rows, results):
        if not activation_bytes_given(r.scenario):  # the 1-byte default: the bytes count stage-activations
            row.update({k: "n/a" for k in ("peak_activation_bytes", "peak_memory_bytes")})
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if any(row.get(k) is not None for row in rows)]
    head = "<th>metric</th>" + "".join(f"<th>{html.escape(r.metrics.schedule)}</th>" for r in results)
    body = "".join(f"<tr><th class=name>{html.escape(k)}{_words(k)}</th>"
                   + "".join(f"<td>{html.escape(_cell(k, row.get(k)))}</td>" for row in rows) + "</tr>"
                   for k in keys)  # fmt: skip
    note = ("<p>Times in ms; sizes decimal (1 GB = 10^9 bytes); per-rank figures are the maximum over ranks; "
            "metrics every schedule leaves empty are not listed.")
    if any(r.metrics.throughput is not None and r.metrics.throughput.step_source == "pipeline" for r in results):
        note += (" Throughput (tokens/s, per GPU, MFU) is of the pipeline makespan alone: no [step] work, "
                 "so gradient sync and the optimizer are left out.")
    note += "</p>" + "".join(f"<p>{html.escape(line)}</p>"  # with tokens/s: its validation band, reported only
                             for line in validation_band.lines(r.metrics.validation_band for r in results))
    return f"{note}<div style='overflow-x:auto'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def report_html(results, capacity: float | None = None) -> str:
    """The page for ``results`` (simulation.Result objects: one run, or a comparison)."""
    from .overview import detail_windows

    js = plotly_js()
    gantt, memory, ticks, names, expected, notes = [], [], [], [], 0, []
    offset = 0
    for res in results:
        trace = res.trace
        label = trace.schedule
        total = len(op_rows(trace.compute))
        windows = None
        if total > MAX_BARS // max(len(results), 1):
            windows = detail_windows(trace)
            notes.append(f"{label}: {total:,} ops, too many to draw one by one; shown: the warm-up "
                         f"({units.number(windows[0][0])} to {units.duration(windows[0][1])}) and the cool-down "
                         f"({units.number(windows[1][0])} to {units.duration(windows[1][1])}) ops")  # fmt: skip
        a2a = int((trace.comm["channel"] == A2A).sum())
        a2a_bars = a2a <= MAX_A2A_BARS // max(len(results), 1)
        if not a2a_bars:
            notes.append(f"{label}: its {a2a:,} all-to-all phases are not drawn as bars (too many for the page); "
                         "each op's hover lists its all-to-all components and their time")  # fmt: skip
        traces, drawn = gantt_traces(trace, label, offset, windows, a2a_bars)
        gantt += traces
        expected += drawn
        ticks += [offset + r for r in range(trace.ranks)]
        names += [f"{label} rank {r}" if len(results) > 1 else f"rank {r}" for r in range(trace.ranks)]
        memory += memory_traces(trace, label, res.metrics)
        offset += trace.ranks + 1
    seen = set()
    for t in gantt:  # one legend entry per kind of bar, from whichever schedule has it first
        t["showlegend"] = t["legendgroup"] not in seen
        seen.add(t["legendgroup"])
    longest = max(r.trace.end for r in results) or 1.0  # the whole step with [step] work
    height = 140 + MODEBAR_PX + ROW_PX * offset
    gantt_layout = {
        "barmode": "overlay", "height": height, "hovermode": "closest",
        "xaxis": {"title": {"text": "time (ms)"}, "range": [0, longest]},
        "yaxis": {"autorange": "reversed", "tickvals": ticks, "ticktext": names, "zeroline": False},
        # the legend's top MODEBAR_PX below the chart's (container coordinates): the toolbar keeps its strip
        "margin": {"l": 140, "r": 20, "t": 30, "b": 50},
        "legend": {"orientation": "h", "yref": "container", "y": 1 - MODEBAR_PX / height, "yanchor": "top"},
    }  # fmt: skip
    model = any(r.per_rank and r.per_rank[0].memory is not None for r in (res.metrics for res in results))
    memory_title = "memory (GB)"
    memory_note = ("activations over everything else the rank holds: every term of metrics.json "
                   "<code>per_rank[].memory</code> (hover a line for them), so a line's peak is "
                   "<code>memory.total</code>" if model else "activations over the parameter bytes")
    if capacity is None:  # the device's HBM ([hardware]) when the caller does not say
        capacity = max((res.metrics.device_memory or 0.0 for res in results), default=0.0) or None
    memory_layout = {
        "height": 420, "hovermode": "closest", "xaxis": {"title": {"text": "time (ms)"}, "range": [0, longest]},
        "yaxis": {"title": {"text": memory_title}, "rangemode": "tozero"},
        "margin": {"l": 80, "r": 20, "t": 30, "b": 50},
    }  # fmt: skip
    if capacity:
        # the device's line on the axis while the fullest rank uses half of it or more (style.memory_axis); else the
        # axis stops above the fullest rank, the line is kept beyond it (zoom out to see it) and a note names it
        highest = max((max(t["y"]) for t in memory), default=0.0) * 1e9
        top, drawn = memory_axis(highest, capacity, 1.08)
        memory_layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": capacity / 1e9,
                                    "y1": capacity / 1e9, "line": {"color": "#d62728", "dash": "dash"}}]  # fmt: skip
        # off the axis: the note above the chart's top left (the toolbar has the top right)
        memory_layout["annotations"] = [{"xref": "paper", "showarrow": False, "font": {"color": "#d62728"},
                                         "yanchor": "bottom",
                                         **({"x": 1, "xanchor": "right", "y": capacity / 1e9,
                                             "text": f"device memory {units.nbytes(capacity)}"}
                                            if drawn else {"x": 0, "xanchor": "left", "yref": "paper", "y": 1,
                                                           "text": device_words(highest, capacity)})}]  # fmt: skip
        memory_layout["yaxis"]["range"] = [0, top / 1e9]
    m = results[0].metrics
    title = (f"{m.schedule}: {m.stages} stages, {m.microbatches} micro-batches" if len(results) == 1
             else f"{len(results)} schedules, {m.stages} stages, {m.microbatches} micro-batches, one time axis")
    dump = lambda obj: json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")  # noqa: E731
    note = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dualpipe-sim: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:16px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#f4f4f4}} th.name{{text-align:left;font-weight:normal;font-family:monospace}} .words{{font-family:sans-serif;font-size:11px;color:#555}} .note{{color:#a33}}</style>
<script>{js}</script></head>
<body data-ops-expected="{expected}">
<h1>{html.escape(title)}</h1>
<h2>Gantt chart</h2>
<p>One bar per op (an overlapped pair: forward above, backward below); thin bars under a rank: P2P sends
and all-to-all. Hover for details; drag to zoom, double-click to reset.</p>{note}
<div id="gantt"></div>
<h2>Memory per rank</h2><p>Each rank's {memory_note}; dashed: the device's memory ([hardware]), when known.</p>
<div id="memory"></div>
<h2>Metrics</h2>{_table(results)}
<p id="status">drawing...</p>
<script>
const gantt = {dump(gantt)};
Promise.all([
  Plotly.newPlot("gantt", gantt, {dump(gantt_layout)}, {{responsive: true}}),
  Plotly.newPlot("memory", {dump(memory)}, {dump(memory_layout)}, {{responsive: true}}),
]).then(() => {{
  // Count the op bars actually drawn: paths in the SVG traces whose meta is "op".
  const layers = document.querySelectorAll("#gantt .barlayer .trace");
  let drawn = 0;
  gantt.forEach((t, i) => {{ if (t.meta === "op" && layers[i]) drawn += layers[i].querySelectorAll(".point path").length; }});
  document.body.dataset.opsDrawn = drawn;
  document.getElementById("status").textContent = drawn + " ops drawn";
}});
</script>
</body></html>
"""


def save_report(results, path, capacity: float | None = None) -> None:
    path.write_text(report_html(results, capacity), encoding="utf-8")
