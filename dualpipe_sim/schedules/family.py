"""What a schedule family is: a generator, its constraints and closed forms.

A family module marks its generator ``fn(stages, microbatches, **options) ->
Schedule`` with :func:`register`, which attaches a :class:`Family` to it as
``fn.family``; the table in ``schedules/__init__.py`` lists them, and
registry.py serves that table by name.  Nothing is registered by importing a
module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ir import Schedule, ScheduleError


@dataclass(frozen=True)
class Family:
    name: str
    generate: Callable[..., Schedule]
    # check(stages, microbatches, **options) -> None when acceptable, else the broken rule as
    # "<field>: needs ..." (``problem`` makes it the error line "<field>: <family> needs ...").
    check: Callable[..., str | None]
    constraints: str  # human-readable summary for `dualpipe-sim schedules`
    description: str
    options: tuple[str, ...] = ()  # scenario keys under [pipeline] the generator takes, e.g. chunks_per_rank
    # analytic(stages, microbatches, costs, **options) -> {"bubble": idle time per
    # rank from the paper's closed form, "peak_activation": max over ranks, in
    # stage-activation units}; None where the family has no formula.
    analytic: Callable[..., dict] | None = None
    recompute: str = "none"  # memory.recompute when the scenario leaves it out (what the family's source runs)
    # its schedules may run a backward's weight gradients apart, as W ops (ZB, DualPipe): ZeRO 3 is refused with them
    # (simulation.check_fsdp) and plan prunes it (plan/space.py _unmodelled)
    splits_weight: bool = False

    def error(self, stages: int, microbatches: int, **options) -> ScheduleError | None:
        """The broken rule as an error with its parts (field, rule, this family), whose line is
        README's ``pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = 8, got 4``;
        None when none is."""
        why = self.check(stages, microbatches, **options)
        if why is None:
            return None
        field, _, rule = why.partition(": ")
        return ScheduleError(field=field, rule=rule, by=self.name)

    def problem(self, stages: int, microbatches: int, **options) -> str | None:
        """:meth:`error`'s line, or None."""
        error = self.error(stages, microbatches, **options)
        return None if error is None else str(error)


def register(
    name: str,
    *,
    check,
    constraints: str,
    description: str,
    options: tuple[str, ...] = (),
    analytic: Callable[..., dict] | None = None,
    recompute: str = "none",
    splits_weight: bool = False,
):
    """Decorator: describe a generator as the family ``name`` (sets ``fn.family``).

    The family becomes known to the registry once it is listed in
    ``schedules/__init__.py``'s FAMILIES table."""

    def wrap(fn):
        fn.family = Family(name, fn, check, constraints, description, options, analytic, recompute, splits_weight)
        return fn

    return wrap
