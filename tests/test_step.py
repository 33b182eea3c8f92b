"""The end of a training step ([step], step.py): hand-worked cases and invariants.

Hand-worked cases check every rank's sync start and the step total against
times worked out here from the schedule, not read off the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import test_properties as tp
from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.outputs.files import metrics_json
from dualpipe_sim.inputs.scenario import ScenarioError
from dualpipe_sim.engine.trace import CROSS_COPY, GRAD_SYNC, OPTIMIZER

ROOT = Path(__file__).resolve().parents[1]


def run(schedule: str, stages: int, microbatches: int, step: dict, **costs):
    raw = {
        "pipeline": {"schedule": schedule, "stages": stages, "microbatches": microbatches},
        "costs": {"forward": 1.0, "backward": 2.0, **costs.pop("costs", {})},
        "comm": {"p2p": costs.pop("p2p", 0.0)},
        "step": step,
    }
    return simulation.run(scenario.from_dict(raw))


def rows(result, kind) -> dict[int, list[tuple[int, float, float]]]:
    """rank -> [(stage, start, end)] of one kind of end-of-step row, in time order."""
    out: dict[int, list] = {}
    for row in result.trace.step[result.trace.step["kind"] == kind]:
        out.setdefault(int(row["rank"]), []).append((int(row["stage"]), float(row["start"]), float(row["end"])))
    return {r: sorted(v, key=lambda x: (x[1], x[0])) for r, v in out.items()}


# -- 1F1B, 4 stages x 8 micro-batches -------------------------------------------------
#
# F = 1, B = 2, no P2P cost.  1F1B's makespan is (M + S - 1)(F + B) = 11 x 3 = 33.
# Rank 3 runs F_k, B_k back to back after its first input arrives at 3:
# B_7 ends at 3 + 8 x 3 = 27; the last micro-batch's backward then walks up the
# ranks with nothing in its way, so rank r's last B (its only weight-gradient
# op of stage r, and its last op) is [31 - 2r, 33 - 2r].
#
# grad_sync = 2, optimizer = 0.5 per stage; one stage per rank.
# * one bucket: overlapped or not, rank r's sync starts at 33 - 2r (its last
#   weight-gradient op is its last op), ends at 35 - 2r, optimizer to 35.5 - 2r;
#   step total 35.5 (rank 0), exposed sync 2 on every rank.
# * two buckets of 1 each, not overlapped: [33 - 2r, 34 - 2r], [34 - 2r, 35 - 2r]: same ends.
# * two buckets, overlapped: bucket 1 is ready halfway through the last B (32 - 2r),
#   bucket 2 at its end (33 - 2r): [32 - 2r, 33 - 2r], [33 - 2r, 34 - 2r]; optimizer
#   [34 - 2r, 34.5 - 2r]; total 34.5; exposed 1 per rank (the second bucket).

ONE_F_ONE_B = [
    # (buckets, overlap, sync intervals of rank r as offsets from 33 - 2r, total, exposed)
    (1, False, [(0, 2)], 35.5, 2.0),
    (1, True, [(0, 2)], 35.5, 2.0),
    (2, False, [(0, 1), (1, 2)], 35.5, 2.0),
    (2, True, [(-1, 0), (0, 1)], 34.5, 1.0),
]


@pytest.mark.parametrize("buckets,overlap,syncs,total,exposed", ONE_F_ONE_B)
def test_1f1b_4x8_by_hand(buckets, overlap, syncs, total, exposed):
    step = {"grad_sync": 2.0, "optimizer": 0.5, "overlap_grad_sync": overlap, "grad_sync_buckets": buckets}
    r = run("1f1b", 4, 8, step)
    assert r.metrics.to_dict()["makespan"] == 33.0
    got = rows(r, GRAD_SYNC)
    for rank in range(4):
        end = 33 - 2 * rank
        assert got[rank] == [(rank, end + a, end + b) for a, b in syncs]
        opt_start = end + syncs[-1][1]
        assert rows(r, OPTIMIZER)[rank] == [(-1, opt_start, opt_start + 0.5)]
    s = r.metrics.to_dict()["step"]
    assert s["total"] == total
    assert s["pipeline"] == 33.0
    assert s["grad_sync"] == {"time": 2.0, "exposed": exposed}
    assert s["cross_copy_sync"] == {"time": 0.0, "exposed": 0.0}  # one copy of each stage
    assert s["optimizer"] == 0.5
    assert [p["pipeline_end"] for p in s["per_rank"]] == [33.0, 31.0, 29.0, 27.0]


def test_1f1b_sends_are_pipeline_work():
    # The 2-stage case of test_p2p_hand_worked (F 1, B 2, p2p 0.5, M 2): rank 1's
    # last B ends at 7.5 and its gradient lands on rank 0 at 8.  Not overlapped,
    # rank 1's sync waits for that send; overlapped it starts at its B's end.
    for overlap, start in ((False, 8.0), (True, 7.5)):
        r = run("1f1b", 2, 2, {"grad_sync": 1.0, "overlap_grad_sync": overlap}, p2p=0.5)
        assert rows(r, GRAD_SYNC) == {0: [(0, 10.0, 11.0)], 1: [(1, start, start + 1.0)]}
        assert r.metrics.to_dict()["step"]["total"] == 11.0
        assert r.metrics.to_dict()["step"]["per_rank"][1]["grad_sync_exposed"] == 1.0 - (8.0 - start)


# -- DualPipe, 4 stages x 8 micro-batches -----------------------------------------------
#
# F = 1, B = 2 (I = W = 1), F&B = 3 (no overlap gain), no P2P cost.  The op lists
# are test_dualpipe_schedules.DUALPIPE_4_8; ranks 3 and 2 mirror ranks 0 and 1.
# Worked forward (time each op ends in brackets):
#   rank 0: 0F0 0F1 0F2 [1 2 3]; 3F4@1 waits for 2F4@1 (rank 1, [2,3]): [4], 3I4@1 [5],
#           3W4@1 [6]; 3F5@1 waits for 2F5@1 [4,5]: [7]; (0F3;3B5@1) [7,10].
#   rank 1: 1F0 [1,2] 2F4@1 [2,3] 1F1 [3,4] 2F5@1 [4,5] 1F2 [5,6]; 2B4@1 (grad of 3I4@1 at 5) [6,8];
#           (2F6@1;1B0) waits for 2B0 on rank 2 ([6,8] by mirror): [8,11].
#   rank 0: (3F6@1;0B0) waits for 1B0 (11): [11,14].
#   rank 1: (1F3;2B5@1) [11,14]; (2F7@1;1B1) waits for 2B1 (rank 2's (1F7@1;2B1), [11,14]): [14,17].
#   rank 0: 3B6@1 [14,16]; (3F7@1;0B1) waits for 1B1 (17): [17,20]; 3B7@1 [20,22].
#   rank 1: 2B6@1 [17,19]; 1B2 waits for 2B2 (rank 2, [17,19]): [19,21]; 2I7@1 waits for 3B7@1 (22): [22,23];
#           1I3 waits for 2I3 (rank 2, [22,23]): [23,24]; 2W7@1 [24,25]; 1W3 [25,26].
#   rank 0: 0I2 [22,23] 0W2 [23,24]; 0I3 waits for 1I3 (24): [24,25]; 0W3 [25,26].
# So every rank's pipeline work ends at 26, and the last weight-gradient ends:
#   stage 3 on rank 0 (3B7@1) and on rank 3 (3B3): 22;  stage 0 on ranks 0 and 3: 26;
#   stage 2 on ranks 1 and 2 (2W7@1, 2W3): 25;         stage 1 on ranks 1 and 2: 26.
# Pairs: ranks (0, 3) hold stages 0 and 3, ranks (1, 2) stages 1 and 2.
#
# grad_sync 2, cross_copy_sync 1, optimizer 0.5 per stage copy (1 per rank, two copies):
# * at the end, not overlapped: sums start at 26: stage 0 [26,27] then 3 [27,28] on
#   link (0,3), 1 [26,27] then 2 [27,28] on (1,2).  Rank 0 syncs stage 0 at
#   max(26, 27) = 27 -> [27,29], stage 3 at 28 -> [29,31]; optimizer [31,32].  Ranks
#   1-3 alike.  Total 32.
# * at the end, overlapped: every sync waits for its sum (27, 28), later than its
#   copy's last weight-gradient: as above, total 32.
# * eager, not overlapped: stage 3 summed at max(22, 22) -> [22,23], stage 0 [26,27];
#   stage 2 [25,26], stage 1 [26,27].  Rank 0 syncs stage 3 at max(26, 23) = 26 ->
#   [26,28], then stage 0 (ready 27) [28,30]; rank 1 stage 2 (ready 26) [26,28],
#   stage 1 [28,30].  Optimizers [30,31]; total 31.
# * eager, overlapped: rank 0 syncs stage 3 at max(22, 23) = 23 -> [23,25], stage 0 at 27
#   -> [27,29], optimizer [29,30]; rank 1 stage 2 at max(25, 26) = 26 -> [26,28],
#   stage 1 [28,30], optimizer [30,31].  Total 31.

SUMS = {
    False: {0: [(0, 26, 27), (3, 27, 28)], 1: [(1, 26, 27), (2, 27, 28)]},
    True: {0: [(3, 22, 23), (0, 26, 27)], 1: [(2, 25, 26), (1, 26, 27)]},
}
DUALPIPE = [
    # (eager, overlap, grad syncs of rank 0 and rank 1, optimizer start of ranks 0 and 1, total)
    (False, False, {0: [(0, 27, 29), (3, 29, 31)], 1: [(1, 27, 29), (2, 29, 31)]}, (31, 31), 32),
    (False, True, {0: [(0, 27, 29), (3, 29, 31)], 1: [(1, 27, 29), (2, 29, 31)]}, (31, 31), 32),
    (True, False, {0: [(3, 26, 28), (0, 28, 30)], 1: [(2, 26, 28), (1, 28, 30)]}, (30, 30), 31),
    (True, True, {0: [(3, 23, 25), (0, 27, 29)], 1: [(2, 26, 28), (1, 28, 30)]}, (29, 30), 31),
]
MIRROR = {0: 3, 1: 2}


@pytest.mark.parametrize("eager,overlap,syncs,opt,total", DUALPIPE)
def test_dualpipe_4x8_by_hand(eager, overlap, syncs, opt, total):
    step = {"grad_sync": 2.0, "cross_copy_sync": 1.0, "optimizer": 0.5,
            "cross_copy_eager": eager, "overlap_grad_sync": overlap}  # fmt: skip
    r = run("dualpipe", 4, 8, step, costs={"weight": 1.0, "overlapped": 3.0})
    assert r.metrics.to_dict()["makespan"] == 26.0
    got_sync, got_sum, got_opt = rows(r, GRAD_SYNC), rows(r, CROSS_COPY), rows(r, OPTIMIZER)
    for rank in (0, 1):
        for who in (rank, MIRROR[rank]):  # a pair's sum is on both ranks; the mirror rank syncs alike
            assert got_sum[who] == SUMS[eager][rank]
            assert got_sync[who] == syncs[rank]
            assert got_opt[who] == [(-1, opt[rank], opt[rank] + 1.0)]
    peers = {int(x["rank"]): int(x["peer"]) for x in r.trace.step[r.trace.step["kind"] == CROSS_COPY]}
    assert peers == {0: 3, 3: 0, 1: 2, 2: 1}
    s = r.metrics.to_dict()["step"]
    assert s["total"] == total
    assert s["cross_copy_sync"]["time"] == 2.0
    assert s["optimizer"] == 1.0


def test_dualpipev_holds_each_stage_once():
    # DualPipeV folds 2R stages onto R ranks, one copy each: no cross-copy sum.
    r = run("dualpipev", 4, 8, {"cross_copy_sync": 1.0, "optimizer": 0.5}, costs={"weight": 1.0})
    assert len(rows(r, CROSS_COPY)) == 0
    assert r.metrics.to_dict()["step"]["cross_copy_sync"] == {"time": 0.0, "exposed": 0.0}
    assert r.metrics.to_dict()["step"]["total"] == r.metrics.to_dict()["makespan"] + 1.0  # each rank: two stages' optimizer


def test_chimera_sums_its_two_copies():
    r = run("chimera", 4, 8, {"cross_copy_sync": 1.0})
    pairs = {(int(x["rank"]), int(x["peer"]), int(x["stage"])) for x in r.trace.step}
    assert pairs == {(a, b, s) for s, (a, b) in {0: (0, 3), 3: (0, 3), 1: (1, 2), 2: (1, 2)}.items()} | {
        (b, a, s) for s, (a, b) in {0: (0, 3), 3: (0, 3), 1: (1, 2), 2: (1, 2)}.items()
    }


# -- scenario keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "step,message",
    [
        ({"grad_sync": -1}, "step.grad_sync: input should be greater than or equal to 0"),
        ({"optimizer": [1, 2]}, "step.optimizer: a per-stage list needs one value per stage (4), got 2"),
        ({"overlap_grad_sync": "yes"}, "step.overlap_grad_sync: must be true or false"),
        ({"grad_sync_buckets": 0}, "step.grad_sync_buckets: input should be greater than or equal to 1"),
        ({"grad_sync_buckets": 2.5}, "step.grad_sync_buckets: must be a whole number"),
        ({"gradsync": 1}, "step.gradsync: unknown key"),
        ({"grad_sync": "ring"}, 'step.grad_sync: must be a time in ms, a per-stage list, or "derived"'),
    ],
)
def test_bad_step_keys(step, message):
    with pytest.raises(ScenarioError) as err:
        run("1f1b", 4, 8, step)
    assert str(err.value).startswith(message)


# -- invariants ---------------------------------------------------------------------------

ZERO_STEP = st.fixed_dictionaries(
    {"grad_sync": st.just(0.0), "cross_copy_sync": st.just(0), "optimizer": st.just(0.0),
     "overlap_grad_sync": st.booleans(), "cross_copy_eager": st.booleans(), "grad_sync_buckets": st.integers(1, 4)}
)  # fmt: skip
figure = st.just(0.0) | st.floats(0.01, 10.0)


@st.composite
def with_step(draw, name):
    raw = draw(tp.scenarios(name))
    S = raw["pipeline"]["stages"]
    per_stage = figure | st.lists(figure, min_size=S, max_size=S)
    raw["step"] = {"grad_sync": draw(per_stage), "cross_copy_sync": draw(per_stage), "optimizer": draw(per_stage),
                   "cross_copy_eager": draw(st.booleans()), "grad_sync_buckets": draw(st.integers(1, 4))}  # fmt: skip
    return raw


def _metrics(raw) -> dict:
    return simulation.run(scenario.from_dict(raw)).metrics.to_dict()


@pytest.mark.parametrize("name", tp.FAMILIES)
@tp.SETTINGS
@given(data=st.data())
def test_all_zero_step_is_todays_metrics(name, data):
    raw = data.draw(tp.scenarios(name))
    today = metrics_json(_metrics(raw))
    raw["step"] = data.draw(ZERO_STEP)
    assert metrics_json(_metrics(raw)) == today


SHIPPED = [(toml.name, []) for toml in sorted((ROOT / "scenarios").glob("*.toml"))] + [
    ("quickstart.toml", [f"pipeline.schedule={name}", "pipeline.microbatches=24"])
    for name in ("1f1b", "zb-h1", "dualpipev", "chimera", "zbv")
]


@pytest.mark.parametrize("toml,overrides", SHIPPED)
def test_all_zero_step_leaves_shipped_scenarios_byte_identical(toml, overrides):
    # The shipped scenarios, including the component model (deepseek-v3), with an
    # explicit all-zero [step] table: same metrics.json bytes as without one.
    zero = ["step.grad_sync=0", "step.cross_copy_sync=0", "step.optimizer=0", "step.overlap_grad_sync=true",
            "step.cross_copy_eager=true", "step.grad_sync_buckets=3"]  # fmt: skip
    raw = scenario.load_raw(ROOT / "scenarios" / toml)
    raw.pop("step", None)  # a scenario that has [step] work (deepseek-v3-predicted) is compared without it
    today = metrics_json(simulation.run(scenario.from_dict(scenario.apply_overrides(raw, overrides))).metrics)
    zeroed = scenario.from_dict(scenario.apply_overrides(scenario.load_raw(ROOT / "scenarios" / toml), overrides + zero))
    assert metrics_json(simulation.run(zeroed).metrics) == today


@pytest.mark.parametrize("name", tp.FAMILIES)
@tp.SETTINGS
@given(data=st.data())
def test_step_invariants(name, data):
    raw = data.draw(with_step(name))
    totals = {}
    for overlap in (False, True):
        raw["step"]["overlap_grad_sync"] = overlap
        m = _metrics(raw)
        s = m.get("step")
        if s is None:  # every figure drawn zero
            continue
        assert s["pipeline"] == m["makespan"]
        assert s["total"] >= m["makespan"]
        for part in ("grad_sync", "cross_copy_sync"):
            assert 0 <= s[part]["exposed"] <= s[part]["time"] + 1e-9
        for p in s["per_rank"]:
            assert p["grad_sync_exposed"] <= p["grad_sync"] + 1e-9
            assert p["cross_copy_exposed"] <= p["cross_copy_sync"] + 1e-9
            assert p["pipeline_end"] <= p["end"] <= s["total"]
            if p["optimizer_start"] is not None:
                assert p["optimizer_start"] >= p["pipeline_end"]
        totals[overlap] = s["total"]
    if totals:
        assert totals[True] <= totals[False] + 1e-9  # overlapped is never slower


def test_eager_sums_can_be_slower():
    # Not a theorem: a sum released early can hold the pair's link when a short one
    # would have gone first.  Chimera, 2 stages, 2 micro-batches, F = B = 1, W = 0:
    # both ranks hold both stages; stage 1's last B ends at 3, stage 0's at 4 (= the end).
    # grad_sync 3, cross-copy sums 1 (stage 0) and 3 (stage 1).
    # * at the end: both sums released at 4, stage 0 first [4,5], stage 1 [5,8]; syncs
    #   stage 0 [5,8], stage 1 [8,11]: total 11.
    # * eager: stage 1's sum at 3 -> [3,6], stage 0's waits for the link -> [6,7];
    #   syncs stage 1 [6,9], stage 0 [9,12]: total 12.
    step = {"grad_sync": 3.0, "cross_copy_sync": [1.0, 3.0]}
    for eager, total in ((False, 11.0), (True, 12.0)):
        r = run("chimera", 2, 2, {**step, "cross_copy_eager": eager}, costs={"backward": 1.0, "weight": 0.0})
        assert r.metrics.makespan == 4.0
        assert r.metrics.step.total == total


def test_step_metrics_are_deterministic(tmp_path):
    step = {"grad_sync": [1, 2, 3, 4], "cross_copy_sync": 0.5, "optimizer": 0.25, "cross_copy_eager": True}
    a = metrics_json(run("dualpipe", 4, 8, dict(step)).metrics)
    b = metrics_json(run("dualpipe", 4, 8, dict(step)).metrics)
    assert a == b
    assert "step" in json.loads(a)


# -- from the model: derived sync times, tokens per second, MFU ---------------------------------


def test_llama3_70b_throughput_and_derived_sync():
    # scenarios/llama3-70b.toml: interleaved 1F1B on 4 ranks (20 stages), 16 micro-batches of
    # 1 x 8192 tokens, TP 8, DP 64, ZeRO 2, H100 (989.4 dense BF16 TFLOP/s).
    from dualpipe_sim.model import derive, flops

    sc = scenario.load(ROOT / "scenarios" / "llama3-70b.toml", ["step.grad_sync=derived", "step.optimizer=1"])
    r = simulation.run(sc)
    s = r.metrics.step
    st = derive.setup(sc)
    # ZeRO 2 reduce-scatters each layer after every backward (model/fsdp.py): the step waits for the
    # last one, a rank's fp32 gradients of the stage's first unit over 64 replicas on the NIC (NCCL's
    # ring latency, one rank per node at TP 8, so 63 network steps: Simple 8.4 + 63 x 14 us, LL128
    # 14 + 63 x 4 us at 0.7 of the bandwidth, the faster taken; + 63/64 x bytes over the 47 GB/s bus
    # bandwidth of a 400 Gb/s NDR NIC): the embedding (128,256 x 8,192) on stage 0, else one layer:
    # q, o 2 x 8192^2 + k, v 2 x 8192 x 1024 + SwiGLU 3 x 8192 x 28,672 + two norms 2 x 8192 = 855,654,400
    # parameters, and the two norms whole on each of the 8 tensor ranks (Megatron-core @ 1e05700 transformer_layer.py
    # 309-314, 356-361): 7 x 2 x 8192 more in a count a rank holds 1/8 of, 855,769,088.  Simple wins at these sizes (LL128's 30% less bandwidth costs more than its latency saves).
    # The figure is the last backward's reduce-scatters, released unit by unit through it as Megatron-FSDP's
    # post-backward hooks launch them (the overlap forced on, step.overlap_grad_sync false here): the stage's
    # whole-gradient reduce-scatter (ZeRO 1's figure, R), longer than the last unit's.  The 15 earlier backwards'
    # queue before it on the rank's channel (engine/step.py _earlier_jobs, s21k): rank 0 holds stages 0, 4, 8, 12
    # and 16, so its channel carries 16 x their five R in all.
    whole = scenario.load(ROOT / "scenarios" / "llama3-70b.toml",
                          ["step.grad_sync=derived", "step.optimizer=1", "parallel.zero=1"]).step_costs().grad_sync
    for s_, got in enumerate(sc.step_costs().grad_sync):
        unit = 128_256 * 8192 if s_ == 0 else 855_654_400 + 7 * 2 * 8192
        moved = 63 / 64 * unit / 8 * 4.0
        simple, ll128 = (8.4 + 63 * 14) * 1e-6 + moved / 47e9, (14 + 63 * 4) * 1e-6 + moved / (0.7 * 47e9)
        assert simple < ll128
        assert whole[s_] > simple * 1e3
        assert got == pytest.approx(whole[s_])
    tail = sc.step_costs().grad_sync_tail  # and after them the tensor-parallel all-reduce of the norms' gradients
    assert s.per_rank[0].grad_sync == pytest.approx(sum(16 * whole[s_] + tail[s_] for s_ in (0, 4, 8, 12, 16)))
    tokens = 16 * 8192 * 1 * 64
    assert s.tokens_per_second == pytest.approx(tokens / (s.total / 1e3))
    per_token = flops.per_token(st.cfg, 8192).training
    assert s.mfu == pytest.approx(s.tokens_per_second * per_token / (4 * 8 * 64 * 989.4e12))


def test_derived_needs_the_model():
    with pytest.raises(ScenarioError, match=r'step.grad_sync: "derived" needs the \[model\] and \[hardware\]'):
        run("1f1b", 4, 8, {"grad_sync": "derived"})


def test_no_model_no_throughput():
    d = run("1f1b", 4, 8, {"optimizer": 1.0}).metrics.to_dict()["step"]
    assert "tokens_per_second" not in d and "mfu" not in d


# -- views: compare, sweep summary, Chrome trace, run summary --------------------------------

STEP_43 = ["step.grad_sync=2", "step.cross_copy_sync=1", "step.optimizer=1"]
BASE_43 = """
[pipeline]
schedule = "1f1b"
stages = 4
microbatches = 8
[costs]
forward = 1.0
backward = 2.0
weight = 1.0
"""
# S=4, M=8, F=1, B=2, W=1, no P2P.  Makespans: ZB-H1 M(F+B) + (S-1)(F+B-2W) = 27, DualPipe 26
# (test_dualpipe_4x8_by_hand).  Steps: ZB-H1 holds one stage per rank, 27 + 2 + 1 = 30; DualPipe
# sums at 26 [26,27], [27,28], reduces [27,29], [29,31], optimizer of two copies [31,33]: 33.


def test_sweep_summary_ranks_by_step(tmp_path):
    from dualpipe_sim.sweep import run_sweep
    from dualpipe_sim.cli import parse_grid

    base = tmp_path / "base.toml"
    base.write_text(BASE_43)
    grid = parse_grid(["pipeline.schedule=zb-h1,dualpipe"])
    run_sweep(base, grid, tmp_path / "plain", jobs=1)
    run_sweep(base, grid, tmp_path / "step", overrides=STEP_43, jobs=1)

    def row(out):
        lines = [x for x in (out / "summary.md").read_text().splitlines() if x.startswith("| 4 ")]
        return [c.strip() for c in lines[0].strip("|").split("|")]

    assert row(tmp_path / "plain")[2:4] == ["dualpipe", "26"]
    assert row(tmp_path / "step")[2:5] == ["zb-h1", "27", "30"]
    assert "smallest training step" in (tmp_path / "step" / "summary.md").read_text()
    csv = (tmp_path / "step" / "results.csv").read_text().splitlines()
    assert "step.total" in csv[0].split(",")


def test_compare_speedup_is_of_whole_steps(tmp_path):
    from dualpipe_sim import compare

    base = tmp_path / "base.toml"
    base.write_text(BASE_43)
    c = compare.compare(scenario.load(base, STEP_43), ["zb-h1", "dualpipe"])
    # 1F1B: (M + S - 1)(F + B) = 33 on rank 0, then its sync 2 and optimizer 1: 36.
    assert c.has_step and c.baseline_step == 36
    rows = {r["schedule"]: r for r in compare.summary_rows(c)}
    assert rows["zb-h1"]["step"] == 30 and rows["dualpipe"]["step"] == 33
    assert rows["zb-h1"]["speedup"] == pytest.approx(36 / 30)
    assert "step (ms)" in compare.table(c)
    plain = compare.compare(scenario.load(base), ["zb-h1", "dualpipe"])
    assert not plain.has_step and "step (ms)" not in compare.table(plain)


def test_chrome_trace_has_the_step_rows():
    from dualpipe_sim.outputs.exports.chrome import chrome_trace

    step = {"grad_sync": 2.0, "cross_copy_sync": 1.0, "optimizer": 0.5}
    r = run("dualpipe", 4, 8, step, costs={"weight": 1.0, "overlapped": 3.0})
    events = [e for e in chrome_trace(r.trace)["traceEvents"] if e.get("cat") in ("grad_sync", "cross_copy_sync", "optimizer")]
    assert len(events) == len(r.trace.step)
    got = sorted((e["cat"], e["pid"], e["ts"], e["dur"]) for e in events)
    names = ("grad_sync", "cross_copy_sync", "optimizer")
    want = sorted((names[x["kind"]], int(x["rank"]), round(x["start"] * 1000), round((x["end"] - x["start"]) * 1000))
                  for x in r.trace.step)  # fmt: skip
    assert got == want
    sums = [e for e in events if e["cat"] == "cross_copy_sync"]
    assert {(e["pid"], e["args"]["with_rank"]) for e in sums} == {(0, 3), (3, 0), (1, 2), (2, 1)}


def test_run_prints_the_step_line(tmp_path, capsys):
    from dualpipe_sim.cli import main

    base = tmp_path / "base.toml"
    base.write_text(BASE_43)
    args = ["run", str(base), "--out", str(tmp_path / "o"), "--plots", "png"]
    assert main(args + ["--set", "pipeline.schedule=dualpipe"] + [x for s in STEP_43 for x in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert "training step (ms): total 33, pipeline 26" in out
    assert (tmp_path / "o" / "gantt.png").stat().st_size > 0 and (tmp_path / "o" / "memory.png").stat().st_size > 0


def test_step_is_split_by_layer():
    """[step]'s inputs (step_costs.py), its simulation (step.py) and its metrics reader
    (step_metrics.py) are apart: the scenario and the metrics reader import, directly or
    not, nothing that simulates (step.py, the replay core, either engine)."""
    import test_architecture as arch

    def module(name: str) -> str:
        (found,) = [m for m in arch.MODULES if m.rsplit(".", 1)[-1] == name]
        return found

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in arch._imports(todo.pop()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    simulating = {module(m) for m in ("step", "replay", "engine", "simulation", "validate")}
    for reader in ("scenario", "metrics", "step_metrics", "step_costs"):
        assert not reached(module(reader)) & simulating, reader
    assert module("step_costs") in reached(module("scenario")) and module("step_metrics") in reached(module("metrics"))
