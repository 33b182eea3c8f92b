"""The pair view's time axis writes its ticks as the chart above it does (s11e): with the
thousands separator (units.number), so a pair at 4,650 ms does not read 4650 under a chart
reading 4,650."""

from __future__ import annotations

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import canvas, pair

# Every part 100 ms or more: the overlapped pair picked (rank 0's middle one) lies past 1,000 ms.
CHUNK = {"layers": 1, "attn_forward": 100.0, "dispatch_forward": 50.0, "mlp_forward": 200.0, "combine_forward": 75.0,
         "combine_backward": 125.0, "mlp_backward_input": 400.0, "mlp_backward_weight": 250.0,
         "dispatch_backward": 25.0, "attn_backward_input": 300.0, "attn_backward_weight": 150.0}  # fmt: skip


def test_pair_ticks_have_thousands_separators():
    sc = scenario.from_dict({"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "chunk": CHUNK})
    trace = simulation.run(sc).trace
    fig = canvas.new_figure(24, 3)
    pair.draw_pair(fig, trace, pair.pick(trace), (0.1, 0.2, 0.8, 0.6))
    (ax,) = fig.axes
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    assert lo > 1000  # the whole pair past 1,000 ms
    shown = [(t, label.get_text()) for t, label in zip(ax.get_xticks(), ax.get_xticklabels()) if lo <= t <= hi]
    assert len(shown) >= 2
    for tick, text in shown:  # whole ms ticks: 1,234 ms written with its comma, nothing else
        assert tick == int(tick) and text == f"{int(tick):,}", (tick, text)
