"""Calibrating the component model ([chunk]) from a profiled overlapped pair.

From a :class:`kineto.Profile` of one overlapped forward+backward pair of
chunks (DeepSeek's ``train.json`` is one): per component and layer, its busy
time (the union of its kernels across streams, so a component on two compute
streams counts its wall time once); per-layer mean/min/max; each stream's busy
time and whether it is a compute or an all-to-all stream (by which kind of
component fills most of it); the measured order of components on each channel;
and the span, first kernel to last.

Then the pair is replayed in the simulator through the normal path (a one-rank
schedule F0, (F1;B0), B1 on a scenario holding the calibrated [chunk]), and its
predicted span and component starts are set against the measured ones.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schedules.components import A2A_PARTS, COMPONENTS
from .inputs.kineto import Profile, TraceError
from .readers.metrics import union_length

CHANNELS = ("compute", "a2a")
OUT_FILES = ("chunk.toml", "calibration.md")  # what write() puts into --out
# [chunk] requires these > 0; the all-to-all and W parts may be absent (0).
REQUIRED = ("attn_forward", "mlp_forward", "attn_backward_input", "mlp_backward_input")


def channel_of(component: str) -> str:
    return "a2a" if COMPONENTS.index(component) in A2A_PARTS else "compute"


@dataclass(frozen=True)
class Stats:
    mean: float
    min: float
    max: float
    per_layer: tuple[float, ...]


@dataclass
class Calibration:
    """What the trace measured and what the simulator predicts from it (ms)."""

    source: str
    layers: int
    components: dict[str, Stats]  # every COMPONENTS name; absent ones are all 0
    span: float
    streams: dict[int, tuple[str, float]]  # stream -> (channel, busy)
    sequence: dict[str, list[tuple[str, int]]]  # channel -> measured (component, layer) in start order
    order: dict[str, list[str]]  # channel -> per-layer-pair order (the most common layer's)
    order_notes: list[str]
    windows: dict[tuple[str, int], tuple[float, float]]  # (component, layer) -> first kernel start, last end
    unattributed: int
    predicted_span: float | None = None
    predicted: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)  # the replay's windows
    order_runs: bool = True  # False: the engine's dependency rules cannot follow the measured order

    def chunk(self) -> dict:
        """The [chunk] table: layers, per-layer mean times rounded to 1 us, and the order."""
        table = {"layers": self.layers}
        table.update({c: round(self.components[c].mean, 3) for c in COMPONENTS})
        table["order"] = self.declared_order()
        return table

    def declared_order(self) -> dict[str, list[str]]:
        """chunk.order: the measured order per channel where it names every component of the
        channel; [] (no declared order, priorities alone) where one is absent from the trace, and
        everywhere if the engine cannot run the measured order."""
        return {ch: self.order[ch] if self.order_runs and sorted(self.order[ch]) == sorted(c for c in COMPONENTS if channel_of(c) == ch)
                else [] for ch in CHANNELS}


def measure(profile: Profile, source: str = "trace") -> Calibration:
    counts = {c: n for c, n in profile.layers.items() if any(k.component == c for k in profile.kernels)}
    layers = _layer_count(counts, source)
    missing = [c for c in REQUIRED if c not in counts]
    if missing:
        raise TraceError(f"{source}: no kernels attributed to {', '.join(missing)} ([chunk] needs each > 0); "
                         f"map its annotation to it as NAME=COMPONENT")
    ks = profile.kernels
    t0 = min(k.start for k in ks)
    span = max(k.end for k in ks) - t0

    groups: dict[tuple[str, int], list] = {}
    for k in ks:
        groups.setdefault((k.component, k.layer), []).append(k)
    busy = {key: _union(g) for key, g in groups.items()}
    components = {}
    for c in COMPONENTS:
        per_layer = tuple(busy.get((c, n), 0.0) for n in range(layers)) if c in counts else (0.0,) * layers
        components[c] = Stats(sum(per_layer) / layers, min(per_layer), max(per_layer), per_layer)
    for c in REQUIRED:  # [chunk] needs these > 0 at its 1 us resolution: say which events, in which trace
        if round(components[c].mean, 3) <= 0:
            mine = [k for k in ks if k.component == c]
            shown = ", ".join(f"traceEvents[{k.event}] ({k.name[:40]!r}, {(k.end - k.start) * 1e3:g} us)"
                              for k in mine[:3])
            raise TraceError(f"{source}: {c} measures {components[c].mean * 1e3:.3g} us per layer, under the 1 us "
                             f"[chunk] resolution (it needs > 0); its kernels: {shown}"[:400])

    streams = {}
    for s in sorted({k.stream for k in ks}):
        mine = [k for k in ks if k.stream == s]
        a2a = _union([k for k in mine if channel_of(k.component) == "a2a"])
        comp = _union([k for k in mine if channel_of(k.component) == "compute"])
        streams[s] = ("a2a" if a2a > comp else "compute", _union(mine))

    windows = {key: (min(k.start for k in g) - t0, max(k.end for k in g) - t0) for key, g in groups.items()}
    sequence = {ch: sorted((key for key in windows if channel_of(key[0]) == ch), key=lambda key: (windows[key], key))
                for ch in CHANNELS}
    order, notes = _per_layer_order(sequence, layers)
    return Calibration(source, layers, components, span, streams, sequence, order, notes, windows,
                       profile.unattributed)


def _layer_count(counts: dict[str, int], source: str) -> int:
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda x: COMPONENTS.index(x[0])))
        raise TraceError(f"{source}: components repeat a different number of times ({shown}); "
                         f"calibrate needs one pair of chunks with the same layer count")
    return next(iter(counts.values()))


def _union(kernels) -> float:
    if not kernels:
        return 0.0
    return union_length(np.array([k.start for k in kernels]), np.array([k.end for k in kernels]))


def _per_layer_order(sequence: dict, layers: int) -> tuple[dict[str, list[str]], list[str]]:
    """Each layer pair's order on a channel; the most common one (first layer's on a tie)."""
    order, notes = {}, []
    for ch, seq in sequence.items():
        per_layer = [tuple(c for c, n in seq if n == layer) for layer in range(layers)]
        common = Counter(per_layer).most_common()
        best = max(common, key=lambda x: (x[1], -per_layer.index(x[0])))[0]
        order[ch] = list(best)
        for layer, got in enumerate(per_layer):
            if got != best:
                notes.append(f"{ch}: layer {layer} runs {' -> '.join(got)}")
        if [c for c, _ in seq] != list(best) * layers:
            notes.append(f"{ch}: layer pairs overlap on the channel (a component of one layer starts among the "
                         f"next layer's); the per-layer order is kept")
    return order, notes


# -- replay ---------------------------------------------------------------------------
def replay(cal: Calibration) -> Calibration:
    """Simulate the pair with the calibrated [chunk]: fills predicted_span and predicted."""
    from . import simulation
    from .schedules.ir import FB, Op, Schedule
    from .inputs.scenario import ScenarioError, resolved
    from .engine.trace import A2A

    pipeline = {"schedule": "1f1b", "stages": 1, "microbatches": 2}
    try:
        scenario, inputs = resolved({"pipeline": pipeline, "chunk": cal.chunk()})
    except ScenarioError as exc:  # an order the engine's dependency rules cannot follow
        cal.order_notes.append(f"replayed without the measured order ({exc})")
        cal.order_runs = False
        scenario, inputs = resolved({"pipeline": pipeline, "chunk": cal.chunk()})
    pair = 1  # F0, then the pair (F1 with B0), then B1: the pair's inside depends on the costs only
    schedule = Schedule("calibrate-pair", 1, 2, ((Op("F", 0, 0), FB(Op("F", 1, 0), Op("B", 0, 0)), Op("B", 1, 0)),))
    trace = simulation.run(scenario, schedule, inputs).trace
    rows = [(int(r["part"]), float(r["start"]), float(r["end"])) for r in trace.compute if r["action"] == pair]
    rows += [(int(r["part"]), float(r["start"]), float(r["end"]))
             for r in trace.comm if r["action"] == pair and r["channel"] == A2A]
    t0 = min(r[1] for r in rows)
    cal.predicted_span = max(r[2] for r in rows) - t0
    seen: Counter = Counter()
    for part, start, end in sorted(rows, key=lambda r: r[1]):
        name = COMPONENTS[part]
        cal.predicted[(name, seen[name])] = (start - t0, end - t0)
        seen[name] += 1
    return cal


def calibrate(profile: Profile, source: str = "trace") -> Calibration:
    return replay(measure(profile, source))


# -- output ---------------------------------------------------------------------------
def to_json(cal: Calibration) -> str:
    r = lambda x: None if x is None else round(x, 4)  # noqa: E731  (0.1 us)
    doc = {
        "layers": cal.layers,
        "components": {c: r(s.mean) for c, s in cal.components.items()},
        "span": r(cal.span),
        "predicted_span": r(cal.predicted_span),
        "streams": {str(s): {"channel": ch, "busy": r(b)} for s, (ch, b) in cal.streams.items()},
        "order": cal.order,
    }
    return json.dumps(doc, indent=2) + "\n"


def chunk_toml(cal: Calibration) -> str:
    lines = [
        f"# Calibrated by `dualpipe-sim calibrate` from {json.dumps(cal.source)}:",
        f"# per-layer mean busy time of each component over {cal.layers} layers (union of its kernels",
        "# across streams), ms.  Include it in a scenario with [chunk] file = \"chunk.toml\" (a path relative",
        "# to the scenario file) or paste it in; see calibration.md beside this file.",
        "[chunk]",
        f"layers = {cal.layers}",
    ]
    for c in COMPONENTS:
        s = cal.components[c]
        lines.append(f"{c} = {s.mean:.3f}  # min {s.min:.3f}, max {s.max:.3f}")
    lines.append("[chunk.order]  # measured per layer pair; [] = not declared (a component is absent)")
    for ch, names in cal.declared_order().items():
        lines.append(f"{ch} = {json.dumps(names)}")
    return "\n".join(lines) + "\n"


def start_errors(cal: Calibration) -> list[tuple[str, int, float, float | None]]:
    """(component, layer, measured start, predicted start) in measured order."""
    keys = sorted(cal.windows, key=lambda k: (cal.windows[k], k))
    return [(c, n, cal.windows[(c, n)][0], cal.predicted[(c, n)][0] if (c, n) in cal.predicted else None)
            for c, n in keys]


def report_text(cal: Calibration) -> str:
    out = [f"calibrate {cal.source}: {cal.layers} layers per chunk, one overlapped forward+backward pair"]
    if cal.unattributed:
        out.append(f"({cal.unattributed} GPU events launched outside every mapped annotation are left out)")
    out += ["", f"span (first kernel to last): {cal.span:.2f} ms measured, {_ms(cal.predicted_span)} predicted"
            f"{_pct(cal.predicted_span, cal.span)}", "", "streams:"]
    for s, (ch, b) in cal.streams.items():
        out.append(f"  stream {s:<6} {ch:<8} busy {b:8.2f} ms ({b / cal.span:.1%} of the span)")
    out += ["", f"{'component (per layer, ms)':<28} {'mean':>7} {'min':>7} {'max':>7}   per layer"]
    for c, s in cal.components.items():
        out.append(f"  {c:<26} {s.mean:7.3f} {s.min:7.3f} {s.max:7.3f}   " + " ".join(f"{x:.2f}" for x in s.per_layer))
    out += ["", "order per layer pair:"]
    for ch in CHANNELS:
        out.append(f"  {ch:<8} " + " -> ".join(cal.order[ch]))
    out += [f"  note: {n}" for n in cal.order_notes]
    out += ["", f"{'component start (ms)':<30} {'measured':>9} {'predicted':>9} {'error':>7}"]
    for c, n, m, p in start_errors(cal):
        err = "" if p is None else f"{p - m:+7.2f}"
        out.append(f"  {c + f'[{n}]':<28} {m:9.2f} {_ms(p):>9} {err}")
    return "\n".join(out)


def report_markdown(cal: Calibration) -> str:
    out = [
        "# Calibration",
        "",
        f"Source: `{cal.source}`, read by `dualpipe-sim calibrate`: {cal.layers} layers per chunk, one overlapped",
        "forward+backward pair.  Times in ms.  A component's busy time is the union of its kernels (launched",
        "inside its annotation) across streams.",
        "",
        "| | measured | predicted |",
        "| --- | --- | --- |",
        f"| span, first kernel to last | {cal.span:.2f} | {_ms(cal.predicted_span)}{_pct(cal.predicted_span, cal.span)} |",
        "",
        "| stream | channel | busy | share of span |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| {s} | {ch} | {b:.2f} | {b / cal.span:.1%} |" for s, (ch, b) in cal.streams.items()]
    out += ["", "| component | mean | min | max | per layer |", "| --- | --- | --- | --- | --- |"]
    out += [f"| `{c}` | {s.mean:.3f} | {s.min:.3f} | {s.max:.3f} | {' / '.join(f'{x:.2f}' for x in s.per_layer)} |"
            for c, s in cal.components.items()]
    out += ["", "Order per layer pair (measured):", ""]
    out += [f"- {ch}: " + " -> ".join(f"`{c}`" for c in cal.order[ch]) for ch in CHANNELS]
    out += [f"- note: {n}" for n in cal.order_notes]
    out += ["", "| component [layer] | measured start | predicted start | error |", "| --- | --- | --- | --- |"]
    for c, n, m, p in start_errors(cal):
        out.append(f"| `{c}` [{n}] | {m:.2f} | {_ms(p)} | {'' if p is None else f'{p - m:+.2f}'} |")
    if cal.unattributed:
        out += ["", f"{cal.unattributed} GPU events launched outside every mapped annotation are left out."]
    return "\n".join(out) + "\n"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(predicted: float | None, measured: float) -> str:
    return "" if predicted is None or measured <= 0 else f" ({(predicted - measured) / measured:+.1%})"


def write(cal: Calibration, out_dir: str | Path) -> list[Path]:
    """chunk.toml and calibration.md into out_dir, all or nothing."""
    from .outputs.files import write_all, write_text

    texts = (chunk_toml(cal), report_markdown(cal))
    return write_all(out_dir, {name: write_text(text) for name, text in zip(OUT_FILES, texts)})
