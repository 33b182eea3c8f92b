"""memory.png: the activation timeline it draws, hand-worked, and the peak it marks."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import run_uniform

from dualpipe_sim.cli import main
from dualpipe_sim.outputs.exports.timeline import activation_levels, byte_scale, format_bytes
from dualpipe_sim.outputs.plots.memory import BAND, PEAK, draw_memory, save_memory

QUICK = str(Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml")


def test_levels_hand_worked_1f1b():
    # 1F1B, 2 stages, 2 micro-batches, F=1, B=2, no P2P cost:
    # rank 0: F0 [0,1) F1 [1,2) B0 [4,6) B1 [7,9); rank 1: F0 [1,2) B0 [2,4) F1 [4,5) B1 [5,7).
    r = run_uniform("1f1b", 2, 2, forward=1.0, backward=2.0, memory__activation=3.0)
    t, u, b = activation_levels(r.trace, 0)
    assert (t.tolist(), u.tolist(), b.tolist()) == ([0, 1, 6, 9], [1, 2, 1, 0], [3, 6, 3, 0])
    t, u, _ = activation_levels(r.trace, 1)
    # At t=4 B0 frees as F1 allocates: the level stays 1, never 2.
    assert (t.tolist(), u.tolist()) == ([0, 1, 4, 7], [0, 1, 1, 0])


def test_peak_marked_where_the_metrics_put_it():
    # 16 ranks of 1F1B: rank 0 holds the most (16 activations of 2 GB).
    r = run_uniform("1f1b", 16, 24, memory__activation=2e9)
    fig = plt.figure(figsize=(10, 11))
    ax, per_unit = draw_memory(fig, r.trace)
    assert len(fig.axes) == 1  # one axes for all ranks: no shared-axis cascade
    red = [line for line in ax.get_lines() if line.get_color() == PEAK]
    assert len(red) == 1 and len(red[0].get_xdata()) == 1
    x, y = red[0].get_xdata()[0], red[0].get_ydata()[0]
    rank = 0  # band r spans [-r, -r + BAND]: the red dot is in rank 0's band
    assert -rank <= y <= -rank + BAND
    static = r.trace.parameter_bytes[rank]
    peak = max(p.peak_activation_bytes for p in r.metrics.per_rank)
    assert (y + rank) * per_unit - static == pytest.approx(peak) == 32e9
    # First reached when rank 0's 16th forward starts: after 15 forwards of 1 ms.
    assert x == pytest.approx(15.0)
    assert "16 (32 GB)" in fig.texts[0].get_text()
    plt.close(fig)


def test_capacity_line_in_every_band():
    r = run_uniform("1f1b", 4, 8, memory__activation=2e9)
    fig = plt.figure(figsize=(10, 5))
    # rank 0 peaks at 4 x 2 GB = 8 GB, over half of 12 GB: the device's line is drawn (s19q: not under half)
    ax, per_unit = draw_memory(fig, r.trace, capacity=12e9)
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert len(dashed) == 1
    ys = sorted(seg[0][1] for seg in dashed[0].get_segments())
    assert [(y + rank) * per_unit for rank, y in zip((3, 2, 1, 0), ys)] == pytest.approx([12e9] * 4)
    plt.close(fig)


def test_png_for_16_ranks(tmp_path):
    r = run_uniform("1f1b", 16, 8)
    save_memory(r.trace, r.metrics, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_writes_memory_png(tmp_path):
    out = tmp_path / "out"
    assert main(["run", QUICK, "--out", str(out), "--set", "pipeline.microbatches=16"]) == 0
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("value,text", [(0, "0 B"), (512, "512 B"), (2e9, "2 GB"), (1.5e6, "1.5 MB"), (3e12, "3 TB")])
def test_format_bytes(value, text):
    assert format_bytes(value) == text


def test_levels_empty_rank_is_zero():
    r = run_uniform("1f1b", 2, 1)
    t, u, b = activation_levels(r.trace, 5)  # no such rank: no events
    assert (t.tolist(), u.tolist(), np.asarray(b).tolist()) == ([0.0], [0], [0.0])


def test_static_words_name_what_the_grey_band_sums():
    # s14f: the grey band is total - activations_peak = every static term + the buffers' share of dynamic_peak.
    # Rank 0: dynamic peak 12 over an activation peak 10 (2 bytes of buffers at the joint peak); no FP8, no ZeRO
    # buffers anywhere, so those terms are left out; p2p_buffers / dynamic_peak are not terms of their own.
    from dualpipe_sim.outputs.plots.memory import static_words
    from dualpipe_sim.readers.metrics import RankMemory

    mem = [RankMemory(parameters=4, gradients=8, optimizer=6, activations_peak=10, total=32, p2p_buffers=2,
                      dynamic_peak=12, runtime=2),
           RankMemory(parameters=4, gradients=8, optimizer=6, activations_peak=5, total=25, dynamic_peak=5, runtime=2)]
    assert static_words(mem) == ("parameters, gradients, optimizer states, runtime, "
                                 "P2P / all-to-all buffers (dynamic peak - activation peak)")
    no_buffers = [RankMemory(parameters=1, gradients=1, optimizer=1, activations_peak=3, total=6, fp8_weights=1,
                             dynamic_peak=3)]
    assert static_words(no_buffers) == "parameters, gradients, optimizer states, fp8 weights"
