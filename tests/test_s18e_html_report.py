"""s18e: outputs/plots/report.py's data for report.html (planted bugs s18e-html-*): which ops a large run's windows
keep, and each component op's hover totals."""

from __future__ import annotations

import numpy as np

from dualpipe_sim import simulation, units
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots import report
from dualpipe_sim.schedules.rules import KIND_CODES


def test_window_keeps_every_op_that_overlaps_it():
    """Window [5, 10): [3, 6] and [9, 12] straddle its ends, [6, 7] is inside, [0, 5] ends at its start and
    [10, 11] starts at its end (neither overlaps it)."""
    rows = np.array([(0.0, 5.0), (3.0, 6.0), (6.0, 7.0), (9.0, 12.0), (10.0, 11.0)],
                    dtype=[("start", "f8"), ("end", "f8")])
    kept = report._window_rows(rows, [(5.0, 10.0)])
    assert kept.tolist() == [(3.0, 6.0), (6.0, 7.0), (9.0, 12.0)]
    assert report._window_rows(rows, None) is rows


def test_component_hover_totals_every_layer():
    """[chunk] of 2 layers, attn_forward 0.4 ms and mlp_forward 0.5 ms a layer: rank 0's forward F0 lists each twice,
    totalling 0.8 ms and 1 ms; the dispatch (all-to-all) 2 x 0.6 = 1.2 ms."""
    chunk = {"layers": 2, "attn_forward": 0.4, "mlp_forward": 0.5, "dispatch_forward": 0.6, "combine_forward": 0.7,
             "attn_backward_input": 0.8, "attn_backward_weight": 0.2, "mlp_backward_input": 0.5,
             "mlp_backward_weight": 0.3, "dispatch_backward": 0.6, "combine_backward": 0.5}  # fmt: skip
    sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 1}, "chunk": chunk})
    parts = report._parts_text(simulation.run(sc).trace)
    lines = parts[(0, 0, KIND_CODES["F"])].split("<br>")
    assert f"attn_forward: 2x, {units.duration(0.8)}" in lines
    assert f"mlp_forward: 2x, {units.duration(1.0)}" in lines
    assert f"dispatch_forward (all-to-all): 2x, {units.duration(1.2)}" in lines
