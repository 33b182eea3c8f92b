"""Megatron-core's gradient reduce-scatter by bucket group, with FP8 parameters (s13e; docs/step.md, "Gradient
bucket groups with FP8 parameters").

Megatron-core (25.09-alpha.rc1, d339190) reduce-scatters a bucket group once every parameter in it has its
gradient (``register_grad_ready`` -> ``start_grad_sync``), and with FP8 parameters ``partition_buckets`` (case 3)
puts every bucket of the 16-bit buffer (embedding, output layer, norms) in the group of the last FP8 bucket, the
forward's first layer: the output layer's gradient, ready first, is reduced with the embedding's, ready last, after
the backward.  Worked by hand below from NCCL v2.28.3-1's ring model (tuning.cc: LL128 base 14 us, 1.9 us a step
inside a node, 4 us across one, 0.92 of the bus; the B200 preset's 47 GB/s per NDR NIC, 8 a node)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine.step import with_step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import grad_sync
from dualpipe_sim.step_costs import StepCosts

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "scenarios" / "validation"
BUS = 8 * 47e9
LINEAR = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)  # the 8B's FP8 linears: 6,979,321,856
WIDE = 2 * 128256 * 4096 + 65 * 4096  # embedding, output layer, 65 norms: 1,050,939,392 (16-bit buffer)


def _reduce_scatter_ms(nbytes: float, rings: int, ranks: int = 256, nodes: int = 32) -> float:
    """NCCL's ring reduce-scatter of ``nbytes`` as ``rings`` calls, LL128 (the protocol NCCL 2.28.3 picks below
    2.78 GB at 256 ranks): 14 + (ranks - nodes) x 1.9 + (nodes - 1) x 4 us a call = 563.6 us at 256 ranks."""
    latency = 14.0 + (ranks - nodes) * 1.9 + (nodes - 1) * 4.0
    assert ranks != 256 or latency == pytest.approx(563.6)
    return (rings * latency * 1e-6 + (ranks - 1) / ranks * nbytes / (0.92 * BUS)) * 1e3


def test_the_8b_rows_last_group_holds_the_16_bit_buffer():
    sc = scenario.load(FOLDER / "mlperf51-llama8b-256b200.toml", [])
    shares = grad_sync.grad_sync_shares(sc)
    # s13o: derived buckets at 134,217,728 (tests/test_make_validation.py test_v51_b200_llama8b_buckets_by_hand): the
    # FP8 buffer in the backward's order as layer 31's fc2 + fc1 (176,160,768), 31 x one layer's qkv + proj with the
    # next layer down's fc2 + fc1 (218,103,808), layer 0's qkv + proj (41,943,040); the 16-bit buffer's 2 buckets join
    # that last one's group (3 calls), released at the backward's end
    tail = (4096 * 6144 + 4096 * 4096)  # layer 0's qkv + proj
    assert 176_160_768 + 31 * 218_103_808 + tail == LINEAR and tail == 41_943_040
    first = _reduce_scatter_ms(2 * 176_160_768, 1)  # 352.3 MB of bf16 gradients: 0.5636 + 0.3523 x 255/256 / 345.92 s
    mid = _reduce_scatter_ms(2 * 218_103_808, 1)
    # the last group, 2,185.8 MB in three calls, is one NCCL group (s14j, docs/model.md "... on NCCL v2.20 and
    # later"): the tuner's count ceil(3 / 16) = 1 picks LL128 (0.5636 + 6.2940 ms < Simple's 1.2040 + 5.7905 ms) and
    # the busiest of the 16 channels runs 2 pieces (3 ops of different sizes, 3/16 of one a channel)
    last = _reduce_scatter_ms(2 * (WIDE + tail), 2)
    assert 0.5636 + 6.2940 < 1.2040 + 2 * (WIDE + tail) * 255 / 256 / BUS * 1e3
    assert first == pytest.approx(1.5781, abs=1e-4) and mid == pytest.approx(1.8197, abs=1e-4)
    assert last == pytest.approx(1.1272 + 6.2940, abs=1e-4)
    total = first + 31 * mid + last
    assert len(shares) == 1 and len(shares[0]) == 33
    assert shares[0][0] == pytest.approx(first / total)
    assert shares[0][1:32] == pytest.approx([mid / total] * 31)
    assert shares[0][-1] == pytest.approx(last / total)  # 0.113 of the stage's grad sync, not 1/33
    assert sum(shares[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("override", [["model.fp8_params=false"], ['step.param_gather="apex"', 'model.fp8_recipe="delayed"'],
                                      ["step.overlap_grad_sync=false", "step.overlap_param_gather=false"]])
def test_equal_buckets_where_the_rule_does_not_hold(override):
    # without FP8 parameters every bucket is a group of its own (partition_buckets case 2); apex's optimizer has
    # its own buckets; without the overlap the whole sync runs after the backward
    assert grad_sync.grad_sync_shares(scenario.load(FOLDER / "mlperf51-llama8b-256b200.toml", override)) == ()


def test_the_engine_runs_each_group_for_its_share():
    # 1F1B, 4 stages x 8 micro-batches, F 1, B 2 (tests/test_step.py): rank r's last backward is [31 - 2r, 33 - 2r].
    # grad sync 2 in two groups of 0.25 and 0.75: the first ready halfway, [32 - 2r, 32.5 - 2r]; the second at
    # the backward's end, [33 - 2r, 34.5 - 2r]; the optimizer (0.5) then to 35 - 2r: step total 35, not 34.5
    raw = {"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8}, "costs": {"forward": 1.0, "backward": 2.0}}
    trace = simulation.run(scenario.from_dict(raw)).trace
    costs = StepCosts(grad_sync=(2.0,) * 4, cross_copy_sync=(0.0,) * 4, optimizer=(0.5,) * 4, overlap_grad_sync=True,
                      grad_sync_buckets=2, grad_sync_shares=((0.25, 0.75),) * 4)
    step = with_step(trace, costs).step
    for r in range(4):
        mine = step[(step["rank"] == r) & (step["kind"] == GRAD_SYNC)]
        assert sorted((float(a), float(b)) for a, b in zip(mine["start"], mine["end"])) == \
            [(32.0 - 2 * r, 32.5 - 2 * r), (33.0 - 2 * r, 34.5 - 2 * r)]
        opt = step[(step["rank"] == r) & (step["kind"] == OPTIMIZER)]
        assert float(opt["end"][0]) == 35.0 - 2 * r


def test_explain_names_the_last_group():
    from dualpipe_sim.model import step_end

    sc = scenario.load(FOLDER / "mlperf51-llama8b-256b200.toml", [])
    rule = next(i.rule for i in step_end.items(sc, sc.derived()) if i.figure == "grad_sync")
    assert "partition_buckets case 3" in rule and "stage 0: 33 groups, the last 11.3%" in rule  # 0.113, above
