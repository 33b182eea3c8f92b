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


# the pruning reason of an ETP = tensor candidate left out by beyond_top (its figures follow in parentheses)
BEYOND_TOP = "not simulated: its compute alone outlasts the top table's slowest step"
FLOOR_MARGIN = 1e-9  # relative: the floor and the simulated steps add the same figures in other orders


def split_later(chosen: list[Row], search_expert_tensor: bool) -> tuple[list[Row], list[Row]]:
    """The chosen rows to simulate first, and (with search_expert_tensor) the ETP = tensor ones to simulate after
    them, those beyond_top leaves out excepted; without the search, all first and none after."""
    if not search_expert_tensor:
        return chosen, []
    later = [r for r in chosen if r.candidate.expert_tensor not in (None, 1)]
    return [r for r in chosen if r.candidate.expert_tensor in (None, 1)], later


def floor_holds(base: dict) -> bool:
    """Whether estimate.compute_floor bounds every candidate's simulated step: no random or per-rank durations
    (costs.jitter, ranks.slowdown, hardware.gpu_variability), which could shorten an op."""
    return "costs" not in base and "ranks" not in base and base["hardware"].get("gpu_variability") is None


def beyond_top(first: list[Row], later: list[Row], top: int, holds: bool) -> list[Row]:
    """Of ``later`` (not simulated yet), the rows that may still reach the top ``top`` once ``first`` is simulated;
    the others are pruned, their reason saying why.  The top table is the ``top`` fitting simulated rows of most
    tokens/s, the same GPUs and batch for all, so of least step time: a row whose step is at least its
    compute_floor, above the ``top``-th least step of ``first``'s fitting ones, would rank after ``top`` rows and
    leaves the table as it is.  Judged on ``first`` alone (not on ``later`` as they finish, in any order), so that
    the rows simulated are the same whatever the order and the number of processes."""
    steps = sorted(r.simulated["step.total"] for r in first if r.ok and r.fits is not False
                   and r.simulated.get("step.total") is not None)  # fmt: skip
    if not holds or len(steps) < top:
        return later
    slowest = steps[top - 1]
    kept = []
    for row in later:
        floor = row.estimate.compute_floor
        if floor > slowest * (1 + FLOOR_MARGIN):
            row.pruned = (f"parallel.expert_tensor: {BEYOND_TOP} (its compute at least {floor:.3f} ms a step, the "
                          f"top {top}'s slowest step {slowest:.3f} ms)")  # fmt: skip
        else:
            kept.append(row)
    return kept
