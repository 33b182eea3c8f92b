"""gantt.png's micro-batch labels (s15j): lying down where they fit at the floor size, upright in a
box too narrow for that, and a chart wide enough (up to gantt.MAX_WIDTH_IN) that at 16 x 32 and
8 x 64 every F, B and I box of the deepseek-v3 scenario carries its number.  Checked against the
boxes' geometry, not against pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import COMPUTE_DTYPE
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import canvas, gantt, gantt_file
from dualpipe_sim.outputs.plots.style import op_rows
from dualpipe_sim.schedules.rules import KIND_CODES

ROOT = Path(__file__).resolve().parent.parent
# DejaVu Sans at 1 pt (the outline's box): "31" is 1.104 pt wide and 0.756 pt tall, "7" 0.469 wide.
W31, H31, W7 = 1.10390625, 0.75640625, 0.46875


def test_font_metrics_are_the_ones_worked_with():
    assert gantt.glyph("31")[2:] == pytest.approx((W31, H31)) and gantt.glyph("7")[2] == pytest.approx(W7)


def test_label_fit_by_hand():
    """1 pt per ms, a 30 pt lane.  Lying down a label needs size x width + 3 pt, upright size x height
    + 1.5 pt; the floor is 4.5 pt, the most 8.5 lying down (and 0.45 of the lane: 13.5) and 6 upright.
    "31" in 20 pt: 17 / 1.104 = 15.4 -> 8.5 lying.  In 8 pt: 5 / 1.104 = 4.53 lying.  In 7 pt: 3.62 lying is
    under the floor; upright 5.5 / 0.756 = 7.27 -> 6.0.  In 5 pt: upright 3.5 / 0.756 = 4.63.  In 4 pt:
    2.5 / 0.756 = 3.3: none.  "7" in 7 pt: 4 / 0.469 = 8.53 -> 8.5 lying."""
    rows = np.zeros(6, dtype=COMPUTE_DTYPE)
    rows["part"] = -1
    rows["microbatch"] = [31, 31, 31, 31, 31, 7]
    rows["end"] = [20.0, 8.0, 7.0, 5.0, 4.0, 7.0]
    size, upright = gantt.label_fit(rows, 1.0, 30.0 / gantt.LANE_H)
    assert size == pytest.approx([8.5, 5 / W31, 6.0, 3.5 / H31, 0.0, 8.5])
    assert upright.tolist() == [False, False, True, True, False, False]


def test_label_width_widens_for_the_narrowest_box_up_to_the_cap():
    """1F1B, 2 stages x 3 micro-batches, F = 1 and B = 2 ms: 6 actions a rank, 1.8 in: the 10 in floor.
    With stage 0's forward at 0.02 ms, the labels "0" to "2" need 0.504 x 4.5 + 3 = 5.27 pt in 0.02 ms:
    the axes 5.27 / 0.02 x makespan / 72 in, plus 3.35 in of margins.  At 0.002 ms that is over 45 in: 45."""
    def trace(f0):
        data = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 3},
                "costs": {"forward": [f0, 1.0], "backward": 2.0}}  # fmt: skip
        return simulation.run(scenario.from_dict(data)).trace

    assert gantt.label_width(trace(1.0)) == 10.0
    t = trace(0.02)
    assert gantt.label_width(t) == pytest.approx(3.35 + (0.50390625 * 4.5 + 3) / 0.02 * t.end / 72)
    assert 10 < gantt.label_width(t) < 45
    assert gantt.label_width(trace(0.002)) == 45.0


def _labels(sc: dict, monkeypatch, tmp_path):
    """Draw gantt.png through save_gantt; the labels drawn (centre x, text) and the figure's width."""
    drawn, figs = [], []
    real = gantt.draw_texts

    def spy(ax, x, y, texts, sizes, colours, zorder=4, upright=None):
        if upright is not None:  # the micro-batch labels (the optimizer's "opt" passes none)
            drawn.extend((round(float(a), 6), t) for a, t in zip(x, texts))
        return real(ax, x, y, texts, sizes, colours, zorder, upright)

    monkeypatch.setattr(gantt, "draw_texts", spy)
    monkeypatch.setattr(gantt_file.canvas, "save", lambda fig, path: figs.append(fig))
    result = simulation.run(scenario.load(ROOT / "scenarios" / "deepseek-v3.toml", sc))
    gantt_file.save_gantt(result.trace, result.metrics, tmp_path / "g.png")
    return result.trace, set(drawn), figs[0].get_figwidth()


@pytest.mark.parametrize("overrides", [
    ["pipeline.schedule=dualpipe", "pipeline.microbatches=32"],  # 16 ranks x 32
    ["pipeline.schedule=dualpipev", "pipeline.microbatches=32"],  # 16 stages on 8 ranks x 32 (s15e's report)
    ["pipeline.schedule=1f1b", "pipeline.microbatches=32"],  # 16 x 32, embedding forwards a third of the rest
    ["pipeline.schedule=dualpipe", "pipeline.stages=8", "pipeline.microbatches=64"],  # 8 x 64
])  # fmt: skip
def test_every_forward_and_backward_box_carries_its_number(overrides, monkeypatch, tmp_path):
    trace, drawn, width = _labels(overrides, monkeypatch, tmp_path)
    ops = op_rows(trace.compute)
    main = ops[ops["kind"] != KIND_CODES["W"]]
    assert len(main) == 1024
    missing = [(int(o["rank"]), int(o["microbatch"])) for o in main
               if (round(float((o["start"] + o["end"]) / 2), 6), str(int(o["microbatch"]))) not in drawn]  # fmt: skip
    assert missing == []
    assert width * canvas.DPI <= 4950  # MAX_WIDTH_IN at 110 dpi


def test_a_box_too_narrow_even_upright_goes_unlabelled(monkeypatch, tmp_path):
    """Interleaved 1F1B, 16 stages on 8 ranks x 32: rank 0's stage-0 forwards (28.8 ms of a 21.5 s run, the
    embedding stage's) are 6 px wide at 45 in, under the 7.5 px an upright label needs (4.5 x 0.756 + 1.5 pt):
    unlabelled, as docs/charts.md says; every other F and B box is labelled."""
    trace, drawn, width = _labels(["pipeline.schedule=interleaved-1f1b", "pipeline.microbatches=32"], monkeypatch,
                                  tmp_path)  # fmt: skip
    assert width == gantt.MAX_WIDTH_IN
    ops = op_rows(trace.compute)
    missing = ops[[(round(float((o["start"] + o["end"]) / 2), 6), str(int(o["microbatch"]))) not in drawn
                   for o in ops]]  # fmt: skip
    assert len(missing) == 32 and set(missing["rank"]) == {0} and set(missing["stage"]) == {0}
    assert set(missing["kind"]) == {KIND_CODES["F"]}


def test_compare_widens_like_gantt_for_the_narrowest_panel_box():
    """compare.png draws boxes with draw_gantt, so it takes gantt.png's width rule at the shared scale.
    Panels: 1F1B 2 x 3 with stage 0's forward at 0.03 ms and at 1 ms.  The shared axis spans the longer
    makespan L; the old rule gives 10 in x L / (the short makespan), the labels "0" to "2" need
    (0.504 x 4.5 + 3) pt per 0.03 ms: L x 5.27 / 0.03 / 72 in of axes plus 3.35 in of margins."""
    from dualpipe_sim.outputs.plots.compare import compare_figure

    def run(f0, stages=2):
        data = {"pipeline": {"schedule": "1f1b", "stages": stages, "microbatches": 3},
                "costs": {"forward": [f0] + [1.0] * (stages - 1), "backward": 2.0}}  # fmt: skip
        return simulation.run(scenario.from_dict(data))

    narrow, wide = run(0.03), run(1.0)
    longest = max(narrow.trace.end, wide.trace.end)
    old = 10.0 * longest / narrow.trace.end
    need = 3.35 + (0.50390625 * 4.5 + 3) / 0.03 * longest / 72
    assert old < need < 45
    assert compare_figure([narrow, wide]).get_size_inches()[0] == pytest.approx(need)
    assert compare_figure([wide, wide]).get_size_inches()[0] == pytest.approx(10.0)  # wide boxes: no widening
    # 72 ranks in all: rows of 16 / 72 = 0.222 in, a 0.62 x 0.222 x 72 = 9.9 pt lane holds a number lying down
    # at most 0.45 x 9.9 = 4.46 pt, under the 4.5 pt floor: widening would buy no label, the old rule stays.
    many = run(0.03, stages=72)
    assert compare_figure([many]).get_size_inches()[0] == pytest.approx(10.0)


# DejaVu Sans at 1 pt: "opt" is 1.5597 pt wide, "drain" 2.4303 (the outline's box).
W_OPT, W_DRAIN = 1.5596875, 2.4303125


def test_step_words_are_sized_to_their_box_like_a_number_lying_down():
    """s20d: the optimizer's "opt" and the drain's "drain" fit like a micro-batch number lying down: width less
    the 3 pt pad over the word's width, at most 7 pt and 0.45 of the lane; under the 4.5 pt floor, none.  In a
    30 pt lane "opt" in 14 pt: 11 / 1.5597 = 7.05 -> 7.0; in 13 pt: 10 / 1.5597 = 6.41; in 10.1 pt: 4.55; in 10 pt:
    4.49, none.  "drain" in 14 pt: 11 / 2.4303 = 4.53; in 13 pt: 4.11, none.  A 9 pt lane holds 0.45 x 9 = 4.05: none."""
    assert gantt.glyph("opt")[2] == pytest.approx(W_OPT) and gantt.glyph("drain")[2] == pytest.approx(W_DRAIN)
    w = np.array([14.0, 13.0, 10.1, 10.0])
    assert gantt.step_word_size("opt", w, 30.0) == pytest.approx([7.0, 10 / W_OPT, 7.1 / W_OPT, 0.0])
    assert gantt.step_word_size("drain", w[:2], 30.0) == pytest.approx([11 / W_DRAIN, 0.0])
    assert gantt.step_word_size("opt", w[:1], 9.0) == pytest.approx([0.0])


def test_the_optimizer_at_the_axis_edge_carries_its_word(monkeypatch, tmp_path):
    """s20d's report: the MLPerf GPT-3 scenario as 1F1B on 8 stages x 32 draws rank 0's optimizer (66.3 ms, ending
    the step, at the axis' right edge) 13.9 pt wide (15.85 in of axes for 5,431 ms: 0.210 pt/ms), under the old
    fixed 18 pt: unlabelled while ranks 1-7's 92.7 ms boxes (19.5 pt) were.  "opt" needs 4.5 x 1.56 + 3 = 10.0 pt:
    every rank's optimizer now carries it."""
    words, figs = [], []
    real = gantt.draw_texts

    def spy(ax, x, y, texts, sizes, colours, zorder=4, upright=None):
        if upright is None:  # the step's words
            words.extend((t, float(yy)) for t, yy in zip(texts, y))
        return real(ax, x, y, texts, sizes, colours, zorder, upright)

    monkeypatch.setattr(gantt, "draw_texts", spy)
    monkeypatch.setattr(gantt_file.canvas, "save", lambda fig, path: figs.append(fig))
    sc = scenario.load(ROOT / "scenarios" / "validation" / "mlperf41-gpt3-256.toml",
                       ["pipeline.microbatches=32", "pipeline.schedule=1f1b", "pipeline.stages=8"],
                       unset=["pipeline.chunks_per_rank"])  # fmt: skip
    result = simulation.run(sc)
    gantt_file.save_gantt(result.trace, result.metrics, tmp_path / "g.png")
    opt = sorted(round(-(yy - gantt.LANE_H / 2) / gantt.ROW_H) for t, yy in words if t == "opt")
    assert opt == list(range(8))
