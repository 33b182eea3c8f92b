"""calibrate end to end on a synthetic Kineto trace with DeepSeek's published figures and stream layout.

The real profile (deepseek-ai/profile-data) is not shipped, so test_calibrate.py's checks on it run
only where a checkout is; these run everywhere.  tests/synthetic_kineto.py writes the trace from the
published per-layer figures and lays the GPU timeline out with its own list scheduler; so what
calibrate must recover is known independently: every component's busy time per layer, the streams
and their channels, the per-layer-pair order, the span, and the events no component launched.
"""

from __future__ import annotations

import json
import tomllib

import pytest

import synthetic_kineto as synth
from dualpipe_sim import calibrate
from dualpipe_sim.inputs import kineto
from dualpipe_sim.cli import main

US = 0.002  # ms: Kineto's microseconds since the epoch hold about 0.25 us in a float64


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "train.json"
    layout = synth.write(path)  # published per-layer spread, 2 us launch gaps
    return path, layout, calibrate.calibrate(kineto.read(path), str(path))


def test_every_component_per_layer_and_mean(realistic):
    _, _, cal = realistic
    assert cal.layers == 4
    for comp, (mean, lo, hi) in synth.PUBLISHED.items():
        stats = cal.components[comp]
        assert stats.per_layer == pytest.approx(synth.per_layer(mean, lo, hi), abs=US), comp
        assert (stats.mean, stats.min, stats.max) == pytest.approx((mean, lo, hi), abs=US), comp
    # The [chunk] table calibrate writes: the published means, to the microsecond.
    chunk = cal.chunk()
    assert {c: chunk[c] for c in synth.PUBLISHED} == pytest.approx({c: v[0] for c, v in synth.PUBLISHED.items()},
                                                                  abs=US)  # fmt: skip


def test_streams_order_span_and_unattributed(realistic):
    _, layout, cal = realistic
    mlp_w = sum(synth.per_layer(*synth.PUBLISHED["mlp_backward_weight"]))
    compute = sum(sum(synth.per_layer(*synth.PUBLISHED[c])) for c in synth.ORDER["compute"])
    a2a = sum(sum(synth.per_layer(*synth.PUBLISHED[c])) for c in synth.A2A)
    # Stream 7 runs every compute part except the MLP weight-gradient's last 30% (stream 23 runs
    # its 40%-100%); the streams' busy times follow.
    assert cal.streams[7] == ("compute", pytest.approx(compute - 0.3 * mlp_w, abs=0.05))
    assert cal.streams[23] == ("compute", pytest.approx(0.6 * mlp_w, abs=0.05))
    assert cal.streams[27] == ("a2a", pytest.approx(a2a, abs=0.05))
    assert cal.order == {ch: list(order) for ch, order in synth.ORDER.items()}
    assert cal.order_notes == [] and cal.order_runs
    assert cal.span == pytest.approx(layout.span, abs=US)
    assert cal.unattributed == synth.UNATTRIBUTED
    t0 = min(start for *_, start, _ in layout.kernels)  # calibrate counts from the first kernel
    for key, (start, end) in layout.windows.items():
        assert cal.windows[key] == pytest.approx((start - t0, end - t0), abs=US), key


def test_replay_within_5_percent_of_the_synthetic_span(realistic):
    _, layout, cal = realistic
    assert cal.predicted_span == pytest.approx(layout.span, rel=0.05)


def test_uniform_layers_without_gaps_replay_exactly():
    # Every layer at the published mean, no launch gaps: the simulator's replay and this file's list
    # scheduler follow the same rules, so they must agree component by component.  By hand
    # (docs/dualpipe.md): the compute waits once, for the first combine-backward (5.77 - 4.37), then
    # never idles: 1.40 + 4 x (4.37 + 5.31 + 5.06 + 4.60 + 9.34 + 2.39) = 125.68 ms.
    layout = synth.lay_out(synth.uniform_layers())
    assert layout.span == pytest.approx(1.40 + 4 * 31.07, abs=1e-9)
    events = synth.trace(layout)["traceEvents"]
    cal = calibrate.calibrate(kineto.attribute(events, kineto.DEEPSEEK_NAMES), "synthetic")
    assert cal.span == pytest.approx(125.68, abs=US)
    assert cal.predicted_span == pytest.approx(125.68, abs=US)
    assert set(cal.predicted) == set(layout.windows)
    for key, (start, end) in layout.windows.items():
        assert cal.predicted[key] == pytest.approx((start, end), abs=US), key


def test_cli_writes_the_chunk_table(realistic, tmp_path, capsys):
    path, layout, _ = realistic
    out = tmp_path / "cal"
    assert main(["calibrate", str(path), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers"] == 4 and doc["span"] == pytest.approx(layout.span, abs=US)
    chunk = tomllib.loads((out / "chunk.toml").read_text())["chunk"]
    assert chunk["attn_backward_input"] == pytest.approx(9.34, abs=US)
    assert chunk["order"] == {ch: list(order) for ch, order in synth.ORDER.items()}
