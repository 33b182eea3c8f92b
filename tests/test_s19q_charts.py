"""s19q: the charts a new user (s19g) found hard to read on a Qwen3-30B-A3B run on B200, checked by what is drawn.

- memory.png: a rank using 61 GB of a 192 GB device drew its curve flat at the bottom of a 240 GB band.  The device's
  line is now drawn while the fullest rank uses half of the device or more; below, each band stops at 1.25 x the
  fullest rank and the title names the device and the share used (style.memory_axis / device_words).
- report.html: the same rule on its memory chart; the Gantt chart's legend below plotly's toolbar (the toolbar
  covered its right-hand entries); the memory metrics of the table labelled in words.
- plan.png: "device memory" beside a line near the right edge ran into the legend beside the axes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
from helpers import run_uniform  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dualpipe_sim import simulation  # noqa: E402
from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.outputs.plots.memory import BAND, draw_memory, save_memory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QWEN = ROOT / "scenarios" / "validation" / "mz7-qwen3-30b-a3b-b200.toml"
# s19g's walk: DualPipeV, 8 stages on 4 ranks, 32 micro-batches, EP 8, DP 16, B200
WALK = ["pipeline.schedule=dualpipev", "pipeline.stages=8", "pipeline.microbatches=32", "parallel.data=16"]


def dashed_lines(ax):
    return [c for c in ax.collections if c.get_linestyle()[0][1] is not None]


# -- memory.png ------------------------------------------------------------------------------------------------


# 16e9 + 2: twice rank 0's 8 GB + its 1 byte of parameters (the default), exactly half used
@pytest.mark.parametrize("capacity,drawn", [(16e9 + 2, True), (16.1e9, False), (40e9, False)])
def test_memory_png_device_line_only_while_the_fullest_rank_uses_half_of_it(capacity, drawn):
    """1F1B, 4 ranks, 8 micro-batches of 2 GB, no parameters: rank 0 holds min(4, 8) = 4 activations, 8 GB.  At a
    16 GB device (8 GB is half of it) the line is drawn and each band spans 1.25 x 16 = 20 GB; at 16.1 GB or 40 GB
    the band spans 1.25 x 8 = 10 GB, no line, and the title says 8 GB is 50% / 20% of the device."""
    r = run_uniform("1f1b", 4, 8, memory__activation=2e9)
    assert list(r.trace.parameter_bytes) == [1.0] * 4
    fig = Figure(figsize=(10, 5))
    ax, per_unit = draw_memory(fig, r.trace, capacity=capacity)
    title = fig.get_suptitle()
    assert per_unit * BAND == pytest.approx(20e9 if drawn else 10e9)
    assert len(dashed_lines(ax)) == (1 if drawn else 0)
    assert ("red dashed: capacity" in title) == drawn
    assert f"each band 0 to {20 if drawn else 10} GB" in title
    if not drawn:
        share = "50%" if capacity < 20e9 else "20%"  # 8 / 16.1 = 49.7%, 8 / 40 = 20%
        gb = f"{capacity / 1e9:g} GB"
        assert f"device memory {gb}: off the scale (the fullest rank, 8 GB, uses {share} of it)" in title
    # rank 0's curve reaches its 8 GB: 0.8 of its band when the device is off the axis, 0.4 when it is on it
    top = max(y for seg in ax.collections[1].get_segments() for _, y in seg)
    assert top == pytest.approx(BAND * (0.4 if drawn else 0.8))


def test_memory_png_of_the_walk_fills_its_bands_and_names_the_device(monkeypatch, tmp_path):
    """The walk's run: the fullest rank holds memory.total of a 192 GB B200, under half of it.  Each band spans
    1.25 x that; the title (one line more) names the device and stays inside the figure, above the bands."""
    from dualpipe_sim.outputs.plots import memory

    caught = []
    monkeypatch.setattr(memory.canvas, "save", lambda fig, path: caught.append(fig))
    result = simulation.run(scenario.load(QWEN, WALK))
    m = result.metrics
    total, device = m.memory_total(), m.device_memory
    assert device == 192265846784 and total < device / 2
    save_memory(result.trace, m, tmp_path / "m.png")
    fig = caught[0]
    ax = fig.axes[0]
    assert not dashed_lines(ax)
    gb = total / 1e9
    assert f"device memory 192 GB: off the scale (the fullest rank, {gb:.3g} GB, uses {total / device:.0%} of it)" \
        in fig.get_suptitle()
    # each band 0 to 1.25 x the fullest rank, in the title's unit (GB)
    assert f"each band 0 to {1.25 * gb:.3g} GB" in fig.get_suptitle()
    assert fig.get_suptitle().count("\n") + 1 == 6  # title, scale, device, grey, shaded, dot
    # The same run with a device 1.5 x the fullest rank: its line drawn, one title line fewer.  The device's line of
    # words costs the figure 0.2 inch, and the title keeps its gap above the bands (a line is a little under 0.2 inch:
    # 3 pixels closer at 110 dpi, where a line left without room would take 0.2 inch, 22 pixels).
    save_memory(result.trace, m, tmp_path / "m2.png", capacity=1.5 * total)
    drawn = caught[1]
    assert drawn.get_suptitle().count("\n") + 1 == 5
    assert fig.get_size_inches()[1] - drawn.get_size_inches()[1] == pytest.approx(0.2)
    gaps = []
    for f in (fig, drawn):
        renderer = FigureCanvasAgg(f).get_renderer()
        box = f._suptitle.get_window_extent(renderer)
        assert box.y1 <= f.bbox.y1
        gaps.append(box.y0 - f.axes[0].get_window_extent(renderer).y1)
    assert min(gaps) > 15 and gaps[0] == pytest.approx(gaps[1], abs=4.0)  # over 0.14 inch of white, as with 4 lines


# -- report.html -------------------------------------------------------------------------------------------------

pytest.importorskip("plotly")
from dualpipe_sim.outputs.plots.report import MODEBAR_PX, report_html  # noqa: E402


def layouts(page: str) -> dict[str, dict]:
    found = re.findall(r'Plotly\.newPlot\("(\w+)", (?:gantt|\[.*?\]), (\{.*?\}), \{responsive', page, re.S)
    return {name: json.loads(layout) for name, layout in found}


@pytest.fixture(scope="module")
def walk():
    return simulation.run(scenario.load(QWEN, WALK))


def test_report_memory_axis_follows_the_same_rule(walk):
    m = walk.metrics
    total, device = m.memory_total(), m.device_memory
    layout = layouts(report_html([walk]))["memory"]
    assert layout["yaxis"]["range"] == pytest.approx([0, 1.08 * total / 1e9])  # not 1.08 x 192 GB
    (note,) = layout["annotations"]
    assert note["text"].startswith("device memory 192 GB: off the scale") and note["yref"] == "paper"
    assert (note["x"], note["xanchor"], note["y"], note["yanchor"]) == (0, "left", 1, "bottom")  # above, at the left
    # A device 1.5 x the fullest rank (two thirds used): the axis reaches past it, its line and label on it.
    layout = layouts(report_html([walk], capacity=1.5 * total))["memory"]
    assert layout["yaxis"]["range"] == pytest.approx([0, 1.08 * 1.5 * total / 1e9])
    (note,) = layout["annotations"]
    assert note["y"] == pytest.approx(1.5 * total / 1e9) and note["text"].startswith("device memory ")
    assert "off the scale" not in note["text"]


def test_report_gantt_legend_starts_below_the_toolbar_strip(walk):
    layout = layouts(report_html([walk]))["gantt"]
    h = layout["height"]
    assert layout["legend"]["yref"] == "container" and layout["legend"]["yanchor"] == "top"
    assert (1 - layout["legend"]["y"]) * h == pytest.approx(MODEBAR_PX)


def test_report_table_says_what_each_memory_figure_counts(walk):
    page = report_html([walk])
    cells = {re.sub(r"<br>.*", "", k): re.sub(r".*<span class=words>(.*)</span>", r"\1", k) if "<br>" in k else None
             for k in re.findall(r"<tr><th class=name>(.*?)</th>", page)}
    assert "no gradients, optimizer states, buffers or runtime" in cells["peak_memory_bytes"]
    assert cells["memory.total"].startswith("all the rank holds at its peak") and "fit the device" in cells["memory.total"]
    assert cells["makespan"] is None and cells["bubble_ratio"] is None  # only the memory figures carry words
    # and the figures themselves: peak_memory_bytes is parameters + activations, below the whole footprint
    m = walk.metrics
    peak = max(r.peak_activation_bytes + r.parameter_bytes for r in m.per_rank)
    assert peak < m.memory_total()


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = """<script>
const wait = () => { if (!document.body.dataset.opsDrawn) return setTimeout(wait, 50);
  const box = s => { const e = document.querySelector(s); if (!e) return null; const b = e.getBoundingClientRect();
                     return [b.left, b.top, b.right, b.bottom]; };
  document.body.dataset.boxes = JSON.stringify({modebar: box("#gantt .modebar"), legend: box("#gantt .legend"),
      plot: box("#gantt .draglayer .nsewdrag"), memModebar: box("#memory .modebar"), memNote: box("#memory .annotation")});
}; wait();
</script></body>"""


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")
@pytest.mark.parametrize("width", [1600, 1000])
def test_report_toolbar_and_gantt_legend_do_not_overlap_in_chromium(walk, tmp_path, width):
    """Drawn by Chromium: the toolbar's box (present, shown on hover) and the legend's do not intersect; the legend
    ends above the bars; the memory chart's off-scale note does not run under its toolbar either."""
    page = tmp_path / "report.html"
    page.write_text(report_html([walk]).replace("</body>", PROBE), encoding="utf-8")
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                          f"--window-size={width},1600", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=240).stdout  # fmt: skip
    match = re.search(r'data-boxes="([^"]*)"', dom)
    assert match, "the page did not finish drawing"
    boxes = json.loads(match.group(1).replace("&quot;", '"'))

    def apart(a, b):
        return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]

    assert boxes["modebar"] and boxes["legend"] and boxes["memNote"] and boxes["memModebar"]
    assert apart(boxes["modebar"], boxes["legend"])
    assert boxes["legend"][3] <= boxes["plot"][1] + 1  # the legend above the bars
    assert apart(boxes["memModebar"], boxes["memNote"])


# -- plan.png ----------------------------------------------------------------------------------------------------


def plan_of(xs, device, gpus=256):
    rows = [NS(ok=True, tokens_per_second_per_gpu=20000.0 - 30 * x, peak_memory=x * 1e9,
               candidate=NS(schedule=("1f1b", "dualpipev", "interleaved-1f1b-overlap", "zbv")[i % 4]))
            for i, x in enumerate(xs)]  # fmt: skip
    return NS(rows=rows, top=rows[:3], device_memory=device, gpus=gpus)


def drawn_plan(plan, monkeypatch, tmp_path):
    from dualpipe_sim.plan import chart

    figs = []
    monkeypatch.setattr(chart, "save", lambda fig, path: figs.append(fig))
    chart.draw(plan, tmp_path / "plan.png")
    fig = figs[0]
    ax = fig.axes[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    (label,) = [t for t in ax.texts if t.get_text() == "device memory"]
    line = next(x for x in ax.lines if x.get_linestyle() == "--")
    line_x = ax.transData.transform((line.get_xdata()[0], 0))[0]
    return ax, renderer, label.get_window_extent(renderer), line_x


@pytest.mark.parametrize("xs,device,side", [
    ([15 + 1.6 * i for i in range(100)], 192.27e9, "left"),  # s19g's 256-GPU B200 plan: 15-174 GB, the line near the right edge
    ([100 + 0.5 * i for i in range(100)], 110e9, "right"),  # the line in the left half of a 100-150 GB axis
])  # fmt: skip
def test_plan_device_label_stays_inside_the_axes_clear_of_the_legend(xs, device, side, monkeypatch, tmp_path):
    ax, renderer, box, line_x = drawn_plan(plan_of(xs, device), monkeypatch, tmp_path)
    axes = ax.get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    assert axes.x0 <= box.x0 and box.x1 <= axes.x1 and box.y1 <= axes.y1  # inside the axes
    assert box.x1 < legend.x0  # clear of the legend beside them
    assert (box.x1 <= line_x) if side == "left" else (box.x0 >= line_x)  # beside its line, on the side with room


def deepseek_like_plan():
    """DeepSeek-V3's plan.png of session 20 (docs/plan.md, 750 layouts on 2,048 H800s), its geometry: the device's line
    at 85.5 GB, layouts from 25 to 114 GB and 1,410 to 1,925 tokens/s per GPU, the top 10 at 72-85 GB near the top,
    #1 (80.5 GB, 1,925) the highest dot, just left of the line under its label (read off docs/img/plan-deepseek-v3.png)."""
    top = [(80.5, 1925), (82.5, 1905), (77, 1903), (77, 1900), (77, 1878), (77, 1872), (85, 1845), (84, 1840),
           (72, 1836), (76.5, 1835)]  # fmt: skip
    rest = [(25 + (i * 37) % 90, 1410 + (i * 53) % 470) for i in range(300)]
    rows = [NS(ok=True, tokens_per_second_per_gpu=float(y), peak_memory=x * 1e9,
               candidate=NS(schedule=("1f1b-overlap", "dualpipe", "dualpipev", "interleaved-1f1b-overlap")[i % 4]))
            for i, (x, y) in enumerate(top + rest)]  # fmt: skip
    return NS(rows=rows, top=rows[:10], device_memory=85.5e9, gpus=2048)


def right_edge_plan():
    """s19g's B200 case (the line near the right edge) with its top 3 the fastest dots just left of the line, under
    the label's place at the top: no room right of the line (the legend), so the label goes down the line's left."""
    plan = plan_of([15 + 1.6 * i for i in range(100)] + [186.0, 188.0, 190.0], 192.27e9)
    for r in plan.rows[-3:]:
        r.tokens_per_second_per_gpu = 20000.0
    plan.top = plan.rows[-3:]
    return plan


def crossing_leader_plan():
    """The line in the left half (its label right of it) and #1 the fastest dot far right of it, a little lower than
    its number: #1's leader line, from its number at the top left, crosses the label's place at the top, where no number
    or ring is."""
    plan = plan_of([100 + 0.5 * i for i in range(100)] + [145.0], 110e9)
    plan.rows[-1].tokens_per_second_per_gpu = 17030.0
    plan.top = [plan.rows[-1]]
    return plan


@pytest.mark.parametrize("make", [
    deepseek_like_plan,
    right_edge_plan,
    crossing_leader_plan,
    lambda: plan_of([15 + 1.6 * i for i in range(100)], 192.27e9),  # the two cases above, still clear
    lambda: plan_of([100 + 0.5 * i for i in range(100)], 110e9),
], ids=["deepseek-v3", "right-edge", "crossing-leader", "b200-left", "right"])  # fmt: skip
def test_plan_device_label_clears_the_top_k_marks(make, monkeypatch, tmp_path):
    """"device memory" lay on DeepSeek-V3's #1 ring and leader line (s21e): its box now clears every top K number's
    box, ring and leader line, as drawn (the leader read off its arrow patch, the ring off its scatter size), and stays
    inside the axes beside its line."""
    from matplotlib.text import Text

    plan = make()
    ax, renderer, box, line_x = drawn_plan(plan, monkeypatch, tmp_path)
    FigureCanvasAgg(ax.figure).draw()  # the leader lines laid out
    numbers = [t for t in ax.texts if t.get_text().startswith("#")]
    assert len(numbers) == len(plan.top)
    ring = (130**0.5 + 1.1) / 2 * ax.figure.dpi / 72  # a ring's outer radius, pixels: s=130 points squared, lw 1.1
    for t, r in zip(numbers, plan.top):
        assert not box.overlaps(Text.get_window_extent(t, renderer)), t.get_text()  # the number, not its leader's box
        leader = t.arrow_patch.get_transform().transform_path(t.arrow_patch.get_path())
        assert not leader.intersects_bbox(box, filled=False), t.get_text()
        cx, cy = ax.transData.transform((r.peak_memory / 1e9, r.tokens_per_second_per_gpu))
        assert box.x1 < cx - ring or box.x0 > cx + ring or box.y1 < cy - ring or box.y0 > cy + ring, t.get_text()
    axes = ax.get_window_extent(renderer)
    assert axes.x0 <= box.x0 and box.x1 <= axes.x1 and axes.y0 <= box.y0 and box.y1 <= axes.y1
    assert box.x1 <= line_x or box.x0 >= line_x
