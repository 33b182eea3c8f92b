"""Per-rank and span metrics when the stages do not cost the same, worked by hand.

Every other test of ``span_bubble_rate`` uses equal stages, where the most busy
rank and the least busy rank are equally busy; these tests tell the two apart.

The case: 1F1B on 4 stages with 8 micro-batches, no P2P time, stages 0-2 at
F = 1, B = 2 and the last stage 3x slower (F = 3, B = 6).

Worked by hand (1F1B: rank r runs p - 1 - r warm-up forwards, then alternates
B and F, then drains its backwards):

* the first forward reaches the last stage at 1 + 1 + 1 = 3;
* the last stage then never waits: its F_k needs rank 2's F_k, which rank 2 runs
  right after its B_{k-2} (2 + 1 = 3 after the last stage's B_{k-2} ends),
  while the last stage spends F_{k-1} + B_{k-1} = 9 before it reaches F_k.
  So it is busy from 3 to 3 + 8 x (3 + 6) = 75;
* after its B_7 ends at 75, the gradient walks back: rank 2 runs B_7 75-77,
  rank 1 77-79, rank 0 79-81.  Makespan 81.

Per rank:

=====  ====  ====  ==============  =====  ==========
rank   busy  idle  span            span   span idle
=====  ====  ====  ==============  =====  ==========
0      24    57    0 -> 81         81     57
1      24    57    1 -> 79         78     54
2      24    57    2 -> 77         75     51
3      72     9    3 -> 75         72      0
=====  ====  ====  ==============  =====  ==========

(busy = 8 x (F + B); idle = 81 - busy; span idle = span - busy.)

bubble_ratio = (57 x 3 + 9) / (4 x 81) = 180 / 324 = 5/9.
span_bubble_rate (Qi et al. 2024, Sec. 5.3): (cost - work) / cost with cost
the longest span (81) and work the most busy rank (72): 9 / 81 = 1/9 = 0.111.
Taking the least busy rank (24) instead would give 57 / 81 = 0.704.
"""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.engine.simpy_engine import simulate as simpy_simulate
from dualpipe_sim.simulation import simulate as fast_simulate
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.schedules.registry import build

from helpers import run_uniform

FORWARD, BACKWARD = (1.0, 1.0, 1.0, 3.0), (2.0, 2.0, 2.0, 6.0)


def slow_last_stage() -> CostModel:
    return CostModel(forward=FORWARD, backward=BACKWARD, weight=(0.0,) * 4,
                     activation_bytes=(1.0,) * 4, parameter_bytes=(1.0,) * 4)  # fmt: skip


@pytest.mark.parametrize("simulate", [fast_simulate, simpy_simulate], ids=["replay", "simpy"])
def test_span_and_idle_with_a_3x_slower_last_stage(simulate):
    met = compute_metrics(simulate(build("1f1b", 4, 8), slow_last_stage()))
    assert met.makespan == pytest.approx(81.0)
    assert [r.busy for r in met.per_rank] == pytest.approx([24.0, 24.0, 24.0, 72.0])
    assert [r.idle for r in met.per_rank] == pytest.approx([57.0, 57.0, 57.0, 9.0])
    assert [r.span for r in met.per_rank] == pytest.approx([81.0, 78.0, 75.0, 72.0])
    assert [r.span_idle for r in met.per_rank] == pytest.approx([57.0, 54.0, 51.0, 0.0])
    assert met.bubble_ratio == pytest.approx(5 / 9)
    assert met.span_bubble_rate == pytest.approx(1 / 9)  # 0.111; the least busy rank would give 0.704
    assert met.span_bubble_rate != pytest.approx(57 / 81)


def test_same_figures_through_a_scenario_with_per_stage_cost_lists():
    # The scenario route ([costs] lists per stage) must give the same hand-worked case.
    met = run_uniform("1f1b", 4, 8, forward=list(FORWARD), backward=list(BACKWARD)).metrics
    assert met.makespan == pytest.approx(81.0)
    assert met.span_bubble_rate == pytest.approx(1 / 9)
    assert [r.span_idle for r in met.per_rank] == pytest.approx([57.0, 54.0, 51.0, 0.0])


def test_slow_first_stage_idles_the_others_gpipe():
    # GPipe, 2 stages, 3 micro-batches, stage 0 at F = 2, B = 4 and stage 1 at F = 1, B = 2; no P2P.
    # Stage 0 forwards: [0,2] [2,4] [4,6]; stage 1 forwards on arrival: [2,3] [4,5] [6,7];
    # stage 1 backwards (mb 2, 1, 0): [7,9] [9,11] [11,13]; stage 0 backwards follow each:
    # mb 2 [9,13], mb 1 [13,17], mb 0 [17,21].  Makespan 21.
    # busy: 18 and 9; span: 21 (0 -> 21) and 11 (2 -> 13); span idle 3 and 2.
    # span_bubble_rate = (21 - 18) / 21 = 1/7 (with the least busy rank: (21 - 9) / 21 = 4/7).
    costs = CostModel(forward=(2.0, 1.0), backward=(4.0, 2.0), weight=(0.0, 0.0),
                      activation_bytes=(1.0, 1.0), parameter_bytes=(1.0, 1.0))  # fmt: skip
    met = compute_metrics(fast_simulate(build("gpipe", 2, 3), costs))
    assert met.makespan == pytest.approx(21.0)
    assert [r.busy for r in met.per_rank] == pytest.approx([18.0, 9.0])
    assert [r.span for r in met.per_rank] == pytest.approx([21.0, 11.0])
    assert [r.span_idle for r in met.per_rank] == pytest.approx([3.0, 2.0])
    assert [r.idle for r in met.per_rank] == pytest.approx([3.0, 12.0])
    assert met.span_bubble_rate == pytest.approx(1 / 7)
