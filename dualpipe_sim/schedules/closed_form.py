"""Closed forms and the range where each holds.

A family's ``analytic(stages, microbatches, costs, **options)`` returns the dict
that metrics.json carries under ``analytic``:

* ``bubble``: time each rank spends between ops (metrics ``per_rank.between_ops``;
  with the simple cost model that is its ``idle``), the largest over ranks, from
  the paper's formula; ``None`` outside the formula's range;
* ``peak_activation``: the most stage-activations alive on one rank;
* ``formula``: the formula as written in docs/schedules.md;
* ``range``: the conditions under which it holds (docs/schedules.md lists them);
* ``reason``: ``None`` when ``bubble`` is given, else which condition failed
  (shown in the summary table instead of a number).

Inside its range a formula is exact: tests/test_closed_form_ranges.py checks
that over random costs against the simulation.  Conditions shared by every
formula: one cost per stage (no per-stage differences), no P2P time (the papers'
formulas leave transfers out), no jitter or slow rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # closed forms read a cost model's per-stage figures; they never build one
    from ..inputs.costs import CostModel

TOL = 1e-9
COMMON_RANGE = "same F, B, W on every stage; comm.p2p = 0; no jitter or slow rank"


def common_problem(costs: CostModel, stages: int) -> str | None:
    """Why no closed form applies to these costs at all, or None."""
    for name in ("forward", "backward", "weight"):
        values = getattr(costs, name)[:stages]
        if max(values) - min(values) > TOL * max(1.0, max(values)):
            return f"costs.{name} differs between stages (closed forms assume one value per stage)"
    if costs.overlapped is not None:
        values = costs.overlapped[:stages]
        if max(values) - min(values) > TOL * max(1.0, max(values)):
            return "costs.overlapped differs between stages (closed forms assume one value per stage)"
    if costs.p2p > 0:
        return "comm.p2p > 0 (the formula leaves P2P transfer time out)"
    if costs.variability is not None:
        return "costs.jitter or ranks.slowdown make op lengths vary (the formula assumes fixed lengths)"
    return None


def result(bubble: float | None, peak, formula: str, range_: str, reason: str | None = None) -> dict:
    """The ``analytic`` dict: ``bubble`` only when ``reason`` is None."""
    if reason is None and bubble is not None and bubble < -TOL:
        reason = f"the formula gives {bubble:.4g} < 0 here"  # never report a negative idle time
    return {
        "bubble": None if reason is not None else max(0.0, bubble),
        "peak_activation": peak,
        "formula": formula,
        "range": range_,
        "reason": reason,
    }


# A schedule not built by a family (read from a file, or a Schedule given to
# simulation.run) has no formula: its ``analytic`` says so instead of staying blank.
GIVEN_REASON = "schedule given (e.g. read from a file), not built from pipeline.schedule: no closed form"


def given_schedule() -> dict:
    """The ``analytic`` dict of a schedule given to the run rather than built by a family."""
    return result(None, None, None, None, reason=GIVEN_REASON)


def le(a: float, b: float) -> bool:
    """a <= b up to rounding."""
    return a <= b + TOL * max(1.0, abs(a), abs(b))


def mean_costs(costs: CostModel, stages: int) -> tuple[float, float, float, float]:
    """(F, B, W, F&B) averaged over stages: closed forms assume uniform stages."""
    mean = lambda xs: sum(xs[:stages]) / stages  # noqa: E731
    F, B, W = mean(costs.forward), mean(costs.backward), mean(costs.weight)
    FB = mean(costs.overlapped) if costs.overlapped is not None else F + B
    return F, B, W, FB
