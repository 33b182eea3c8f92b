"""plan's estimated step (plan/step_estimate.py) against closed forms and hand-worked cases.

The replay it runs is the engine's (engine/replay.py, held to the SimPy engine in
tests/test_replay.py); what is checked here is what the estimate adds: the cost of
each action, the extrapolation in M and the step's end after the pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest

from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.plan.shapes import VIRTUAL_OPTION, shape
from dualpipe_sim.plan.step_estimate import StageCosts, built, counts, lengths, pipeline, replayed, step_end_ms
from dualpipe_sim.schedules import registry
from dualpipe_sim.schedules.ir import FB, ops_of
from dualpipe_sim.schedules.rules import KIND_CODES
from dualpipe_sim.step_costs import StepCosts


def uniform(stages: int, f: float, b: float, w: float, pair: float | None = None) -> StageCosts:
    """Same costs on every stage; an overlapped F&B pair of ``pair`` (>= (F + B) / 2) by giving the
    backward F + B - pair of all-to-all, which the pair hides under the two computes."""
    rep = lambda x: (float(x),) * stages  # noqa: E731
    hidden = 0.0 if pair is None else f + b - pair
    return StageCosts(rep(f), rep(b), rep(w), rep(0.0), rep(hidden))


@pytest.mark.parametrize("p,m", [(2, 1), (4, 4), (4, 7), (8, 16), (3, 40)])
def test_1f1b_replay_is_the_closed_form(p, m):
    # 1F1B on uniform stages: M (F + B) of work and (p - 1)(F + B) of bubble on every rank
    f, b = 1.25, 2.5
    cost = uniform(p, f, b, 0.75)
    makespan, _, _ = pipeline("1f1b", p, m, None, p, cost, 0.0, False)
    closed = registry.analytic("1f1b", p, m, CostModel.uniform(p, f, b))["bubble"]
    assert closed == pytest.approx((p - 1) * (f + b))
    assert makespan == pytest.approx(m * (f + b) + closed, rel=1e-12)


def test_extrapolation_in_m_is_linear_on_1f1b_and_exact():
    # 40 micro-batches on 3 stages are replayed at two small counts and extrapolated; 1F1B's
    # makespan is affine in M past the fill, so the line lands on the closed form and on the
    # full replay, here with uneven stages too
    p, m = 3, 40
    assert counts("1f1b", p, m, None, p) == (7, 10)  # 2p + (40 - 2p) mod p, one period (p) on
    cost = StageCosts((1.0, 1.5, 1.2), (2.0, 3.5, 2.2), (0.5, 0.5, 0.5))
    extrapolated, _, replayed_at = pipeline("1f1b", p, m, None, p, cost, 0.1, False)
    assert replayed_at == 13  # the pair (7, 10) settles only beside (10, 13), which grows alike (s21q)
    assert extrapolated == pytest.approx(replayed(built("1f1b", p, m, None), cost, 0.1, False).makespan, rel=1e-12)
    # the slowest stage sets the pace: 40 micro-batches of its F + B = 5.0, plus the others' fill and drain
    assert extrapolated > m * 5.0


def test_uneven_two_stage_1f1b_worked_by_hand():
    # stages F = (1, 2), B = (2, 4), no P2P, 3 micro-batches.  Rank 0: F0 F1 B0 F2 B1 B2; rank 1: F0 B0 F1 B1 F2 B2.
    # rank 1: F0 1-3, B0 3-7, F1 7-9, B1 9-13, F2 13-15 (rank 0's F2 ended at 10), B2 15-19
    # rank 0: F0 0-1, F1 1-2, B0 7-9, F2 9-10, B1 13-15, B2 19-21: makespan 21
    sched = registry.build("1f1b", 2, 3)
    order = [[f"{op.kind}{op.microbatch}" for a in actions for op in ops_of(a)] for actions in sched.ranks]
    assert order == [["F0", "F1", "B0", "F2", "B1", "B2"], ["F0", "B0", "F1", "B1", "F2", "B2"]]
    cost = StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0))
    run = replayed(built("1f1b", 2, 3, None), cost, 0.0, False)
    assert run.makespan == 21.0
    assert run.rank_end.tolist() == [21.0, 19.0]
    assert run.copy_ready.tolist() == [21.0, 19.0]  # each stage's last backward (its weight gradients)
    # P2P 0.5 per transfer, async: rank 1 F0 1.5-3.5, B0 -7.5 (lands on rank 0 at 8), F1 -9.5, B1 -13.5
    # (lands 14); rank 0 B0 8-10, F2 10-11 (lands 11.5), B1 14-16; rank 1 F2 13.5-15.5, B2 -19.5
    # (lands 20); rank 0 B2 20-22
    assert replayed(built("1f1b", 2, 3, None), cost, 0.5, False).makespan == 22.0
    # blocking: a rank's next action also waits for its sends to land.  Rank 0 F0 0-1 (free at 1.5),
    # F1 1.5-2.5 (free 3); rank 1 F0 1.5-3.5, B0 -7.5 (free 8), F1 8-10, B1 -14 (free 14.5); rank 0
    # B0 8-10, F2 10-11 (free 11.5), B1 14.5-16.5; rank 1 F2 14.5-16.5, B2 -20.5 (lands 21); rank 0 B2 21-23
    assert replayed(built("1f1b", 2, 3, None), cost, 0.5, True).makespan == 23.0


def test_step_end_worked_by_hand():
    # the replay above; grad sync 3 and 6 ms, optimizer 1 ms per stage.  Overlapped: stage 0's sync
    # starts at 21 (its last backward), ends 24, optimizer to 25; stage 1's at 19, ends 25, optimizer
    # to 26: the step ends at 26, 5 ms after the pipeline's 21
    b = built("1f1b", 2, 3, None)
    run = replayed(b, StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0)), 0.0, False)
    overlapped = StepCosts(grad_sync=(3.0, 6.0), cross_copy_sync=(0.0, 0.0), optimizer=(1.0, 1.0), overlap_grad_sync=True)
    assert step_end_ms(b, run, overlapped) == pytest.approx(5.0)
    # not overlapped a sync starts when its rank's pipeline work ends: the same here (each stage's
    # last backward is its rank's last action)
    assert step_end_ms(b, run, StepCosts((3.0, 6.0), (0.0, 0.0), (1.0, 1.0))) == pytest.approx(5.0)
    # a rank holding two copies (DualPipe: stage s and p - 1 - s) runs their syncs one after the
    # other on its channel and its optimizer over both: checked on the same figures below
    assert step_end_ms(b, run, None) == 0.0
    assert step_end_ms(b, run, StepCosts((0.0, 0.0), (0.0, 0.0), (0.0, 0.0))) == 0.0


def test_step_end_one_channel_per_rank():
    # DualPipe on 4 stages: rank r holds stage r (one direction) and stage 3 - r (the other).  With
    # grad syncs far longer than the drain, a rank's second copy is released while its first syncs,
    # so its channel runs both back to back from the first release, then its optimizer over both:
    # done_r = first release + g[r] + g[3 - r] + o[r] + o[3 - r]
    b = built("dualpipe", 4, 8, None)
    run = replayed(b, uniform(4, 1.0, 2.0, 1.0, 2.5), 0.0, False)
    g, o = (1000.0, 2000.0, 3000.0, 4000.0), (1.0, 2.0, 3.0, 4.0)
    end = step_end_ms(b, run, StepCosts(g, (0.0,) * 4, o, overlap_grad_sync=True))
    done = []
    for rank in range(4):
        mine = [c for c in range(len(b.copy_rank)) if b.copy_rank[c] == rank]
        assert sorted(int(b.copy_stage[c]) for c in mine) == [min(rank, 3 - rank), max(rank, 3 - rank)]
        assert max(run.copy_ready[c] for c in mine) - min(run.copy_ready[c] for c in mine) < 1000.0
        done.append(min(run.copy_ready[c] for c in mine) + g[rank] + g[3 - rank] + o[rank] + o[3 - rank])
    assert run.makespan + end == pytest.approx(max(done))


def test_cross_copy_sums_share_their_pair_of_ranks():
    # DualPipe on 4 stages: ranks 0 and 3 hold stages 0 and 3 (one copy each), ranks 1 and 2 stages 1
    # and 2.  Not eager, a stage's two copies are summed once both ranks' pipelines end, one sum at a
    # time per pair of ranks: link (0, 3) carries 10 + 40 ms from the later of ranks 0 and 3's ends,
    # link (1, 2) 20 + 30 ms; no grad sync or optimizer here
    b = built("dualpipe", 4, 8, None)
    run = replayed(b, uniform(4, 1.0, 2.0, 1.0, 2.5), 0.0, False)
    end = step_end_ms(b, run, StepCosts((0.0,) * 4, (10.0, 20.0, 30.0, 40.0), (0.0,) * 4))
    e = run.rank_end
    assert run.makespan + end == pytest.approx(max(max(e[0], e[3]) + 50.0, max(e[1], e[2]) + 50.0))


def test_overlapped_pair_of_two_stages_worked_by_hand():
    # A pair runs its two computes on the compute channel, slowed by 1.25 while an all-to-all runs
    # beside them, and the two all-to-alls on theirs; it lasts the longer.  Stage 0: F 4 (1 of it
    # all-to-all), B 6 (2); stage 1: F 2 (1), B 9 (6), no W.  F0 + B1: compute 3 + 3 = 6, all-to-all
    # 1 + 6 = 7, so max(6 + 0.25 x 6, 7) = 7.5; F1 + B0: compute 1 + 4 = 5, all-to-all 3: 5.75;
    # F0 + B0: compute 7, all-to-all 3: 7.75; F1 + B1: compute 4, all-to-all 7: max(5, 7) = 7
    cost = StageCosts((4.0, 2.0), (6.0, 9.0), (0.0, 0.0), (1.0, 1.0), (2.0, 6.0), 1.25)
    b = built("dualpipe", 2, 4, None)
    got = {(int(b.stage[a]), int(b.back_stage[a])): x for a, x in enumerate(lengths(b, cost)) if not b.lone[a]}
    assert got, "DualPipe on 2 ranks and 4 micro-batches pairs forwards with backwards"
    hand = {(0, 1): 7.5, (1, 0): 5.75, (0, 0): 7.75, (1, 1): 7.0}
    for key, value in got.items():
        assert value == pytest.approx(hand[key]), key
    # a lone forward or backward runs its all-to-all in full: its whole F or B (W is 0 here)
    lone = [(int(b.kind[a]), int(b.stage[a]), x) for a, x in enumerate(lengths(b, cost)) if b.lone[a]]
    whole = {KIND_CODES["F"]: (4.0, 2.0), KIND_CODES["B"]: (6.0, 9.0), KIND_CODES["I"]: (6.0, 9.0),
             KIND_CODES["W"]: (0.0, 0.0)}  # fmt: skip
    assert lone and all(x == whole[k][s] for k, s, x in lone)


NO_CLOSED_FORM = {"1f1b-overlap", "interleaved-1f1b-overlap"}  # registry.analytic gives no bubble for them


def _families():
    for name in registry.families():
        if name not in NO_CLOSED_FORM:
            yield name, (2 if shape(name).virtual else None)


# (F, B, W, F&B) tried in turn until the family's closed form covers them (docs/schedules.md, its range)
IN_RANGE = [(1.0, 2.0, 0.75, 2.5), (1.0, 2.0, 1.0, 2.5), (1.0, 2.0, 1.0, 3.0), (1.0, 1.0, 0.5, 2.0)]


@pytest.mark.parametrize("name,virtual", list(_families()))
def test_replay_idle_is_the_closed_form_on_four_ranks(name, virtual):
    # Every family's closed form (docs/schedules.md; tests/test_closed_form_ranges.py holds them exact
    # against the simulation) gives the largest time a rank spends between its ops on uniform stages
    # without P2P.  The estimate's actions, lengths and replay must leave the same gaps.
    sh = shape(name)
    stages = 4 * (virtual or sh.stages_per_rank)
    family = registry.get(name)
    options = {VIRTUAL_OPTION: virtual} if virtual else {}
    m = next(m for m in (16, 8, 32) if family.check(stages, m, **options) is None)
    for f, b, w, fb in IN_RANGE:
        closed = registry.analytic(name, stages, m, CostModel.uniform(stages, f, b, w, overlapped=fb), **options)
        if closed["bubble"] is not None:
            break
    assert closed["bubble"] is not None, closed["reason"]
    bl = built(name, stages, m, virtual)
    costs = uniform(stages, f, b, w, fb)
    run = replayed(bl, costs, 0.0, False)
    work = np.add.reduceat(lengths(bl, costs), bl.rank_first)  # time inside each rank's actions
    # between_ops (metrics): the makespan minus a rank's time inside its actions, the largest over ranks
    assert run.makespan - work.min() == pytest.approx(closed["bubble"], rel=1e-9, abs=1e-9), (f, b, w, fb)


def test_1f1b_overlap_worked_by_hand():
    # No closed form is published for overlapped 1F1B pairs (registry.analytic gives none), so by
    # hand: 4 stages, 6 micro-batches, F = 1, B = 2, F&B = 2.5 on every stage, no P2P.  Rank 3 pairs
    # F1+B0 4-6.5, F2+B1 -9, F3+B2 -11.5 (F3 leaves rank 2's pair F3+B0 at 9), F4+B3 -14, F5+B4
    # -16.5, B5 -18.5; rank 2's last backwards wait for rank 3's (B3 14-16, B4 16.5-18.5, B5
    # -20.5); rank 1 then B5 -22.5 and rank 0 B5 -24.5
    sched = registry.build("1f1b-overlap", 4, 6)
    pairs = [sum(isinstance(a, FB) for a in actions) for actions in sched.ranks]
    assert pairs == [0, 1, 3, 5]
    run = replayed(built("1f1b-overlap", 4, 6, None), uniform(4, 1.0, 2.0, 0.0, 2.5), 0.0, False)
    assert run.makespan == 24.5
    assert run.rank_end.tolist() == [24.5, 22.5, 20.5, 18.5]


def test_interleaved_1f1b_overlap_worked_by_hand():
    # No closed form either; 2 ranks x 2 chunks (rank 0 stages 0 and 2, rank 1 stages 1 and 3), 2
    # micro-batches, F = 1, B = 2, F&B = 2.5, no P2P.  Rank 0: F0s0 0-1, F1s0 -2, F0s2 2-3 (F0s1 ended
    # 2), F1s2 3-4; rank 1: F0s1 1-2, F1s1 2-3, F0s3 3-4, F1s3+B0s3 4-6.5, B1s3 -8.5; rank 0: B0s2
    # 6.5-8.5, B1s2 -10.5; rank 1: B0s1 8.5-10.5, B1s1 -12.5; rank 0: B0s0 10.5-12.5, B1s0 -14.5
    sched = registry.build("interleaved-1f1b-overlap", 4, 2, chunks_per_rank=2)
    assert [sum(isinstance(a, FB) for a in actions) for actions in sched.ranks] == [0, 1]
    run = replayed(built("interleaved-1f1b-overlap", 4, 2, 2), uniform(4, 1.0, 2.0, 0.0, 2.5), 0.0, False)
    assert run.makespan == 14.5
    assert run.rank_end.tolist() == [14.5, 12.5]
    assert run.copy_ready.tolist() == [14.5, 12.5, 10.5, 8.5]  # stages 0-3's last backwards


@pytest.mark.parametrize("name,virtual,blocking", [("1f1b", None, True), ("dualpipev", None, False),
                                                    ("interleaved-1f1b", 2, False), ("dualpipe", None, True),
                                                    ("interleaved-1f1b-overlap", 2, True)])  # fmt: skip
def test_shared_transfer_plan_changes_no_replay(name, virtual, blocking):
    # The estimate works a schedule's transfer plan out once (built) and replays it on many
    # layouts' costs: each replay must equal the engine's own, which plans afresh, to the bit,
    # however many replays came before on the same plan.
    from dualpipe_sim.engine import replay

    stages = 4 * (virtual or (2 if name == "dualpipev" else 1))
    b = built(name, stages, 16, virtual)
    rng = np.random.default_rng(7)
    for p2p in (0.0, 0.37, 0.0, 1.9):
        f = rng.uniform(1.0, 2.0, stages)
        costs = StageCosts(tuple(f), tuple(2 * f), tuple(0.8 * f), tuple(0.1 * f), tuple(0.3 * f), 1.2)
        length = lengths(b, costs)
        _, fresh, _, _ = replay.replay(b.schedule, b.index, length.tolist(), p2p, blocking)
        ends = np.frombuffer(fresh, dtype=float) + length
        run = replayed(b, costs, p2p, blocking)
        assert run.makespan == float(ends.max())
        assert run.rank_end.tolist() == np.maximum.reduceat(ends, b.rank_first).tolist()


def test_deferred_output_wgrad_lightens_the_first_backwards_by_hand():
    # the uneven 2-stage 1F1B above with model.defer_embedding_wgrad's lighter backwards (s19d): on stage 1 the
    # first 2 micro-batches' B lose 0.5 ms of input gradient and 1.0 ms of weight gradient (CostModel.duration:
    # B - less I - less W = 4 - 0.5 - 1.0 = 2.5); micro-batch 2's B stays 4.
    # rank 1: F0 1-3, B0 3-5.5, F1 5.5-7.5, B1 7.5-10, F2 10-12 (rank 0's F2 ended at 8.5), B2 12-16
    # rank 0: F0 0-1, F1 1-2, B0 5.5-7.5, F2 7.5-8.5, B1 10-12, B2 16-18: makespan 18 (21 without)
    cost = StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0), deferred=(1, 2, 0.5, 1.0))
    run = replayed(built("1f1b", 2, 3, None), cost, 0.0, False)
    assert run.makespan == 18.0
    assert run.rank_end.tolist() == [18.0, 16.0]
    # split backwards (I = B - W, W): I of a light micro-batch loses the 0.5, W the 1.0, as CostModel.duration
    split = StageCosts((1.0, 2.0), (2.0, 4.0), (1.0, 2.0), deferred=(1, 2, 0.5, 1.0))
    b = built("zb-h1", 2, 3, None)
    got = lengths(b, split)
    flat = b.index.flat
    for a in range(len(got)):
        op = flat.member == 0
        kind, stage, mb = (int(x[op][flat.action[op] == a][0]) for x in (flat.kind, flat.stage, flat.microbatch))
        full = {KIND_CODES["F"]: (1.0, 2.0), KIND_CODES["B"]: (2.0, 4.0), KIND_CODES["I"]: (1.0, 2.0),
                KIND_CODES["W"]: (1.0, 2.0)}[kind][stage]  # fmt: skip
        less = {KIND_CODES["F"]: 0.0, KIND_CODES["B"]: 1.5, KIND_CODES["I"]: 0.5, KIND_CODES["W"]: 1.0}[kind]
        assert got[a] == full - (less if stage == 1 and mb < 2 else 0.0)


def test_extrapolation_in_m_replays_the_light_micro_batches_in_both_counts():
    # 40 micro-batches on 3 stages, the first 10 lighter on the last stage: both replayed counts hold all 10 and
    # 2 x 3 more (16 and 19), so they differ by one period of full ones and 1F1B's affine makespan lands on the
    # full replay's (without the light ones the counts are (7, 10): the test above)
    p, m = 3, 40
    assert counts("1f1b", p, m, None, p, light=10) == (16, 19)
    assert counts("1f1b", p, 22, None, p, light=10) == (22,)  # 22 <= 4 x 3 + 10: replayed as is
    cost = StageCosts((1.0, 1.5, 1.2), (2.0, 3.5, 2.2), (0.5, 0.5, 0.5), deferred=(2, 10, 0.3, 0.4))
    extrapolated, _, at = pipeline("1f1b", p, m, None, p, cost, 0.1, False)
    assert at == 22  # the pair (16, 19) settles beside (19, 22), which grows alike (s21q)
    assert extrapolated == pytest.approx(replayed(built("1f1b", p, m, None), cost, 0.1, False).makespan, rel=1e-12)
