"""Sweep charts against what the grid sweeps (issue 25): a non-numeric axis charted at every
value, no chart against an axis that was not swept, equal series named in the legend.
Figures are caught before they close and their lines read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dualpipe_sim.cli import parse_grid
from dualpipe_sim.outputs.plots import sweep as draw
from dualpipe_sim.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"
LLAMA = ROOT / "scenarios" / "llama3-70b.toml"


@pytest.fixture
def figures(monkeypatch):
    caught = []
    real = draw.plt.close

    def close(fig=None):
        caught.append(fig)
        return real(fig)

    monkeypatch.setattr(draw.plt, "close", close)
    return caught


def names(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.suffix == ".png"}


def test_only_swept_axes_are_charted(tmp_path, figures):
    out = tmp_path / "a"
    run_sweep(QUICK, parse_grid(["pipeline.schedule=1f1b,zb-h1", "pipeline.microbatches=8,16"]), out, jobs=1)
    assert names(out) == {"bubble_vs_microbatches.png"}  # stages not swept: no chart against it, no heatmap
    out = tmp_path / "b"
    run_sweep(QUICK, parse_grid(["pipeline.stages=2,4", "pipeline.microbatches=8,16"]), out, jobs=1)
    assert names(out) == {"bubble_vs_microbatches.png", "peak_activation_vs_stages.png", "bubble_heatmap.png"}
    out = tmp_path / "c"
    run_sweep(QUICK, parse_grid(["pipeline.schedule=1f1b,zb-h1"]), out, jobs=1)
    assert names(out) == set()  # nothing swept but the schedule: compare draws that


def test_a_key_the_grid_sets_to_one_value_gets_no_chart():
    axes = parse_grid(["pipeline.microbatches=8,16", "comm.p2p=0.25", "memory.recompute=none,full", "costs.forward=1"])
    assert [a.key for a in draw.other_axes(axes)] == ["memory.recompute"]  # the one non-shape key with two values
    assert set(draw.charts([], axes)) == {"bubble_vs_microbatches.png", "vs_memory.recompute.png"}


def test_a_word_axis_is_charted_at_every_value(tmp_path, figures):
    grid = ["pipeline.schedule=1f1b,gpipe,zb-h1", "memory.recompute=none,selective,full"]
    raw = LLAMA.read_text().replace("chunks_per_rank = 5", "").replace('"models/', f'"{LLAMA.parent}/models/')
    (tmp_path / "l.toml").write_text(raw)
    run_sweep(tmp_path / "l.toml", parse_grid(grid + ["pipeline.stages=8"]), tmp_path / "o", jobs=1)
    assert names(tmp_path / "o") == {"vs_memory.recompute.png"}
    fig = figures[-1]
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_xticklabels()] == ["none", "selective", "full"]
    for line in left.lines:  # every schedule at all three values
        assert list(line.get_xdata()) == [0, 1, 2]
    # Full recompute reruns the forward: every schedule's makespan grows from "none" to "full".
    for line in left.lines:
        y = list(line.get_ydata())
        assert y[2] > y[0]


def test_equal_series_are_named_in_the_legend(tmp_path, figures):
    # Without P2P time, 1F1B and GPipe have the same makespan (M + S - 1)(F + B) and bubble ratio.
    grid = ["pipeline.schedule=1f1b,gpipe", "costs.backward=2,3"]
    run_sweep(QUICK, parse_grid(grid + ["pipeline.stages=4", "pipeline.microbatches=8"]), tmp_path / "o", jobs=1,
              overrides=["comm.p2p=0"])  # fmt: skip
    fig = figures[-1]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["1f1b", "gpipe (= 1f1b)"]
    one, two = fig.axes[0].lines
    assert list(one.get_ydata()) == list(two.get_ydata()) == [33, 44]  # 11 x (1 + 2), 11 x (1 + 3)
    assert one.get_markersize() > two.get_markersize()


def test_same_as_by_hand():
    series = {"a": {1: 0.5, 2: 0.25}, "b": {1: 0.5, 2: 0.25}, "c": {1: 0.5, 2: 0.3}, "d": {1: 0.5}}
    assert draw.same_as(series) == {"b": "a"}


def test_same_as_is_float_noise_not_a_near_miss():
    """Twins differ by rounding alone (1e-15 relative: one ulp-scale step of two sums taken in another order);
    a schedule 0.1% or 1e-9 off another is its own line in the legend."""
    series = {"a": {1: 0.5, 2: 0.25}, "noise": {1: 0.5, 2: 0.25 * (1 + 1e-15)},
              "off_0.1%": {1: 0.5, 2: 0.25 * 1.001}, "off_1e-9": {1: 0.5 * (1 + 1e-9), 2: 0.25}}  # fmt: skip
    assert draw.same_as(series) == {"noise": "a"}


def test_peak_activation_legend_sits_beside_the_axes(tmp_path, figures):
    # s15o: inside the axes at "upper left" the legend covered a line whose peak is at the fewest stages (DualPipe's
    # at 8 stages, deepseek-v3-predicted); beside them it can cover nothing, whatever the data.
    run_sweep(QUICK, parse_grid(["pipeline.stages=2,4", "pipeline.microbatches=8,16"]), tmp_path / "o", jobs=1)
    fig = next(f for f in figures if f.axes and f.axes[0].get_xlabel() == "pipeline stages")
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)  # the caught figure is closed: lay it out again on a canvas of its own
    canvas.draw()
    renderer = canvas.get_renderer()
    legend, plot = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= plot.x1  # wholly right of the plotting area
    assert legend.x1 <= fig.bbox.x1 + 1  # and still on the figure (tight_layout made room)
