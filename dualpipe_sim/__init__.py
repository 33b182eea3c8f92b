"""dualpipe-sim: a discrete-event simulator of pipeline-parallel training schedules.

The Python API (README, "Python API")::

    import dualpipe_sim as ds

    sc = ds.scenario("scenarios/quickstart.toml", overrides=["pipeline.stages=8"])
    sc = ds.scenario({"pipeline": {...}, "costs": {...}})   # or the same keys as a dict
    res = ds.run(sc)                        # the scenario's schedule; ds.run(sc, "1f1b") for another
    res.metrics.to_dict()                   # the metrics.json document
    res.metrics.scalars()["makespan"]       # the flat numbers compare and sweep show
    res.trace.compute["start"]              # recorded intervals, numpy structured arrays
    ds.save_gantt(res, "gantt.png")

What this module exports (``__all__``) is the public interface; every other
name in the package is internal and may change.  Errors are ScenarioError
(a scenario key breaks a rule) and ScheduleError (a schedule cannot run),
both InputError (a ValueError) with one line naming the key; where the raiser
gives them, also its parts: ``field``, ``rule`` and ``by`` (the schedule family).
"""

from __future__ import annotations

from pathlib import Path as _Path

from . import plan
from .inputs import scenario
from .errors import InputError, ScenarioError
from .schedules.ir import Schedule, ScheduleError
from .readers.metrics import Metrics
from .inputs.scenario import Scenario
from .simulation import Result
from .engine.trace import Trace

__version__ = "0.1.0"

__all__ = [
    "scenario", "run", "schedule_names", "build_schedule", "read_schedule", "metrics_json",
    "save_gantt", "save_memory", "save_report", "save_chrome_trace", "save_compare", "plan",
    "Scenario", "Schedule", "Result", "Metrics", "Trace", "ScenarioError", "ScheduleError", "InputError",
    "__version__",
]  # fmt: skip

# ``scenario`` is the scenario module, callable: scenario(source, overrides=(), unset=()) is scenario.read.
# ``plan`` is the plan package, callable the same way: plan(source, gpus, global_batch, seq, ...) is plan.plan.


def run(sc, schedule: str | Schedule | None = None) -> Result:
    """Simulate a scenario with its ``pipeline.schedule``, another registered schedule
    (``schedule="1f1b"``) or your own Schedule (:func:`read_schedule`,
    :func:`build_schedule`).  ``sc``: a Scenario, or a path or dict that
    :func:`scenario` reads first."""
    from .compare import with_schedule
    from .simulation import run as simulate

    inputs = None  # a Scenario given is resolved by the run; a path or dict here, once, as it is read
    if not isinstance(sc, Scenario):
        sc, inputs = scenario.read_resolved(sc)
    if isinstance(schedule, str):
        return simulate(with_schedule(sc, schedule))
    return simulate(sc, schedule, inputs)


def schedule_names() -> dict[str, str]:
    """Registered schedule names and their one-line descriptions."""
    from .schedules.registry import families

    return {name: family.description for name, family in families().items()}


def build_schedule(name: str, stages: int, microbatches: int, **options) -> Schedule:
    """A registered schedule's op lists (``options``: e.g. ``chunks_per_rank=2``)."""
    from .schedules.registry import build

    return build(name, stages, microbatches, **options)


def read_schedule(path: str | _Path) -> Schedule:
    """A schedule file: the JSON or action-string form ``dualpipe-sim schedule`` prints, validated."""
    from .actions import read_schedule as parse

    path = _Path(path)
    return parse(path.read_text(encoding="utf-8-sig"), str(path))


def metrics_json(result: Result) -> str:
    """The text of metrics.json for ``result`` (the CLI writes exactly this)."""
    from .outputs.files import metrics_json as text

    return text(result.metrics)


def save_gantt(result: Result, path: str | _Path, pair_rank: int | None = None) -> None:
    """gantt.png of a run; ``pair_rank``: the rank whose overlapped pair is drawn part by part
    (runs with [chunk] components; default: a typical middle rank, docs/charts.md)."""
    from .outputs.plots.gantt_file import save_gantt as save

    save(result.trace, result.metrics, _Path(path), pair_rank)


def save_memory(result: Result, path: str | _Path) -> None:
    """memory.png of a run."""
    from .outputs.plots.memory import save_memory as save

    save(result.trace, result.metrics, _Path(path), deferred=getattr(result.costs, "deferred", None) is not None)


def save_report(result: Result | list[Result], path: str | _Path) -> None:
    """report.html of one run, or of several side by side (needs the ``html`` extra: plotly)."""
    from .outputs.plots.report import save_report as save

    save(result if isinstance(result, list) else [result], _Path(path))


def save_chrome_trace(result: Result, path: str | _Path) -> None:
    """A Chrome/Perfetto trace (JSON) of a run."""
    from .outputs.exports.chrome import write_chrome_trace

    write_chrome_trace(result.trace, _Path(path))


def save_compare(results: list[Result], path: str | _Path) -> None:
    """compare.png: several runs' Gantt charts stacked on one time axis."""
    from .outputs.plots.compare import save_compare as save

    save(list(results), _Path(path))
