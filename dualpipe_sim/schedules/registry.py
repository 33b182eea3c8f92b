"""Schedule families by name: the table of ``schedules.FAMILIES``.

A family is a pure generator ``fn(stages, microbatches, **options) ->
Schedule`` with a ``check`` that states its constraints (schedules/family.py).
``check`` returns None when (stages, microbatches, options) are acceptable,
otherwise one sentence naming the rule that is broken; :func:`build` turns
that into a ScheduleError.
"""

from __future__ import annotations

from .. import limits
from .ir import Schedule, ScheduleError
from . import FAMILIES
from .family import Family
from ..errors import ScenarioError, shown


def _table(families: tuple[Family, ...]) -> dict[str, Family]:
    table: dict[str, Family] = {}
    for family in families:
        if family.name in table:
            raise RuntimeError(f"schedule {family.name!r} is in schedules.FAMILIES twice")
        table[family.name] = family
    return dict(sorted(table.items()))


_REGISTRY = _table(FAMILIES)


def families() -> dict[str, Family]:
    """Every family by name, sorted."""
    return dict(_REGISTRY)


def get(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        bare = lambda n: str(n).lower().replace("-", "").replace("_", "")  # noqa: E731
        close = [n for n in _REGISTRY if bare(n) == bare(name)]  # DualPipe -> dualpipe, dualpipe-v -> dualpipev
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(field="pipeline.schedule", rule=f"unknown schedule {shown(name)}{hint}; known: {known}") from None


def build(name: str, stages: int, microbatches: int, *, max_memory: float = limits.DEFAULT_MAX_MEMORY,
          **options) -> Schedule:
    """Check the size (limits.py: every caller holds to it) and the constraints, then
    generate.  Raises ScheduleError on a broken rule."""
    too_big = limits.size_problem(stages, microbatches, max_memory)
    if too_big:  # before anything is allocated
        raise ScheduleError(too_big)
    family = get(name)
    # Only pass the options this family declares: a scenario may carry keys
    # (chunks_per_rank, ...) that other families ignore.
    options = {k: v for k, v in options.items() if k in family.options and v is not None}
    error = family.error(stages, microbatches, **options)
    if error is not None:
        raise error
    return family.generate(stages, microbatches, **options)


def unused_option(names: list[str], options: dict) -> ScenarioError | None:
    """The error naming a [pipeline] option that is set but taken by none of the
    schedules ``names`` (e.g. chunks_per_rank under dualpipe; its field is the option), else None."""
    known = families()
    for key, value in options.items():
        if value is None:
            continue
        if not any(key in known[n].options for n in names if n in known):
            takers = [n for n, f in known.items() if key in f.options]
            verb = "does" if len(names) == 1 else "do"
            return ScenarioError(field=f"pipeline.{key}", rule=f"{', '.join(names)} {verb} not take it (only "
                                 f"{', '.join(takers)} {'does' if len(takers) == 1 else 'do'}); leave it out")
    return None


def analytic(name: str, stages: int, microbatches: int, costs, **options) -> dict:
    """The family's closed-form bubble and peak activation, or nulls."""
    family = get(name)
    options = {k: v for k, v in options.items() if k in family.options and v is not None}
    if family.analytic is None:
        return {"bubble": None, "peak_activation": None}
    return family.analytic(stages, microbatches, costs, **options)

