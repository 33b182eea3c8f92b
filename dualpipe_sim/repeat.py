"""Repeated runs: one scenario over seeds seed, seed+1, ..., seed+n-1.

What varies between seeds is the random model of variability.py (jitter);
this module only runs the seeds and summarises makespan and bubble ratio as
the repeat.json document: per-seed values and their p50 / p95 / max / min /
mean (numpy's linear-interpolated percentiles).
"""

from __future__ import annotations

import numpy as np

from . import simulation
from .schedules.ir import Schedule
from .progress import Progress, report

MAX_REPEAT = 10_000


def repeat_problem(n: int, seed: int) -> str | None:
    """None when ``n`` runs from ``seed`` are allowed, else the rule they break."""
    if not 1 <= n <= MAX_REPEAT:
        return f"must be a whole number from 1 to {MAX_REPEAT}, got {n}"
    if seed + n > 2**64:
        return f"the seeds {seed}..{seed + n - 1} go past 2**64 - 1; use a smaller seed"
    return None


def repeat(scenario, n: int, schedule: Schedule | None = None, first=None, progress: Progress | None = None) -> dict:
    """Run ``n`` seeds (scenario.seed, +1, ...); per-seed makespan and bubble ratio and
    their p50 / p95 / max (numpy's linear-interpolated percentiles).  ``first`` may be
    the result already computed for scenario.seed; ``progress`` is told of each seed
    (progress.py)."""
    runs = []
    for i in range(n):
        seeded = scenario.model_copy(update={"seed": scenario.seed + i})
        result = first if (i == 0 and first is not None) else simulation.run(seeded, schedule)
        m = result.metrics
        runs.append({"seed": seeded.seed, "makespan": m.makespan, "bubble_ratio": m.bubble_ratio})
        report(progress, i + 1, n, f"seed {seeded.seed}")
    summary = {}
    for key in ("makespan", "bubble_ratio"):
        values = np.array([r[key] for r in runs])
        p50, p95 = np.percentile(values, [50, 95])
        summary[key] = {"p50": float(p50), "p95": float(p95), "max": float(values.max()),
                        "min": float(values.min()), "mean": float(values.mean())}  # fmt: skip
    jitter = scenario.costs.jitter
    return {
        "schedule": m.schedule,
        "repeats": n,
        "jitter": None if jitter is None else {"distribution": jitter.distribution, "cv": jitter.cv},
        "slowdown": {str(r): f for r, f in sorted(scenario.ranks.slowdown.items())},
        "summary": summary,
        "runs": runs,
    }
