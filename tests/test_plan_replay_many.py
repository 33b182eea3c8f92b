"""plan's replays of many candidates at once (plan/step_estimate.py's replayed_many, rounds; estimate.py's
step_times_of): each candidate's figures equal its own replay's to the bit.

The rounds are the replay core's dependencies read off one unit-length replay; evaluating them with numpy over
the candidates adds the same floats in the same pairs and takes maxima (exact in any order), so nothing may move.
Checked here against ``replayed`` (the core's loop, one candidate at a time) on every registered family, dense
and MoE costs, with and without P2P time, async and blocking; against a hand-worked two-stage 1F1B; and the
grouping of step_times_of: candidates differing in any one field of what they are grouped or replayed by get
their own step, equal to their step worked out alone.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dualpipe_sim.plan import step_estimate
from dualpipe_sim.plan.estimate import FigureCache, memory_estimate, step_inputs, step_time, step_times_of
from dualpipe_sim.plan.shapes import VIRTUAL_OPTION
from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed, replayed_many, rounds
from dualpipe_sim.schedules import registry


@pytest.fixture
def always_rounds(monkeypatch):
    """The cost rule set so that every batch of two or more goes through the rounds."""
    monkeypatch.setattr(step_estimate, "LOOP_US", 1e9)


def _same(a, b) -> bool:
    begin = lambda r: np.frombuffer(r.begin, dtype=float) if len(r.begin) else np.empty(0)  # noqa: E731
    return (a.makespan == b.makespan and a.p2p == b.p2p
            and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("rank_end", "copy_ready", "starts", "length", "share"))
            and np.array_equal(begin(a), begin(b)))  # fmt: skip


def _costs(rng, stages: int, moe: bool) -> StageCosts:
    f = rng.uniform(1.0, 2.0, stages)
    b = f * rng.uniform(1.5, 2.5, stages)
    w = b * rng.uniform(0.0, 0.5, stages)
    if not moe:
        return StageCosts(tuple(f), tuple(b), tuple(w))
    return StageCosts(tuple(f), tuple(b), tuple(w), tuple(f * rng.uniform(0, 0.4, stages)),
                      tuple(b * rng.uniform(0, 0.4, stages)), float(rng.uniform(1.0, 1.3)))  # fmt: skip


def _shapes():
    """(family, stages, micro-batches, virtual) that build, for every registered family, on 2, 4 and 8 ranks."""
    out = []
    for name in registry.families():
        for ranks, per_rank in ((2, 1), (4, 1), (4, 2), (8, 2)):
            for virtual in (None, 2):
                for m in (4, 8, 12):
                    options = {VIRTUAL_OPTION: virtual} if virtual else {}
                    try:
                        registry.build(name, ranks * (virtual or per_rank), m, **options)
                    except ValueError:
                        continue
                    out.append((name, ranks * (virtual or per_rank), m, virtual))
    return out


def test_many_replays_at_once_are_each_replay_alone(always_rounds):
    shapes = _shapes()
    assert len({s[0] for s in shapes}) == len(registry.families())  # every family is checked
    rng = np.random.default_rng(14)
    for name, stages, m, virtual in shapes:
        for blocking in (False, True):
            assert rounds(name, stages, m, virtual, blocking) is not None
            costs = [_costs(rng, stages, moe) for moe in (False, True, True, False)]
            # the last stage's first 2 micro-batches lighter (model.defer_embedding_wgrad, StageCosts.deferred)
            costs.append(replace(_costs(rng, stages, False), deferred=(stages - 1, 2, 0.1, 0.2)))
            p2p = [0.0, 0.31, 1.7, 0.0, 0.31]
            many = replayed_many(name, stages, m, virtual, costs, p2p, blocking)
            b = built(name, stages, m, virtual)
            for c, x, got in zip(costs, p2p, many):
                assert _same(got, replayed(b, c, x, blocking)), (name, stages, m, virtual, blocking, x)


def test_many_replays_worked_by_hand(always_rounds):
    # test_plan_estimate.py's two-stage 1F1B, F = (1, 2), B = (2, 4), 3 micro-batches: 21 ms without P2P,
    # 22 with 0.5 ms a transfer async, 23 blocking; the same costs with F and B doubled take twice as long
    cost = StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0))
    double = StageCosts((2.0, 4.0), (4.0, 8.0), (0.0, 0.0))
    runs = replayed_many("1f1b", 2, 3, None, [cost, cost, double], [0.0, 0.5, 1.0], False)
    assert [r.makespan for r in runs] == [21.0, 22.0, 44.0]
    assert runs[0].rank_end.tolist() == [21.0, 19.0] and len(runs[0].begin) == 0  # no P2P time: no transfer rows
    blocked = replayed_many("1f1b", 2, 3, None, [cost, double], [0.5, 1.0], True)
    assert [r.makespan for r in blocked] == [23.0, 46.0]


def test_the_cost_rule_picks_a_way_not_a_figure(monkeypatch):
    # the loop for one candidate, or where the rounds would cost more; the figures are the same either way
    rng = np.random.default_rng(3)
    costs = [_costs(rng, 8, True) for _ in range(3)]
    loop = replayed_many("interleaved-1f1b", 8, 8, 2, costs, [0.2] * 3, True)
    monkeypatch.setattr(step_estimate, "LOOP_US", 1e9)
    called = []
    real = step_estimate.replayed
    monkeypatch.setattr(step_estimate, "replayed", lambda *a: called.append(a) or real(*a))
    at_once = replayed_many("interleaved-1f1b", 8, 8, 2, costs, [0.2] * 3, True)
    assert not called  # the rounds ran
    assert all(_same(a, b) for a, b in zip(loop, at_once))


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """Real step inputs of the small model of test_plan.py (a 1F1B and a DualPipeV candidate)."""
    from dualpipe_sim import plan as ds_plan
    from test_plan import TINY

    path = tmp_path_factory.mktemp("plan") / "tiny.json"
    path.write_text(json.dumps(TINY))
    result = ds_plan(path, 4, 8, 2048, hardware="H100", schedules=["1f1b", "dualpipev"], jobs=1)
    rows = [r for r in result.rows if r.estimate is not None and r.estimate.step_time is not None]
    cache = FigureCache(result.base)
    picked = [max((r for r in rows if r.candidate.schedule == s), key=lambda r: (r.candidate.pipeline, r.index))
              for s in ("1f1b", "dualpipev")]  # fmt: skip
    for r in picked:
        memory_estimate(cache, r.candidate)
    return cache, picked


def slower_hops(hops):
    """A replica's P2P times (step_estimate.Hops: one figure, or NIC, NVLink and the NVLink pairs) doubled plus 0.25 ms."""
    return 2 * hops + 0.25 if isinstance(hops, float) else (2 * hops[0] + 0.25, 2 * hops[1] + 0.25, hops[2])


def test_grouped_steps_tell_apart_every_field_they_group_by(tiny_inputs, always_rounds):
    """Candidates sharing a schedule shape but for one field each (what they are grouped by: micro-batches,
    ranks, blocking; what their replays are told apart by: stage costs, P2P time; and their [step] figures):
    worked out together, each gets its own step, equal to its step worked out alone, and no two are equal."""
    cache, picked = tiny_inputs
    assert [r.candidate.pipeline for r in picked] == [4, 2]  # pipelines of 4 and 2 ranks (DualPipeV: 4 stages)
    for row in picked:
        x = step_inputs(cache, row.candidate)
        assert step_times_of([x]) == [step_time(FigureCache(cache.base), row.candidate)] == [row.estimate.step_time]
        slower = replace(x.costs, forward=tuple(1.5 * f for f in x.costs.forward))
        step = replace(x.step, optimizer=tuple(2 * o + 1.0 for o in x.step.optimizer))
        variants = [x, replace(x, microbatches=x.microbatches + x.ranks), replace(x, blocking=not x.blocking),
                    replace(x, costs=slower), replace(x, p2p=tuple(slower_hops(h) for h in x.p2p)), replace(x, step=step)]
        together = step_times_of(variants)
        assert together == [step_times_of([v])[0] for v in variants]  # each alone: a group of one
        assert len(set(together)) == len(variants), together


def test_a_refused_shape_or_step_end_says_so_for_its_candidates_only(tiny_inputs):
    cache, picked = tiny_inputs
    x = step_inputs(cache, picked[0].candidate)
    refused = replace(x, step="step.grad_sync: refused for the test")
    out = step_times_of([x, refused, "a layout refused for the test", replace(x, schedule="1f1b-nonexistent")])
    assert out[0] == picked[0].estimate.step_time
    assert out[1] == "step.grad_sync: refused for the test"
    assert out[2] == "a layout refused for the test"
    assert isinstance(out[3], str) and "1f1b-nonexistent" in out[3]
