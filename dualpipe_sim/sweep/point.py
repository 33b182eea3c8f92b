"""Running one sweep point: overrides in, one results row (a dict) out.

This is the function the executors ship to worker processes or Dask
workers, so it takes and returns plain data and never raises: a shape the
schedule cannot take is ``skipped`` (the schedule family's own constraint
check says why), anything else that goes wrong is ``error`` with its message.
"""

from __future__ import annotations

from ..schedules import registry
from .. import simulation
from ..schedules.ir import ScheduleError
from ..readers.metrics import later_step_names, scalar_names
from ..model import validation_band
from ..inputs.scenario import ScenarioError, apply_overrides, resolved

# The scalar metrics of a point, as results.csv columns: Metrics.scalars(), whose
# dotted names follow metrics.json and whose per-rank quantities are the maximum over ranks,
# then what the point occupies: points of one sweep may run on different numbers of GPUs, then the validation band
# of its tokens/s (reported only; columns are only ever added at the end, before the identity columns), then the step's
# figures added since (metrics.json's step block, empty without them)
GPU_COLUMNS = ("gpus", "gpu_time")
LATER_STEP_COLUMNS = later_step_names()  # s21e: step.slowed, s21r: step.drain
METRIC_COLUMNS = (*scalar_names(), *GPU_COLUMNS, *validation_band.COLUMNS, *LATER_STEP_COLUMNS)


def gpu_fields(scenario, ranks: int, step_time: float) -> dict:
    """``gpus``: pipeline ranks x tensor x data x context (as ``compare --same-gpus`` counts them);
    ``gpu_time``: the step (ms) x gpus, the GPU-milliseconds one step costs."""
    par = scenario.parallel
    gpus = ranks * (par.tensor * par.data * par.context if par is not None else 1)
    return {"gpus": gpus, "gpu_time": step_time * gpus}


def run_point(base: dict, overrides: tuple[str, ...]) -> dict:
    """Simulate ``base`` with ``overrides`` applied; return the row's fields.

    Keys: ``status`` (ok / skipped / error), ``reason``, and the
    METRIC_COLUMNS (absent where not applicable).
    """
    row: dict = {"status": "ok", "reason": ""}
    try:
        scenario, inputs = resolved(apply_overrides(base, list(overrides)))
        problem = _constraint_problem(scenario)
        if problem:
            return {**row, "status": "skipped", "reason": problem}
        metrics = simulation.run(scenario, inputs=inputs).metrics
        scalars = metrics.scalars()
        step = metrics.step.total if metrics.step is not None else metrics.makespan  # summary.step_time's rule
        scalars.update(gpu_fields(scenario, metrics.ranks, step))
        if metrics.validation_band is not None:  # with a throughput: its class's band, beside it
            scalars.update(validation_band.cells(metrics.validation_band))
        scalars.update(metrics.later_step_scalars())  # None: nothing slowed / drained, or no step
    except (ScenarioError, ScheduleError) as exc:
        return {**row, "status": "error", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one bad point must not stop a sweep
        return {**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    return {**row, **scalars}


def _constraint_problem(scenario) -> str | None:
    """The schedule family's own check, as registry.build runs it (None = the shape is fine)."""
    p = scenario.pipeline
    family = registry.get(p.schedule)
    options = {k: v for k, v in scenario.options().items() if k in family.options and v is not None}
    return family.problem(p.stages, p.microbatches, **options)

