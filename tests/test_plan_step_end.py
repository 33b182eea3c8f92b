"""plan's estimated step's end (plan/step_estimate.step_end_ms) sees what `run` sees at the step's end.

The estimate writes its small replay as a trace and hands it to step.py's own simulate_step, so the
grad-sync buckets, Megatron's launches and the compute slowed under a data-parallel collective
(``step.dp_comm_sms``, StepCosts.dp_comm_slowdown) count there as in a run.  One case is worked by
hand; the others hold the estimate to `run` where the estimate's assumptions hold exactly.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.step import rows_of, simulate_step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.plan.estimate import FigureCache, step_time
from dualpipe_sim.plan.request import base_scenario
from dualpipe_sim.plan.space import Candidate
from dualpipe_sim.plan.step_estimate import (StageCosts, built, counts, every_backward, pipeline, replayed, step_end_ms,
                                             step_rows, trace_of)
from dualpipe_sim.schedules.rules import KIND_CODES, Kind
from dualpipe_sim.step_costs import StepCosts


def test_dp_comm_slowdown_worked_by_hand():
    # 1F1B on 2 stages, 3 micro-batches, F = (1, 2), B = (2, 4), W in B, no P2P (the replay that
    # tests/test_plan_estimate.py works by hand): rank 0's last backward (stage 0) runs [19, 21],
    # rank 1's (stage 1) [15, 19]; the pipeline ends at 21.
    # [step]: grad sync 2 and 4 ms in 2 buckets each, overlapped; optimizer 1 and 2 ms.  A bucket k of
    # 2 is ready k/2 of the way through the copy's last backward (step.py).
    # Without a slowdown: rank 0's buckets (1 ms each) are ready at 20 and 21: [20, 21], [21, 22], its
    # optimizer [22, 23].  Rank 1's (2 ms each) at 17 and 19: [17, 19], [19, 21], optimizer [21, 23].
    # The step ends at 23: 2 ms after the pipeline.
    # With stage 1's compute 1.5x slower beside a collective (stage 0's not slowed): on rank 1 bucket 1
    # [17, 19] runs beside the last backward's last 2 ms, which take (1.5 - 1) x 2 = 1 ms longer; the
    # rank's pipeline work ends at 20, bucket 2 runs [20, 22] and the optimizer [22, 24].  Rank 0 is as
    # before.  The step ends at 24: 3 ms after the pipeline, 1 ms more.
    b = built("1f1b", 2, 3, None)
    run = replayed(b, StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0)), 0.0, False)
    assert run.makespan == 21.0
    plain = StepCosts(grad_sync=(2.0, 4.0), cross_copy_sync=(0.0, 0.0), optimizer=(1.0, 2.0),
                      overlap_grad_sync=True, grad_sync_buckets=2)  # fmt: skip
    assert step_end_ms(b, run, plain) == pytest.approx(2.0)
    assert step_end_ms(b, run, replace(plain, dp_comm_slowdown=(1.0, 1.0))) == pytest.approx(2.0)
    assert step_end_ms(b, run, replace(plain, dp_comm_slowdown=(1.0, 1.5))) == pytest.approx(3.0)
    # the slowdown on stage 0 instead: rank 0's bucket 1 [20, 21] beside its backward's last 1 ms adds
    # 0.5 ms; bucket 2 runs [21.5, 22.5], the optimizer [22.5, 23.5]: 2.5 ms after the pipeline
    assert step_end_ms(b, run, replace(plain, dp_comm_slowdown=(1.5, 1.0))) == pytest.approx(2.5)
    # released whole (one bucket), each copy's sync starts at its last backward's end, beside no
    # compute of its rank: nothing is slowed (rank 0: [21, 23], optimizer [23, 24]; rank 1: [19, 23],
    # optimizer [23, 25]; the step ends at 25, 4 ms after the pipeline)
    whole = replace(plain, grad_sync_buckets=1)
    assert step_end_ms(b, run, whole) == step_end_ms(b, run, replace(whole, dp_comm_slowdown=(1.5, 1.5))) == 4.0


# A small dense model on 4 H100 (tests/test_plan.py's): derived stage times, [step] derived as plan
# sets it (overlapped grad sync, Megatron-core's DDP buckets, step.dp_comm_sms 16 by default).
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan_step_end") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return base_scenario(path, "H100", 2048, [])


# Where the estimate's assumptions hold exactly: a dense model (no [chunk] all-to-all, so a pair, as
# DualPipeV runs it, is its forward then its backward, as the estimate splits it), no random model, and
# M <= 4 x ranks, so the schedule is replayed at M itself (no extrapolation).  Then the estimate's
# pipeline is the run's, and its step's end is step.py's on the same rows: equal to the run's step to
# rounding (stated tolerance: 1e-9 relative).
LAYOUTS = [
    Candidate(tensor=1, context=1, pipeline=2, data=2, expert=1, micro_batch_size=1, microbatches=4,
              schedule="1f1b", stages=2, recompute="none", zero=1),
    Candidate(tensor=1, context=1, pipeline=2, data=2, expert=1, micro_batch_size=1, microbatches=4,
              schedule="zb-h1", stages=2, recompute="none", zero=1),
    Candidate(tensor=1, context=1, pipeline=2, data=2, expert=1, micro_batch_size=1, microbatches=4,
              schedule="interleaved-1f1b", virtual=2, stages=4, recompute="none", zero=1),
    Candidate(tensor=1, context=1, pipeline=2, data=2, expert=1, micro_batch_size=1, microbatches=4,
              schedule="dualpipev", stages=4, recompute="none", zero=2),
]  # fmt: skip


def _estimate_and_run(base: dict, cand: Candidate) -> tuple[float, float]:
    est = step_time(FigureCache(base), cand)
    run = simulation.run(sections_only(apply_overrides(base, cand.overrides())))
    return est, run.metrics.scalars()["step.total"]


@pytest.mark.parametrize("cand", LAYOUTS, ids=lambda c: c.schedule)
def test_estimate_is_the_run_where_its_assumptions_hold(base, cand):
    # dualpipev at ZeRO 2: its earlier backwards' reduce-scatters slow the compute beside them from the first one on
    # (engine/step.py _every_backward), so step.py reads the estimate's whole replay there, not its tail (s20r)
    est, got = _estimate_and_run(base, cand)
    assert est == pytest.approx(got, rel=1e-9)


@pytest.mark.parametrize("cand", LAYOUTS, ids=lambda c: c.schedule)
@pytest.mark.parametrize("deferred", [2, 4])
def test_deferred_output_wgrad_estimate_is_the_run(base, cand, deferred):
    # model.defer_embedding_wgrad (s18n): the run's last stage runs the first N micro-batches' backwards lighter
    # (CostModel.deferred) and the drain at the step's end; the estimate replays the same lighter backwards
    # (StageCosts.deferred) and step.py's drain, so where its assumptions hold it is the run's step (s19d), and the
    # run is faster than without the deferral here (the drain shorter than what the light backwards save)
    with_it = apply_overrides(base, [f"model.defer_embedding_wgrad={deferred}"])
    est, got = _estimate_and_run(with_it, cand)
    assert est == pytest.approx(got, rel=1e-9)
    assert got < _estimate_and_run(base, cand)[1]


def test_dp_comm_sms_moves_estimate_and_run_alike(base):
    # interleaved 1F1B: a rank's first chunk's grad sync runs beside its second chunk's backwards, which
    # the collective's 16 SMs slow; with step.dp_comm_sms = 0 nothing is slowed.  Estimate and run both
    # move, by the same amount (the case above, its assumptions holding).
    cand = LAYOUTS[2]
    est, got = _estimate_and_run(base, cand)
    est0, got0 = _estimate_and_run(apply_overrides(base, ["step.dp_comm_sms=0"]), cand)
    assert got > got0  # the slowdown is there to see in the run
    assert est - est0 == pytest.approx(got - got0, rel=1e-6)


def test_overlapped_pair_split_by_hand():
    # 1F1B with overlapped pairs on 2 stages, F = 1 and B = 2 on each, no all-to-all: a pair lasts
    # F + B = 3 and the trace step.py reads gives its forward the first F / (F + B) of it, its backward
    # the rest (a run without [chunk] lays a pair out so too: the next test)
    b = built("1f1b-overlap", 2, 4, None)
    run = replayed(b, StageCosts((1.0, 1.0), (2.0, 2.0), (0.0, 0.0)), 0.0, False)
    rows = trace_of(b, run).compute
    pairs = rows[rows["overlapped"]]
    assert len(pairs) > 0
    forward, backward = pairs[pairs["kind"] == KIND_CODES[Kind.F]], pairs[pairs["kind"] != KIND_CODES[Kind.F]]
    assert np.all(forward["end"] - forward["start"] == 1.0) and np.all(backward["end"] - backward["start"] == 2.0)
    assert forward["end"].tolist() == backward["start"].tolist()


@pytest.mark.parametrize("cand", LAYOUTS, ids=lambda c: c.schedule)
def test_the_estimates_trace_is_the_runs(base, cand):
    # where the assumptions hold (above), the trace the estimate hands step.py has the run's compute rows
    cache = FigureCache(base)
    fig = cache.figures(cand)
    (hops,) = cache.hops(cand, fig)  # one replica pattern: 4 GPUs of one node, every hand-off on NVLink
    _, run, m = pipeline(cand.schedule, cand.stages, cand.microbatches, cand.virtual, cand.pipeline, fig.costs,
                         hops, cache.blocking(cand))  # fmt: skip
    assert m == cand.microbatches
    mine = trace_of(built(cand.schedule, cand.stages, m, cand.virtual), run).compute
    theirs = simulation.run(sections_only(apply_overrides(base, cand.overrides()))).trace.compute
    names = ("rank", "kind", "microbatch", "stage", "direction", "action", "overlapped")
    key = lambda r: (*(int(r[n]) for n in names), round(float(r["start"]), 9), round(float(r["end"]), 9))  # noqa: E731
    assert sorted(map(key, mine)) == sorted(map(key, theirs))
    assert mine["overlapped"].any() == (cand.schedule == "dualpipev")  # DualPipeV's pairs among them


@pytest.mark.parametrize("name,stages,m,virtual", [("1f1b", 4, 9, None), ("zb-h1", 4, 8, None),
                                                   ("interleaved-1f1b", 8, 8, 2), ("dualpipev", 8, 10, None),
                                                   ("dualpipe", 4, 8, None), ("1f1b-overlap", 3, 7, None)])  # fmt: skip
@pytest.mark.parametrize("overlap,launch,shared", [(True, "ready", False), (True, "pp-aligned", True),
                                                   (False, "ready", True)])  # fmt: skip
def test_the_cut_trace_gives_step_py_the_same_rows(name, stages, m, virtual, overlap, launch, shared):
    # step_end_ms hands step.py only the tail of the replay (what ends after the earliest start of a
    # copy's last weight-gradient op): the step's rows must be those of the whole trace, bit for bit
    rng = np.random.default_rng(stages * m)
    b = built(name, stages, m, virtual)
    f = tuple(rng.uniform(1.0, 2.0, stages))
    costs = StageCosts(f, tuple(2 * x for x in f), tuple(rng.uniform(0.3, 0.9, stages)), (0.0,) * stages,
                       tuple(rng.uniform(0.0, 0.5, stages)), 1.2)  # fmt: skip
    run = replayed(b, costs, 0.1, False)
    step = StepCosts(tuple(rng.uniform(0.5, 6.0, stages)), tuple(rng.uniform(0.0, 2.0, stages)),
                     tuple(rng.uniform(0.1, 1.0, stages)), overlap_grad_sync=overlap, grad_sync_buckets=3,
                     grad_sync_launch=launch, nic_shared=shared, dp_comm_slowdown=tuple(rng.uniform(1.0, 1.4, stages)))
    whole = simulate_step(trace_of(b, run), step)
    assert step_rows(b, run, step).tobytes() == whole.tobytes()
    last = b.last_wgrad[b.last_wgrad >= 0]
    assert len(trace_of(b, run, float(run.starts[last].min())).compute) < len(trace_of(b, run).compute)  # a cut


def test_deferred_output_wgrad_on_chunk_components_is_pruned_with_runs_words(tmp_path):
    # an MoE layout with expert parallelism is costed with [chunk] components, on which `run` refuses the deferral
    # (Scenario.check_deferral_per_stage); the estimate refuses it in the same words, so plan prunes the candidate
    # instead of simulating it into an error row (s19d)
    from dualpipe_sim.errors import ScenarioError

    moe = {**TINY, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
    path = tmp_path / "moe.json"
    path.write_text(json.dumps(moe))
    base = base_scenario(path, "H100", 2048, ["model.defer_embedding_wgrad=2"])
    cand = Candidate(tensor=1, context=1, pipeline=2, data=2, expert=2, micro_batch_size=1, microbatches=4,
                     schedule="1f1b", stages=2, recompute="none", zero=1)  # fmt: skip
    with pytest.raises(ScenarioError) as run_err:
        simulation.run(sections_only(apply_overrides(base, cand.overrides())))
    with pytest.raises(ScenarioError) as est_err:
        FigureCache(base).figures(cand)
    assert str(est_err.value) == str(run_err.value)
    assert str(est_err.value).startswith("model.defer_embedding_wgrad: is costed on per-stage F, B and W")
    # expert parallelism 1: the MoE layers are costed per stage, and the deferral is the run's there too
    one = replace(cand, expert=1)
    est, got = _estimate_and_run(base, one)
    assert est == pytest.approx(got, rel=1e-9)


# ZeRO 2 (s20n, s20r, s21k): each copy's weight-gradient ops but its last release reduce-scatters
# (StepCosts.every_backward) onto the rank's channel, which slow the compute beside them, from the first backward on
# (engine/step.py _earlier_jobs): step.py reads the estimate's whole replay then, and where the makespan is
# extrapolated in M, each rank's stretch by its pipeline's end, and its channel's backlog then, grow by their
# difference between the two replayed counts per period.
ZERO2_BY_HAND = StepCosts(grad_sync=(2.0, 4.0), cross_copy_sync=(0.0, 0.0), optimizer=(1.0, 2.0),
                          overlap_grad_sync=True, grad_sync_buckets=2, dp_comm_slowdown=(1.5, 1.5),
                          every_backward=((1.0,), (2.0,)))  # fmt: skip


def test_zero2_every_backward_worked_by_hand():
    # 1F1B on 2 stages, 3 micro-batches, F = (1, 2), B = (2, 4), no P2P (test_dp_comm_slowdown_worked_by_hand):
    # rank 0 F0 [0,1] F1 [1,2] B0 [7,9] F2 [9,10] B1 [13,15] B2 [19,21]; rank 1 F0 [1,3] B0 [3,7] F1 [7,9] B1 [9,13]
    # F2 [13,15] B2 [15,19].  Grad sync 2 and 4 ms in 2 buckets, overlapped, optimizer 1 and 2 ms, every stage's
    # compute 1.5x slower beside a collective; each earlier backward releases 1 ms (stage 0) or 2 ms (stage 1) at its
    # end.
    # Rank 0: B0's [9,10] beside F2 (+0.5), B1's [15,16] beside nothing (idle until 19), bucket 1 [20,21] beside B2's
    # second half (+0.5): the buckets go at 20.5 and 22 ([20.5,21.5], [22,23]), the optimizer [23,24].
    # Rank 1: B0's [7,9] beside F1 (+1), B1's [13,15] beside F2 (+1), bucket 1 [17,19] beside B2 (+1): the buckets go
    # at 17 + 2 = 19 and 19 + 3 = 22 ([19,21], [22,24]), the optimizer [24,26]: 5 ms past the pipeline's 21.
    # The earlier ones are rows too, released on the stretched times (s21k): rank 0's at 9 and 15 + 0.5, rank 1's at
    # 7 and 13 + 1.
    # Cut where the last backwards can first release (rank 1's B2 starts at 15), as before s20r, the replay held no
    # earlier collective beside compute (rank 1's B1 ends at 13; rank 0's B1 [13,15] releases onto an idle rank): 3 ms,
    # as with the last backwards' alone (rank 1's buckets [17,19], [20,22], its optimizer [22,24]).
    b = built("1f1b", 2, 3, None)
    run = replayed(b, StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0)), 0.0, False)
    assert run.makespan == 21.0
    assert step_end_ms(b, run, ZERO2_BY_HAND) == pytest.approx(5.0)
    assert max(x[5] for x in rows_of(trace_of(b, run, 15.0), ZERO2_BY_HAND)) == pytest.approx(24.0)  # the cut: 3 ms
    rows = step_rows(b, run, ZERO2_BY_HAND)
    spans = lambda r, k: [x for row in rows[(rows["rank"] == r) & (rows["kind"] == k)]  # noqa: E731
                          for x in (float(row["start"]), float(row["end"]))]
    assert spans(0, GRAD_SYNC) == pytest.approx([9.0, 10.0, 15.5, 16.5, 20.5, 21.5, 22.0, 23.0])
    assert spans(0, OPTIMIZER) == pytest.approx([23, 24])
    assert spans(1, GRAD_SYNC) == pytest.approx([7.0, 9.0, 14.0, 16.0, 19.0, 21.0, 22.0, 24.0])
    assert spans(1, OPTIMIZER) == pytest.approx([24, 26])
    # the run: the same schedule on typed costs, its step's end laid out on its own trace
    sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 3},
                             "costs": {"forward": [1.0, 2.0], "backward": [2.0, 4.0]}, "comm": {"p2p": 0.0}})  # fmt: skip
    assert simulate_step(simulation.run(sc).trace, ZERO2_BY_HAND).tobytes() == rows.tobytes()


def test_zero2_every_backward_extrapolated_by_hand():
    # One stage, F 1, B 2 (F_i [3i, 3i+1], B_i [3i+1, 3i+3]); the grad sync in two shares, 0.5 ms halfway through the
    # last backward and 1.0 ms at its end, each earlier backward releasing the same two
    # (tests/test_zero_every_backward.py),
    # optimizer 1 ms, f = 1.5.  Each earlier backward's [3i+2, 3i+2.5] (beside B_i) and [3i+3, 3i+4] (beside F_i+1)
    # add 0.75 ms; the last one's first share 0.25 more: the second share starts at 3M + 0.75 (M - 1) + 0.25, the
    # optimizer ends 2 ms later, 3M + 0.75 M + 1.5.  M = 7 is extrapolated from 3 and 4 micro-batches (counts gives 2
    # and 3; since s21q the line waits for a second period that grows alike, 3 to 4), 3 periods of 1 past 4: 27.75 ms
    # (21 of pipeline, 3 x 7); before s20r the cut replay at 3 gave 21 + 0.25 + 2 = 23.25.
    step = StepCosts(grad_sync=(1.5,), cross_copy_sync=(0.0,), optimizer=(1.0,), overlap_grad_sync=True,
                     grad_sync_shares=((1 / 3, 2 / 3),), dp_comm_slowdown=(1.5,), every_backward=((0.5, 1.0),))  # fmt: skip
    costs = StageCosts((1.0,), (2.0,), (0.0,))
    assert counts("1f1b", 1, 7, None, 1) == (2, 3)
    makespan, run, m = pipeline("1f1b", 1, 7, None, 1, costs, 0.0, False)
    assert (makespan, m, run.period.periods) == (21.0, 4, 3.0)
    assert makespan + step_end_ms(built("1f1b", 1, 4, None), run, step) == pytest.approx(27.75)
    # the run at M = 7, and at M = 2, 3 (replayed as they are) by the same rule
    for micro in (2, 3, 7):
        sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": micro},
                                 "costs": {"forward": 1.0, "backward": 2.0}, "comm": {"p2p": 0.0}})  # fmt: skip
        assert float(simulate_step(simulation.run(sc).trace, step)["end"].max()) == pytest.approx(3.75 * micro + 1.5)
    # without the periods' stretch (the replay at 4 alone) it is 3 x 0.75 ms short
    alone = makespan + step_end_ms(built("1f1b", 1, 4, None), replace(run, period=None), step)
    assert alone == pytest.approx(27.75 - 2.25)


def test_zero2_backlog_extrapolated_by_hand():
    # s21k.  One stage, F 1, B 2 (F_i [3i, 3i+1], B_i [3i+1, 3i+3]), nothing slowed; each backward releases 0.5 ms
    # halfway through it and 3.0 ms at its end (the last one's the grad sync, 3.5 ms in those shares), optimizer 1 ms.
    # 3.5 ms a period of 3: B0's [2,2.5], [3,6], then every backward's queue behind the one before, the channel ending
    # at 6 + 3.5 i after B_i; at M = 7, 27, the optimizer [27,28].  The estimate replays 3 and 4 micro-batches (since
    # s21q; 2 and 3 before): the backlog at the pipeline's end is 13 - 9 = 4 and 16.5 - 12 = 4.5, so 3 periods add
    # 3 x 0.5 = 1.5 to the 4's channel (16.5 + 1.5 = 18, the optimizer ending 7 ms past its 12): 21 + 7 = 28, the
    # run's.  Without the carry, 26.5.
    step = StepCosts(grad_sync=(3.5,), cross_copy_sync=(0.0,), optimizer=(1.0,), overlap_grad_sync=True,
                     grad_sync_shares=((1 / 7, 6 / 7),), every_backward=((0.5, 3.0),))  # fmt: skip
    costs = StageCosts((1.0,), (2.0,), (0.0,))
    makespan, run, m = pipeline("1f1b", 1, 7, None, 1, costs, 0.0, False)
    assert (makespan, m, run.period.periods) == (21.0, 4, 3.0)
    assert makespan + step_end_ms(built("1f1b", 1, 4, None), run, step) == pytest.approx(28.0)
    sc = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 7},
                             "costs": {"forward": 1.0, "backward": 2.0}, "comm": {"p2p": 0.0}})  # fmt: skip
    rows = simulate_step(simulation.run(sc).trace, step)
    assert float(rows["end"].max()) == pytest.approx(28.0)
    # without the periods' backlog (the replay at 4 alone) it is 3 x 0.5 ms short
    alone = makespan + step_end_ms(built("1f1b", 1, 4, None), replace(run, period=None), step)
    assert alone == pytest.approx(28.0 - 1.5)


@pytest.mark.parametrize("name,stages,virtual,ranks", [("1f1b", 2, None, 2), ("1f1b", 4, None, 4), ("gpipe", 2, None, 2),
                                                       ("dualpipev", 8, None, 4), ("zbv", 8, None, 4)])  # fmt: skip
@pytest.mark.parametrize("scale", [0.2, 3.0])
def test_zero2_extrapolated_step_is_the_full_replays(name, stages, virtual, ranks, scale):
    # where the makespan's line is exact (these families, these costs: tests/test_plan_estimate.py), so is the stretch's:
    # the estimate at M = 12p (extrapolated from 2p and 3p) is step.py's rows on the full replay at M, with every
    # backward's reduce-scatters well under its micro-batch's compute (scale 0.2) and well over it (3.0: the channel
    # falls behind and runs on past the pipeline)
    rng = np.random.default_rng(stages)
    f = tuple(rng.uniform(1.0, 2.0, stages))
    costs = StageCosts(f, tuple(2 * x for x in f), tuple(0.4 * x for x in f))
    step = StepCosts(tuple(scale * x for x in f), (0.0,) * stages, (0.5,) * stages, overlap_grad_sync=True,
                     grad_sync_buckets=2, dp_comm_slowdown=tuple(rng.uniform(1.1, 1.5, stages)),
                     every_backward=tuple((scale * x / 2, scale * x / 2) for x in f))  # fmt: skip
    big = 12 * ranks
    makespan, run, m = pipeline(name, stages, big, virtual, ranks, costs, 0.05, False)
    assert m < big
    full_built = built(name, stages, big, virtual)
    full = replayed(full_built, costs, 0.05, False)
    truth = float(simulate_step(trace_of(full_built, full), step)["end"].max())
    assert makespan + step_end_ms(built(name, stages, m, virtual), run, step) == pytest.approx(truth, rel=1e-9)


@pytest.mark.parametrize("schedule,stages,virtual,zero", [("1f1b", 2, None, 2), ("zb-h1", 2, None, 2),
                                                          ("interleaved-1f1b", 4, 2, 2), ("dualpipev", 4, None, 2),
                                                          ("1f1b", 2, None, 3)])  # fmt: skip
def test_zero2_extrapolated_estimate_is_the_run(base, schedule, stages, virtual, zero):
    # the small dense model at 16 micro-batches on 2 ranks (> 4p: two counts replayed, the line extended): ZeRO 2's
    # estimate is the run's step (before s20r 0.2-0.4% short); ZeRO 3's collectives are inside its actions (model/fsdp.py),
    # in the replay's lengths, so its step's end reads the tail as before
    cand = Candidate(tensor=1, context=1, pipeline=2, data=2, expert=1, micro_batch_size=1, microbatches=16,
                     schedule=schedule, virtual=virtual, stages=stages, recompute="none", zero=zero)  # fmt: skip
    est, got = _estimate_and_run(base, cand)
    assert est == pytest.approx(got, rel=1e-9)
    assert every_backward(FigureCache(base).step_costs(cand)) == (zero == 2)
