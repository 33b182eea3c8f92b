"""memory.png's time axis writes its ticks as the Gantt chart's does (gantt.time_axis, s11h): with the
thousands separator, so a run of 4,000 ms reads 1,000 ... 4,000, not 1000 ... 4000."""

from __future__ import annotations

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import canvas, memory


def test_memory_ticks_have_thousands_separators():
    # 1F1B, 2 stages x 4 micro-batches of F 100 ms / B 200 ms: the run lasts (4 + 1) x 300 + ... past 1,000 ms.
    sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
                             "costs": {"forward": 100.0, "backward": 200.0}})  # fmt: skip
    trace = simulation.run(sc).trace
    fig = canvas.new_figure(12, 3)
    ax, _ = memory.draw_memory(fig, trace)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    assert hi > 1000
    shown = [(t, label.get_text()) for t, label in zip(ax.get_xticks(), ax.get_xticklabels()) if lo <= t <= hi]
    big = [(t, text) for t, text in shown if t >= 1000]
    assert big, shown
    for tick, text in shown:  # whole ms ticks: 1,000 ms written with its comma
        assert tick == int(tick) and text == f"{int(tick):,}", (tick, text)
    assert ax.get_xlabel() == "time (ms)"
