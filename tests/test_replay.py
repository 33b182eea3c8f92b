"""The replay core (replay.py) gives the SimPy engine's trace, row for row, async and
blocking P2P alike, and run() uses it; validation is the same replay at zero cost.

Random schedules are built as random topological orders of the op graph (so
they can always finish), with random placements (any stage on any rank, two
directions), split backwards, overlapped FB pairs and costs drawn from a few
round values, so that ties (two results landing together, zero-length I or W,
a link freeing as a new send is ready) happen often.
"""

import gc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpipe_sim import simulation
from dualpipe_sim.engine import replay
from dualpipe_sim.engine import simpy_engine as engine
from dualpipe_sim.engine.simpy_engine import DeadlockError
from dualpipe_sim.engine.simpy_engine import simulate as engine_simulate
from dualpipe_sim.engine.validate import validate
from dualpipe_sim.inputs import scenario, variability
from dualpipe_sim.inputs.costs import COMPONENTS, Chunk, Component, CostModel
from dualpipe_sim.readers import metrics
from dualpipe_sim.readers.metrics import compute_metrics, union_length
from dualpipe_sim.schedules import registry
from dualpipe_sim.schedules.ir import FB, Op, Schedule, ScheduleError
from dualpipe_sim.schedules.rules import Channel


def simulate(schedule, costs):
    """The replay core, as run() calls it."""
    return simulation.simulate(schedule, costs)


def assert_same_trace(fast, slow):
    for name in ("compute", "comm", "memory"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    assert fast.stages_on_rank == slow.stages_on_rank
    assert fast.parameter_bytes == slow.parameter_bytes
    assert fast.meta == slow.meta
    assert (fast.schedule, fast.stages, fast.microbatches, fast.ranks) == (
        slow.schedule, slow.stages, slow.microbatches, slow.ranks,
    )
    assert compute_metrics(fast) == compute_metrics(slow)


def random_schedule(rnd, ranks, stages, microbatches, split_p, pair_p) -> Schedule:
    place = {(d, s): rnd.randrange(ranks) for d in (0, 1) for s in range(stages)}
    direction = [rnd.randrange(2) for _ in range(microbatches)]
    needs, todo = {}, []
    for m in range(microbatches):
        d = direction[m]
        for s in range(stages):
            f = Op("F", m, s, d)
            needs[f] = [Op("F", m, s - 1, d)] if s else []
            grad = [("G", m, s + 1)] if s < stages - 1 else []
            if rnd.random() < split_p:
                i, w = Op("I", m, s, d), Op("W", m, s, d)
                needs[i], needs[w] = [f, *grad], [i]
                todo += [f, i, w]
            else:
                b = Op("B", m, s, d)
                needs[b] = [f, *grad]
                todo += [f, b]
    done, lists = set(), [[] for _ in range(ranks)]

    def finished(op):
        done.add(op)
        if op.kind in ("B", "I"):
            done.add(("G", op.microbatch, op.stage))

    while todo:
        ready = [op for op in todo if all(n in done for n in needs[op])]
        op = rnd.choice(ready)
        rank = place[(op.direction, op.stage)]
        partners = [o for o in ready if o.kind in ("B", "I") and place[(o.direction, o.stage)] == rank]
        if op.kind == "F" and partners and rnd.random() < pair_p:
            other = rnd.choice(partners)
            lists[rank].append(FB(op, other))
            for x in (op, other):
                todo.remove(x)
                finished(x)
        else:
            lists[rank].append(op)
            todo.remove(op)
            finished(op)
    return Schedule("random", stages, microbatches, tuple(tuple(a) for a in lists))


def random_costs(draw, stages) -> CostModel:
    per = lambda values: tuple(draw(st.sampled_from(values)) for _ in range(stages))  # noqa: E731
    vary = draw(st.none() | st.builds(
        variability.Variability, seed=st.integers(0, 9), distribution=st.sampled_from(variability.DISTRIBUTIONS),
        cv=st.sampled_from((0.0, 0.1, 0.3)), slowdown=st.sampled_from(((), ((0, 1.5),))),
    ), label="variability")  # fmt: skip
    if draw(st.booleans(), label="components"):
        times = tuple(draw(st.sampled_from((0.0, 0.5, 1.0, 2.0)) if c.may_be_zero else st.sampled_from((0.5, 1.0, 2.0)))
                      for c in Component)  # fmt: skip
        order = draw(st.sampled_from((Chunk.order, ((Channel.COMPUTE, ()), (Channel.A2A, ())))), label="order")
        chunk = Chunk(draw(st.integers(1, 3)), times, draw(st.sampled_from((1.0, 1.5))), order)
        return CostModel.from_chunk(stages, chunk, p2p=draw(st.sampled_from((0.0, 0.5, 3.0))), variability=vary,
                                    p2p_mode=draw(st.sampled_from(("async", "blocking")), label="p2p_mode"))
    backward = per((1.0, 2.0, 3.0))
    fractions = [draw(st.sampled_from((0.0, 0.5, 1.0))) for _ in range(stages)]  # W = 0 and W = B (I = 0) included
    return CostModel(
        forward=per((0.5, 1.0, 1.5, 2.0)),
        backward=backward,
        weight=tuple(b * f for b, f in zip(backward, fractions)),
        overlapped=draw(st.none() | st.just(per((1.0, 2.0, 2.5, 4.0)))),
        p2p=draw(st.sampled_from((0.0, 0.25, 0.5, 1.0, 3.0))),
        activation_bytes=per((0.0, 1.0, 2.5)),
        parameter_bytes=per((1.0, 3.0)),
        variability=vary,
        p2p_mode=draw(st.sampled_from(("async", "blocking")), label="p2p_mode"),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_schedules_same_trace_as_engine(data):
    ranks = data.draw(st.integers(1, 4), label="ranks")
    stages = data.draw(st.integers(1, 5), label="stages")
    microbatches = data.draw(st.integers(1, 5), label="microbatches")
    split_p = data.draw(st.sampled_from((0.0, 0.5, 1.0)), label="split")
    pair_p = data.draw(st.sampled_from((0.0, 0.5, 1.0)), label="pair")
    schedule = random_schedule(data.draw(st.randoms(use_true_random=False)), ranks, stages, microbatches, split_p, pair_p)
    validate(schedule)  # the generator only makes schedules that can run
    costs = random_costs(data.draw, stages)
    fast = simulate(schedule, costs)
    assert_same_trace(fast, engine_simulate(schedule, costs))
    assert metrics.p2p_exposed(fast) == pytest.approx(reference_p2p_exposed(fast), abs=1e-9)


def registered_shapes():
    """Every registered family on two small shapes it accepts."""
    out = []
    for name, family in registry.families().items():
        found = 0
        for stages in (2, 4, 6, 8):
            for mbs in (stages, 2 * stages, 3 * stages + 1):
                opts = {"chunks_per_rank": 2} if "chunks_per_rank" in family.options else {}
                if found < 2 and family.check(stages, mbs, **opts) is None:
                    out.append((name, stages, mbs, opts))
                    found += 1
    return out


@pytest.mark.parametrize("name,stages,mbs,opts", registered_shapes())
@pytest.mark.parametrize("p2p", [0.0, 0.5, 1.7])
@pytest.mark.parametrize("components", [False, True])
@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_registered_schedules_same_trace_as_engine(name, stages, mbs, opts, p2p, components, mode):
    schedule = registry.build(name, stages, mbs, **opts)
    shared = dict(p2p=p2p, activation_bytes=(1.0,) * stages, parameter_bytes=(1.0,) * stages, p2p_mode=mode)
    if components:  # the deepseek-like arrangement on small round numbers, 2 layers
        times = tuple(1.0 + 0.5 * (c % 3) for c in Component)
        costs = CostModel.from_chunk(stages, Chunk(2, times), **shared)
    else:
        costs = CostModel(
            forward=tuple(1.0 + 0.25 * (s % 3) for s in range(stages)),
            backward=(2.0,) * stages,
            weight=(1.0,) * stages,
            overlapped=(2.5,) * stages,
            **shared,
        )
    assert_same_trace(simulate(schedule, costs), engine_simulate(schedule, costs))


@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_run_uses_the_replay_core_not_simpy(monkeypatch, mode):
    data = {
        "pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8},
        "costs": {"forward": 1.0, "backward": 2.0, "overlapped": 2.5},
        "comm": {"p2p": 0.5, "p2p_mode": mode},
    }
    expected = engine_simulate(simulation.build_schedule(scenario.from_dict(data)), scenario.from_dict(data).cost_model())

    def no_engine(*args):
        raise AssertionError("the SimPy engine ran")

    monkeypatch.setattr(engine, "simulate", no_engine)
    result = simulation.run(scenario.from_dict(data))
    assert_same_trace(result.trace, expected)


STUCK = Schedule(
    "custom", 2, 2,
    ((Op("F", 0, 0), Op("B", 1, 0), Op("F", 1, 0), Op("B", 0, 0)),
     (Op("F", 0, 1), Op("B", 0, 1), Op("F", 1, 1), Op("B", 1, 1))),
)  # fmt: skip
# An FB pair of one micro-batch: its backward would wait for its own forward.
SELF_PAIR = Schedule("custom", 1, 1, ((FB(Op("F", 0, 0), Op("B", 0, 0)),),))


@pytest.mark.parametrize("schedule", [STUCK, SELF_PAIR])
def test_replay_refuses_in_validates_words(schedule):
    costs = CostModel.uniform(schedule.stages, p2p=0.1)
    with pytest.raises(ScheduleError) as fast:
        simulate(schedule, costs)
    with pytest.raises(ScheduleError) as check:
        validate(schedule)
    assert str(fast.value) == str(check.value)
    with pytest.raises(DeadlockError):  # the SimPy engine, without validate() first, finds it on its own
        engine_simulate(schedule, costs)


@pytest.mark.parametrize("schedule", [STUCK, SELF_PAIR])
@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_run_reports_deadlocks_alike_on_both_paths(schedule, mode):
    # run() replays once, with costs; validate() replays at zero cost: one core, one wording.
    data = {
        "pipeline": {"schedule": "1f1b", "stages": schedule.stages, "microbatches": 2},
        "chunk": {"layers": 1, **{name: 1.0 for name in COMPONENTS}},
        "comm": {"p2p": 0.5, "p2p_mode": mode},
    }
    scn = scenario.from_dict(data)
    with pytest.raises(ScheduleError) as expected:
        validate(schedule)
    with pytest.raises(ScheduleError) as got:
        simulation.run(scn, schedule)
    assert str(got.value) == str(expected.value)


def test_blocking_waits_for_the_previous_actions_sends_hand_worked():
    """F0 F1 B0 B1 on 2 stages, 2 ranks, F = 1, B = 2, p2p = 3, worked by hand.

    Async: rank 0 runs F0 0-1 (lands 4) and F1 1-2 (the link is busy until 4: 4-7);
    rank 1 F0 4-5, F1 7-8, B0 8-10 (gradient 10-13), B1 10-12 (link busy: 13-16);
    rank 0 B0 13-15, B1 16-18.  Blocking: each call first waits for the previous call's
    sends to land: rank 0's F1 waits for F0's send (4-5, sent 5-8); rank 1 F0 4-5, F1 8-9,
    B0 9-11 (gradient 11-14), B1 waits for it: 14-16 (gradient 16-19); rank 0 B0 waits
    for F1's send and the gradient: 14-16, B1 19-21."""
    order = lambda s: (Op("F", 0, s), Op("F", 1, s), Op("B", 0, s), Op("B", 1, s))  # noqa: E731
    schedule = Schedule("custom", 2, 2, (order(0), order(1)))
    want = {
        "async": [(0, "F", 0, 0, 1), (0, "F", 1, 1, 2), (0, "B", 0, 13, 15), (0, "B", 1, 16, 18),
                  (1, "F", 0, 4, 5), (1, "F", 1, 7, 8), (1, "B", 0, 8, 10), (1, "B", 1, 10, 12)],
        "blocking": [(0, "F", 0, 0, 1), (0, "F", 1, 4, 5), (0, "B", 0, 14, 16), (0, "B", 1, 19, 21),
                     (1, "F", 0, 4, 5), (1, "F", 1, 8, 9), (1, "B", 0, 9, 11), (1, "B", 1, 14, 16)],
    }  # fmt: skip
    for mode, rows in want.items():
        costs = CostModel(forward=(1.0, 1.0), backward=(2.0, 2.0), weight=(0.0, 0.0), p2p=3.0, p2p_mode=mode,
                          activation_bytes=(1.0, 1.0), parameter_bytes=(1.0, 1.0))
        for trace in (simulate(schedule, costs), engine_simulate(schedule, costs)):
            got = sorted((int(r["rank"]), int(r["action"]), "FBIW"[r["kind"]], int(r["microbatch"]), r["start"], r["end"])
                         for r in trace.compute)  # fmt: skip
            assert [row[:1] + row[2:] for row in got] == rows, mode


def reference_p2p_exposed(trace) -> float:
    """The definition, one action at a time (metrics.p2p_exposed is the vectorised form):
    each transfer clipped to the wait between the previous action's end and its action's start
    (an action's rows: its compute and its all-to-all)."""
    p2p = trace.comm[(trace.comm["channel"] == 0) & (trace.comm["action"] >= 0)]
    a2a = trace.comm[trace.comm["channel"] == 1]
    fields = ["rank", "action", "start", "end"]
    rows_of = np.concatenate([trace.compute[fields], a2a[fields]])
    total = 0.0
    for rank, action in {(int(x["peer"]), int(x["action"])) for x in p2p}:
        rows = rows_of[rows_of["rank"] == rank]
        earlier = rows["action"][rows["action"] < action]
        w0 = float(rows[rows["action"] == earlier.max()]["end"].max()) if len(earlier) else 0.0
        w1 = float(rows[rows["action"] == action]["start"].min())
        feeds = p2p[(p2p["peer"] == rank) & (p2p["action"] == action)]
        total += union_length(np.clip(feeds["start"], w0, w1), np.clip(feeds["end"], w0, w1))
    return total


def test_run_restores_the_garbage_collector():
    data = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, "costs": {"forward": 1.0, "backward": 2.0}}
    scn = scenario.from_dict(data)
    assert gc.isenabled()
    simulation.run(scn)
    assert gc.isenabled()
    with pytest.raises(ScheduleError):
        simulation.run(scn, STUCK)
    assert gc.isenabled()
    gc.disable()
    try:
        simulation.run(scn)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


@given(st.lists(st.integers(0, 40), max_size=60), st.integers(0, 200))
@settings(max_examples=60, deadline=None)
def test_dense_ids_number_keys_as_unique_does(keys, extra):
    """replay.dense_ids numbers keys through a table when the key range is small, else by
    np.unique: both give np.unique's distinct keys and inverse."""
    keys = np.array(keys, dtype=np.int64)
    for size in (41, 41 + extra, 10**6):  # the table, and past 4x the keys: np.unique itself
        distinct, inverse = replay.dense_ids(keys, size)
        want, want_inverse = np.unique(keys, return_inverse=True)
        assert distinct.tolist() == want.tolist() and inverse.tolist() == want_inverse.tolist()
