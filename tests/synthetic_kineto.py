"""A synthetic PyTorch profiler (Kineto) trace of one DeepSeek overlapped pair, for calibrate's tests.

DeepSeek's real profile (deepseek-ai/profile-data train.json) has no licence, so
it is not shipped; this script writes a trace with the same shape from the
published figures (docs/dualpipe.md, "Calibrating from a profile"):

* per layer, each component's busy time: the published mean, minimum and
  maximum over the 4 layers, as [min, m, m, max] with m chosen so that the mean
  is the published one (the all-to-all parts grow from the first layer pair to
  the last in the profile; here every component does);
* the stream layout: compute on stream 7, the MLP weight-gradient's GEMMs
  partly on a second compute stream 23 (overlapping stream 7), all-to-all on
  stream 27;
* the annotation names (``attn(F)``, ``mlp(B)``, ...) on the main CPU thread,
  the backward's kernels launched from autograd's thread inside an unmapped
  ``autograd::engine`` range, some kernels through the driver API
  (``cuLaunchKernel``) inside an unmapped ``rotary`` sub-range, copies as
  ``gpu_memcpy``, everything inside ``ProfilerStep#1``, a few kernels outside any
  component (not attributed), and times in microseconds since the epoch;
* the per-layer-pair order of each channel DeepSeek's profile shows, compute
  ``attn(F) mlp(B) mlp(W) mlp(F) attn(B) attn(W)`` and all-to-all
  ``combine(B) dispatch(F) dispatch(B) combine(F)``.

The GPU timeline is laid out here by a plain list scheduler (independent of the
simulator's SimPy channels): each channel takes its components in that order,
each starting when its channel is free and its inputs are done, under the
chains of docs/dualpipe.md: forward attn -> dispatch -> mlp -> combine -> next
layer; backward combine -> mlp input-grad -> dispatch -> attn input-grad -> next
layer; a weight-gradient part after its own input-gradient part.  ``gap_us``
adds a launch gap before each kernel.

Run as a script to write the trace: ``python tests/synthetic_kineto.py out.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Published per-layer figures (ms): mean, min, max over the profile's 4 layers (docs/dualpipe.md).
PUBLISHED = {
    "attn_forward": (4.37, 4.26, 4.47),
    "dispatch_forward": (6.69, 5.71, 7.92),
    "mlp_forward": (4.60, 4.25, 5.17),
    "combine_forward": (8.68, 7.32, 9.63),
    "combine_backward": (5.77, 4.38, 7.27),
    "mlp_backward_input": (5.31, 4.72, 5.69),
    "mlp_backward_weight": (5.06, 4.63, 5.33),
    "dispatch_backward": (7.49, 7.27, 7.91),
    "attn_backward_input": (9.34, 9.02, 9.53),
    "attn_backward_weight": (2.39, 2.38, 2.40),
}
ANNOTATION = {  # DeepSeek's record_function names
    "attn_forward": "attn(F)", "dispatch_forward": "dispatch(F)", "mlp_forward": "mlp(F)",
    "combine_forward": "combine(F)", "combine_backward": "combine(B)", "mlp_backward_input": "mlp(B)",
    "mlp_backward_weight": "mlp(W)", "dispatch_backward": "dispatch(B)", "attn_backward_input": "attn(B)",
    "attn_backward_weight": "attn(W)",
}  # fmt: skip
A2A = ("combine_backward", "dispatch_forward", "dispatch_backward", "combine_forward")
ORDER = {
    "compute": ("attn_forward", "mlp_backward_input", "mlp_backward_weight", "mlp_forward", "attn_backward_input",
                "attn_backward_weight"),
    "a2a": A2A,
}  # fmt: skip
# What each component of layer n waits for: (component, layer offset).
NEEDS = {
    "attn_forward": [("combine_forward", -1)],
    "dispatch_forward": [("attn_forward", 0)],
    "mlp_forward": [("dispatch_forward", 0)],
    "combine_forward": [("mlp_forward", 0)],
    "combine_backward": [("attn_backward_input", -1)],
    "mlp_backward_input": [("combine_backward", 0)],
    "dispatch_backward": [("mlp_backward_input", 0)],
    "attn_backward_input": [("dispatch_backward", 0)],
    "mlp_backward_weight": [("mlp_backward_input", 0)],
    "attn_backward_weight": [("attn_backward_input", 0)],
}
LAYERS = 4
STREAM = {"compute": 7, "second": 23, "a2a": 27}
EPOCH_US = 1_733_000_000_000_000  # Kineto writes microseconds since the epoch
KERNELS_PER_PART = 4
UNATTRIBUTED = 3  # optimizer kernels after the pair, launched outside every component range


def per_layer(mean: float, lo: float, hi: float) -> list[float]:
    """[lo, m, m, hi] with mean ``mean``."""
    m = (LAYERS * mean - lo - hi) / (LAYERS - 2)
    assert lo <= m <= hi, (mean, lo, hi)
    return [lo, m, m, hi]


def published_layers() -> dict[str, list[float]]:
    return {c: per_layer(*v) for c, v in PUBLISHED.items()}


def uniform_layers() -> dict[str, list[float]]:
    return {c: [v[0]] * LAYERS for c, v in PUBLISHED.items()}


@dataclass
class Layout:
    """The GPU timeline the trace is written from (ms from the first kernel)."""

    windows: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)  # first start, last end
    kernels: list[tuple[str, int, int, float, float]] = field(default_factory=list)  # comp, layer, stream, start, end

    @property
    def span(self) -> float:
        return max(e for *_, e in self.kernels) - min(s for *_, s, _ in self.kernels)


def lay_out(times: dict[str, list[float]], gap_us: float = 0.0) -> Layout:
    """List-schedule every (component, layer) on its channel in ORDER; split each into kernels."""
    gap = gap_us / 1000
    queues = {ch: [(c, n) for n in range(LAYERS) for c in order] for ch, order in ORDER.items()}
    free = {ch: 0.0 for ch in ORDER}
    out = Layout()
    while any(queues.values()):
        progressed = False
        for ch, queue in queues.items():
            if not queue:
                continue
            comp, n = queue[0]
            deps = [(d, n + k) for d, k in NEEDS[comp] if 0 <= n + k < LAYERS]
            if any(d not in out.windows for d in deps):
                continue
            start = max([free[ch]] + [out.windows[d][1] for d in deps])
            end = _kernels(out, comp, n, start, times[comp][n], gap)
            out.windows[(comp, n)] = (start + gap, end)
            free[ch] = end
            queue.pop(0)
            progressed = True
        assert progressed, "the declared order cannot run"
    return out


def _kernels(out: Layout, comp: str, n: int, start: float, busy: float, gap: float) -> float:
    """Kernels of one component occurrence, busy for ``busy`` ms in all; returns its end."""
    piece = busy / KERNELS_PER_PART
    t = start
    if comp == "mlp_backward_weight":
        # GEMMs on two compute streams: stream 7 for the first 70%, stream 23 from 40% on (their union
        # is ``busy``), each in two kernels.
        t += gap
        for stream, (a, b) in ((STREAM["compute"], (0.0, 0.7)), (STREAM["second"], (0.4, 1.0))):
            mid = t + busy * (a + b) / 2
            out.kernels += [(comp, n, stream, t + busy * a, mid), (comp, n, stream, mid, t + busy * b)]
        return t + busy
    stream = STREAM["a2a"] if comp in A2A else STREAM["compute"]
    for _ in range(KERNELS_PER_PART):
        t += gap
        out.kernels.append((comp, n, stream, t, t + piece))
        t += piece
    return t


def trace(layout: Layout) -> dict:
    """The Kineto JSON of a layout: annotations and launches on the CPU, kernels on the GPU."""
    host, main, autograd = 4242, 4242, 4250
    gpu_t0 = EPOCH_US + 2000.0  # the GPU starts 2 ms after the CPU's first annotation
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": host, "args": {"name": "python"}}]
    corr = 1000
    cpu = EPOCH_US + 10.0
    by_occurrence: dict[tuple[str, int], list] = {}
    for k in layout.kernels:
        by_occurrence.setdefault((k[0], k[1]), []).append(k)
    occurrences = sorted(by_occurrence, key=lambda key: (layout.windows[key][0], key[1], key[0]))
    first = cpu
    for comp, n in occurrences:
        kernels = by_occurrence[(comp, n)]
        backward = comp.endswith(("_input", "_weight"))
        window = 10.0 * len(kernels) + 10.0
        events.append(_x("user_annotation", ANNOTATION[comp], host, main, cpu, window))
        if backward:  # autograd's thread launches while the main thread sits in the range
            events.append(_x("user_annotation", f"autograd::engine::evaluate_function: {comp}", host, autograd,
                             cpu + 2, window - 4))  # fmt: skip
        if comp == "attn_forward":  # an unmapped sub-range whose kernels go through the driver API
            events.append(_x("user_annotation", "rotary", host, main, cpu + 3, window - 6))
        for i, (_, _, stream, start, end) in enumerate(kernels):
            corr += 1
            launch_t = cpu + 5.0 + 10.0 * i
            copy = comp == "attn_forward" and i == 0
            driver = comp == "attn_forward" and i == 1
            cat, name = ("cuda_driver", "cuLaunchKernel") if driver else ("cuda_runtime", "cudaMemcpyAsync") \
                if copy else ("cuda_runtime", "cudaLaunchKernel")  # fmt: skip
            events.append(_x(cat, name, host, autograd if backward else main, launch_t, 3.0, correlation=corr))
            gpu_cat = "gpu_memcpy" if copy else "kernel"
            events.append(_x(gpu_cat, f"{comp}_k{i}", 0, stream, gpu_t0 + start * 1000, (end - start) * 1000,
                             correlation=corr, stream=stream, device=0))  # fmt: skip
        cpu += window + 5.0
    # Optimizer kernels after the pair: launched inside ProfilerStep#1 but outside every component.
    gpu_end = gpu_t0 + max(e for *_, e in layout.kernels) * 1000
    for i in range(UNATTRIBUTED):
        corr += 1
        events.append(_x("cuda_runtime", "cudaLaunchKernel", host, main, cpu + 5.0 * i, 2.0, correlation=corr))
        events.append(_x("kernel", f"optimizer_k{i}", 0, STREAM["compute"], gpu_end + 50.0 + 100.0 * i, 80.0,
                         correlation=corr, stream=STREAM["compute"], device=0))  # fmt: skip
    cpu += 5.0 * UNATTRIBUTED + 5.0
    events.insert(1, _x("user_annotation", "ProfilerStep#1", host, main, first - 5.0, cpu - first + 10.0))
    events.append({"ph": "i", "name": "marker", "pid": host, "tid": main, "ts": cpu, "s": "t"})
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "synthetic"}], "traceEvents": events}


def _x(cat: str, name: str, pid: int, tid: int, ts: float, dur: float, **args) -> dict:
    ev = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": round(ts, 3), "dur": round(dur, 3)}
    if args:
        ev["args"] = args
    return ev


def write(path: Path, times: dict[str, list[float]] | None = None, gap_us: float = 2.0) -> Layout:
    layout = lay_out(published_layers() if times is None else times, gap_us)
    Path(path).write_text(json.dumps(trace(layout)))
    return layout


if __name__ == "__main__":
    write(Path(sys.argv[1]))
