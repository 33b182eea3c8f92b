"""s19f: the tests that kill the planted bugs (tests/mutations/mutations.toml, ids s19f-...) the suite let through.

Each checks a small case worked by hand, an invariant or the artist data a chart drew, never what the code printed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from dualpipe_sim.engine.trace import COMM_DTYPE, COMPUTE_DTYPE, MEMORY_DTYPE, Trace
from dualpipe_sim.schedules.rules import KIND_CODES

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"


def hand_trace(rows, ranks=1, stages_on_rank=None, comm=(), stages=1):
    """rows: (rank, kind, microbatch, stage, start, end, action, part[, overlapped]); comm: COMM_DTYPE tuples."""
    comp = np.array([(r, KIND_CODES[k], m, s, 0, a, b, act, bool(o[0]) if o else False, p)
                     for r, k, m, s, a, b, act, p, *o in rows], dtype=COMPUTE_DTYPE)  # fmt: skip
    return Trace("hand", stages, 1, ranks, comp, np.array(list(comm), COMM_DTYPE), np.empty(0, MEMORY_DTYPE),
                 stages_on_rank or [[0]] * ranks, [0.0] * ranks)  # fmt: skip


# -- outputs/plots/style.py -------------------------------------------------------------------------------------------


def test_hues_of_a_v_rank_first_stage_zero_later_stage_one():
    # A V on two ranks (rank 0 holds stages 0 and 3, rank 1 stages 1 and 2), one direction: the colour family
    # is 0 on the rank's first (lowest) stage and 1 on its later one.
    from dualpipe_sim.outputs.plots.style import by_chunk, direction_label, hues

    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, -1), (1, "F", 0, 1, 1.0, 2.0, 0, -1), (1, "F", 0, 2, 2.0, 3.0, 1, -1),
                    (0, "F", 0, 3, 3.0, 4.0, 1, -1)], ranks=2, stages_on_rank=[[0, 3], [1, 2]], stages=4)  # fmt: skip
    assert by_chunk(t)
    assert hues(t, t.compute).tolist() == [0, 0, 1, 1]
    assert direction_label(t, {0, 1}, 0) == " (rank's first stage)"
    assert direction_label(t, {0, 1}, 1) == " (rank's later stage)"


def test_a_weight_gradient_component_is_drawn_as_w():
    # A B op run as components (mlp_backward_input 5, mlp_backward_weight 6): the weight part is drawn as W, the
    # input part and a whole B stay B.
    from dualpipe_sim.outputs.plots.style import drawn_kind

    t = hand_trace([(0, "B", 0, 0, 0.0, 1.0, 0, 5), (0, "B", 0, 0, 1.0, 2.0, 0, 6), (0, "B", 1, 0, 2.0, 3.0, 1, -1)])
    assert drawn_kind(t.compute).tolist() == [KIND_CODES["B"], KIND_CODES["W"], KIND_CODES["B"]]


def test_spans_an_overlapped_pair_with_its_all_to_all_stays_overlapped():
    # Action 0 on rank 0: an overlapped F&B pair's two compute rows [0, 2) and [1, 3), then its all-to-all [3, 4)
    # (an a2a row is never marked overlapped itself).  Action 1: a lone op [4, 5).
    from dualpipe_sim.engine.trace import A2A
    from dualpipe_sim.outputs.plots.style import spans

    a2a = (int(A2A), 0, 0, KIND_CODES["F"], 0, 0, 0, 3.0, 4.0, 0, 1)
    t = hand_trace([(0, "F", 0, 0, 0.0, 2.0, 0, 0, True), (0, "B", 1, 0, 1.0, 3.0, 0, 4, True),
                    (0, "F", 2, 0, 4.0, 5.0, 1, -1)], comm=[a2a])  # fmt: skip
    sp = spans(t)
    assert sp["action"].tolist() == [0, 1]
    assert sp["start"].tolist() == [0.0, 4.0] and sp["end"].tolist() == [4.0, 5.0]
    assert sp["overlapped"].tolist() == [True, False]
    assert sp["components"].tolist() == [True, False]


def test_actions_per_rank_counts_actions_not_component_rows():
    # Rank 0: one op of three components (action 0) and one whole op (action 1): 2 actions; rank 1: one op.
    from dualpipe_sim.outputs.plots.style import actions_per_rank

    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, 0), (0, "F", 0, 0, 1.0, 2.0, 0, 1), (0, "F", 0, 0, 2.0, 3.0, 0, 2),
                    (0, "F", 1, 0, 3.0, 4.0, 1, -1), (1, "F", 0, 1, 1.0, 2.0, 0, -1)], ranks=2)  # fmt: skip
    assert actions_per_rank(t) == 2


def test_op_rows_span_a_component_op_from_its_first_start_to_its_last_end():
    # One forward of two components, [0, 1) and [3, 4) (its all-to-all between): one row [0, 4).
    from dualpipe_sim.outputs.plots.style import op_rows

    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, 0), (0, "F", 0, 0, 3.0, 4.0, 0, 2)])
    rows = op_rows(t.compute)
    assert len(rows) == 1 and (rows["start"][0], rows["end"][0]) == (0.0, 4.0)


# -- plan/chart.py ----------------------------------------------------------------------------------------------------


def test_pareto_front_with_ties():
    # (memory, throughput): (1, 1) is beaten by (1, 2) (same memory, faster); (2, 2) by (1, 2) (less memory, as
    # fast); (3, 3) is the fastest.  The front: (1, 2), then (3, 3).
    from dualpipe_sim.plan.chart import fitting_front, pareto

    pts = [(1, 1), (1, 2), (2, 2), (3, 3)]
    assert pareto(pts) == [1, 3]
    # A layout filling the device exactly fits it; one a byte over does not.
    assert fitting_front([(80, 1), (90, 2)], 80) == [0]
    assert fitting_front([(80.000001, 1), (90, 2)], 80) == []


def test_plan_chart_numbers_the_top_k_from_one(tmp_path, monkeypatch):
    # plan.md numbers the top layouts 1..K: the chart's labels must read #1, #2 at the two top rows' points.
    from dualpipe_sim.plan import chart

    def row(schedule, gb, tps):
        return NS(ok=True, tokens_per_second_per_gpu=tps, peak_memory=gb * 1e9, candidate=NS(schedule=schedule))

    rows = [row("1f1b", 40, 900.0), row("dualpipev", 50, 1000.0), row("1f1b", 30, 500.0)]
    plan = NS(rows=rows, top=[rows[1], rows[0]], device_memory=80e9, gpus=8)
    figs = []
    monkeypatch.setattr(chart, "save", lambda fig, path: figs.append(fig))
    chart.draw(plan, tmp_path / "plan.png")
    ax = figs[0].axes[0]
    labels = {a.get_text(): a.xy for a in ax.texts if a.get_text().startswith("#")}
    assert labels == {"#1": (50.0, 1000.0), "#2": (40.0, 900.0)}


# -- plan/simulate.py -------------------------------------------------------------------------------------------------

ONE_F_ONE_B = ("pipeline.schedule=1f1b", "pipeline.stages=2", "pipeline.microbatches=2", "comm.p2p=0")


def test_a_worker_batch_keeps_each_candidate_index_and_its_reason():
    # quickstart's costs (F 1, B 2) on 1F1B, 2 stages x 2 micro-batches, no P2P: makespan (M + S - 1)(F + B) = 9.
    # Candidate 9 breaks pipeline.stages >= 1: an error row naming the key.
    from dualpipe_sim.inputs.scenario import load_raw
    from dualpipe_sim.plan.simulate import _run_batch

    base = load_raw(QUICK)
    done = dict(_run_batch(base, [(5, ONE_F_ONE_B), (9, (*ONE_F_ONE_B, "pipeline.stages=0"))]))
    assert set(done) == {5, 9}
    assert done[5]["status"] == "ok" and done[5]["makespan"] == pytest.approx(9.0)
    assert done[9]["status"] == "error" and done[9]["reason"].startswith("pipeline.stages: ")


# -- sweep/executors.py -----------------------------------------------------------------------------------------------


def test_a_point_whose_worker_fails_is_an_error_row_not_dropped():
    # Two points on two local processes whose work cannot reach the workers (a base no process can be sent:
    # pickling fails for each, as it would for a worker that dies): both come back, each an error row naming the cause.
    from dualpipe_sim.inputs.scenario import load_raw
    from dualpipe_sim.sweep.executors import LocalExecutor
    from dualpipe_sim.sweep.grid import Point

    base = {**load_raw(QUICK), "unsendable": lambda: 0}
    points = [Point(0, ("pipeline.microbatches=20",), (20,)), Point(1, ("pipeline.microbatches=24",), (24,))]
    got = sorted((p.index, f["status"], f["reason"]) for p, f in LocalExecutor(2).run(base, points))
    assert [(i, s) for i, s, _ in got] == [(0, "error"), (1, "error")]
    # "worker failed: " then the exception's type and words (the lambda is a local object: AttributeError).
    assert all(r.startswith("worker failed: AttributeError: Can't pickle local object") for _, _, r in got), got


# -- outputs/plots/overview.py (the utilisation bands) ----------------------------------------------------------------


def test_bands_count_input_and_weight_gradients_as_backward_and_the_legend_colours_match():
    # F on [0, 2), I on [2, 4), W on [4, 6), bins of 2 ms, no averaging: bin 0 all forward, bins 1 and 2 all
    # backward (a split backward's halves are backward: the strip's dark colour).
    from matplotlib.colors import to_rgba

    from dualpipe_sim.outputs.plots.overview import band_legend, band_shares
    from dualpipe_sim.outputs.plots.style import COLOURS

    t = hand_trace([(0, "F", 0, 0, 0.0, 2.0, 0, -1), (0, "I", 0, 0, 2.0, 4.0, 1, -1), (0, "W", 0, 0, 4.0, 6.0, 2, -1)])
    b = band_shares(t, 0.0, 6.0, 3, window=0)
    assert b.compute[0, 0, 0] == pytest.approx([1, 0, 0])  # forward
    assert b.compute[0, 0, 1] == pytest.approx([0, 1, 1])  # backward
    legend = {h.get_label(): h.get_facecolor() for h in band_legend([b])}
    assert legend == {"forward": to_rgba(COLOURS[0]["F"]), "backward": to_rgba(COLOURS[0]["B"])}


# -- outputs/plots/sweep.py -------------------------------------------------------------------------------------------


@pytest.fixture
def sweep_figures(monkeypatch):
    from dualpipe_sim.outputs.plots import sweep as draw

    caught, real = [], draw.plt.close

    def close(fig=None):
        caught.append(fig)
        return real(fig)

    monkeypatch.setattr(draw.plt, "close", close)
    return caught


def luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0-1 channels)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_heatmap_numbers_contrast_with_their_cells(tmp_path, sweep_figures):
    # Four cells from 10% to 60% on viridis (dark purple to green-yellow): each number is drawn in whichever of
    # white and black contrasts more with its cell (WCAG 2 contrast ratio).
    from matplotlib import colors

    from dualpipe_sim.outputs.plots import sweep as draw

    bubble = {("1f1b", 2, 4): 0.1, ("1f1b", 2, 8): 0.2, ("1f1b", 4, 4): 0.6, ("1f1b", 4, 8): 0.45}
    view = draw.SweepView(["1f1b"], [2, 4], [4, 8], bubble, {}, "")
    draw.bubble_heatmap(view, tmp_path / "h.png")
    ax = sweep_figures[0].axes[0]
    cmap, vmax = draw.plt.get_cmap("viridis"), max(bubble.values())
    texts = [t for t in ax.texts if t.get_text().endswith("%")]
    assert sorted(t.get_text() for t in texts) == ["10%", "20%", "45%", "60%"]
    for t in texts:
        cell = luminance(cmap(float(t.get_text()[:-1]) / 100 / vmax))
        white, black = 1.05 / (cell + 0.05), (cell + 0.05) / 0.05
        assert colors.to_rgb(t.get_color()) == ((1.0, 1.0, 1.0) if white > black else (0.0, 0.0, 0.0)), t.get_text()


def test_peak_chart_draws_the_largest_peak_over_the_micro_batch_counts(tmp_path, sweep_figures):
    # 1F1B at 2 stages peaks at 1 GB (4 micro-batches) and 2 GB (8): the chart's point at 2 stages is 2 GB.
    from dualpipe_sim.outputs.plots import sweep as draw

    peaks = {("1f1b", 2, 4): 1e9, ("1f1b", 2, 8): 2e9, ("1f1b", 4, 4): 3e9}
    view = draw.SweepView(["1f1b"], [2, 4], [4, 8], {}, peaks, "")
    draw.peak_activation_vs_stages(view, tmp_path / "p.png")
    (line,) = [x for x in sweep_figures[0].axes[0].lines if len(x.get_xdata())]
    assert list(zip(line.get_xdata(), line.get_ydata())) == [(2, 2e9), (4, 3e9)]


def test_only_the_last_schedule_marker_is_filled():
    # Earlier schedules get larger hollow markers so an equal later series shows inside them; the last, smallest
    # one is filled (all hollow, two equal series would read as rings with nothing in them).
    from dualpipe_sim.outputs.plots.sweep import SweepView

    v = SweepView(["1f1b", "zbv"], [4], [8], {}, {}, "")
    assert v.style("1f1b")["mfc"] == "none"
    assert v.style("zbv")["mfc"] == v.colour("zbv")


# -- actions.py -------------------------------------------------------------------------------------------------------


def test_skipped_communication_actions_are_counted_per_kind():
    # Rank 0 sends activations 0 and 1 (two SEND_F), rank 1 receives one and sends one gradient: 4 skipped, by kind.
    from dualpipe_sim.actions import ignored_note, parse_actions

    s = parse_actions("0F0 0SEND_F0 0SEND_F1 0F1 0B0 0B1\n1RECV_F0 1F0 1B0 1F1 1B1 1SEND_B0\n", "x")
    assert s.meta["ignored"] == {"SEND_F": 2, "RECV_F": 1, "SEND_B": 1}
    assert ignored_note(s).startswith("skipped 4 communication actions (1 RECV_F, 1 SEND_B, 2 SEND_F)")


@pytest.mark.parametrize("text, words", [
    ("# dualpipe-sim: schedule=1f1b stages=0 microbatches=1\n0F0 0B0\n", "f.txt: line 1: header stages=0: must be a "
                                                                         "whole number >= 1"),
    ("[0, 1]", 'f.txt: expected an object with a "ranks" list'),
    ("  [{\"ranks\": []}]", 'f.txt: expected an object with a "ranks" list'),
])  # fmt: skip
def test_schedule_files_refused_with_the_rule(text, words):
    # A JSON array is JSON (told apart by content), not action strings that fail on a bad token '[0,'.
    from dualpipe_sim.actions import read_schedule
    from dualpipe_sim.schedules.ir import ScheduleError

    with pytest.raises(ScheduleError) as exc:
        read_schedule(text, "f.txt")
    assert str(exc.value) == words


# -- model/report.py (`model --explain`) ------------------------------------------------------------------------------


def test_explain_by_stage_runs_of_equal_values():
    from dualpipe_sim.model.report import _by_stage, _ms

    assert _by_stage("ms", [1.2, 0.98, 0.98, 1.5], _ms) == "ms by stage 0: 1.2, 1-2: 0.98, 3: 1.5"
    assert _by_stage("ms", [2.0, 2.0, 2.0], _ms) == "ms 2, every stage"


def test_explain_kernel_table_bounds_largest_share_first():
    # 3 ms compute-bound, 1 ms memory-bound: "compute 75%, memory 25%"; forward 3 ms, backward input 1 ms.
    from dualpipe_sim.model.kernels import Kernel
    from dualpipe_sim.model.report import kernel_lines

    rows = [Kernel("qkv", "attn_forward", "gemm", "a", 1e9, 1e6, 3e-3, "compute"),
            Kernel("norm", "attn_backward_input", "memory", "b", 0.0, 1e6, 1e-3, "memory")]  # fmt: skip
    lines = kernel_lines("dense layer", rows)
    assert lines[0] == "  dense layer: 2 kernels"
    assert lines[-1] == ("    forward 3 ms, backward input 1 ms, backward weight 0 ms; "
                         "time bound by compute 75%, memory 25%")


def test_explain_names_the_first_layer_of_each_kind():
    # Two dense layers, then three MoE layers: the tables are of layer 0 and layer 2.
    from dualpipe_sim.model.report import layer_kinds

    cfg = NS(num_layers=5, layer_kind=lambda i: (i >= 2, False, 0), sliding_layers=())
    assert layer_kinds(cfg) == [("dense layer", 0), ("moe layer", 2)]


# -- inputs/kineto.py -------------------------------------------------------------------------------------------------


def test_a_zero_length_kernel_is_read_not_refused():
    # A 0 us GPU event (an empty memset, a kernel under the clock's resolution) is a valid dur >= 0: read as a
    # kernel starting and ending 0.01 ms after the first.
    from dualpipe_sim.inputs.kineto import DEEPSEEK_NAMES, attribute

    t0 = 1_700_000_000_000_000.0

    def launched(corr, cpu_ts, gpu_ts, dur, name):
        return [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": cpu_ts,
                 "dur": 1, "args": {"correlation": corr}},
                {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": gpu_ts, "dur": dur,
                 "args": {"stream": 7, "correlation": corr}}]  # fmt: skip

    events = [{"ph": "X", "cat": "user_annotation", "name": "attn(F)", "pid": 1, "tid": 1, "ts": t0, "dur": 50},
              *launched(1, t0 + 1, t0 + 10, 5, "a"), *launched(2, t0 + 2, t0 + 20, 0, "empty")]  # fmt: skip
    got = {k.name: (k.start, k.end) for k in attribute(events, DEEPSEEK_NAMES).kernels}
    assert got == {"a": pytest.approx((0.0, 0.005)), "empty": pytest.approx((0.010, 0.010))}


# -- cli.py -----------------------------------------------------------------------------------------------------------


def test_plots_all_without_plotly_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    # --plots all writes report.html too: without plotly, one line and nothing written, as for --plots html.
    import importlib.util

    from dualpipe_sim.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    out = tmp_path / "out"
    assert main(["run", str(QUICK), "--plots", "all", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: --plots all: report.html needs plotly: pip install 'dualpipe-sim[html]'\n"
    assert not out.exists()


def test_memory_warning_names_the_rank_most_over_the_device():
    # An 80 GB device; ranks at 70, 95 and 85 GB: 2 of 3 over, the worst rank 1 at 95 GB.
    from dualpipe_sim.cli import memory_warning

    per_rank = [NS(rank=r, memory=NS(total=gb * 1e9)) for r, gb in enumerate((70, 95, 85))]
    line = memory_warning(NS(device_memory=80e9, ranks=3, per_rank=per_rank))
    assert line == "warning: 2 of 3 ranks exceed the device memory (80 GB): rank 1 needs 95 GB"


# -- outputs/plots/gantt.py -------------------------------------------------------------------------------------------


def test_a_box_that_began_before_a_window_shows_in_it():
    # Boxes [0, 1), [1, 2), [3, 4); the window 0.5 to 3: the first (begun before 0.5) and second show, the third
    # (starting at the window's end) does not.
    from dualpipe_sim.outputs.plots.gantt import _window

    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, -1), (0, "F", 1, 0, 1.0, 2.0, 1, -1), (0, "F", 2, 0, 3.0, 4.0, 2, -1)])
    assert _window(t.compute, 0.5, 3.0)["microbatch"].tolist() == [0, 1]


def test_a_p2p_send_is_drawn_on_the_sender_row():
    # Rank 0 sends micro-batch 0's activation to rank 1 over [1, 1.5): its bar sits in rank 0's communication lane,
    # y from -COMM_H (rank 0's row starts at 0) to -COMM_H + 0.9 COMM_H; nothing in rank 1's.
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    from dualpipe_sim.engine.trace import P2P
    from dualpipe_sim.outputs.plots.gantt import COMM_COLOURS, COMM_H, draw_gantt

    send = (int(P2P), 0, 1, 0, 0, 0, 0, 1.0, 1.5, 0, -1)
    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, -1), (1, "F", 0, 1, 1.5, 2.5, 0, -1)], ranks=2,
                   stages_on_rank=[[0], [1]], comm=[send], stages=2)  # fmt: skip
    fig = Figure(figsize=(6, 3))
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))
    draw_gantt(ax, t, legend=False)
    grey = [c for c in ax.collections if len(c.get_facecolors()) == 1
            and tuple(c.get_facecolors()[0][:3]) == pytest.approx(to_rgba(COMM_COLOURS["p2p"])[:3])]  # fmt: skip
    (bar,) = grey
    ys = np.concatenate([p.vertices[:, 1] for p in bar.get_paths()])
    xs = np.concatenate([p.vertices[:, 0] for p in bar.get_paths()])
    assert (xs.min(), xs.max()) == (1.0, 1.5)
    assert (ys.min(), ys.max()) == pytest.approx((-COMM_H, -COMM_H + 0.9 * COMM_H))


# -- outputs/plots/report.py (report.html) ----------------------------------------------------------------------------


def test_report_bars_run_from_start_for_their_length_and_p2p_hover_names_both_ranks():
    # plotly's horizontal bar spans base .. base + x: F0 on rank 0 [2, 3) is base 2, length 1; rank 1's F0
    # [4, 6) base 4, length 2.  Rank 0's send to rank 1 [3, 4) says "rank 0 -> 1".
    from dualpipe_sim.engine.trace import P2P
    from dualpipe_sim.outputs.plots.report import gantt_traces

    send = (int(P2P), 0, 1, 0, 0, 0, 0, 3.0, 4.0, 0, -1)
    t = hand_trace([(0, "F", 0, 0, 2.0, 3.0, 0, -1), (1, "F", 0, 1, 4.0, 6.0, 0, -1)], ranks=2,
                   stages_on_rank=[[0], [1]], comm=[send], stages=2)  # fmt: skip
    traces, _ = gantt_traces(t, "run", 0)
    (ops,) = [x for x in traces if x["meta"] == "op"]
    assert sorted(zip(ops["base"], ops["x"])) == [(2.0, 1.0), (4.0, 2.0)]
    (p2p,) = [x for x in traces if x["name"] == "P2P send"]
    assert (p2p["base"], p2p["x"]) == ([3.0], [1.0])
    assert "P2P send rank 0 -> 1, micro-batch 0" in p2p["hovertext"][0]


# -- model/deferred_wgrad.py ------------------------------------------------------------------------------------------


def test_a_deferral_limit_past_the_micro_batches_defers_and_drains_only_those_that_ran(tmp_path):
    # wgrad_deferral_limit 8 with 4 micro-batches: Megatron-core buffers the 4 inputs there are, so the drain runs
    # 4 GEMMs (drain of 4), not 8.
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.model import deferred_wgrad
    from helpers import TINY_LLAMA_MODEL

    path = tmp_path / "t.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + TINY_LLAMA_MODEL
                    + '[parallel]\ntensor = 2\nsequence_parallel = true\n[hardware]\npreset = "H100"\n')  # fmt: skip
    d = scenario.load(path).derived()
    st = d.setup
    f = deferred_wgrad.figures(d, 8, 4)
    four, eight = (deferred_wgrad.drain_ms(st.cfg, st.rates, st.layout, n) for n in (4, 8))
    assert four < eight
    assert (f.count, f.drain) == (4, pytest.approx(four))


def test_box_labels_take_the_colour_that_contrasts_more():
    # gantt.png writes a box's micro-batch number white on the kinds in DARK, black on the others: each must be
    # the one of the two with the higher WCAG 2 contrast ratio against the box's colour (small text: the better
    # of the two, at least 4.5:1 where either reaches it).  Worked: the input-gradient blue #4f8fc9 has luminance
    # 0.256, white on it 3.4:1 and black 6.1:1; its orange #ec8a3c 0.363, white 2.5:1, black 8.3:1: black.
    from matplotlib.colors import to_rgb

    from dualpipe_sim.outputs.plots.style import COLOURS, DARK

    for family in COLOURS.values():
        for kind, colour in family.items():
            cell = luminance(to_rgb(colour))
            white, black = 1.05 / (cell + 0.05), (cell + 0.05) / 0.05
            assert (kind in DARK) == (white > black), (kind, colour, round(white, 2), round(black, 2))


def test_overview_labels_sit_outside_their_windows_pointing_in():
    # One rank, 8 actions of 1 ms: the warm-up window runs to the end of the 6th action (6 ms), the cool-down from
    # the start of the 6th-last action (2 ms) to 8.  "warm-up <-" starts at 6 and reads rightwards from there
    # (its arrow points back into its window); "cool-down ->" ends at 2.
    from matplotlib.pyplot import close

    from dualpipe_sim.outputs.plots.overview import overview_figure

    t = hand_trace([(0, "F", i, 0, float(i), float(i + 1), i, -1) for i in range(8)])
    fig = overview_figure(t, "hand")
    try:
        texts = {x.get_text().strip(): (x.get_position()[0], x.get_horizontalalignment()) for x in fig.axes[0].texts}
    finally:
        close(fig)
    assert texts == {"warm-up \u2190": (6.0, "left"), "cool-down \u2192": (2.0, "right")}


# -- outputs/exports/chrome.py ----------------------------------------------------------------------------------------


def test_chrome_step_slices_carry_their_stage_and_threads_their_names(tmp_path):
    # Two ranks holding stage 0's two copies (DualPipe's pair): after the pipeline, rank 0's grad sync of stage 0
    # [2, 3), the pair's cross-copy sync of stage 0 [3, 4) on both ranks (each naming the other), rank 0's optimizer
    # [4, 5).  Every sync slice says its stage, the cross-copy its partner; each rank's sync threads are named.
    import json

    from dualpipe_sim.engine.trace import CROSS_COPY, GRAD_SYNC, OPTIMIZER, STEP_DTYPE
    from dualpipe_sim.outputs.exports import chrome

    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, -1), (1, "F", 0, 0, 1.0, 2.0, 0, -1)], ranks=2,
                   stages_on_rank=[[0], [0]])  # fmt: skip
    t.step = np.array([(GRAD_SYNC, 0, 0, 0, 2.0, 3.0), (CROSS_COPY, 0, 1, 0, 3.0, 4.0), (CROSS_COPY, 1, 0, 0, 3.0, 4.0),
                       (OPTIMIZER, 0, 0, 0, 4.0, 5.0)], STEP_DTYPE)  # fmt: skip
    doc = chrome.chrome_trace(t)
    path = tmp_path / "t.json"
    chrome.write_chrome_trace(t, path)
    assert json.loads(path.read_text()) == doc
    events = doc["traceEvents"]
    slices = sorted((e["cat"], e["pid"], e["tid"], e["ts"], e["dur"], json.dumps(e["args"], sort_keys=True))
                    for e in events if e.get("cat") in ("grad_sync", "cross_copy_sync", "optimizer"))  # fmt: skip
    assert slices == [("cross_copy_sync", 0, 401, 3000, 1000, '{"stage": 0, "with_rank": 1}'),
                      ("cross_copy_sync", 1, 401, 3000, 1000, '{"stage": 0, "with_rank": 0}'),
                      ("grad_sync", 0, 301, 2000, 1000, '{"stage": 0}'),
                      ("optimizer", 0, 1, 4000, 1000, "{}")]  # fmt: skip
    names = {(e["pid"], e["tid"], e["args"]["name"]) for e in events if e.get("name") == "thread_name"}
    assert {(0, 301, "grad sync"), (0, 401, "cross-copy sync"), (1, 401, "cross-copy sync")} <= names
    assert (1, 301, "grad sync") not in names  # rank 1 runs no grad sync here


def test_chrome_flow_arrow_runs_from_the_send_middle_to_the_consumer_middle(tmp_path):
    # Rank 0's F0 [0, 1) sends its activation [1, 1.5) to rank 1, whose F0 [1.5, 2.5) (action 0) reads it: the
    # arrow starts mid-send (1250 us) and ends mid-consumer (2000 us), inside the slice it binds to ("bp": "e").
    import json

    from dualpipe_sim.engine.trace import P2P, consumer_rows
    from dualpipe_sim.outputs.exports import chrome

    send = (int(P2P), 0, 1, 0, 0, 0, 0, 1.0, 1.5, 0, -1)
    t = hand_trace([(0, "F", 0, 0, 0.0, 1.0, 0, -1), (1, "F", 0, 1, 1.5, 2.5, 0, -1)], ranks=2,
                   stages_on_rank=[[0], [1]], comm=[send], stages=2)  # fmt: skip
    t.consumer = consumer_rows(t.compute, t.comm)
    assert t.consumer.tolist() == [1]
    doc = chrome.chrome_trace(t)
    flows = sorted((e["ph"], e["pid"], e["ts"]) for e in doc["traceEvents"] if e.get("cat") == "p2p-flow")
    assert flows == [("f", 1, 2000), ("s", 0, 1250)]
    path = tmp_path / "t.json"
    chrome.write_chrome_trace(t, path)
    assert json.loads(path.read_text()) == doc
