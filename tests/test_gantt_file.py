"""gantt.png's composition (outputs/plots/gantt_file.py): box by box while boxes can be read, heat strips past
that, and a component run's pair view under the chart, never over it.

Counted by hand: 1F1B runs an F and a B per micro-batch on every rank, 2m actions a rank.  At m = 3 that is 6
actions on a chart at least 10 in wide (about 900 px to plot): 150 px a box.  At m = 600, 1,200 actions on the
widest chart, 30 in (about 3,000 px): 2.5 px a box, under gantt.MIN_BOX_PX (8)."""

from __future__ import annotations

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import gantt, gantt_file
from test_pair_view import CHUNK


def _run(microbatches: int, **more):
    sc = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": microbatches},
          "costs": {"forward": 1.0, "backward": 2.0}, **more}  # fmt: skip
    return simulation.run(scenario.from_dict(sc))


def _drawn(monkeypatch, result, tmp_path) -> tuple[list[str], object]:
    """Which views save_gantt drew ("boxes", "bands"), and the figure it saved."""
    views, figs = [], []
    monkeypatch.setattr(gantt_file, "draw_gantt", lambda ax, trace, **kw: (views.append("boxes"),
                                                                          gantt.draw_gantt(ax, trace, **kw))[1])
    real = gantt_file.overview.overview_figure
    monkeypatch.setattr(gantt_file.overview, "overview_figure", lambda *a: (views.append("bands"), real(*a))[1])
    monkeypatch.setattr(gantt_file.canvas, "save", lambda fig, path: figs.append(fig))
    gantt_file.save_gantt(result.trace, result.metrics, tmp_path / "gantt.png")
    return views, figs[0]


@pytest.mark.parametrize("microbatches, view", [(3, "boxes"), (600, "bands")])
def test_boxes_while_they_can_be_read_else_heat_strips(monkeypatch, tmp_path, microbatches, view):
    result = _run(microbatches)
    assert gantt.actions_per_rank(result.trace) == 2 * microbatches
    views, _ = _drawn(monkeypatch, result, tmp_path)
    assert views[0] == view  # the overview draws its warm-up and cool-down box by box after its bands


def test_the_pair_view_sits_under_the_gantt_chart(monkeypatch, tmp_path):
    sc = scenario.from_dict({"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "chunk": CHUNK})
    views, fig = _drawn(monkeypatch, simulation.run(sc), tmp_path)
    assert views == ["boxes"]
    chart, pair_view = fig.axes[0].get_position(), fig.axes[1].get_position()
    assert pair_view.y1 <= chart.y0  # the pair view's top at or below the chart's bottom: nothing drawn over ranks
    assert 0 < pair_view.y0 and chart.y1 < 1
