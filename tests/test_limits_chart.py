"""limits.py counts the box-by-box gantt.png's picture at the width s15j's label_width can give it
(up to gantt.MAX_WIDTH_IN): 4 bytes a pixel, the height as gantt_file lays the chart out."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dualpipe_sim import limits
from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_chart_bytes_by_hand():
    """45 in x 110 dpi = 4,950 px wide.  64 ranks: 0.45 + 64 x 0.62 + 0.55 = 40.68 in, 4,474.8 -> 4,474 px
    rows; 2 ranks: 2 x 0.62 = 1.24 in is under the floor 45 / 6 - 1.3 = 6.2 in, so 7.2 in = 792 px;
    with the pair view 2.4 in more: 9.6 in = 1,056 px."""
    assert limits.chart_bytes(64) == 4950 * 4474 * 4 == 88_585_200
    assert limits.chart_bytes(2) == 4950 * 792 * 4 == 15_681_600
    assert limits.chart_bytes(2, pair=True) == 4950 * 1056 * 4


def test_estimate_adds_the_picture_when_boxes_are_drawn():
    # 4 x 8: 96 ops at 768 B, 96 boxes at 10 KiB, the 4-rank chart's 4,950 x 792 px
    assert limits.estimate(4, 8) == (96, 96 * 768 + 96 * 10240 + 4950 * 792 * 4)
    # 64 x 1024: bands (a rank runs more than 366 actions), no boxes and no box-by-box picture
    assert limits.estimate(64, 1024) == (196608, 196608 * 768)
    # a schedule file's ops: the picture on its own ranks' rows; without ranks, none
    assert limits.memory_for(32, 32, ranks=2) == 32 * 768 + 32 * 10240 + 4950 * 792 * 4
    assert limits.memory_for(32, 32) == 32 * 768 + 32 * 10240


@pytest.mark.parametrize("stages, microbatches, rows_px", [(4, 128, 792), (16, 128, 1201)])
def test_the_png_is_the_picture_counted(stages, microbatches, rows_px, tmp_path):
    """1F1B 4 x 128 and 16 x 128 on quickstart.toml: narrow boxes widen gantt.png to the 45 in cap,
    so its pixels are exactly those counted (16 ranks: 0.45 + 9.92 + 0.55 = 10.92 in, 1,201.2 px)."""
    out = tmp_path / "o"
    assert main(["run", str(ROOT / "scenarios" / "quickstart.toml"), "--set", "pipeline.schedule=1f1b",
                 "--set", f"pipeline.stages={stages}", "--set", f"pipeline.microbatches={microbatches}",
                 "--plots", "png", "--out", str(out)]) == 0  # fmt: skip
    with Image.open(out / "gantt.png") as png:
        assert png.size == (4950, rows_px)
    assert limits.chart_bytes(stages) == 4950 * rows_px * 4


@pytest.mark.parametrize("microbatches, dense", [(183, False), (184, True)])
def test_box_actions_per_rank_is_where_the_chart_turns_to_bands(microbatches, dense):
    """1F1B on 2 stages: 2 M actions a rank, so 0.3 in each puts the base figure at its 30 in cap;
    its axes are 30 - 0.8 - 2.55 = 26.65 in = 2,931.5 px, 8 px a box: 366 actions (M = 183) still
    draw boxes, 368 (M = 184) are bands.  limits.py counts boxes by the same 366."""
    from dualpipe_sim import simulation
    from dualpipe_sim.chart_geometry import DPI, LEFT_IN, RIGHT_IN
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.outputs.plots import gantt

    assert limits.BOX_ACTIONS_PER_RANK == 366
    run = simulation.run(scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": microbatches},
                                             "costs": {"forward": 1.0, "backward": 2.0}}))  # fmt: skip
    assert gantt.figure_width(run.trace) == 30.0
    assert gantt.too_dense(run.trace, (gantt.figure_width(run.trace) - LEFT_IN - RIGHT_IN) * DPI) is dense
    assert (2 * microbatches <= limits.BOX_ACTIONS_PER_RANK) is not dense
