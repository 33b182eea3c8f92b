"""Which link a pipeline hand-off takes (model/placement.py; docs/model.md, "Which link a pipeline hand-off takes"):
the pairs of pipeline ranks inside one NVLink domain worked out by hand from the rank order, their hand-offs costed
at NVLink's P2P rate and the others at the NIC's, and the step taken as its slowest data-parallel replica's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_error

from dualpipe_sim import simulation
from dualpipe_sim.engine import simpy_engine
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.model.placement import nvlink_pairs
from dualpipe_sim.readers.metrics import P2P
from dualpipe_sim.schedules.registry import build

ROOT = Path(__file__).resolve().parents[1]
LLAMA70 = str(ROOT / "scenarios" / "models" / "llama3-70b.json")  # hidden 8192, 80 layers
LAT, NIC, H100_NVLINK = 25.5e-6, 47e9, 321e9  # rates.py: _LATENCY, _NIC_NDR, H100's nvlink_bus
ACT = 2 * 2048 * 8192  # one boundary activation: BF16 x 2,048 tokens x hidden 8,192


def forward_pairs(pairs: frozenset) -> list[int]:
    """The boundaries s -> s + 1 among ``pairs``, by s."""
    return sorted(a for a, b in pairs if b == a + 1)


def all_pairs(ranks) -> frozenset:
    return frozenset((a, b) for a in ranks for b in ranks if a != b)


def test_eight_stages_of_tp1_on_one_h100_node_are_all_nvlink():
    # tensor x context x data = 1: pipeline rank p is global rank p, all 8 on node 0
    assert nvlink_pairs("tp-cp-ep-dp-pp", 1, 1, 8, 8) == (all_pairs(range(8)),)


def test_tp8_puts_every_neighbour_on_another_node():
    # neighbours 8 apart on 8-GPU nodes: no pair shares a node, whatever the replica
    assert nvlink_pairs("tp-cp-ep-dp-pp", 8, 1, 8, 8) == (frozenset(),)
    assert nvlink_pairs("tp-cp-ep-dp-pp", 8, 4, 8, 72) != (frozenset(),)  # 32 apart in a rack of 72: some share it


def test_tp2_dp2_on_h100_pairs_the_ranks_of_each_node():
    # stride tensor x data = 4: pipeline ranks 2k and 2k + 1 fill node k (replica 0 at offsets 0-1, replica 1 at 2-3,
    # the same pattern): boundaries 0-1, 2-3, 4-5, 6-7 on NVLink, 1-2, 3-4, 5-6 across the NIC
    (pairs,) = nvlink_pairs("tp-cp-ep-dp-pp", 2, 2, 8, 8)
    assert pairs == frozenset(x for k in range(4) for x in ((2 * k, 2 * k + 1), (2 * k + 1, 2 * k)))


def test_gb200_tp4_cp2_dp4_pp8_by_hand():
    # tp x cp = 8 ranks a replica, stride 32 (x dp 4); replica d at offsets 8d .. 8d + 7; racks of 72. Boundary p -> p + 1
    # joins ranks 32p + j and 32p + 32 + j: across a rack when a multiple of 72 lies in (32p + 8d, 32p + 8d + 39].
    # d = 0: 72 in p = 2 (64, 103], 144 in p = 4, 216 in p = 6: NVLink at 0, 1, 3, 5
    # d = 1: 72 in p = 1 (40, 79], 144 in p = 4 (136, 175], 216 in p = 6 (200, 239]: NVLink at 0, 2, 3, 5
    # d = 2: p = 1 (48, 87], p = 3 (112, 151], p = 6 (208, 247]: NVLink at 0, 2, 4, 5
    # d = 3: p = 1 (56, 95], p = 3 (120, 159], p = 5 (184, 223]: NVLink at 0, 2, 4, 6
    patterns = nvlink_pairs("tp-cp-ep-dp-pp", 8, 4, 8, 72)
    assert [forward_pairs(p) for p in patterns] == [[0, 1, 3, 5], [0, 2, 3, 5], [0, 2, 4, 5], [0, 2, 4, 6]]
    # replica 0's racks: pipeline ranks 0-2 (ranks 0-71 at offsets 0-7 ... 64-71), 3-4 (96-159), 5-6 (160-215), 7
    assert patterns[0] == all_pairs([0, 1, 2]) | all_pairs([3, 4]) | all_pairs([5, 6])


def test_a_boundary_half_inside_a_rack_crosses_the_nic():
    # TP 16 on a GB200 NVL72 (racks of 72), pipeline rank p on ranks 16p .. 16p + 15: p 0-3 in rack 0 (0-63), p 4 on
    # 64-79, half in each rack, p 5-7 in rack 1 (80-127). Rank 4's tensor ranks 0-7 could hand off on NVLink to rank 3,
    # its 8-15 (72-79) not: the next layer waits for them, so all of rank 4's hand-offs cross the NIC
    (pairs,) = nvlink_pairs("tp-cp-ep-dp-pp", 16, 1, 8, 72)
    assert pairs == all_pairs(range(4)) | all_pairs(range(5, 8))


def test_nemo_tp_pp_dp_mapping_keeps_a_replica_on_consecutive_ranks():
    # tp-cp-ep-pp-dp, tp x cp = 8, pp 8: replica d is ranks 64d .. 64d + 63, pipeline rank p at 64d + 8p; racks of 72.
    patterns = nvlink_pairs("tp-cp-ep-pp-dp", 8, 8, 8, 72)
    assert len(patterns) == 8 and patterns[0] == all_pairs(range(8))  # ranks 0-63: one rack
    assert patterns[1] == all_pairs(range(1, 8))  # ranks 64-71 (p 0) in rack 0, 72-127 in rack 1
    assert patterns[7] == all_pairs(range(7))  # 448-503 in rack 6, 504-511 (p 7) in rack 7


def test_engine_takes_each_link_at_its_cost_and_the_slowest_replica():
    # 1F1B over 2 stages, 1 micro-batch, F 1, B 2: F0 [0, 1], hand-off, F1, B1, hand-off, B0.
    # NIC hand-offs of 1: F1 [2, 3], B1 [3, 5], B0 [6, 8]; NVLink ones of 0.25: F1 [1.25, 2.25], B1 [2.25, 4.25], B0 [4.5, 6.5]
    sched, nv = build("1f1b", 2, 1), frozenset({(0, 1), (1, 0)})
    costs = replace(CostModel.uniform(2, forward=1, backward=2, p2p=1.0), p2p_nvlink=0.25)
    assert simulation.simulate(sched, costs).makespan == 8.0
    assert simulation.simulate(sched, replace(costs, nvlink_pairs=(nv,))).makespan == 6.5
    assert simpy_engine.simulate(sched, replace(costs, nvlink_pairs=(nv,))).makespan == 6.5  # the reference engine
    for replicas in ((nv, frozenset()), (frozenset(), nv)):  # the step waits for the slower replica, either order
        trace = simulation.simulate(sched, replace(costs, nvlink_pairs=replicas))
        assert trace.makespan == 8.0
        rows = trace.comm[trace.comm["channel"] == P2P]
        assert np.allclose(rows["end"] - rows["start"], 1.0)
    # one link on NVLink, the other (the gradient's, 1 -> 0) across: B0 starts at 4.25 + 1
    trace = simulation.simulate(sched, replace(costs, nvlink_pairs=(frozenset({(0, 1)}),)))
    assert trace.makespan == 7.25
    assert sorted((int(r["rank"]), float(r["end"] - r["start"])) for r in trace.comm) == [(0, 0.25), (1, 1.0)]


def llama70(tensor: int, data: int = 1, **extra) -> scenario.Scenario:
    return scenario.read({
        "pipeline": {"schedule": "1f1b", "stages": 8, "microbatches": 4},
        "model": {"config": LLAMA70, "seq_length": 2048, "micro_batch_size": 1},
        "parallel": {"tensor": tensor, "data": data, "zero": 1, "tp_comm_overlap": False},
        "hardware": {"preset": "H100"}, **extra,
    })  # fmt: skip


@pytest.mark.parametrize("tensor,hop", [
    (1, LAT + ACT / H100_NVLINK),  # 8 stages on one node: every hand-off on NVLink, the whole activation
    (8, LAT + ACT / 8 / NIC),  # TP 8: every hand-off across the NIC, 1/8 a rank (sequence parallel)
])  # fmt: skip
def test_run_costs_each_hand_off_on_its_link(tensor, hop):
    result = simulation.run(llama70(tensor))
    rows = result.trace.comm[result.trace.comm["channel"] == P2P]
    assert len(rows) == 7 * 4 * 2  # 7 boundaries x 4 micro-batches x (activation, gradient)
    assert np.allclose(rows["end"] - rows["start"], hop * 1e3, rtol=1e-9)
    assert result.metrics.comm.p2p_time == pytest.approx(56 * hop * 1e3)


def test_p2p_given_by_hand_is_every_hand_offs():
    costs = llama70(1, comm={"p2p": 0.5}).cost_model()
    assert costs.placement is None and not costs.nvlink_pairs and costs.link_p2p(0, 1) == 0.5


def test_bad_rank_order_one_line_exit_2_nothing_written(tmp_path):
    line = cli_error(tmp_path, "run", str(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-64b200.toml"),
                     "--set", "parallel.rank_order=tp-pp-dp")  # fmt: skip
    assert "parallel.rank_order: input should be 'tp-cp-ep-dp-pp' or 'tp-cp-ep-pp-dp', got 'tp-pp-dp'" in line


def test_planner_replays_each_link_at_its_cost_and_takes_the_slowest_replica():
    # the engine test's case through plan's replay (step_estimate): NVLink 0.25 both ways -> 6.5, NIC 1 -> 8,
    # NVLink forward only -> 7.25; the estimate keeps the slowest replica, as simulation.simulate does
    from dualpipe_sim.plan.estimate import slowest
    from dualpipe_sim.plan.step_estimate import StageCosts, built, pipelines, replayed

    b, costs = built("1f1b", 2, 1, None), StageCosts((1.0, 1.0), (2.0, 2.0), (0.0, 0.0))
    both, forward = frozenset({(0, 1), (1, 0)}), frozenset({(0, 1)})
    assert replayed(b, costs, (1.0, 0.25, both), False).makespan == 6.5
    assert replayed(b, costs, (1.0, 0.25, forward), False).makespan == 7.25
    assert replayed(b, costs, 1.0, False).makespan == 8.0
    hops = [(1.0, 0.25, both), (1.0, 0.25, forward), 1.0]
    runs = pipelines("1f1b", 2, 1, None, 2, [costs] * 3, hops, False)
    assert [r[0] for r in runs] == [6.5, 7.25, 8.0] and slowest(runs)[0] == 8.0 and slowest(runs[:2])[0] == 7.25


def test_planners_batched_replay_takes_each_transfers_link(monkeypatch):
    # replayed_many's rounds (numpy over candidates) forced: each candidate's replay is replayed's to the bit,
    # the 2-stage case's hand-worked ends (6.5, 7.25, 8) among them
    from dualpipe_sim.plan import step_estimate as se

    monkeypatch.setattr(se, "LOOP_US", 1e9)  # the loop never pays: always the rounds
    b, costs = se.built("1f1b", 2, 1, None), se.StageCosts((1.0, 1.0), (2.0, 2.0), (0.0, 0.0))
    hops = [(1.0, 0.25, frozenset({(0, 1), (1, 0)})), (1.0, 0.25, frozenset({(0, 1)})), 1.0]
    many = se.replayed_many("1f1b", 2, 1, None, [costs] * 3, hops, False)
    assert [r.makespan for r in many] == [6.5, 7.25, 8.0]
    b8, c8 = se.built("1f1b", 4, 8, None), se.StageCosts((1.0, 1.5, 1.0, 2.0), (2.0, 3.0, 2.0, 4.0), (0.0,) * 4)
    hops8 = [(0.5, 0.1, p) for p in nvlink_pairs("tp-cp-ep-dp-pp", 2, 1, 4, 4)] + [0.5, 0.1]  # ranks {0,1}, {2,3}
    for one, x in zip(se.replayed_many("1f1b", 4, 8, None, [c8] * 3, hops8, True), hops8):
        alone = se.replayed(b8, c8, x, True)
        assert one.makespan == alone.makespan and np.array_equal(one.starts, alone.starts)
        assert np.array_equal(np.asarray(one.begin), np.asarray(alone.begin))


def test_model_json_gives_both_hand_off_times(capsys):
    """`model --json` on scenarios/llama3-70b.toml (H100, TP 8 with sequence parallelism, sequence 8,192, micro-batch
    1, hidden 8,192): a hand-off carries s x b x h / t x 2 bytes = 8,192 x 8,192 / 8 x 2 = 16,777,216 B, so 25.5 us of
    latency plus 16.78 MB over the NIC's 47 GB/s (p2p_ms) or NVLink's 321 GB/s (p2p_nvlink_ms; docs/model.md)."""
    import json

    from dualpipe_sim.cli import main

    assert main(["model", str(Path(__file__).resolve().parents[1] / "scenarios" / "llama3-70b.toml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    nbytes = 8192 * 8192 // 8 * 2
    assert out["p2p_ms"] == pytest.approx((25.5e-6 + nbytes / 47e9) * 1e3)
    assert out["p2p_nvlink_ms"] == pytest.approx((25.5e-6 + nbytes / 321e9) * 1e3)
