"""The pair view under gantt.png (outputs/plots/pair.py) for a component-costed run: one
overlapped F&B pair drawn part by part (s10i).  The boxes are checked against a pair worked
by hand from the typed [chunk] figures and DeepSeek's order of a layer pair's parts; the
figure's artists against those boxes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import canvas, pair
from dualpipe_sim.outputs.plots.style import COLOURS

# One layer, every part a different length (ms), so a box cannot pass for another.
CHUNK = {"layers": 1, "attn_forward": 1.0, "dispatch_forward": 0.5, "mlp_forward": 2.0, "combine_forward": 0.75,
         "combine_backward": 1.25, "mlp_backward_input": 4.0, "mlp_backward_weight": 2.5, "dispatch_backward": 0.25,
         "attn_backward_input": 3.0, "attn_backward_weight": 1.5}  # fmt: skip
PURPLE = {"F": "#c9b3e6", "B": "#6a3d9a"}  # the view's all-to-all colours: pale forward, dark backward

# The pair worked by hand, times from the pair's start (compute and all-to-all are one
# channel each; DeepSeek's order: compute F attn, B mlp, B mlp W, F mlp, B attn, B attn W;
# all-to-all B combine, F dispatch, B dispatch, F combine; a part waits for its op's
# previous part and for its channel):
#   B combine 0-1.25 | F attn 0-1 | F dispatch waits for the channel: 1.25-1.75
#   B mlp 1.25-5.25 (after its combine) | B mlp W 5.25-7.75 | B dispatch 5.25-5.5 (after B mlp)
#   F mlp 7.75-9.75 (compute free) | F combine 9.75-10.5 | B attn 9.75-12.75 | B attn W 12.75-14.25
# (lane, name, start, end, all-to-all?)
BY_HAND = [
    ("F", "attn", 0.0, 1.0, False), ("F", "mlp", 7.75, 9.75, False),
    ("F", "dispatch", 1.25, 1.75, True), ("F", "combine", 9.75, 10.5, True),
    ("B", "mlp", 1.25, 5.25, False), ("B", "mlp W", 5.25, 7.75, False), ("B", "attn", 9.75, 12.75, False),
    ("B", "attn W", 12.75, 14.25, False), ("B", "combine", 0.0, 1.25, True), ("B", "dispatch", 5.25, 5.5, True),
]  # fmt: skip


@pytest.fixture(scope="module")
def trace():
    sc = scenario.from_dict({"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "chunk": CHUNK})
    return simulation.run(sc).trace


@pytest.fixture(scope="module")
def shown(trace):
    which = pair.pick(trace, 0)  # the user's choice (run --pair-rank 0): rank 0 runs both directions' pairs
    rows, a2a, boxes = pair.pair_boxes(trace, which)
    return which, rows, a2a, boxes


def lane_of(y: float) -> str:
    return "F" if y >= 1.0 else "B"


def test_pick_takes_the_middle_overlapped_pair_of_its_rank(trace, shown):
    comp = trace.compute
    for rank, which in ((0, shown[0]), (1, pair.pick(trace))):
        mine = comp[(comp["rank"] == rank) & comp["overlapped"] & (comp["part"] >= 0)]
        actions = sorted(set(int(a) for a in mine["action"]))
        assert len(actions) >= 3 and which == (rank, actions[len(actions) // 2])


def test_the_typical_rank_is_the_middle_one_without_the_first_or_last_stage(trace):
    """DualPipe on 4 ranks: rank r holds stages r and 3 - r, so ranks 0 and 3 hold stage 0 (the
    embedding) and stage 3 (the head); of ranks 1 and 2, equally near the middle 1.5, the lower."""
    assert [sorted(s) for s in trace.stages_on_rank] == [[0, 3], [1, 2], [1, 2], [0, 3]]
    assert pair.pick(trace)[0] == 1
    assert pair.typical_rank(trace, [0, 2, 3]) == 2  # rank 1 has no pair: the other ordinary rank
    assert pair.typical_rank(trace, [0, 3]) == 0  # only first/last-stage ranks: the nearer, the lower on a tie
    assert pair.typical_rank(trace, []) is None


def test_typical_rank_on_dualpipev_and_a_rank_without_pairs():
    """DualPipeV, 16 stages on 8 ranks: rank r holds stages r and 15 - r; rank 0 holds 0 and 15.  Middle 3.5:
    ranks 3 and 4 tie, the lower, 3.  A rank outside the run, or one with no overlapped pair, is refused
    with the reason."""
    sc = scenario.from_dict({"pipeline": {"schedule": "dualpipev", "stages": 16, "microbatches": 16}, "chunk": CHUNK})
    trace = simulation.run(sc).trace
    assert [sorted(s) for s in trace.stages_on_rank] == [[r, 15 - r] for r in range(8)]
    assert pair.pick(trace)[0] == 3
    assert pair.pick(trace, 6)[0] == 6
    with pytest.raises(ValueError, match="^8 is not a rank of this run \\(0 to 7\\)$"):
        pair.pick(trace, 8)
    one_f_one_b = simulation.run(scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
                                                     "chunk": CHUNK})).trace  # fmt: skip
    assert pair.pick(one_f_one_b) is None
    with pytest.raises(ValueError, match="^rank 1 runs no overlapped forward"):
        pair.pick(one_f_one_b, 1)


def test_a_middle_rank_with_the_head_gives_way_to_an_ordinary_one():
    """A schedule (--schedule-file) may put the first or the last stage on a middle rank: rank 1 of 3
    holds the last stage 5, rank 0 the first: rank 2 (stages 2 and 3) is the only ordinary one."""
    from types import SimpleNamespace

    fake = SimpleNamespace(ranks=3, stages_on_rank=[[0, 4], [1, 5], [2, 3]])
    assert pair.typical_rank(fake, [0, 1, 2]) == 2
    assert pair.typical_rank(SimpleNamespace(ranks=3, stages_on_rank=[[1, 4], [0, 5], [2, 3]]), [0, 1, 2]) == 0


def test_the_boxes_are_the_pair_worked_by_hand(shown):
    _, rows, a2a, b = shown
    assert len(b.x0) == len(rows) + len(a2a) == len(BY_HAND) == 10  # 6 compute parts, 4 all-to-all
    t0 = min(b.x0)
    got = sorted((lane_of(y), t, round(x0 - t0, 9), round(x1 - t0, 9), y < int(y) + 0.4)
                 for x0, x1, y, t in zip(b.x0, b.x1, b.y, b.texts))  # fmt: skip
    assert got == sorted(BY_HAND)


def test_each_box_is_its_trace_interval(shown):
    _, rows, a2a, b = shown
    both = list(rows) + list(a2a)
    assert [float(r["start"]) for r in both] == b.x0 and [float(r["end"]) for r in both] == b.x1


def test_lanes_do_not_overlap(shown):
    """Forward parts in 1..2, backward in 0..1; in a lane the all-to-all strip lies under the compute strip."""
    _, _, _, b = shown
    for y, h, text in zip(b.y, b.h, b.texts):
        base = 1.0 if lane_of(y) == "F" else 0.0
        assert base <= y and y + h <= base + 1.0, text
    a2a_tops = [y + h for y, h, t in zip(b.y, b.h, b.texts) if t in ("dispatch", "combine")]
    compute_bottoms = [y for y, t in zip(b.y, b.texts) if t not in ("dispatch", "combine")]
    for lane in ("F", "B"):
        tops = [t for t in a2a_tops if lane_of(t - 0.01) == lane]
        bottoms = [y for y in compute_bottoms if lane_of(y) == lane]
        assert max(tops) <= min(bottoms)


def test_each_op_keeps_its_own_directions_colours(shown):
    """Here the pair's F is direction 1's and its B direction 0's (DualPipe's rank 0 runs
    both): as in the whole-run chart and its legend, the F is orange, the B blue."""
    _, rows, _, b = shown
    f_dir = int(rows[rows["kind"] == 0]["direction"][0])
    b_dir = int(rows[rows["kind"] != 0]["direction"][0])
    assert (f_dir, b_dir) == (1, 0)  # the case where one colour family for both would be wrong
    for y, text, colour, dark in zip(b.y, b.texts, b.colours, b.dark):
        lane = lane_of(y)
        if text in ("dispatch", "combine"):
            want = PURPLE[lane]
        elif text.endswith(" W"):
            want = COLOURS[b_dir]["W"]
        else:
            want = COLOURS[f_dir]["F"] if lane == "F" else COLOURS[b_dir]["B"]
        assert colour == want, text
        assert dark == (colour in (PURPLE["B"], COLOURS[b_dir]["B"])), text  # white text on the dark ones


def test_the_drawn_figure_is_those_boxes(trace, shown):
    which, rows, _, b = shown
    # 24 in wide: the narrowest part, 0.25 ms of the pair's 14.25, is 0.8 * 24 * 72 / 57 = 24 pt,
    # room for its name ("dispatch") at the 4 pt the view needs; so every part is named.
    fig = canvas.new_figure(24, 3)
    pair.draw_pair(fig, trace, which, (0.1, 0.2, 0.8, 0.6))
    (ax,) = fig.axes
    (polys,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    extents = sorted((p.vertices[:, 0].min(), p.vertices[:, 0].max()) for p in polys.get_paths())
    assert np.allclose(extents, sorted(zip(b.x0, b.x1)))
    assert ax.get_xlim() == pytest.approx((min(b.x0), max(b.x1)))
    (labels,) = [c for c in ax.collections if c is not polys]
    centres = sorted(((x0 + x1) / 2, y + h / 2) for x0, x1, y, h in zip(b.x0, b.x1, b.y, b.h))
    assert len(labels.get_paths()) == 10 and np.allclose(sorted(map(tuple, labels.get_offsets())), centres)
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == [f"F mb {int(rows[rows['kind'] == 0]['microbatch'][0])}",
                     f"B mb {int(rows[rows['kind'] != 0]['microbatch'][0])}"]  # fmt: skip
    f_stage = int(rows[rows["kind"] == 0]["stage"][0])
    b_stage = int(rows[rows["kind"] != 0]["stage"][0])
    assert (f_stage, b_stage) == (3, 0)  # rank 0 holds stages 0 and S-1 = 3
    assert "(rank 0, F on stage 3, B on stage 0, " in ax.get_title(loc="left")


def test_a_part_too_narrow_for_its_name_goes_unnamed(trace, shown):
    """6 in wide: 0.8 * 6 * 72 = 345.6 pt for 14.25 ms, 24.25 pt a ms.  A name needs 4 pt type
    and 1 pt each side: in DejaVu Sans "dispatch" is 4.12 pt wide at 1 pt, "combine" 4.19, so
    they need 18.5 and 18.8 pt.  B's dispatch (0.25 ms: 6.1 pt), F's dispatch (0.5 ms: 12.1 pt)
    and F's combine (0.75 ms: 18.2 pt) go unnamed; B's combine (1.25 ms: 30.3 pt) and the
    compute parts keep their names, none overprinting a neighbour."""
    which, _, _, b = shown
    fig = canvas.new_figure(6, 3)
    pair.draw_pair(fig, trace, which, (0.1, 0.2, 0.8, 0.6))
    (ax,) = fig.axes
    (labels,) = [c for c in ax.collections if not isinstance(c, PolyCollection)]
    named = {round(x, 6) for x, _ in labels.get_offsets()}
    unnamed = [t for x0, x1, t in zip(b.x0, b.x1, b.texts) if round((x0 + x1) / 2, 6) not in named]
    assert sorted(unnamed) == ["combine", "dispatch", "dispatch"]


def _chunk_scenario(tmp_path, schedule: str = "dualpipe", stages: int = 4) -> str:
    lines = [f'[pipeline]\nschedule = "{schedule}"\nstages = {stages}\nmicrobatches = 8\n[chunk]']
    lines += [f"{k} = {v}" for k, v in CHUNK.items()]
    path = tmp_path / "chunk.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_run_pair_rank_chooses_the_rank_drawn(tmp_path, monkeypatch, capsys):
    """`run --pair-rank 2` draws rank 2's pair; without it, the typical rank 1 (DualPipe, 4 ranks)."""
    from dualpipe_sim.cli import main

    shown = []
    real = pair.draw_pair
    monkeypatch.setattr(pair, "draw_pair", lambda fig, trace, which, rect: shown.append(which[0]) or
                        real(fig, trace, which, rect))  # fmt: skip
    toml = _chunk_scenario(tmp_path)
    assert main(["run", toml, "--out", str(tmp_path / "a"), "--pair-rank", "2"]) == 0
    assert main(["run", toml, "--out", str(tmp_path / "b")]) == 0
    assert shown == [2, 1] and (tmp_path / "a" / "gantt.png").is_file()


@pytest.mark.parametrize("extra,schedule,message", [
    (["--pair-rank", "4"], "dualpipe", "error: --pair-rank: 4 is not a rank of this run (0 to 3)\n"),
    (["--pair-rank", "-1"], "dualpipe", "error: --pair-rank: -1 is not a rank of this run (0 to 3)\n"),
    (["--pair-rank", "0"], "1f1b", "error: --pair-rank: rank 0 runs no overlapped forward+backward pair with "
                                   "[chunk] components to draw\n"),
    (["--pair-rank", "1", "--plots", "none"], "dualpipe",
     "error: --pair-rank: the pair view is part of gantt.png, which --plots none does not draw\n"),
])  # fmt: skip
def test_run_pair_rank_refused_one_line_nothing_written(tmp_path, capsys, extra, schedule, message):
    from dualpipe_sim.cli import main

    out = tmp_path / "out"
    assert main(["run", _chunk_scenario(tmp_path, schedule), "--out", str(out), *extra]) == 2
    assert capsys.readouterr().err == message
    assert not out.exists()
