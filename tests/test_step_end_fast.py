"""The step's end as plan's estimate reads it (s15c): step.rows_of's unsorted tuples and step_estimate.step_end_ms's
last end, against the paths they replace, bit for bit.

* ``_fifo`` (Link.carry inline) against a replay.Link fed the same jobs, ties included;
* ``step_end_ms`` (the largest end of rows_of's tuples) against the sorted STEP_DTYPE table simulate_step makes
  (its "end" column's max past the makespan), and rows_of's tuples against that table, on every schedule family
  with grad-sync buckets or shares, tails, cross-copy sums, ready and pp-aligned launches, a shared NIC and compute
  slowed under the syncs.
"""

from __future__ import annotations

import numpy as np
import pytest

from dualpipe_sim.engine import step as step_py
from dualpipe_sim.engine.replay import Link
from dualpipe_sim.engine.trace import STEP_DTYPE
from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed, step_end_ms, step_rows, tail
from dualpipe_sim.step_costs import StepCosts


def _linked(jobs):
    link = Link()
    return [(s, *link.carry(release, length)) for release, s, _, length in sorted(jobs)]


def test_fifo_is_a_link():
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 40):
        releases = rng.choice([0.0, 1.0, 2.5], n) + rng.choice([0.0, 0.1], n)  # ties in release
        jobs = [(float(r), int(rng.integers(0, 3)), k, float(rng.uniform(0.0, 2.0)))
                for k, r in enumerate(releases)]  # fmt: skip
        assert step_py._fifo(jobs) == _linked(jobs)
    assert step_py._fifo([(2.0, 0, 1, 1.0), (0.0, 1, 1, 3.0)]) == [(1, 0.0, 3.0), (0, 3.0, 4.0)]  # by hand: queued


SHAPES = [("1f1b", 4, 9, None), ("zb-h1", 4, 8, None), ("interleaved-1f1b", 8, 8, 2), ("dualpipev", 8, 10, None),
          ("dualpipe", 4, 8, None), ("chimera", 4, 8, None), ("1f1b-overlap", 3, 7, None), ("zbv", 4, 8, None)]  # fmt: skip


def _step(rng, stages: int, overlap: bool, launch: str, shared: bool, slowed: bool, shares: bool) -> StepCosts:
    return StepCosts(tuple(rng.uniform(0.5, 6.0, stages)), tuple(rng.uniform(0.0, 2.0, stages)),
                     tuple(rng.uniform(0.1, 1.0, stages)), overlap_grad_sync=overlap,
                     grad_sync_buckets=tuple(int(k) for k in rng.integers(1, 40, stages)), grad_sync_launch=launch,
                     nic_shared=shared, dp_comm_slowdown=tuple(rng.uniform(1.0, 1.4, stages)) if slowed else (),
                     grad_sync_tail=tuple(rng.uniform(0.0, 0.3, stages)),
                     grad_sync_shares=((0.25, 0.75),) * stages if shares else ())  # fmt: skip


@pytest.mark.parametrize("name,stages,m,virtual", SHAPES)
@pytest.mark.parametrize("overlap,launch,shared,slowed,shares", [
    (True, "ready", False, True, False), (True, "pp-aligned", True, True, False), (False, "ready", True, False, False),
    (True, "ready", True, True, True), (True, "pp-aligned", False, False, True)])  # fmt: skip
def test_step_end_is_the_tables_last_end(name, stages, m, virtual, overlap, launch, shared, slowed, shares):
    rng = np.random.default_rng(stages * m + 7 * overlap + 3 * shared)
    b = built(name, stages, m, virtual)
    for _ in range(3):
        f = tuple(rng.uniform(1.0, 2.0, stages))
        costs = StageCosts(f, tuple(2 * x for x in f), tuple(rng.uniform(0.3, 0.9, stages)), (0.0,) * stages,
                           tuple(rng.uniform(0.0, 0.5, stages)), 1.2)  # fmt: skip
        run = replayed(b, costs, float(rng.choice([0.0, 0.1])), False)
        step = _step(rng, stages, overlap, launch, shared, slowed, shares)
        table = step_rows(b, run, step)  # simulate_step: the sorted STEP_DTYPE table
        assert len(table) > stages
        assert step_end_ms(b, run, step) == max(0.0, float(table["end"].max()) - run.makespan)
        unsorted = np.array(step_py.rows_of(tail(b, run), step), dtype=STEP_DTYPE)
        assert np.sort(unsorted, order=["rank", "kind", "start", "stage"]).tobytes() == \
            np.sort(table, order=["rank", "kind", "start", "stage"]).tobytes()  # fmt: skip
