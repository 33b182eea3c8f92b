"""Reading a PyTorch profiler (Kineto) Chrome trace into kernels per model component.

A Kineto trace is a JSON object whose ``traceEvents`` list holds, among others:

* CPU ``user_annotation`` ranges (``torch.profiler.record_function``), e.g.
  ``attn(F)``, with ``ts``/``dur`` in microseconds and the CPU ``pid``/``tid``;
* GPU activity: ``kernel``, ``gpu_memcpy`` and ``gpu_memset`` events with
  ``args.stream`` and ``args.correlation``;
* the CPU calls that launched them, ``cuda_runtime`` (``cudaLaunchKernel``...)
  or ``cuda_driver`` (``cuLaunchKernel``...), with the same ``args.correlation``.

Each GPU event is attributed to the innermost *mapped* annotation (one whose
name the name map turns into a component) whose CPU window contains the launch.
Unmapped ranges (``ProfilerStep#1``, a user's own sub-ranges) are ignored, so a
kernel inside ``rotary`` inside ``attn(F)`` counts for ``attn(F)``.  The launch
may come from another CPU thread than the annotation (autograd runs backward
kernels on its own thread while the main thread sits inside ``attn(B)``): an
annotation on the launching thread wins; failing that, the innermost
containing one on any thread (latest start) is taken.

The n-th occurrence of a component's annotations (in start order) is layer n.
Kernel times are in milliseconds from the first attributed GPU event.
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import limits, units
from ..schedules.components import COMPONENTS
from ..errors import shown

# DeepSeek's profile-data names (train.json) -> [chunk] component names.
DEEPSEEK_NAMES = {
    "attn(F)": "attn_forward",
    "mlp(F)": "mlp_forward",
    "dispatch(F)": "dispatch_forward",
    "combine(F)": "combine_forward",
    "attn(B)": "attn_backward_input",
    "mlp(B)": "mlp_backward_input",
    "attn(W)": "attn_backward_weight",
    "mlp(W)": "mlp_backward_weight",
    "dispatch(B)": "dispatch_backward",
    "combine(B)": "combine_backward",
}

# Category names, lower-cased: Kineto's current ones and the capitalised ones of
# older PyTorch releases ("Kernel", "Memcpy", "Runtime").
GPU_CATS = frozenset(("kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"))
LAUNCH_CATS = frozenset(("cuda_runtime", "cuda_driver", "runtime", "driver"))
ANNOTATION_CAT = "user_annotation"
# Kineto's ts is microseconds since 1970 (about 1.7e15 in 2025).  Past 1e16 (the year 2286)
# float64 holds a time only to 2 us, and a kernel at ts = 1e300 has start + dur == start:
# no trace a profiler wrote lies there.
MAX_TS_US = 1e16
# A profile of one overlapped pair lasts milliseconds; kernels an hour apart are not one pair.
MAX_SPAN_US = 3.6e9


class TraceError(ValueError):
    """The file is not a Kineto trace this reader can use; the message says why."""


@dataclass(frozen=True)
class Kernel:
    """One GPU event attributed to a component occurrence."""

    stream: int
    start: float  # ms from the first attributed GPU event
    end: float
    component: str
    layer: int  # occurrence index of the component's annotation
    name: str
    event: int = -1  # its index in traceEvents (for messages)


@dataclass(frozen=True)
class Profile:
    """The attributed GPU activity of a trace."""

    kernels: tuple[Kernel, ...]
    layers: dict[str, int]  # component -> how many annotation occurrences it has
    unattributed: int  # GPU events with no launch found or launched outside every mapped annotation
    devices: tuple[int, ...]


def parse_map(items: list[str]) -> dict[str, str]:
    """``--map NAME=COMPONENT`` items over DeepSeek's default map."""
    names = dict(DEEPSEEK_NAMES)
    for item in items:
        name, sep, component = item.rpartition("=")  # a name may itself hold '='
        if not sep or not name:
            raise TraceError(f"name map {shown(item)}: expected NAME=COMPONENT, e.g. 'attn(F)=attn_forward'")
        if component not in COMPONENTS:
            raise TraceError(f"name map {shown(item)}: {shown(component)} is not a component; one of {', '.join(COMPONENTS)}")
        names[name] = component
    return names


def load(path: str | Path, max_bytes: int | None = None) -> dict:
    """The trace's JSON object, from ``.json`` or gzip-compressed ``.json.gz``; more
    than ``max_bytes`` of JSON (default limits.MAX_TRACE_BYTES) is refused."""
    path = Path(path)
    raw = _read_capped(path, limits.MAX_TRACE_BYTES if max_bytes is None else max_bytes)
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, our NaN refusal
        raise TraceError(f"{path}: not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(f"{path}: not a Kineto trace: expected a JSON object with a traceEvents list")
    return data


def _read_capped(path: Path, limit: int) -> bytes:
    """The file's JSON bytes (gzip undone), read no further than ``limit`` + 1 of them:
    a plain file over the limit is refused by its size, a gzip one once it decompresses past it."""
    try:
        with path.open("rb") as f:
            gz = f.peek(2)[:2] == b"\x1f\x8b"  # gzip magic, whatever the file is called
            size = os.fstat(f.fileno()).st_size
            if not gz and size > limit:
                raise TraceError(_too_big(path, limit, f"{units.nbytes(size)}, over"))
            try:
                raw = (gzip.GzipFile(fileobj=f) if gz else f).read(limit + 1)
            except (EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
                raise TraceError(f"{path}: broken gzip data: {exc}") from None
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > limit:  # a pipe, or gzip data
        raise TraceError(_too_big(path, limit, "decompresses to more than" if gz else "more than"))
    return raw


def _too_big(path: Path, limit: int, amount: str) -> str:
    source = "limits.MAX_TRACE_BYTES" if limit == limits.MAX_TRACE_BYTES else "max_bytes"
    return (f"{path}: {amount} the {units.nbytes(limit)} of JSON a trace may have ({source}: "
            f"it is parsed whole, about {limits.TRACE_BYTES_FACTOR} bytes of memory per byte); calibrating needs "
            f"one overlapped forward+backward pair (DeepSeek's train.json is 3.1 MB): profile fewer steps")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read(path: str | Path, names: dict[str, str] | None = None) -> Profile:
    """Load ``path`` and attribute its GPU events (see the module docstring)."""
    return attribute(load(path)["traceEvents"], DEEPSEEK_NAMES if names is None else names, str(path))


def complete_events(events: list, where: str = "trace") -> list[tuple[int, dict]]:
    """(index, event) of every complete event: ``"X"`` ones as they are, and each ``"B"``/``"E"``
    pair on one thread (pid, tid) as one ``"X"`` (its ts, dur = end - begin), at the B's index.
    Pairs nest per thread in time order (the Chrome trace format's rule, whatever the order in
    the file); an E with no open B,
    a B never ended, or an E naming another range than the open B is refused, naming the event."""
    out, open_, begins = [], {}, []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            continue
        ph = ev.get("ph")
        if ph == "X":
            out.append((i, ev))
        elif ph in ("B", "E"):
            begins.append((_time(ev, i, where, dur=False)[0], i, ev))
    # By time; at one time an E first (a range ending where the next begins), then file order.
    # (So a zero-length B/E range reads as an E before its B: refused, and it holds no kernel.)
    for ts, i, ev in sorted(begins, key=lambda b: (b[0], b[2]["ph"] == "B", b[1])):
        stack = open_.setdefault(_thread(ev), [])
        if ev["ph"] == "B":
            stack.append((ts, i, ev))
            continue
        if not stack:
            raise TraceError(f"{where}: traceEvents[{i}]: an E (end) event with no B (begin) open on its thread "
                             f"(pid {ev.get('pid')}, tid {ev.get('tid')})"[:240])
        b_ts, b_i, b_ev = stack.pop()
        if "name" in ev and ev.get("name") != b_ev.get("name"):
            raise TraceError(f"{where}: traceEvents[{i}]: the E event of {str(ev.get('name'))[:60]!r} comes while "
                             f"traceEvents[{b_i}] {str(b_ev.get('name'))[:60]!r} is still open on its thread (B/E "
                             f"pairs must nest; is an E missing?)")
        out.append((b_i, {**b_ev, **{k: v for k, v in ev.items() if k == "args" and not b_ev.get("args")},
                          "ph": "X", "ts": b_ts, "dur": ts - b_ts}))
    for stack in open_.values():
        if stack:
            _, b_i, b_ev = stack[0]
            raise TraceError(f"{where}: traceEvents[{b_i}] {str(b_ev.get('name'))[:60]!r}: a B (begin) event "
                             f"that no E (end) event on its thread closes")
    return sorted(out, key=lambda x: x[0])


def attribute(events: list, names: dict[str, str], where: str = "trace") -> Profile:
    annotations, launches, gpu, seen = [], {}, [], set()
    for i, ev in complete_events(events, where):
        cat = str(ev.get("cat", "")).lower()
        if cat == ANNOTATION_CAT:
            name = ev.get("name")
            seen.add(str(name))
            if isinstance(name, str) and name in names:
                start, dur = _time(ev, i, where)
                annotations.append((start, start + dur, _thread(ev), names[name]))
        elif cat in LAUNCH_CATS:
            corr = _correlation(ev)
            if corr is not None:
                launches[corr] = (_time(ev, i, where)[0], _thread(ev))
        elif cat in GPU_CATS:
            args = _args(ev)
            start, dur = _time(ev, i, where)
            gpu.append((start, start + dur, args.get("stream"), _correlation(ev), str(ev.get("pid")), ev.get("name"), i))
    if not seen:
        raise TraceError(f"{where}: no user_annotation events (torch.profiler.record_function ranges) to attribute kernels to")
    if not annotations:
        shown = ", ".join(sorted(seen)[:6]) + (", ..." if len(seen) > 6 else "")
        raise TraceError(f"{where}: unmapped names: no annotation maps to a component ({shown}); map each to a component as NAME=COMPONENT")

    layer_of, layers = _occurrences(annotations)
    index = _Innermost(annotations)
    hits, unattributed, devices = [], 0, set()
    for start, end, stream, corr, pid, name, i in gpu:
        launch = launches.get(corr) if corr is not None else None
        hit = index.find(*launch) if launch is not None else None
        if hit is None:
            unattributed += 1
            continue
        if isinstance(stream, bool) or not isinstance(stream, int):
            raise TraceError(f"{where}: traceEvents[{i}]: args.stream must be an integer, got {stream!r}"[:200])
        devices.add(pid)
        hits.append((start, end, stream, hit, name, i))
    if not hits:
        raise TraceError(f"{where}: nothing attributable: no kernel/memcpy/memset event was launched "
                         f"(cuda_runtime or cuda_driver, same args.correlation) inside a mapped annotation")
    _check_span(hits, where)
    # Kineto writes microseconds since the epoch (16 digits): subtract the first
    # attributed event's time before scaling to ms, or float64 rounding shows.
    origin = min(h[0] for h in hits)
    kernels = [Kernel(stream, (start - origin) / 1000, (end - origin) / 1000, annotations[a][3], layer_of[a], str(name), i)
               for start, end, stream, a, name, i in hits]
    if len(devices) > 1:
        raise TraceError(f"{where}: attributed kernels run on {len(devices)} devices (pids {sorted(devices, key=str)}); "
                         f"calibrate reads one GPU's trace")
    return Profile(tuple(sorted(kernels, key=lambda k: (k.start, k.end, k.stream))), layers, unattributed,
                   tuple(devices))


def _check_span(hits: list, where: str) -> None:
    """Refuse attributed GPU events spread over more than MAX_SPAN_US, naming the one farthest
    from the middle (by start) of the others: a stray timestamp, not one profiled pair."""
    starts = sorted(h[0] for h in hits)
    if max(h[1] for h in hits) - starts[0] <= MAX_SPAN_US:
        return
    middle = starts[len(starts) // 2]
    far = max(hits, key=lambda h: abs(h[0] - middle))
    raise TraceError(f"{where}: traceEvents[{far[5]}] ({str(far[4])[:60]!r}) starts {abs(far[0] - middle) / 1e6:.3g} s "
                     f"{'after' if far[0] > middle else 'before'} the trace's other kernels: outside the span of one "
                     f"profiled pair (at most {MAX_SPAN_US / 3.6e9:g} hour); remove it or profile one pair")


def _time(ev: dict, i: int, where: str, dur: bool = True) -> tuple[float, float]:
    """(ts, dur) of an event in us, as written; both must be finite numbers, dur >= 0, and
    |ts| <= MAX_TS_US.  ``dur=False``: a B or E event, which has a ts only (dur 0)."""
    out = []
    for key in ("ts", "dur") if dur else ("ts",):
        v = ev.get(key)
        if isinstance(v, str):  # some exporters write "ts": "123.456"
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TraceError(f"{where}: traceEvents[{i}] ({ev.get('cat')}): {key} must be a finite number, got {v!r}"[:200])
        out.append(float(v))
    if abs(out[0]) > MAX_TS_US:
        raise TraceError(f"{where}: traceEvents[{i}] ({ev.get('cat')}): ts {out[0]:g} us is outside any plausible trace "
                         f"time (Kineto writes microseconds since 1970, about 1.7e15; at most {MAX_TS_US:g})"[:240])
    if not dur:
        return out[0], 0.0
    if out[1] < 0:
        raise TraceError(f"{where}: traceEvents[{i}] ({ev.get('cat')}): dur must be >= 0, got {out[1]:g}")
    return out[0], out[1]


def _correlation(ev: dict) -> int | str | None:
    """args.correlation when it is a usable key (a number or a string), else None."""
    corr = _args(ev).get("correlation")
    return corr if isinstance(corr, (int, str)) and not isinstance(corr, bool) else None


def _args(ev: dict) -> dict:
    args = ev.get("args")
    return args if isinstance(args, dict) else {}


def _thread(ev: dict) -> tuple[str, str]:
    return (str(ev.get("pid")), str(ev.get("tid")))


def _occurrences(annotations: list) -> tuple[list[int], dict[str, int]]:
    """Layer index of each annotation: its rank among its component's occurrences by start."""
    order = sorted(range(len(annotations)), key=lambda a: (annotations[a][0], annotations[a][1]))
    count: dict[str, int] = {}
    layer_of = [0] * len(annotations)
    for a in order:
        comp = annotations[a][3]
        layer_of[a] = count.get(comp, 0)
        count[comp] = layer_of[a] + 1
    return layer_of, count


class _Innermost:
    """Which annotation innermost-contains a CPU time, per thread, in O(log n + depth).

    Per thread, annotations sorted by start; each knows its enclosing one (its
    parent).  For a time t, start from the last annotation that began at or
    before t and climb parents until one has not ended yet: nested ranges make
    that the innermost containing one (a sibling that began earlier ended before
    the later one began)."""

    def __init__(self, annotations: list) -> None:
        self.annotations = annotations
        self.threads: dict[tuple, tuple[list[float], list[int], list[int]]] = {}
        by_thread: dict[tuple, list[int]] = {}
        for a, (start, end, thread, _) in enumerate(annotations):
            by_thread.setdefault(thread, []).append(a)
        for thread, idx in by_thread.items():
            idx.sort(key=lambda a: (annotations[a][0], -annotations[a][1]))
            parent, stack = [], []
            for pos, a in enumerate(idx):
                while stack and annotations[idx[stack[-1]]][1] < annotations[a][0]:
                    stack.pop()
                parent.append(stack[-1] if stack else -1)
                stack.append(pos)
            self.threads[thread] = ([annotations[a][0] for a in idx], idx, parent)

    def _on(self, thread: tuple, t: float) -> int | None:
        starts, idx, parent = self.threads[thread]
        pos = bisect.bisect_right(starts, t) - 1
        while pos >= 0 and self.annotations[idx[pos]][1] < t:
            pos = parent[pos]
        return idx[pos] if pos >= 0 else None

    def find(self, t: float, thread: tuple) -> int | None:
        if thread in self.threads:
            hit = self._on(thread, t)
            if hit is not None:
                return hit
        hits = [h for th in self.threads if th != thread for h in [self._on(th, t)] if h is not None]
        # Innermost across threads: the one that began last (then the shorter one).
        return max(hits, key=lambda a: (self.annotations[a][0], -self.annotations[a][1]), default=None)
