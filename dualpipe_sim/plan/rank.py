"""Which candidates to simulate, and the order of the results.

Ranking: candidates simulated and fitting the device first, by tokens/s per
GPU (ties: less peak memory, then the enumeration order); then simulated ones
that do not fit; then those only estimated; then the pruned ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .estimate import Estimate
from .space import Candidate

SIMULATE_SHARE = 0.05  # the best 5% by estimate are always simulated ...
NEAR_BEST = 0.10  # ... and every candidate whose estimate is within 10% of the best
MEMORY_SLACK = 0.10  # an estimate up to 10% over the device may still fit once simulated


@dataclass
class Row:
    """One plan.csv row: the candidate, its estimate and, once simulated, its figures."""

    index: int  # enumeration order
    candidate: Candidate
    estimate: Estimate | None = None
    pruned: str = ""
    simulated: dict | None = None  # run_point's fields: status, reason and the scalar metrics
    tokens_per_second_per_gpu: float | None = None
    mfu: float | None = None

    @property
    def ok(self) -> bool:
        return self.simulated is not None and self.simulated.get("status") == "ok"

    @property
    def fits(self) -> bool | None:
        if self.ok:
            return self.simulated.get("fits")
        return None

    @property
    def peak_memory(self) -> float | None:
        return self.simulated.get("memory.total") if self.ok else None


def estimate_order(rows: list[Row], device: float | None) -> list[Row]:
    """Candidates by estimated step time, those estimated to fit the device first."""
    return sorted(rows, key=lambda r: (not likely_fits(r, device), r.estimate.step_time, r.index))


def likely_fits(row: Row, device: float | None) -> bool:
    """The memory estimate within MEMORY_SLACK of the device (estimate.py)."""
    return device is None or row.estimate.memory <= device * (1 + MEMORY_SLACK)


def to_simulate(ordered: list[Row], budget: int, device: float | None) -> list[Row]:
    """Of the candidates likely to fit: the first max(budget, 5%) by estimate and every one within 10% of
    the best estimate; then others, best estimate first, while the budget lasts."""
    likely = [r for r in ordered if likely_fits(r, device)]
    if not likely:
        return ordered[:budget]
    n = max(budget, math.ceil(SIMULATE_SHARE * len(likely)))
    best = likely[0].estimate.step_time
    chosen = [r for i, r in enumerate(likely) if i < n or r.estimate.step_time <= best * (1 + NEAR_BEST)]
    return chosen + [r for r in ordered if not likely_fits(r, device)][: max(0, budget - len(chosen))]


def ranked(rows: list[Row]) -> list[Row]:
    def key(r: Row):
        if r.ok:
            group = 0 if r.fits is not False else 1
            return (group, -(r.tokens_per_second_per_gpu or 0.0), r.peak_memory or 0.0, r.index)
        if r.estimate is not None and not r.pruned and r.simulated is None:
            return (2, r.estimate.step_time, 0.0, r.index)
        return (3 if r.simulated is not None else 4, 0.0, 0.0, r.index)

    return sorted(rows, key=key)
