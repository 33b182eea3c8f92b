"""Schedules' closed forms and orders held to independent truth (issue s10d: planted bugs the suite let through).

Every expected figure here is worked by hand from the schedule's definition, not read off a run.
"""

import pytest

from helpers import run_uniform


@pytest.mark.parametrize("p,m", [(1, 1), (2, 3), (4, 2), (4, 8), (3, 5)])
def test_gpipe_analytic_peak_is_every_microbatch(p, m):
    """GPipe runs all M forwards on a rank before its first backward, so each rank holds M
    stage-activations at once: the closed form's peak is M (not p, which is 1F1B's), and the
    simulated peak of every rank is M too."""
    metrics = run_uniform("gpipe", p, m).metrics
    assert metrics.analytic.peak_activation == m
    assert [r.peak_activation for r in metrics.per_rank] == [m] * p


@pytest.mark.parametrize("p,m", [(2, 3), (4, 2), (4, 8)])
def test_1f1b_analytic_peak_is_min_p_m(p, m):
    """1F1B: rank 0 runs min(p, M) warm-up forwards before its first backward, the most of any rank."""
    metrics = run_uniform("1f1b", p, m).metrics
    assert metrics.analytic.peak_activation == min(p, m)
    assert max(r.peak_activation for r in metrics.per_rank) == min(p, m)


def test_dualpipe_closed_form_refuses_per_stage_overlapped_times():
    """The closed forms assume one value per stage (schedules/closed_form.py's COMMON_RANGE); an
    overlapped F&B that differs between stages is outside it, so no bubble is given, and the
    reason names costs.overlapped.  With one F&B everywhere the same costs are inside the range:
    (PP/2 - 1)(F&B + B - 3W) = (4/2 - 1)(2.5 + 2 - 3) = 1.5 (DualPipe README's table)."""
    costs = dict(forward=1.0, backward=2.0, weight=1.0)
    uneven = run_uniform("dualpipe", 4, 8, **costs, costs__overlapped=[2.5, 2.5, 2.6, 2.5]).metrics.analytic
    assert uneven.bubble is None
    assert uneven.reason.startswith("costs.overlapped differs between stages")
    even = run_uniform("dualpipe", 4, 8, **costs, costs__overlapped=2.5).metrics
    assert even.analytic.bubble == pytest.approx(1.5) and even.analytic.reason is None
    assert max(r.between_ops for r in even.per_rank) == pytest.approx(1.5)
