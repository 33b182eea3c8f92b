"""calibrate checks its input (issue 25): B/E annotation pairs are read like X ranges; a
timestamp outside any plausible trace time, kernels spread beyond one pair's span, and a
component whose kernels have zero length are refused with one line naming the trace and the
event; broken B/E nesting names the event.  Traces: test_calibrate's hand-worked pair."""

from __future__ import annotations

import errno
import pathlib

import pytest

from dualpipe_sim import calibrate
from dualpipe_sim.inputs import kineto
from dualpipe_sim.cli import main

from test_calibrate import EXPECTED, GPU_BASE, pair_trace


def attn_forward_kernels(t) -> list[int]:
    """traceEvents indices of attn(F)'s two GPU events: [0, 1.2] and [1.2, 2] ms on stream 7."""
    return [i for i, e in enumerate(t.events) if e.get("cat") in ("kernel", "gpu_memcpy")
            and e["args"]["stream"] == 7 and e["ts"] in (GPU_BASE, GPU_BASE + 1200)]  # fmt: skip


def as_begin_end(t):
    """Every annotation written as a B/E pair instead of one X event (the E without dur)."""
    events = []
    for e in t.events:
        if e.get("cat") == "user_annotation":
            events += [{**e, "ph": "B"}, {k: v for k, v in e.items() if k != "dur"} | {"ph": "E", "ts": e["ts"] + e["dur"]}]
        else:
            events.append(e)
    t.events = events
    return t


def refused(tmp_path, capsys, t, name="t.json") -> str:
    path = t.write(tmp_path / name)
    out = tmp_path / "cal"
    assert main(["calibrate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


def test_begin_end_pairs_give_the_hand_worked_figures(tmp_path):
    cal = calibrate.calibrate(kineto.read(as_begin_end(pair_trace()).write(tmp_path / "be.json")))
    assert {c: s.mean for c, s in cal.components.items()} == pytest.approx(EXPECTED)
    assert cal.span == pytest.approx(11.0) and cal.predicted_span == pytest.approx(11.0)


def test_begin_end_pairs_in_any_file_order(tmp_path):
    t = as_begin_end(pair_trace())
    t.events = t.events[:1] + t.events[1:][::-1]  # the Chrome format sorts by ts per thread, not by file order
    cal = calibrate.measure(kineto.read(t.write(tmp_path / "rev.json")))
    assert {c: s.mean for c, s in cal.components.items()} == pytest.approx(EXPECTED)


def test_a_begin_never_ended_is_named(tmp_path, capsys):
    t = as_begin_end(pair_trace())
    t.events = [e for e in t.events if not (e.get("ph") == "E" and e["name"] == "attn(W)")]
    err = refused(tmp_path, capsys, t)
    assert "'attn(W)' is still open on its thread" in err and "is an E missing?" in err


def test_a_lone_end_is_named(tmp_path, capsys):
    t = pair_trace()
    t.events.append({"ph": "E", "cat": "user_annotation", "pid": 9, "tid": 9, "ts": GPU_BASE})
    err = refused(tmp_path, capsys, t)
    assert f"traceEvents[{len(t.events) - 1}]: an E (end) event with no B (begin) open" in err


def test_a_lone_begin_is_named(tmp_path, capsys):
    t = pair_trace()
    t.events.append({"ph": "B", "cat": "user_annotation", "name": "stray", "pid": 9, "tid": 9, "ts": GPU_BASE})
    err = refused(tmp_path, capsys, t)
    assert f"traceEvents[{len(t.events) - 1}] 'stray': a B (begin) event that no E (end) event on its thread closes" in err


def test_a_kernel_at_ts_1e300_is_refused(tmp_path, capsys):
    t = pair_trace()
    i = attn_forward_kernels(t)[0]
    t.events[i]["ts"] = 1e300
    err = refused(tmp_path, capsys, t)
    assert f"traceEvents[{i}] (kernel): ts 1e+300 us is outside any plausible trace time" in err


def test_a_kernel_two_hours_away_is_refused(tmp_path, capsys):
    t = pair_trace()
    i = attn_forward_kernels(t)[1]
    t.events[i]["ts"] += 7.2e9  # 2 h in us
    err = refused(tmp_path, capsys, t)
    assert f"traceEvents[{i}] ('k1004') starts 7.2e+03 s after the trace's other kernels" in err


def test_zero_length_kernels_name_the_trace_and_the_events(tmp_path, capsys):
    t = pair_trace()
    ks = attn_forward_kernels(t)
    for i in ks:
        t.events[i]["dur"] = 0
    err = refused(tmp_path, capsys, t)
    assert "attn_forward measures 0 us per layer" in err
    assert f"traceEvents[{ks[0]}] ('k1003', 0 us), traceEvents[{ks[1]}] ('k1004', 0 us)" in err


def test_a_component_under_a_microsecond_is_refused_not_written_as_zero(tmp_path, capsys):
    t = pair_trace()
    ks = attn_forward_kernels(t)
    t.events[ks[0]]["dur"] = 0.25  # 0.25 us: [chunk] keeps ms to 3 decimals (1 us), so 0.000
    t.events[ks[1]]["dur"] = 0
    err = refused(tmp_path, capsys, t)
    assert "attn_forward measures 0.25 us per layer, under the 1 us [chunk] resolution" in err


def test_negative_duration_is_named(tmp_path, capsys):
    t = pair_trace()
    i = attn_forward_kernels(t)[0]
    t.events[i]["dur"] = -5
    assert f"traceEvents[{i}] (kernel): dur must be >= 0, got -5" in refused(tmp_path, capsys, t)


def test_calibrate_out_write_failure_is_one_line(tmp_path, monkeypatch, capsys):
    path = pair_trace().write(tmp_path / "t.json")
    real = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "chunk.toml":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    assert main(["calibrate", str(path), "--out", str(tmp_path / "cal")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: cannot write ") and "chunk.toml: Read-only file system" in err
    assert err.count("\n") == 1 and not (tmp_path / "cal").exists()
