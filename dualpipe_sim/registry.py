"""Schedule families by name.

A family registers a pure generator ``fn(stages, microbatches, **options) ->
Schedule`` together with a ``check`` that states its constraints.  ``check``
returns None when (stages, microbatches, options) are acceptable, otherwise one
sentence naming the rule that is broken; callers turn that into a clean error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ir import Schedule, ScheduleError


@dataclass(frozen=True)
class Family:
    name: str
    generate: Callable[..., Schedule]
    check: Callable[..., str | None]
    constraints: str  # human-readable summary for `dualpipe-sim schedules`
    description: str
    options: tuple[str, ...] = ()  # scenario keys under [pipeline] the generator takes, e.g. chunks_per_rank
    # analytic(stages, microbatches, costs, **options) -> {"bubble": idle time per
    # rank from the paper's closed form, "peak_activation": max over ranks, in
    # stage-activation units}; None where the family has no formula.
    analytic: Callable[..., dict] | None = None


_REGISTRY: dict[str, Family] = {}


def register(
    name: str,
    *,
    check,
    constraints: str,
    description: str,
    options: tuple[str, ...] = (),
    analytic: Callable[..., dict] | None = None,
):
    """Decorator: register a generator under ``name``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"schedule {name!r} registered twice")
        _REGISTRY[name] = Family(name, fn, check, constraints, description, options, analytic)
        return fn

    return wrap


def families() -> dict[str, Family]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Family:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ScheduleError(f"pipeline.schedule: unknown schedule {name!r}; known: {known}") from None


def build(name: str, stages: int, microbatches: int, **options) -> Schedule:
    """Check the constraints, then generate.  Raises ScheduleError on a broken rule."""
    family = get(name)
    # Only pass the options this family declares: a scenario may carry keys
    # (chunks_per_rank, ...) that other families ignore.
    options = {k: v for k, v in options.items() if k in family.options and v is not None}
    problem = family.check(stages, microbatches, **options)
    if problem:
        raise ScheduleError(f"{name}: {problem}")
    return family.generate(stages, microbatches, **options)


def analytic(name: str, stages: int, microbatches: int, costs, **options) -> dict:
    """The family's closed-form bubble and peak activation, or nulls."""
    family = get(name)
    options = {k: v for k, v in options.items() if k in family.options and v is not None}
    if family.analytic is None:
        return {"bubble": None, "peak_activation": None}
    return family.analytic(stages, microbatches, costs, **options)


def _load_builtin() -> None:
    from . import schedules  # noqa: F401  (importing registers the built-in families)
