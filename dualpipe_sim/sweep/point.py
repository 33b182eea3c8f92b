"""Running one sweep point: overrides in, one results row (a dict) out.

This is the function the executors ship to worker processes or Dask
workers, so it takes and returns plain data and never raises: a shape the
schedule cannot take is ``skipped`` (the schedule family's own constraint
check says why), anything else that goes wrong is ``error`` with its message.
"""

from __future__ import annotations

from .. import registry, simulation
from ..ir import ScheduleError
from ..scenario import ScenarioError, apply_overrides, from_dict

# The scalar metrics of a point, as results.csv columns.  Dotted names follow
# metrics.json; per-rank quantities are the maximum over ranks.
METRIC_COLUMNS = (
    "ranks",
    "makespan",
    "bubble_ratio",
    "peak_activation",  # max over ranks, stage-activation units
    "peak_activation_bytes",  # max over ranks
    "parameter_bytes",  # max over ranks
    "peak_memory_bytes",  # max over ranks of peak_activation_bytes + parameter_bytes
    "comm.p2p_time",
    "comm.a2a_time",
    "comm.exposed",
    "comm.hidden",
    "comm.overlap_ratio",
    "comm.p2p_exposed",
    "comm.a2a_exposed",
    "analytic.bubble",
    "analytic.peak_activation",
)


def run_point(base: dict, overrides: tuple[str, ...]) -> dict:
    """Simulate ``base`` with ``overrides`` applied; return the row's fields.

    Keys: ``status`` (ok / skipped / error), ``reason``, and the
    METRIC_COLUMNS (absent where not applicable).
    """
    row: dict = {"status": "ok", "reason": ""}
    try:
        scenario = from_dict(apply_overrides(base, list(overrides)))
        problem = _constraint_problem(scenario)
        if problem:
            return {**row, "status": "skipped", "reason": problem}
        metrics = simulation.run(scenario).metrics
    except (ScenarioError, ScheduleError) as exc:
        return {**row, "status": "error", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one bad point must not stop a sweep
        return {**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    return {**row, **scalar_metrics(metrics)}


def _constraint_problem(scenario) -> str | None:
    """The schedule family's own check, as registry.build runs it (None = the shape is fine)."""
    p = scenario.pipeline
    family = registry.get(p.schedule)
    options = {k: v for k, v in scenario.options().items() if k in family.options and v is not None}
    problem = family.check(p.stages, p.microbatches, **options)
    return f"{p.schedule}: {problem}" if problem else None


def scalar_metrics(m: dict) -> dict:
    """metrics.json -> the METRIC_COLUMNS of one row."""
    ranks = m["per_rank"]
    comm, analytic = m["comm"], m["analytic"]
    return {
        "ranks": m["ranks"],
        "makespan": m["makespan"],
        "bubble_ratio": m["bubble_ratio"],
        "peak_activation": max(r["peak_activation"] for r in ranks),
        "peak_activation_bytes": max(r["peak_activation_bytes"] for r in ranks),
        "parameter_bytes": max(r["parameter_bytes"] for r in ranks),
        "peak_memory_bytes": max(r["peak_activation_bytes"] + r["parameter_bytes"] for r in ranks),
        **{f"comm.{k}": comm.get(k) for k in ("p2p_time", "a2a_time", "exposed", "hidden", "overlap_ratio",
                                               "p2p_exposed", "a2a_exposed")},
        "analytic.bubble": analytic.get("bubble"),
        "analytic.peak_activation": analytic.get("peak_activation"),
    }
