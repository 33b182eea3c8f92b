"""`dualpipe-sim calibrate` on Kineto traces the tests write themselves, worked by hand.

The synthetic pair (one layer, times in ms from the first kernel; Af attention
forward, Df dispatch, Mf MLP, Cf combine; Cb combine backward, MbI/MbW MLP
input/weight grad, Db dispatch backward, AbI/AbW attention input/weight grad):

    compute  Af [0,2]  MbI [2,4]  MbW [4,5]  Mf [5,7]  AbI [7,10]  AbW [10,11]
    a2a      Cb [0,1]  Df [2,5]   Db [5,7]   Cf [7,10]

This is what the component model gives for these times with the declared
order (compute Af, MbI, MbW, Mf, AbI, AbW; a2a Cb, Df, Db, Cf), worked out:
Af and Cb start at 0; MbI needs Cb (1) and the compute (2); Df needs Af (2);
MbW needs MbI (4); Db needs MbI (4) and the a2a (5); Mf needs Df (5) and the
compute (5); AbI needs Db (7); Cf needs Mf (7); AbW needs AbI (10).  Span 11.

How the trace is written (all of which the reader must see through):
* Af is two kernels, [0,1.2] launched via cudaLaunchKernel and a memcpy
  [1.2,2] launched via cuLaunchKernel (the driver API), from inside an unmapped
  ``rotary`` range nested in ``attn(F)``;
* MbW runs on two compute streams: stream 7 [4,4.6] and stream 23 [4.2,5], so
  its wall time is the union, 1.0, not 0.6 + 0.8;
* AbI's kernels are launched from another CPU thread (autograd's) while the
  main thread sits inside ``attn(B)``;
* Mf ends with a memset [6.5,7];
* one kernel at -5 ms is launched outside every mapped annotation (inside
  ``ProfilerStep#1`` only): it is left out, of the span too;
* timestamps are microseconds since the epoch (16 digits), as Kineto writes.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dualpipe_sim import calibrate, limits, units
from dualpipe_sim.inputs import kineto, scenario
from dualpipe_sim.cli import main
from dualpipe_sim.inputs.costs import COMPONENTS

from helpers import DEEPSEEK_PROFILE_MS

GPU_BASE = 1_740_461_679_470_813  # us
CPU_BASE = 1_740_461_679_400_000
MAIN, AUTOGRAD = 1166, 2571


class KinetoTrace:
    """Builds a Kineto Chrome trace: annotations on CPU threads, GPU events with their launches."""

    def __init__(self) -> None:
        self.events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "gpu"}}]
        self.corr = 1000

    def annotation(self, name: str, cpu_start: float, cpu_end: float, tid: int = MAIN) -> None:
        """A record_function range, CPU times in us from CPU_BASE."""
        self.events.append({"ph": "X", "cat": "user_annotation", "name": name, "pid": MAIN, "tid": tid,
                            "ts": CPU_BASE + cpu_start, "dur": cpu_end - cpu_start, "args": {}})

    def kernel(self, start_ms: float, end_ms: float, stream: int, launch: float, tid: int = MAIN,
               cat: str = "kernel", api: str = "cuda_runtime") -> None:
        """A GPU event [start, end] (ms from GPU_BASE) launched at CPU time ``launch`` (us)."""
        self.corr += 1
        self.events.append({"ph": "X", "cat": api, "name": "cudaLaunchKernel" if api == "cuda_runtime" else "cuLaunchKernel",
                            "pid": MAIN, "tid": tid, "ts": CPU_BASE + launch, "dur": 3,
                            "args": {"correlation": self.corr}})
        self.events.append({"ph": "X", "cat": cat, "name": f"k{self.corr}", "pid": 0, "tid": stream,
                            "ts": GPU_BASE + round(start_ms * 1000), "dur": round((end_ms - start_ms) * 1000),
                            "args": {"stream": stream, "correlation": self.corr, "device": 0}})

    def doc(self) -> dict:
        return {"schemaVersion": 1, "traceEvents": self.events}

    def write(self, path: Path, gz: bool = False) -> Path:
        data = json.dumps(self.doc()).encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        return path


def pair_trace(names: dict[str, str] | None = None) -> KinetoTrace:
    """The one-layer pair of the module docstring."""
    n = names or {}
    a = lambda key: n.get(key, key)  # noqa: E731
    t = KinetoTrace()
    t.annotation("ProfilerStep#1", 0, 1000)
    t.kernel(-5, -4, 7, launch=5)  # outside every mapped annotation
    t.annotation(a("combine(B)"), 10, 20)
    t.kernel(0, 1, 27, launch=12)
    t.annotation(a("attn(F)"), 20, 40)
    t.annotation("rotary", 25, 35)  # unmapped, nested: its kernels are attn(F)'s
    t.kernel(0, 1.2, 7, launch=26)
    t.kernel(1.2, 2, 7, launch=30, cat="gpu_memcpy", api="cuda_driver")
    t.annotation(a("mlp(B)"), 40, 50)
    t.kernel(2, 4, 7, launch=41)
    t.annotation(a("dispatch(F)"), 50, 60)
    t.kernel(2, 5, 27, launch=51)
    t.annotation(a("dispatch(B)"), 60, 70)
    t.kernel(5, 7, 27, launch=61)
    t.annotation(a("mlp(W)"), 70, 80)
    t.kernel(4, 4.6, 7, launch=71)
    t.kernel(4.2, 5, 23, launch=72)
    t.annotation(a("mlp(F)"), 80, 90)
    t.kernel(5, 6.5, 7, launch=81)
    t.kernel(6.5, 7, 7, launch=82, cat="gpu_memset")
    t.annotation(a("attn(B)"), 90, 100)  # main thread waits here while autograd launches
    t.kernel(7, 8, 7, launch=92, tid=AUTOGRAD)
    t.kernel(8, 10, 7, launch=96, tid=AUTOGRAD, api="cuda_driver")
    t.annotation(a("attn(W)"), 100, 110)
    t.kernel(10, 11, 7, launch=101)
    t.annotation(a("combine(F)"), 110, 120)
    t.kernel(7, 10, 27, launch=111)
    return t


EXPECTED = {
    "attn_forward": 2.0, "dispatch_forward": 3.0, "mlp_forward": 2.0, "combine_forward": 3.0,
    "combine_backward": 1.0, "mlp_backward_input": 2.0, "mlp_backward_weight": 1.0,
    "dispatch_backward": 2.0, "attn_backward_input": 3.0, "attn_backward_weight": 1.0,
}  # fmt: skip
STARTS = {
    ("attn_forward", 0): 0, ("mlp_backward_input", 0): 2, ("mlp_backward_weight", 0): 4, ("mlp_forward", 0): 5,
    ("attn_backward_input", 0): 7, ("attn_backward_weight", 0): 10,
    ("combine_backward", 0): 0, ("dispatch_forward", 0): 2, ("dispatch_backward", 0): 5, ("combine_forward", 0): 7,
}  # fmt: skip


def test_reader_attributes_every_kernel_by_hand(tmp_path):
    profile = kineto.read(pair_trace().write(tmp_path / "t.json"))
    assert profile.unattributed == 1  # the kernel launched inside ProfilerStep#1 only
    assert profile.layers == {c: 1 for c in COMPONENTS}
    by = {}
    for k in profile.kernels:
        by.setdefault(k.component, []).append((k.stream, round(k.start, 6), round(k.end, 6)))
    assert by["attn_forward"] == [(7, 0, 1.2), (7, 1.2, 2)]  # runtime and driver launches, inside `rotary`
    assert by["attn_backward_input"] == [(7, 7, 8), (7, 8, 10)]  # launched from the autograd thread
    assert sorted(by["mlp_backward_weight"]) == [(7, 4, 4.6), (23, 4.2, 5)]


def test_figures_streams_order_and_span_by_hand(tmp_path):
    cal = calibrate.measure(kineto.read(pair_trace().write(tmp_path / "t.json")))
    assert cal.layers == 1
    assert {c: s.mean for c, s in cal.components.items()} == pytest.approx(EXPECTED)
    assert cal.span == pytest.approx(11.0)  # the unattributed kernel at -5 ms is not in it
    # stream 7: 2 + 2 + 0.6 + 2 + 3 + 1; stream 23: MbW's 0.8; stream 27: 1 + 3 + 2 + 3.
    assert {s: ch for s, (ch, _) in cal.streams.items()} == {7: "compute", 23: "compute", 27: "a2a"}
    assert [cal.streams[s][1] for s in (7, 23, 27)] == pytest.approx([10.6, 0.8, 9.0])
    assert cal.order == {
        "compute": ["attn_forward", "mlp_backward_input", "mlp_backward_weight", "mlp_forward",
                    "attn_backward_input", "attn_backward_weight"],
        "a2a": ["combine_backward", "dispatch_forward", "dispatch_backward", "combine_forward"],
    }  # fmt: skip
    assert cal.order_notes == []
    assert {k: pytest.approx(v[0]) for k, v in cal.windows.items()} == STARTS


def test_replay_predicts_the_hand_worked_pair(tmp_path):
    """The replay runs the calibrated chunk through simulation.run: for this pair every
    component start and the span come out as worked by hand in the module docstring."""
    cal = calibrate.calibrate(kineto.read(pair_trace().write(tmp_path / "t.json")))
    assert cal.predicted_span == pytest.approx(11.0)
    assert {k: pytest.approx(v) for k, v in cal.predicted.items()} == {k: cal.windows[k] for k in STARTS}


def one_kernel_pair(tmp_path, parts) -> calibrate.Calibration:
    """Calibrate a trace of (annotation, start ms, end ms, stream): one kernel per annotation."""
    t = KinetoTrace()
    for n, (name, start, end, stream) in enumerate(parts):
        t.annotation(name, 10 * n, 10 * n + 10)
        t.kernel(start, end, stream, launch=10 * n + 1)
    return calibrate.calibrate(kineto.read(t.write(tmp_path / "t.json")))


def test_replay_follows_the_measured_order(tmp_path):
    """The same parts, but this run put the MLP weight-gradient after the MLP forward:

        compute  Af [0,2]  MbI [2,4]  Mf [5,7]  MbW [7,8]  AbI [8,11]  AbW [11,12]
        a2a      Cb [0,1]  Df [2,5]   Db [5,7]  Cf [7,10]

    The replay declares that order (chunk.order), so MbW, ready at 4, waits for Mf to
    start (5, when Df ends) and the compute (7); AbI, ready at 7 when Db ends, waits
    for MbW, which comes before it: [8,11].  Span 12 (by priority alone MbW would fill
    [4,5] and the pair would end at 11)."""
    cal = one_kernel_pair(tmp_path, [("combine(B)", 0, 1, 27), ("attn(F)", 0, 2, 7), ("mlp(B)", 2, 4, 7),
                                     ("dispatch(F)", 2, 5, 27), ("dispatch(B)", 5, 7, 27), ("mlp(F)", 5, 7, 7),
                                     ("mlp(W)", 7, 8, 7), ("attn(B)", 8, 11, 7), ("attn(W)", 11, 12, 7),
                                     ("combine(F)", 7, 10, 27)])  # fmt: skip
    assert cal.order["compute"] == ["attn_forward", "mlp_backward_input", "mlp_forward", "mlp_backward_weight",
                                    "attn_backward_input", "attn_backward_weight"]  # fmt: skip
    assert cal.chunk()["order"] == cal.order
    assert cal.predicted_span == pytest.approx(12.0)
    assert {k: pytest.approx(v) for k, v in cal.predicted.items()} == cal.windows
    assert max(abs(p - m) for _, _, m, p in calibrate.start_errors(cal)) == pytest.approx(0.0)


def test_an_order_the_engine_cannot_run_is_replayed_without(tmp_path):
    """A trace whose attention weight-gradient kernels run before its input-gradient ones (a
    mislabelled range): that order cannot run (W needs its I), so the replay declares none,
    says so, and chunk.toml declares none either."""
    cal = one_kernel_pair(tmp_path, [("combine(B)", 0, 1, 27), ("attn(F)", 0, 2, 7), ("mlp(B)", 2, 4, 7),
                                     ("dispatch(F)", 2, 5, 27), ("dispatch(B)", 5, 7, 27), ("mlp(W)", 4, 5, 7),
                                     ("mlp(F)", 5, 7, 7), ("attn(W)", 7, 8, 7), ("attn(B)", 8, 11, 7),
                                     ("combine(F)", 7, 10, 27)])  # fmt: skip
    assert cal.order["compute"][-2:] == ["attn_backward_weight", "attn_backward_input"]
    assert len(cal.order_notes) == 1 and cal.order_notes[0].startswith("replayed without the measured order")
    assert cal.declared_order() == {"compute": [], "a2a": []}
    assert 'compute = []' in calibrate.chunk_toml(cal)
    assert cal.predicted_span == pytest.approx(11.0)  # by priority: the hand-worked pair of the module docstring


def test_layers_are_the_repeat_count_mean_min_max(tmp_path):
    """Two layers: attention forward 2 then 3 ms; MLP forward 1 ms twice; a2a parts absent."""
    t = KinetoTrace()
    for layer, (af, cpu) in enumerate(((2.0, 0), (3.0, 500))):
        t0 = layer * 10
        t.annotation("attn(F)", cpu, cpu + 10)
        t.kernel(t0, t0 + af / 2, 7, launch=cpu + 1)
        t.kernel(t0 + af / 2, t0 + af, 7, launch=cpu + 2)
        t.annotation("mlp(F)", cpu + 10, cpu + 20)
        t.kernel(t0 + 4, t0 + 5, 7, launch=cpu + 11)
        t.annotation("mlp(B)", cpu + 20, cpu + 30)
        t.kernel(t0 + 5, t0 + 6, 7, launch=cpu + 21)
        t.annotation("attn(B)", cpu + 30, cpu + 40)
        t.kernel(t0 + 6, t0 + 8, 7, launch=cpu + 31)
    cal = calibrate.measure(kineto.read(t.write(tmp_path / "t.json")))
    assert cal.layers == 2
    af = cal.components["attn_forward"]
    assert (af.mean, af.min, af.max, *af.per_layer) == pytest.approx((2.5, 2.0, 3.0, 2.0, 3.0))
    assert cal.components["dispatch_forward"].mean == 0  # absent all-to-all: a dense layer
    assert cal.order["compute"] == ["attn_forward", "mlp_forward", "mlp_backward_input", "attn_backward_input"]
    assert cal.declared_order() == {"compute": [], "a2a": []}  # W and all-to-all parts absent: none declared
    assert cal.span == pytest.approx(18.0)
    assert cal.streams == {7: ("compute", pytest.approx((2 + 1 + 1 + 2) + (3 + 1 + 1 + 2)))}


def test_gzip_and_custom_names(tmp_path):
    names = {k: f"layer.{v}" for k, v in kineto.DEEPSEEK_NAMES.items()}
    path = pair_trace(names).write(tmp_path / "custom.json.gz", gz=True)
    with pytest.raises(kineto.TraceError, match="unmapped names: no annotation maps to a component"):
        kineto.read(path)
    mapping = kineto.parse_map([f"layer.{c}={c}" for c in COMPONENTS])
    cal = calibrate.measure(kineto.read(path, mapping))
    assert {c: s.mean for c, s in cal.components.items()} == pytest.approx(EXPECTED)


def test_map_overrides_a_default_name(tmp_path):
    """``--map 'mlp(W)=mlp_backward_input'`` sends mlp(W)'s kernels to the MLP input-gradient:
    it now has three kernels over two annotations per layer, which is a repeat count that
    differs from the other components', and calibrate says so."""
    path = pair_trace().write(tmp_path / "t.json")
    profile = kineto.read(path, kineto.parse_map(["mlp(W)=mlp_backward_input"]))
    assert len([k for k in profile.kernels if k.component == "mlp_backward_input"]) == 3
    assert profile.layers["mlp_backward_input"] == 2 and "mlp_backward_weight" not in profile.layers
    with pytest.raises(kineto.TraceError, match="repeat a different number of times"):
        calibrate.measure(profile)


def test_cli_report_json_and_files(tmp_path, capsys):
    path = pair_trace().write(tmp_path / "t.json")
    out = tmp_path / "cal"
    assert main(["calibrate", str(path), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"layers", "components", "span", "predicted_span", "streams", "order"}
    assert doc["components"] == pytest.approx(EXPECTED)
    assert (doc["layers"], doc["span"], doc["predicted_span"]) == (1, 11.0, 11.0)
    assert doc["streams"]["23"] == {"channel": "compute", "busy": 0.8}
    # chunk.toml is a [chunk] table a scenario can use as it is.
    table = tomllib.loads((out / "chunk.toml").read_text())
    order = table["chunk"].pop("order")
    assert table["chunk"] == pytest.approx({"layers": 1, **EXPECTED})
    assert order == doc["order"] == {
        "compute": ["attn_forward", "mlp_backward_input", "mlp_backward_weight", "mlp_forward",
                    "attn_backward_input", "attn_backward_weight"],
        "a2a": ["combine_backward", "dispatch_forward", "dispatch_backward", "combine_forward"],
    }  # fmt: skip
    table["chunk"]["order"] = order
    scen = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, **table})
    assert scen.cost_model().chunk.layers == 1
    assert "| span, first kernel to last | 11.00 | 11.00 (+0.0%) |" in (out / "calibration.md").read_text()

    assert main(["calibrate", str(path)]) == 0
    text = capsys.readouterr().out
    assert "span (first kernel to last): 11.00 ms measured, 11.00 predicted (+0.0%)" in text
    assert "stream 23     compute  busy     0.80 ms" in text
    assert "1 GPU events launched outside every mapped annotation are left out" in text


# -- hostile traces: one line, exit 2, nothing written ----------------------------------


def _hostile(tmp_path) -> dict[str, tuple[object, str]]:
    """name -> (file content: bytes or a JSON-able object, fragment of the one error line)."""
    ok = pair_trace().doc()
    no_ann = {"traceEvents": [e for e in ok["traceEvents"] if e.get("cat") != "user_annotation"]}
    outside = pair_trace().doc()
    for e in outside["traceEvents"]:
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            e["ts"] = CPU_BASE + 5000  # every launch after every annotation
    no_launch = {"traceEvents": [e for e in ok["traceEvents"] if e.get("cat") not in ("cuda_runtime", "cuda_driver")]}
    bad_ts = pair_trace().doc()
    next(e for e in bad_ts["traceEvents"] if e.get("cat") == "kernel")["ts"] = "soon"
    neg_dur = pair_trace().doc()
    next(e for e in neg_dur["traceEvents"] if e.get("cat") == "kernel")["dur"] = -4
    bad_stream = pair_trace().doc()
    for e in bad_stream["traceEvents"]:
        if e.get("cat") == "kernel":
            e["args"]["stream"] = "seven"
    odd_types = pair_trace().doc()
    for e in odd_types["traceEvents"]:  # unhashable or odd values where keys are expected
        if e.get("cat") == "cuda_runtime":
            e["args"]["correlation"] = [e["args"]["correlation"]]
        if e.get("cat") == "user_annotation" and e["name"] == "ProfilerStep#1":
            e["name"] = {"a": 1}
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            e["pid"] = {"gpu": 0}
    two_gpus = pair_trace().doc()
    for e in two_gpus["traceEvents"]:
        if e.get("tid") == 23:
            e["pid"] = 1
    two_layers_one = pair_trace()
    two_layers_one.annotation("attn(F)", 300, 310)
    two_layers_one.kernel(20, 21, 7, launch=301)
    no_mlp_f = {"traceEvents": [e for e in ok["traceEvents"] if e.get("name") != "mlp(F)"]}
    return {
        "not-json.json": (b"{\"traceEvents\": [", "not JSON"),
        "nan.json": (b'{"traceEvents": [{"ph": "X", "ts": NaN}]}', "not JSON: NaN is not a number JSON allows"),
        "deep.json": (b"[" * 100000 + b"]" * 100000, "not JSON"),
        "list.json": ([1, 2], "not a Kineto trace: expected a JSON object with a traceEvents list"),
        "no-events.json": ({"schemaVersion": 1}, "not a Kineto trace"),
        "no-annotations.json": (no_ann, "no user_annotation events"),
        "unmapped.json": ({"traceEvents": [{"ph": "X", "cat": "user_annotation", "name": "fwd", "ts": 1, "dur": 2}]},
                          "unmapped names: no annotation maps to a component (fwd); map each to a component as NAME=COMPONENT"),
        "outside.json": (outside, "nothing attributable"),
        "no-launch.json": (no_launch, "nothing attributable"),
        "bad-ts.json": (bad_ts, "ts must be a finite number, got 'soon'"),
        "neg-dur.json": (neg_dur, "dur must be >= 0, got -4"),
        "bad-stream.json": (bad_stream, "args.stream must be an integer, got 'seven'"),
        "uneven-layers.json": (two_layers_one.doc(), "components repeat a different number of times (attn_forward 2"),
        "no-mlp-forward.json": (no_mlp_f, "no kernels attributed to mlp_forward"),
        # Runtime launches lost (their correlation is a list): only the driver-launched
        # kernels (attention forward's memcpy, attention input-gradient's second) remain.
        "odd-types.json": (odd_types, "no kernels attributed to mlp_forward, mlp_backward_input ([chunk] needs"),
        "two-gpus.json": (two_gpus, "attributed kernels run on 2 devices (pids ['0', '1']); calibrate reads one GPU"),
        "broken.json.gz": (b"\x1f\x8b\x08\x00garbage", "broken gzip data"),
        "not-utf8.json": (b"\xff\xfe\x00{", "not JSON"),
    }


def test_hostile_traces_one_line_exit_2_nothing_written(tmp_path, capsys):
    for name, (content, fragment) in _hostile(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        out = tmp_path / f"out-{name}"
        assert main(["calibrate", str(path), "--out", str(out)]) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, (name, captured.err)
        assert fragment in captured.err, (name, captured.err)
        assert not out.exists(), name


def test_bad_trace_as_a_process_no_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"traceEvents": 3}')
    done = subprocess.run([sys.executable, "-m", "dualpipe_sim.cli", "calibrate", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {path}: not a Kineto trace: expected a JSON object with a traceEvents list\n"


def test_out_that_is_a_file_one_line_exit_2(tmp_path, capsys):
    path = pair_trace().write(tmp_path / "t.json")
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    assert main(["calibrate", str(path), "--out", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: --out: ") and "is a file, not a folder" in captured.err
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("gz", [False, True])
def test_a_trace_over_the_size_limit_is_refused(tmp_path, capsys, monkeypatch, gz):
    # The hand-worked pair, N bytes of JSON: read at a limit of N, refused at N - 1, naming the
    # file and the limit (plain: by its size before reading; gzip: once it decompresses past it).
    n = len(json.dumps(pair_trace().doc()).encode())
    path = pair_trace().write(tmp_path / ("t.json.gz" if gz else "t.json"), gz=gz)
    monkeypatch.setattr(limits, "MAX_TRACE_BYTES", n)
    assert main(["calibrate", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["components"] == pytest.approx(EXPECTED)
    with pytest.raises(kineto.TraceError, match=r"of JSON a trace may have \(max_bytes: "):  # as a parameter too
        kineto.load(path, max_bytes=n - 1)
    monkeypatch.setattr(limits, "MAX_TRACE_BYTES", n - 1)
    out = tmp_path / "out"
    assert main(["calibrate", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    amount = "decompresses to more than" if gz else f"{units.nbytes(n)}, over"
    assert captured.out == "" and captured.err.count("\n") == 1 and not out.exists()
    assert captured.err.startswith(f"error: {path}: {amount} the {units.nbytes(n - 1)} of JSON a trace "
                                   f"may have (limits.MAX_TRACE_BYTES: "), captured.err


def test_the_default_limit_refuses_a_large_file_without_reading_it(tmp_path):
    # 4 GiB / 6 bytes of memory per JSON byte (5.2 measured on DeepSeek's train.json).
    assert limits.MAX_TRACE_BYTES == 4 * 2**30 // 6 == 715_827_882
    path = tmp_path / "huge.json"
    with path.open("wb") as f:  # sparse: 1 GB long, no disk used; reading it would take 1 GB (and parsing 5)
        f.truncate(10**9)
    with pytest.raises(kineto.TraceError, match=r"huge.json: 1 GB, over the 716 MB of JSON a trace may have"):
        kineto.read(path)


@pytest.mark.parametrize("args, fragment", [
    (["--map", "attn(F)=attention"], "'attention' is not a component; one of attn_forward"),
    (["--map", "attn_forward"], "expected NAME=COMPONENT"),
    (["--map", "=attn_forward"], "expected NAME=COMPONENT"),
])  # fmt: skip
def test_bad_map_and_missing_file(tmp_path, capsys, args, fragment):
    path = pair_trace().write(tmp_path / "t.json")
    assert main(["calibrate", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert main(["calibrate", str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


# -- DeepSeek's published training profile ---------------------------------------------------

PROFILE_REPO = Path(os.environ.get("DUALPIPE_SIM_PROFILE_DATA", "/work/.mirror/deepseek-ai+profile-data/repo"))


@pytest.fixture(scope="module")
def deepseek_trace(tmp_path_factory) -> Path:
    """train.json from a checkout of deepseek-ai/profile-data (git object store or work tree).

    The repository has no licence file, so the project does not ship a copy; the test
    runs where a checkout is (DUALPIPE_SIM_PROFILE_DATA, default the team's mirror)."""
    plain = PROFILE_REPO / "train.json"
    if plain.is_file():
        return plain
    try:
        data = subprocess.run(["git", "-C", str(PROFILE_REPO), "show", "HEAD:train.json"], capture_output=True,
                              check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"no deepseek-ai/profile-data checkout at {PROFILE_REPO} (set DUALPIPE_SIM_PROFILE_DATA)")
    path = tmp_path_factory.mktemp("profile") / "train.json.gz"
    path.write_bytes(gzip.compress(data))  # and the reader takes .json.gz
    return path


@pytest.fixture(scope="module")
def deepseek(deepseek_trace):
    return calibrate.calibrate(kineto.read(deepseek_trace), str(deepseek_trace))


def test_deepseek_profile_figures_within_3_percent(deepseek):
    assert deepseek.layers == 4
    for c, want in DEEPSEEK_PROFILE_MS.items():
        assert deepseek.components[c].mean == pytest.approx(want, rel=0.03), c
    assert deepseek.span == pytest.approx(129.0, abs=0.05)
    assert {s: ch for s, (ch, _) in deepseek.streams.items()} == {7: "compute", 23: "compute", 27: "a2a"}
    assert deepseek.order == {
        "compute": ["attn_forward", "mlp_backward_input", "mlp_backward_weight", "mlp_forward",
                    "attn_backward_input", "attn_backward_weight"],
        "a2a": ["combine_backward", "dispatch_forward", "dispatch_backward", "combine_forward"],
    }  # fmt: skip


def test_deepseek_profile_replay_within_5_percent(deepseek):
    assert deepseek.predicted_span == pytest.approx(129.0, rel=0.05)
