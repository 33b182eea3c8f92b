"""The estimate's step times worked out in forked worker processes (plan/step_times.py).

On the small model of test_plan.py: each candidate's step time from two workers, in tasks of
three or more (whole schedule shapes, finishing out of order), equals its step time worked out
alone on a FigureCache of its own (no figure another candidate left behind), and the whole plan
with two processes gives the rows of the plan with one.  The duplicate rule keeps its order: a
step refused for the first candidate of a key hands the key to the next.
"""

from __future__ import annotations

import json

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import step_estimate
from dualpipe_sim.plan import step_times as st
from dualpipe_sim.plan.estimate import FigureCache, memory_estimate, step_time

from test_plan import TINY


def _plan(config, jobs):
    return ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b", "dualpipev"], jobs=jobs)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def one_job(config):
    return _plan(config, 1)


def _estimated(result):
    return [r for r in result.rows if r.estimate is not None and r.estimate.step_time is not None]


def _row_view(r):
    return (r.index, r.candidate, r.pruned, r.estimate, r.simulated, r.tokens_per_second_per_gpu, r.mfu)


@pytest.mark.parametrize("at_once", [False, True])
def test_workers_give_each_candidate_its_step_alone(one_job, monkeypatch, at_once):
    # at_once: every shape's candidates replayed together through the rounds (step_estimate.replayed_many)
    if at_once:
        monkeypatch.setattr(step_estimate, "LOOP_US", 1e9)
    rows = _estimated(one_job)
    assert len(rows) == 116  # test_plan.py's hand count of the candidates estimated (84 before s20l)
    cands = [r.candidate for r in rows]
    cache = FigureCache(one_job.base)
    for c in cands:  # the memory pass fills the cache before the workers fork, as in plan()
        memory_estimate(cache, c)
    monkeypatch.setattr(st, "BATCH", 3)
    parallel = st.all_step_times(cache, cands, jobs=2)
    alone = [step_time(FigureCache(one_job.base), c) for c in cands]  # a cache of its own each
    assert parallel == alone  # floats to the bit, in the candidates' order
    assert parallel == [r.estimate.step_time for r in rows]
    assert len(set(parallel)) > 40  # distinct figures: a misplaced one would show


def test_a_plan_with_two_processes_has_the_rows_of_one(config, one_job, monkeypatch):
    monkeypatch.setattr(st, "BATCH", 5)
    two = _plan(config, 2)
    assert [_row_view(r) for r in two.rows] == [_row_view(r) for r in one_job.rows]
    assert two.pruned == one_job.pruned


def test_the_memory_pass_in_two_processes_has_the_rows_of_one(config, one_job, monkeypatch):
    """memory_and_steps: blocks of 7 neighbours (ending mid-layout, so derivations are redone in the
    other worker and keys straddle blocks), pruned and estimated in two workers: the rows of one."""
    calls = []
    real = st.memory_and_steps

    def spy(*args, **kwargs):
        calls.append(out := real(*args, **kwargs))
        return out

    monkeypatch.setattr(st, "BLOCK", 7)
    monkeypatch.setattr(ds_plan, "memory_and_steps", spy)
    two = _plan(config, 2)
    assert len(calls) == 1 and calls[0] is not None  # the pass ran in the workers
    assert [_row_view(r) for r in two.rows] == [_row_view(r) for r in one_job.rows]
    assert two.pruned == one_job.pruned


def test_a_refused_step_hands_its_key_to_the_next_candidate(config, monkeypatch):
    """Every candidate made a duplicate of every other; the first's step refused: the second is
    estimated and the rest are its duplicates (the rule as it runs candidate by candidate)."""
    import dualpipe_sim.plan as plan_pkg

    real_prune = plan_pkg._prune

    def prune_all_alike(cache, row, device):
        reason, key = real_prune(cache, row, device)
        return reason, (None if reason else "one key")

    gathered, seen = [], []
    real_inputs, real_step = st.step_inputs, st.step_time

    def refuse_first(cache, cand):  # the step's inputs gathered for the key's first: refused
        gathered.append(cand)
        return "refused for the test" if len(gathered) == 1 else real_inputs(cache, cand)

    def step_alone(cache, cand):  # the next candidate of the key, worked out alone (step_times.one)
        seen.append(cand)
        return real_step(cache, cand)

    monkeypatch.setattr(plan_pkg, "_prune", prune_all_alike)
    monkeypatch.setattr(st, "step_inputs", refuse_first)
    monkeypatch.setattr(st, "step_time", step_alone)
    result = _plan(config, 1)
    left = sorted((r for r in result.rows if not r.pruned or r.pruned.startswith(("model: refused", "duplicate"))),
                  key=lambda r: r.index)  # fmt: skip
    first, second, *rest = left
    assert first.pruned == "model: refused for the test" and first.estimate.step_time is None
    assert not second.pruned and second.estimate.step_time == real_step(FigureCache(result.base), second.candidate)
    assert rest and all(r.pruned == f"duplicate: same costs and memory as candidate {second.index}" for r in rest)
    assert gathered == [first.candidate]
    assert seen == [second.candidate]  # no step worked out for a duplicate


def test_simulated_candidates_sharing_a_memo_give_their_figures_alone(one_job):
    """plan/simulate.py: a worker's candidates share one derive.Memo; each one's scalars equal its
    run on a Memo of its own (the layouts differ in tensor, pipeline, micro-batch size, ZeRO...)."""
    from dualpipe_sim.model import derive
    from dualpipe_sim.plan import simulate

    todo = [tuple(r.candidate.overrides()) for r in one_job.rows if r.simulated is not None]
    assert len(todo) > 10 and len({o for o in todo}) == len(todo)
    shared = derive.Memo()
    together = [simulate.run_candidate(one_job.base, o, shared) for o in todo]
    alone = [simulate.run_candidate(one_job.base, o, derive.Memo()) for o in todo]
    assert together == alone and all(f["status"] == "ok" for f in together)
    assert len({f["step.total"] for f in together}) > 5
