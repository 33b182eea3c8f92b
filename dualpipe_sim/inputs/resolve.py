"""A scenario's figures, resolved once per run: ``resolve(scenario) -> Inputs``.

A [model] scenario's figures come from one derivation (model/derive.py: per-layer
kernels, per-stage chunks, memory), which the cost model, the [step] sync times
and the memory rows all read.  ``resolve`` derives once and hands all of them
over together, so that nothing downstream derives again: simulation.run, compare,
sweep points and plan candidates take an ``Inputs``, never a figure computed off
the Scenario on the side.  The Scenario itself stays a plain validated record
(its ``derived``/``cost_model``/``step_costs`` methods compute, they cache nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .costs import CostModel
    from ..step_costs import StepCosts
    from ..model.derive import Derived
    from .scenario import Scenario


@dataclass(frozen=True)
class Inputs:
    """Everything a run reads off its scenario besides the schedule."""

    costs: CostModel
    step_costs: StepCosts | None  # None without a [step] table
    derived: Derived | None  # the [model] figures; None without [model]
    device_memory: float | None  # bytes of HBM per GPU ([hardware]); None when unknown


def resolve(scenario: Scenario, memo=None) -> Inputs:
    """The scenario's inputs, the model derived once.  Raises ScenarioError naming the key
    on a cross-field problem (a missing cost, an impossible chunk.order, a bad layout).
    ``memo``: a derive.Memo kept by a caller that resolves many layouts (plan's simulation workers)."""
    derived = scenario.derived(memo)
    return Inputs(scenario.cost_model(derived), scenario.step_costs(derived), derived, scenario.device_memory())
