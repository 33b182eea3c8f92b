"""Work done once instead of again changes no figure (issue 21, s12b: ``plan`` faster, its answers the same).

* ``Scenario.step_costs`` works out the grad-sync buckets per stage (ddp_buckets.per_stage) and the compute's
  slowdown under a data-parallel collective (comm_slowdown.dp_comm_slowdown) once per call and hands them to
  its grad sync, optimizer and StepCosts (step_memo.per_call): each figure equals the one worked out alone,
  and each shared part is worked out once;
* step.py reads each rank's weight-gradient ops (``_weight_ops``, numpy) once for both passes of Megatron's
  pp-aligned launches, and ``_stretch`` takes each rank's rows and grad syncs in one pass: both equal the plain
  loops they replaced (written out below) on random replays of small schedules, to the bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.engine import step as step_py
from dualpipe_sim.engine.trace import GRAD_SYNC, StepRow
from dualpipe_sim.inputs import scenario as scenario_mod
from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.model import ddp_buckets
from dualpipe_sim.model import comm_slowdown, derived_step, grad_sync, step_memo
from dualpipe_sim.plan.request import base_scenario
from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed, trace_of
from dualpipe_sim.schedules.rules import KIND_CODES, WEIGHT_GRADS
from dualpipe_sim.step_costs import StepCosts

ROOT = Path(__file__).resolve().parents[1]


def _llama(sets):
    return sections_only(apply_overrides(base_scenario(ROOT / "scenarios/models/llama3-70b.json", "H100", 8192, []), sets))


CASES = {
    # interleaved 1F1B at ZeRO 2 with the overlapped gather: the optimizer's gather term reads the slowdown,
    # the grad sync the buckets, and both go into StepCosts
    "llama-interleaved-zero2": lambda: _llama(["pipeline.stages=8", "pipeline.microbatches=16", "parallel.tensor=4",
                                               "parallel.data=2", "parallel.zero=2", 'pipeline.schedule="interleaved-1f1b"',
                                               "pipeline.chunks_per_rank=2"]),  # fmt: skip
    "llama-1f1b-zero1": lambda: _llama(["pipeline.stages=4", "pipeline.microbatches=8", "parallel.tensor=4",
                                        "parallel.data=4", "parallel.zero=1"]),  # fmt: skip
    # NeMo on apex: the held bucket group's tail (grad_sync_parts, nemo_sync) reads the buckets too
    "nemo-held": lambda: scenario_mod.load(ROOT / "scenarios/validation/mlperf31-gpt3-4096.toml"),
}


def _alone(sc, derived) -> StepCosts:
    """StepCosts with every figure worked out on its own, without a shared memo (the code before s12b)."""
    st = sc.step
    figures = {key: derived_step.derived_sync(sc, key, derived) for key, setting in
               (("grad_sync", st.grad_sync), ("cross_copy_sync", st.cross_copy_sync), ("optimizer", sc.optimizer_setting()))
               if setting == "derived"}  # fmt: skip
    # finalize_model_grads' tail (s12d)
    tail = grad_sync.grad_sync_tail(sc, derived) if st.grad_sync == "derived" else ()
    tail = tail if any(tail) else ()
    slow = comm_slowdown.dp_comm_slowdown(sc, st.dp_comm_sms, derived) if st.dp_comm_sms else ()
    return StepCosts(figures["grad_sync"], figures.get("cross_copy_sync", (0.0,) * sc.pipeline.stages),
                     figures["optimizer"], sc.grad_sync_overlapped(), st.cross_copy_eager, ddp_buckets.per_stage(sc, derived),
                     sc.grad_sync_launch(), st.grad_sync_shares_p2p, slow, tail,
                     grad_sync_shares=grad_sync.grad_sync_shares_fsdp(sc, derived, figures["grad_sync"]),
                     every_backward=grad_sync.every_backward_fsdp(sc, derived))  # fmt: skip  (s20n: ZeRO 2's)


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_costs_equal_their_figures_worked_out_alone(case):
    sc = CASES[case]()
    derived = sc.derived()
    shared, alone = sc.step_costs(derived), _alone(sc, derived)
    assert shared == alone
    # the cases reach what is shared: buckets per stage, a slowdown, and (NeMo) a tail
    assert shared.dp_comm_slowdown and any(f != 1.0 for f in shared.dp_comm_slowdown)
    if case == "nemo-held":
        assert any(shared.grad_sync_tail)
    else:
        assert shared.grad_sync_buckets[0] > 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_costs_work_the_shared_parts_out_once(case, monkeypatch):
    sc = CASES[case]()
    derived = sc.derived()
    calls = {"buckets": 0, "slowdown": 0}
    per_stage, slowdown = ddp_buckets.per_stage, comm_slowdown.dp_comm_slowdown

    def counted_buckets(*args, **kw):
        calls["buckets"] += 1
        return per_stage(*args, **kw)

    def counted_slowdown(*args, **kw):
        calls["slowdown"] += 1
        return slowdown(*args, **kw)

    monkeypatch.setattr(ddp_buckets, "per_stage", counted_buckets)
    monkeypatch.setattr(comm_slowdown, "dp_comm_slowdown", counted_slowdown)
    sc.step_costs(derived)
    # without the memo: grad sync, the step's start wait (optimizer), NeMo's parts twice and StepCosts
    # asked for the buckets; the optimizer's gather term and StepCosts for the slowdown
    assert calls == {"buckets": 1, "slowdown": 1}


def test_per_call_works_out_each_name_once_per_memo():
    n = []
    memo: dict = {}
    assert step_memo.per_call(memo, "a", lambda: n.append(1) or 1.0) == 1.0
    assert step_memo.per_call(memo, "a", lambda: n.append(2) or 2.0) == 1.0  # kept
    assert step_memo.per_call(memo, "b", lambda: n.append(3) or 3.0) == 3.0  # its own name, its own figure
    assert step_memo.per_call(None, "a", lambda: n.append(4) or 4.0) == 4.0  # no memo: every time
    assert step_memo.per_call({}, "a", lambda: n.append(5) or 5.0) == 5.0  # another call's memo
    assert n == [1, 3, 4, 5]


# -- step.py: the vectorised readings equal the plain loops ----------------------------------------------
_WEIGHT = [KIND_CODES[k] for k in WEIGHT_GRADS]


def _plain_weight_ops(trace):
    """The loop _weight_ops replaced (step.py before s12b): per rank, each action's max (end, stage) of its rows."""
    rows = trace.compute[np.isin(trace.compute["kind"], _WEIGHT)]
    out = []
    for r in range(trace.ranks):
        mine = rows[rows["rank"] == r]
        ops: dict[int, tuple[float, int]] = {}
        for action, end, stage in zip(mine["action"].tolist(), mine["end"].tolist(), mine["stage"].tolist()):
            ops[action] = max(ops.get(action, (end, stage)), (end, stage))
        out.append(sorted(ops.values()))
    return out


def _plain_stretch(trace, rows, slowdown):
    """The loop _stretch's per-rank reading replaced: each rank's syncs and rows picked out rank by rank."""
    maps, c = [], trace.compute
    rows = [StepRow(*x) for x in rows]  # step.py's rows are tuples of its fields
    for r in range(trace.ranks):
        busy = np.array(sorted((x.start, x.end) for x in rows if x.kind == GRAD_SYNC and x.rank == r)).reshape(-1, 2)
        mine = c[c["rank"] == r]
        weight = np.array([slowdown[s] - 1.0 for s in mine["stage"].tolist()], dtype=float)
        near = (weight != 0.0) & (mine["end"] > busy[:, 0].min(initial=np.inf)) & (mine["start"] < busy[:, 1].max(initial=-np.inf))
        start, end, weight = mine["start"][near], mine["end"][near], weight[near]
        a, b = np.maximum(start, busy[:, :1]), np.minimum(end, busy[:, 1:])
        keep = b > a
        lo, hi, w = a[keep], b[keep], np.broadcast_to(weight, a.shape)[keep]
        maps.append(lambda t, lo=lo, hi=hi, w=w: t + np.sum(w * np.clip(np.subtract.outer(t, lo), 0.0, hi - lo), axis=-1))
    return maps


SHAPES = [("1f1b", 4, 9, None), ("zb-h1", 4, 8, None), ("interleaved-1f1b", 4, 8, 2), ("dualpipev", 4, 10, None),
          ("dualpipe", 4, 8, None), ("1f1b-overlap", 3, 7, None), ("zbv", 4, 8, None)]  # fmt: skip


def _random_trace(name, stages, m, virtual, seed, shuffle):
    rng = np.random.default_rng(seed)
    b = built(name, stages, m, virtual)
    f = tuple(rng.uniform(1.0, 2.0, stages))
    costs = StageCosts(f, tuple(2 * x for x in f), tuple(rng.uniform(0.3, 0.9, stages)), (0.0,) * stages,
                       tuple(rng.uniform(0.0, 0.5, stages)), 1.2)  # fmt: skip
    trace = trace_of(b, replayed(b, costs, 0.1, False))
    if shuffle:  # a table not in rank order (a run's trace need not be)
        trace = replace(trace, compute=trace.compute[rng.permutation(len(trace.compute))])
    return trace, rng


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("name,stages,m,virtual", SHAPES)
def test_weight_ops_are_the_plain_loops(name, stages, m, virtual, shuffle):
    for seed in range(3):
        trace, _ = _random_trace(name, stages, m, virtual, seed, shuffle)
        got = [sorted(zip(ends, stages_)) for ends, stages_ in step_py._weight_ops(trace)]
        assert got == _plain_weight_ops(trace)
        assert sum(map(len, got)) > trace.ranks  # more than one op a rank


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("name,stages,m,virtual", SHAPES)
def test_stretch_is_the_plain_loop(name, stages, m, virtual, shuffle):
    for seed in range(3):
        trace, rng = _random_trace(name, stages, m, virtual, seed, shuffle)
        slowdown = tuple(rng.uniform(1.0, 1.5, stages))
        step = StepCosts(tuple(rng.uniform(0.5, 6.0, stages)), (0.0,) * stages, tuple(rng.uniform(0.1, 1.0, stages)),
                         overlap_grad_sync=True, grad_sync_buckets=3, dp_comm_slowdown=slowdown)  # fmt: skip
        rows = step_py._step_rows(trace, step, step_py.pipeline_ends(trace), None)
        probe = np.sort(rng.uniform(0.0, float(trace.compute["end"].max()) + 5.0, 40))
        fast, plain = step_py._stretch(trace, rows, slowdown), _plain_stretch(trace, rows, slowdown)
        moved = 0
        for r in range(trace.ranks):
            assert fast[r](probe).tobytes() == plain[r](probe).tobytes()
            moved += int((plain[r](probe) != probe).sum())
        assert moved  # some time moved: the maps are not the identity
