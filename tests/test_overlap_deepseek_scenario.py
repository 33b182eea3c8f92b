"""scenarios/deepseek-v3.toml loads, derives its chunk costs, and shows the overlap."""

from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import A2A

PRESET = Path(__file__).resolve().parent.parent / "scenarios" / "deepseek-v3.toml"


def test_preset_derives_chunk_costs():
    """A middle stage (4 MoE layers), per layer: forward 4.37 + 6.69 + 4.60 + 8.68 = 24.34, backward
    5.77 + 5.31 + 5.06 + 7.49 + 9.34 + 2.39 = 35.36, weight 5.06 + 2.39 = 7.45; times 4 layers."""
    sc = scenario.load(PRESET)
    assert (sc.pipeline.schedule, sc.pipeline.stages) == ("dualpipe", 16)
    c = sc.cost_model()
    for s in range(1, 14):
        assert c.forward[s] == pytest.approx(97.36)
        assert c.backward[s] == pytest.approx(141.44)
        assert c.weight[s] == pytest.approx(29.8)
    # The pair hides the backward's all-to-all that a lone backward exposes, so F&B can be
    # shorter than B alone; it cannot be shorter than its compute, 4 x 31.07 = 124.28.
    assert c.forward[1] + c.backward[1] > c.overlapped[1] > 124.28


def test_preset_costs_the_first_and_last_stages_as_they_are():
    """Stage 15 holds 3 MoE layers, the MTP module (one more MoE layer, the 2h -> h projection, the
    shared head) and the head.  By hand, with the profiled layer and the preset's H800 figures at its
    efficiency 0.324: a head's forward is 4,096 tokens x 2 x 7,168 x 129,280 FLOPs at the BF16 peak
    989.4 TFLOP/s x 0.324 = 23.68 ms, the projection 4,096 x 2 x 2 x 7,168^2 at the FP8 peak 1,978.9 x
    0.324 = 1.31 ms; input and weight gradients each as long again (recompute "deepseek" reruns
    neither).  Stage 0 holds the embedding and the 3 dense layers: no all-to-all."""
    sc = scenario.load(PRESET)
    c = sc.cost_model()
    head = 4096 * 2 * 7168 * 129280 / (989.4e12 * 0.324) * 1e3
    proj = 4096 * 2 * 2 * 7168**2 / (1978.9e12 * 0.324) * 1e3
    extra = 2 * head + proj
    assert head == pytest.approx(23.68, abs=0.01) and proj == pytest.approx(1.31, abs=0.01)
    assert c.forward[15] == pytest.approx(4 * 24.34 + extra)
    assert c.backward[15] == pytest.approx(4 * 35.36 + 2 * extra)
    assert c.weight[15] == pytest.approx(4 * 7.45 + extra)
    assert c.chunk_of(15).layers == 4 and c.chunk_of(0).layers == 3
    assert all(c.chunk_of(0).times[p] == 0 for p in (1, 3, 4, 7))  # the dispatch / combine parts
    # so the ranks holding stages 0 and 15 are the busiest (DualPipe: rank r holds stages r and 15 - r)
    m = simulation.run(scenario.load(PRESET, ["pipeline.microbatches=32"])).metrics
    busy = [r.busy for r in m.per_rank]
    assert busy[0] == busy[15] == max(busy) and busy[0] > 1.3 * busy[7]


def test_dualpipe_hides_all_to_all_that_1f1b_exposes():
    small = ["pipeline.stages=4", "pipeline.microbatches=8"]  # same chunk, a quick shape
    dp = simulation.run(scenario.load(PRESET, small)).metrics.to_dict()
    f1 = simulation.run(scenario.load(PRESET, small + ["pipeline.schedule=1f1b"])).metrics.to_dict()
    assert f1["comm"]["a2a_exposed"] == pytest.approx(f1["comm"]["a2a_time"])  # no pairs, nothing hidden
    assert dp["comm"]["a2a_time"] == pytest.approx(f1["comm"]["a2a_time"])  # same work
    assert dp["comm"]["a2a_exposed"] < dp["comm"]["a2a_time"]
    assert dp["makespan"] < f1["makespan"]
    assert all(r["parameter_copies"] == 2 for r in dp["per_rank"])
    assert max(r["peak_activation"] for r in dp["per_rank"]) == 4 + 1


def test_preset_fits_the_80_gb_h800():
    """The report's shape: 120 micro-batches (15,360 sequences / 128 pipelines).  Memory is derived
    from [model]/[parallel] (docs/model.md).  By hand, a rank holding two 4-MoE-layer stages: per
    layer on an EP64 rank 232,997,120 replicated parameters (MLA 187,107,328, norms 14,336, shared
    expert 44,040,192, router 1,835,008 + 256) and 4 of 256 experts = 176,160,768; BF16 weights,
    fp32 gradients, 8 bytes of optimizer state (fp32 master + BF16 moments) sharded over DP 128
    (replicated part) and 128 / 64 = 2 (experts); DualPipe's peak of PP + 1 = 17 chunk
    activations.  The busiest ranks (embedding, dense layers, MTP and head) stay under 80 GB."""
    sc = scenario.load(PRESET)
    assert sc.pipeline.microbatches == 15_360 // (2_048 // 16) == 120
    m = simulation.run(scenario.load(PRESET, ["pipeline.microbatches=32"])).metrics  # same peak, quicker
    dense, routed = 8 * 232_997_120, 8 * 176_160_768
    mem = m.per_rank[2].memory  # stages 2 and 13
    assert mem.parameters == pytest.approx(2 * (dense + routed))
    assert mem.gradients == pytest.approx(4 * (dense + routed))
    assert mem.optimizer == pytest.approx(8 * (dense / 128 + routed / 2))
    assert m.per_rank[2].peak_activation == 17
    # FP8 weights cast per use (the preset's fp8_weight_cache = false): per stage, its largest layer's
    # linears on this rank, copy + transpose: MLA 187,107,328 - its two norms (1,536 + 512) + shared
    # expert 44,040,192 + 4 routed experts 176,160,768 = 407,306,240 elements, x 2 bytes, 2 stages.
    assert mem.fp8_weights == 2 * 2 * (187_107_328 - 2_048 + 44_040_192 + 176_160_768)
    # All-to-all: one phase at a time on the rank, DeepEP's (s21r): the 4,096 own rows and the 4,096 x 64 (1 -
    # C(252, 8) / C(256, 8)) received, a token once per rank holding one of its 8 experts (4 of 256 a rank), x 7,168;
    # the largest is a BF16 one (the FP8 phases take 1 + 4/128 bytes).
    reached = 64 * (1 - 245 * 246 * 247 * 248 / (253 * 254 * 255 * 256))
    assert mem.a2a_buffers == pytest.approx((4096 + 4096 * reached) * 7168 * 2, rel=1e-12)
    assert mem.activations_peak <= mem.dynamic_peak <= mem.activations_peak + mem.p2p_buffers + mem.a2a_buffers
    # NCCL communicators: pipeline 16, data 128, expert 64 (688 MiB each), expert-data 2 (544 MiB)
    assert mem.runtime == 0.5e9 + (3 * 688 + 544) * 2**20 + 32 * 2**20
    assert mem.sharding_buffers == 0  # ZeRO 1
    # DeepEP's buffer over EP 64 (8 nodes of 8), hidden 7,168 (s21u; tests/test_s21u_deepep_persistent.py works it):
    # NVLink 377,677,824 + RDMA 367,550,720 + FIFO and peer pointers 131,200 + workspace 32 MiB
    assert mem.deepep_buffers == 377_677_824 + 367_550_720 + 131_200 + 33_554_432
    assert mem.total == pytest.approx(mem.parameters + mem.fp8_weights + mem.gradients + mem.optimizer
                                      + mem.deepep_buffers + mem.dynamic_peak + mem.runtime)  # fmt: skip
    assert m.device_memory == 81559 * 2**20  # the H800 taken as H100's 81559 MiB (nvidia-smi's total)
    assert max(r.memory.total for r in m.per_rank) < 81559 * 2**20


def test_steady_state_pair_span_matches_the_profile():
    """Issue 11's done-when: the median span of an overlapped pair on a middle rank (first
    component to last, all-to-all included) is within 5% of the profile's 129.0 ms."""
    trace = simulation.run(scenario.load(PRESET, ["pipeline.microbatches=32"])).trace  # pairs do not depend on M
    rank = 7
    spans = {}
    for table in (trace.compute, trace.comm[trace.comm["channel"] == A2A]):
        mine = table[(table["rank"] == rank)]
        for r in mine:
            lo, hi = spans.get(int(r["action"]), (r["start"], r["end"]))
            spans[int(r["action"])] = (min(lo, r["start"]), max(hi, r["end"]))
    pairs = sorted({int(a) for a in trace.compute[(trace.compute["rank"] == rank) & trace.compute["overlapped"]]["action"]})
    assert len(pairs) > 4
    median = float(np.median([spans[a][1] - spans[a][0] for a in pairs]))
    assert median == pytest.approx(129.0, rel=0.05)


def test_last_stage_head_and_mtp_ride_on_the_mlp_parts():
    """docs/dualpipe.md, "The first and last stages as they are": stage 15's head and MTP module (the
    extra of the test above, 48.68 ms a pass) are shared out over its 4 MoE layers on the MLP
    components, the block they follow in the forward and precede in the backward: forward on
    mlp_forward, input gradient on mlp_backward_input, weight gradient on mlp_backward_weight (a W
    part, as the vocabulary projection's weight gradient is).  Attention and all-to-all parts stay
    as typed.  By hand: 4.60 + 12.17 = 16.77, 5.31 + 12.17 = 17.48, 5.06 + 12.17 = 17.23 ms; the
    Gantt's and the trace's stage-15 MLP parts are those lengths."""
    sc = scenario.load(PRESET)
    head = 4096 * 2 * 7168 * 129280 / (989.4e12 * 0.324) * 1e3
    proj = 4096 * 2 * 2 * 7168**2 / (1978.9e12 * 0.324) * 1e3
    share = (2 * head + proj) / 4
    assert share == pytest.approx(12.17, abs=0.01)
    typed = dict(attn_forward=4.37, dispatch_forward=6.69, mlp_forward=4.60, combine_forward=8.68,
                 combine_backward=5.77, mlp_backward_input=5.31, mlp_backward_weight=5.06,
                 dispatch_backward=7.49, attn_backward_input=9.34, attn_backward_weight=2.39)  # fmt: skip
    mlp = ("mlp_forward", "mlp_backward_input", "mlp_backward_weight")
    from dualpipe_sim.schedules.components import Component

    last = sc.cost_model().chunk_of(15)
    for c in Component:
        want = typed[c.name] + (share if c.name in mlp else 0.0)
        assert last.times[c] == pytest.approx(want), c.name
    # what the trace records (and the Gantt and pair view draw): every stage-15 MLP input-gradient part
    trace = simulation.run(scenario.load(PRESET, ["pipeline.microbatches=32"])).trace
    rows = trace.compute[(trace.compute["stage"] == 15) & (trace.compute["part"] == Component.mlp_backward_input)]
    assert len(rows) == 32 * 4 and np.allclose(rows["end"] - rows["start"], 5.31 + share)
