"""What each registered schedule needs of a layout, read off the registry.

A family does not say how many stages it puts on a rank or where; building it
once at a small size (``probe``) shows both: ranks = stages / stages_per_rank,
and the placement of every stage.
The family's own ``check`` then decides each (stages, micro-batches) shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..schedules import registry

VIRTUAL_OPTION = "chunks_per_rank"


@dataclass(frozen=True)
class ScheduleShape:
    name: str
    stages_per_rank: int  # model stages one rank holds (virtual families: per virtual stage chosen)
    virtual: bool  # takes chunks_per_rank: the number of stages per rank is a choice
    directions: int  # 2 when micro-batches enter from both ends (each direction gets half)

    def check(self, stages: int, microbatches: int, virtual: int | None) -> str | None:
        """The family's constraint check (None = it can run this shape)."""
        options = {VIRTUAL_OPTION: virtual} if virtual else {}
        return registry.get(self.name).check(stages, microbatches, **options)


@lru_cache(maxsize=None)
def shape(name: str) -> ScheduleShape:
    """Probe ``name`` with 4 stages and 16 micro-batches (every family's check accepts it)."""
    family = registry.get(name)
    virtual = VIRTUAL_OPTION in family.options
    schedule = registry.build(name, 4, 16, **({VIRTUAL_OPTION: 2} if virtual else {}))
    directions = len({d for d, _ in schedule.placement()})
    per_rank = 2 if virtual else 4 // schedule.num_ranks
    return ScheduleShape(name, per_rank, virtual, directions)


@lru_cache(maxsize=4096)
def placement(name: str, stages: int, virtual: int | None) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(direction, stage) pairs on each rank, from a build with 2 micro-batches per stage (every
    family accepts that count)."""
    options = {VIRTUAL_OPTION: virtual} if virtual else {}
    schedule = registry.build(name, stages, 2 * stages, **options)
    on_rank: list[set] = [set() for _ in range(schedule.num_ranks)]
    for (d, s), r in schedule.placement().items():
        on_rank[r].add((d, s))
    return tuple(tuple(sorted(held)) for held in on_rank)


def shapes(names: list[str]) -> list[ScheduleShape]:
    """The shapes of ``names`` (ScheduleError for an unknown one)."""
    return [shape(n) for n in names]
