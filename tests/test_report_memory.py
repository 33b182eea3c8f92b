"""report.html and memory.png agree with the metrics (issue 25): the memory chart's lines peak at
``memory.total`` (every term of ``per_rank[].memory``, read generically), the device capacity is a
dashed line, the metrics table is one row per metric; memory.png's title stays inside the figure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.readers.metrics import RankMemory

pytest.importorskip("plotly")
from dualpipe_sim.outputs.plots.report import report_html  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LLAMA = ROOT / "scenarios" / "llama3-70b.toml"
QUICK = ROOT / "scenarios" / "quickstart.toml"


def memory_plot(page: str) -> tuple[list, dict]:
    data, layout = re.search(r'Plotly\.newPlot\("memory", (\[.*?\]), (\{.*?\}), \{responsive', page, re.S).groups()
    return json.loads(data), json.loads(layout)


def test_memory_chart_peaks_at_memory_total_with_the_device_line():
    result = simulation.run(scenario.load(LLAMA))
    traces, layout = memory_plot(report_html([result]))
    m = result.metrics
    assert len(traces) == m.ranks
    for trace, rank in zip(traces, m.per_rank):
        assert max(trace["y"]) == pytest.approx(rank.memory.total / 1e9)  # 22-31 GB here, not parameters + activations
        mem = rank.memory
        assert mem.total > mem.parameters + mem.activations_peak  # gradients and optimizer states count too
    (line,) = layout["shapes"]
    assert line["y0"] == line["y1"] == pytest.approx(81559 * 2**20 / 1e9) and line["line"]["dash"] == "dash"
    # The fullest rank holds 34.8 GB of the H100's 85.5 GB (81559 MiB in 10^9 bytes), 41%, under half (s19q): the axis
    # stops at 1.08 x 34.8 GB, the line stays beyond it, and a note above the chart names the device.
    total = m.memory_total()
    assert round(total / 1e8) == 348
    assert layout["yaxis"]["range"] == pytest.approx([0, 1.08 * total / 1e9])
    assert layout["annotations"][0]["text"] == (f"device memory 85.5 GB: off the scale (the fullest rank, "
                                                f"{total / 1e9:.3g} GB, uses 41% of it)")


@dataclass(frozen=True)
class WithBuffers(RankMemory):
    """A memory term another change may add: read from the dict, it is counted with no change here."""

    buffers: float = 0.0


def test_a_new_memory_term_is_counted_and_named():
    result = simulation.run(scenario.load(LLAMA))
    per_rank = []
    for r in result.metrics.per_rank:
        mem = r.memory
        extra = 3e9
        per_rank.append(replace(r, memory=WithBuffers(mem.parameters, mem.gradients, mem.optimizer,
                                                      mem.activations_peak, mem.total + extra, buffers=extra)))
    result = replace(result, metrics=replace(result.metrics, per_rank=per_rank))
    traces, _ = memory_plot(report_html([result]))
    for trace, rank in zip(traces, per_rank):
        assert max(trace["y"]) == pytest.approx(rank.memory.total / 1e9)
        assert "buffers 3 GB" in trace["hovertemplate"] and "optimizer" in trace["hovertemplate"]


def test_without_a_model_the_chart_is_parameters_and_activations():
    result = simulation.run(scenario.load(QUICK, ["pipeline.stages=4", "pipeline.microbatches=8"]))
    traces, layout = memory_plot(report_html([result]))
    for trace, rank in zip(traces, result.metrics.per_rank):
        assert max(trace["y"]) == pytest.approx((rank.parameter_bytes + rank.peak_activation_bytes) / 1e9)
    assert "shapes" not in layout  # no device capacity known


def test_metrics_table_one_row_per_metric():
    results = [simulation.run(scenario.load(QUICK, ["pipeline.stages=4", "pipeline.microbatches=8",
                                                   f"pipeline.schedule={s}"])) for s in ("1f1b", "dualpipe")]  # fmt: skip
    page = report_html(results)
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", page).group(1)
    assert head == "<th>metric</th><th>1f1b</th><th>dualpipe</th>"
    rows = re.findall(r"<tr><th class=name>([^<]+)</th>((?:<td>[^<]*</td>)+)</tr>", page)
    assert len(rows) > 10 and all(cells.count("<td>") == 2 for _, cells in rows)
    bubble = dict(rows)["bubble_ratio"]
    assert re.findall(r"<td>([^<]*)</td>", bubble) == [f"{r.metrics.bubble_ratio:.1%}" for r in results]


def test_memory_png_title_is_not_clipped(monkeypatch, tmp_path):
    from dualpipe_sim.outputs.plots import canvas, memory

    caught = []
    monkeypatch.setattr(memory.canvas, "save", lambda fig, path: caught.append(fig))
    result = simulation.run(scenario.load(ROOT / "scenarios" / "deepseek-v3.toml",
                                          ["pipeline.stages=4", "pipeline.microbatches=8", "step.grad_sync=100",
                                           "step.optimizer=50", 'parallel.layout="Et*15|t*15|t*15|t*16mL"']))  # fmt: skip
    memory.save_memory(result.trace, result.metrics, tmp_path / "m.png")
    fig = caught[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert "shaded: grad sync" in fig._suptitle.get_text() and "capacity 85.5 GB" in fig._suptitle.get_text()  # H800 = H100: 81559 MiB
    axes_top = fig.axes[0].get_window_extent(renderer).y1
    assert box.y0 >= axes_top  # the title's four lines sit above the bands
