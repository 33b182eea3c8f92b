"""Heat strips (plots/overview.py): shares per bin and colours against hand-worked traces,
and legends that list each colour drawn exactly once."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from dualpipe_sim import compare
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots.compare import compare_figure
from dualpipe_sim.outputs.plots.overview import IDLE, LANE_ROWS, band_legend, band_shares, smooth
from dualpipe_sim.outputs.plots.style import COLOURS
from dualpipe_sim.schedules.rules import KIND_CODES
from dualpipe_sim.engine.trace import COMM_DTYPE, COMPUTE_DTYPE, MEMORY_DTYPE, Trace


def trace(rows, ranks=1, stages_on_rank=None):
    """rows: (rank, kind, direction, start, end, action, part)."""
    comp = np.array([(r, KIND_CODES[k], 0, 0, d, s, e, a, False, p) for r, k, d, s, e, a, p in rows],
                    dtype=COMPUTE_DTYPE)  # fmt: skip
    return Trace("hand", 1, 1, ranks, comp, np.empty(0, COMM_DTYPE), np.empty(0, MEMORY_DTYPE),
                 stages_on_rank or [[0]] * ranks, [0.0] * ranks)  # fmt: skip


def pixel(bands, row, col):
    """RGB (0-1) of image row ``row`` of a one-rank trace (0 the comm lane, 1 to LANE_ROWS the compute
    lane bottom to top, then the gap), bin ``col``."""
    return bands.image()[row][col][:3] / 255


LANE = range(1, LANE_ROWS + 1)
TOP, BOTTOM = LANE[len(LANE) // 2:], LANE[:len(LANE) // 2]


def test_busy_shares_per_bin_and_idle_drawn_idle():
    # F on [0, 2), B on [3, 5); bins of 2 ms from 0 to 8, no averaging.
    b = band_shares(trace([(0, "F", 0, 0.0, 2.0, 0, -1), (0, "B", 0, 3.0, 5.0, 1, -1)]), 0.0, 8.0, 4, window=0)
    assert b.compute[0, 0, 0] == pytest.approx([1, 0, 0, 0])  # forward
    assert b.compute[0, 0, 1] == pytest.approx([0, 0.5, 0.5, 0])  # backward: [3, 4) and [4, 5)
    assert b.busy[0] == pytest.approx([1, 0.5, 0.5, 0]) and b.idle()[0] == pytest.approx([0, 0.5, 0.5, 1])
    assert not b.compute[0, 1].any()
    # One family: the whole lane is one strip, as pale as the rank was idle.
    for row in LANE:
        assert pixel(b, row, 0) == pytest.approx(to_rgb(COLOURS[0]["F"]), abs=1 / 255)
        half = (np.array(to_rgb(COLOURS[0]["B"])) + to_rgb(IDLE)) / 2
        assert pixel(b, row, 1) == pytest.approx(half, abs=1 / 255)
        assert pixel(b, row, 3) == pytest.approx(to_rgb(IDLE), abs=1 / 255)
    assert [h.get_label() for h in band_legend([b])] == ["forward", "backward", "idle"]


def test_waiting_for_own_all_to_all_counts_half():
    # One forward op of two components, [0, 1) and [3, 4): computing 1/2 of [0, 4), waiting 1/2.
    b = band_shares(trace([(0, "F", 0, 0.0, 1.0, 0, 0), (0, "F", 0, 3.0, 4.0, 0, 1)]), 0.0, 4.0, 1, window=0)
    assert b.compute[0, 0, 0, 0] == pytest.approx(0.5 + 0.5 / 2)
    assert b.busy[0, 0] == pytest.approx(0.75)
    three_quarters = 0.75 * np.array(to_rgb(COLOURS[0]["F"])) + 0.25 * np.array(to_rgb(IDLE))
    assert pixel(b, LANE_ROWS, 0) == pytest.approx(three_quarters, abs=1 / 255)


def test_two_directions_share_the_lane_never_mixed():
    # Forward of direction 0 on [0, 2), of direction 1 on [2, 4), nothing on [4, 6).
    rows = [(0, "F", 0, 0.0, 2.0, 0, -1), (0, "F", 1, 2.0, 4.0, 1, -1)]
    b = band_shares(trace(rows), 0.0, 6.0, 3, window=0)
    assert b.meaning == "dir"
    assert b.compute[0, 0, 0] == pytest.approx([1, 0, 0]) and b.compute[0, 1, 0] == pytest.approx([0, 1, 0])
    blue, orange, idle = (to_rgb(c) for c in (COLOURS[0]["F"], COLOURS[1]["F"], IDLE))
    for row in LANE:  # one direction in the bin: the whole lane in its colour
        assert pixel(b, row, 0) == pytest.approx(blue, abs=1 / 255)
        assert pixel(b, row, 1) == pytest.approx(orange, abs=1 / 255)
        assert pixel(b, row, 2) == pytest.approx(idle, abs=1 / 255)
    # Both in one bin, half the time each: direction 0 the upper half, direction 1 the lower, at full strength.
    both = band_shares(trace(rows), 0.0, 4.0, 1, window=0)
    assert both.busy[0, 0] == pytest.approx(1.0)
    assert all(pixel(both, row, 0) == pytest.approx(blue, abs=1 / 255) for row in TOP)
    assert all(pixel(both, row, 0) == pytest.approx(orange, abs=1 / 255) for row in BOTTOM)
    assert [h.get_label() for h in band_legend([both])] == ["forward, dir 0", "forward, dir 1"]
    assert [h.get_label() for h in band_legend([b])] == ["forward, dir 0", "forward, dir 1", "idle"]


def test_averaging_window():
    flat = np.full((2, 9), 0.3)
    assert smooth(flat, 2) == pytest.approx(flat)  # a constant stays itself, ends included
    alternating = np.tile([1.0, 0.0], 5)
    assert smooth(alternating, 0) is alternating
    # Box of 3 twice: 1,0,1,0 -> 2/3,1/3,... -> 5/9 where the input was 1, 4/9 where it was 0.
    assert smooth(alternating, 1)[2:-2] == pytest.approx([5 / 9, 4 / 9] * 3)
    # The window is BIN_ACTIONS typical actions: ops of 1 ms alternating F, B on bins of 0.25 ms.
    rows = [(0, "FB"[i % 2], 0, float(i), i + 1.0, i, -1) for i in range(40)]
    b = band_shares(trace(rows), 0.0, 40.0, 160)
    assert b.compute[0, 0, :, 16:-16] == pytest.approx(np.full((2, 128), 0.5), abs=0.01)  # a window from the ends
    assert b.idle()[0] == pytest.approx(0.0, abs=1e-9)


def test_compare_legend_lists_each_colour_once():
    # 8 stages x 200 micro-batches: too dense for boxes, every panel is heat strips.
    s = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 8, "microbatches": 200},
                            "costs": {"forward": 1.0, "backward": 2.0}})  # fmt: skip
    c = compare.compare(s, ["1f1b", "dualpipe", "interleaved-1f1b"])
    fig = compare_figure(c.results)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    both = " (dir 0 / rank's 1st stage)".replace(" (", ", ").rstrip(")")
    later = ", dir 1 / later stages"
    assert labels == [f"forward{both}", f"backward{both}", f"forward{later}", f"backward{later}", "idle"]


def test_compare_box_legend_merges_qualifiers():
    s = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8},
                            "costs": {"forward": 1.0, "backward": 2.0}})  # fmt: skip
    fig = compare_figure(compare.compare(s, ["1f1b", "dualpipe"]).results)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(set(labels))
    assert labels[:2] == ["F forward (dir 0)", "B backward (dir 0)"] and "F forward" not in labels
    # With a V schedule too: blue is both dir 0 and a rank's first stage, named once, op colours first.
    fig = compare_figure(compare.compare(s, ["1f1b", "dualpipe", "zbv"]).results)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(set(labels))
    # ZB-V splits every backward into I and W: no B of its own, so B stays "dir 0" alone; DualPipe
    # splits some (warm-up and cool-down), so I is both.
    assert labels[:3] == ["F forward (dir 0 / 1st stage)", "B backward (dir 0)", "I input-grad (dir 0 / 1st stage)"]
    ops = [i for i, label in enumerate(labels) if label[:2] in ("F ", "B ", "I ", "W ")]
    assert ops == list(range(len(ops))) and "F forward (dir 1 / later stages)" in labels


def test_detail_windows_of_a_hand_worked_1f1b():
    """1F1B, 2 ranks, 8 micro-batches, F = 1, B = 2, no P2P (makespan (8 + 1) x 3 = 27).  Rank 0: F0 0-1, F1 1-2,
    B0 4-6, ..., B6 22-24, B7 25-27; rank 1: F0 1-2, B0 2-4, ..., F7 22-23, B7 23-25.  Two actions a rank: the
    warm-up lasts until the later rank's second ends (rank 1's B0 at 4), the cool-down starts when the first rank
    is down to its last two (rank 0's B6 and rank 1's F7, both at 22)."""
    from dualpipe_sim import simulation
    from dualpipe_sim.outputs.plots.overview import detail_windows

    run = simulation.run(scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 8},
                                             "costs": {"forward": 1.0, "backward": 2.0}}))  # fmt: skip
    assert run.trace.end == pytest.approx(27.0)
    (w0, w1), (c0, c1) = detail_windows(run.trace, 2)
    assert (w0, w1, c0, c1) == pytest.approx((0.0, 4.0, 22.0, 27.0))
