"""NCCL >= 2.23's tuning rules for a group of one rank a node, selected by ``hardware.nccl_version`` (issue 21,
s11g; docs/model.md, "NCCL's release"; docs/validation.md, "One rank a node under NCCL 2.25.1").

Worked by hand from NVIDIA/nccl `src/graph/tuning.cc` at v2.22.3-1 (the rules the model keeps by default, as
v2.18.5's) and v2.25.1-1 (what the MLPerf v5.0 405B H100 rows installed): LL128 at 0.7 of the bus with one
rank a node up to v2.22 (line 179 there), 0.92 from v2.23 (v2.25.1 line 256); a network step at the tree's
latency with one rank a node (v2.25.1 line 300: LL 5.0, LL128 8.5, Simple 14 us; the ring's own 2.7 / 4.0 /
14.0 before); an all-reduce ring crossing the network 2(nodes - 1) times (line 322; 2 x nodes before); PAT for
reduce-scatter / all-gather with one rank a node (ncclPatEnable, Simple only), at 0.75 of the bus (line 261)
with no ring (n - 1)/n, its latency 8 + log2(nodes) x 14 / 3.5 + 2.8 x ranks us (lines 340-345) paid once a
batch of 10 coalesced calls (ncclTopoGetAlgoTime's DIVUP(numPipeOps, NCCL_MAX_DEV_WORK_BATCH_COLLS), 1,024 B /
96 B ncclDevWorkColl, include/device.h), and never for an averaging reduce-scatter (enqueue.cc line 1612:
ncclAvg on bf16 is PreMulSum).  The bus is the H100 preset's measured 47 GB/s per NDR NIC.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from dualpipe_sim.model import collectives, rates
from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs.scenario import load_resolved
from dualpipe_sim.model.config import ModelError

H100 = rates.PRESETS["H100"]
V2_25 = replace(H100, nccl=(2, 25, 1))
BUS = 47e9
STAGE_GRADS = 1.594e9  # a 405B stage copy's bf16 gradients at TP 8 (2 layers), reduce-scattered in 12 buckets
CHUNK0_GATHER = 926.9e6  # chunk 0's parameters gathered in one bucket


def test_release_selects_the_rules():
    assert not collectives.one_per_node_rules(None)
    assert not collectives.one_per_node_rules((2, 22, 3))
    assert collectives.one_per_node_rules((2, 23, 4))
    assert collectives.one_per_node_rules((2, 25, 1))
    assert collectives.one_per_node_rules((3, 0, 0))


def test_ring_latency_one_rank_a_node_by_hand():
    # 128 ranks on 128 nodes: 127 steps, all across the network, none inside a node
    assert collectives.ring_latency("ll128", 128, 1) == pytest.approx((14.0 + 127 * 4.0) * 1e-6)  # 522 us
    assert collectives.ring_latency("ll128", 128, 1, (2, 25, 1)) == pytest.approx((14.0 + 127 * 8.5) * 1e-6)  # 1,093.5
    # Simple: the tree's network latency is the ring's, 14 us: no change
    assert collectives.ring_latency("simple", 128, 1, (2, 25, 1)) == collectives.ring_latency("simple", 128, 1)
    # two ranks a node: the ring's own network latency under every release
    assert collectives.ring_latency("ll128", 64, 2, (2, 25, 1)) == collectives.ring_latency("ll128", 64, 2)


def test_pat_latency_by_hand():
    assert collectives.pat_latency(8) == pytest.approx((8 + 3 * 4.0 + 22.4) * 1e-6)  # 42.4 us
    assert collectives.pat_latency(128) == pytest.approx((8 + 7 * 4.0 + 358.4) * 1e-6)  # 394.4 us
    assert collectives.pat_latency(40) == pytest.approx((8 + 5 * 4.0 + 112.0) * 1e-6)  # log2i(40) = 5


def test_reduce_scatter_at_128_ranks_one_a_node_by_hand():
    # mlperf50-llama405b-8192's data x context group: 128 ranks, one a node, 12 buckets of a 1.594 GB stage copy.
    moved = 127 / 128 * STAGE_GRADS
    simple = 12 * (8.4 + 127 * 14.0) * 1e-6 + moved / BUS  # 21.44 + 33.65 = 55.09 ms
    ll128_v2_22 = 12 * 522e-6 + moved / (0.7 * BUS)  # 6.26 + 48.07 = 54.34 ms: the model's default
    ll128_v2_25 = 12 * 1093.5e-6 + moved / (0.92 * BUS)  # 13.12 + 36.58 = 49.70 ms
    pat = 2 * 394.4e-6 + STAGE_GRADS / (0.75 * BUS)  # 0.79 + 45.22 = 46.01 ms, were the reduction a sum
    assert (simple, ll128_v2_22, ll128_v2_25, pat) == pytest.approx((55.09e-3, 54.34e-3, 49.70e-3, 46.01e-3), abs=1e-5)
    assert collectives.bucketed("reduce_scatter", STAGE_GRADS, 128, H100, 1, 12) == pytest.approx(ll128_v2_22)
    averaged = collectives.bucketed("reduce_scatter", STAGE_GRADS, 128, V2_25, 1, 12, averaged=True)
    assert averaged == pytest.approx(ll128_v2_25)
    assert collectives.bucketed("reduce_scatter", STAGE_GRADS, 128, V2_25, 1, 12) == pytest.approx(pat)


@pytest.mark.parametrize("ranks", [8, 32, 40, 128])
def test_chunk0_gather_stays_simple(ranks):
    # a 926.9 MB gather in one call: Simple's full bus beats LL128's 0.92 and PAT's 0.75 at every v5.0 row's size
    simple = (8.4 + (ranks - 1) * 14.0) * 1e-6 + (ranks - 1) / ranks * CHUNK0_GATHER / BUS
    assert collectives.bucketed("all_gather", CHUNK0_GATHER, ranks, V2_25, 1, 1) == pytest.approx(simple)


def test_pat_takes_a_small_gather_at_many_nodes():
    # 20 MB over 128 ranks: PAT 394.4 us + 20 MB / 35.25 GB/s = 0.9618 ms; LL128 1,093.5 us + 0.459 ms;
    # Simple 1,786.4 us + 0.422 ms; the v2.22 rules' LL128 522 us + 0.603 ms = 1.125 ms
    nbytes = 20e6
    pat = 394.4e-6 + nbytes / (0.75 * BUS)
    assert pat == pytest.approx(0.96178e-3, abs=1e-8)
    assert collectives.bucketed("all_gather", nbytes, 128, V2_25, 1, 1) == pytest.approx(pat)
    assert collectives.bucketed("all_gather", nbytes, 128, H100, 1, 1) == pytest.approx(
        522e-6 + 127 / 128 * nbytes / (0.7 * BUS))
    # 11 coalesced calls are two batches of PAT's latency (10 a batch), 11 ring latencies
    eleven = collectives.bucketed("all_gather", nbytes, 128, V2_25, 1, 11)
    assert eleven == pytest.approx(2 * 394.4e-6 + nbytes / (0.75 * BUS))


def test_pat_bus_share_by_release():
    # v2.23.4-1 gave PAT 0.85 of the bus (tuning.cc line 193), v2.24 on 0.75: 20 MB over 128 ranks
    nbytes = 20e6
    v2_23 = replace(H100, nccl=(2, 23, 4))
    assert collectives.bucketed("all_gather", nbytes, 128, v2_23, 1, 1) == pytest.approx(394.4e-6 + nbytes / (0.85 * BUS))
    assert collectives.bucketed("all_gather", nbytes, 128, replace(H100, nccl=(2, 28, 3)), 1, 1) == pytest.approx(
        394.4e-6 + nbytes / (0.75 * BUS))


def test_pat_only_with_one_rank_a_node():
    # two ranks a node: no PAT, and LL128's 0.92 under both rules: the same time
    for nbytes in (20e6, 1e9):
        assert collectives.bucketed("all_gather", nbytes, 128, V2_25, 2, 1) == collectives.bucketed(
            "all_gather", nbytes, 128, H100, 2, 1)


def test_small_all_reduce_rules_by_hand():
    # 2 ranks on 2 nodes, LL: tree 6.8 + 2 x 5.0 = 16.8 us; ring before v2.23: 6.6 + (2 - 4) x 1 + 4 x 2.7 = 15.4;
    # from v2.23: 2(nodes - 1) = 2 network steps at the tree's 5.0: 6.6 + 0 + 2 x 5.0 = 16.6
    assert collectives.small_all_reduce(2, 1) == pytest.approx(15.4e-6)
    assert collectives.small_all_reduce(2, 1, (2, 25, 1)) == pytest.approx(16.6e-6)
    # 4 ranks on 2 nodes: tree 6.8 + 2 x (0.6 + 5.0) = 18.0; ring before: 6.6 + (6 - 4) x 1 + 4 x 2.7 = 19.4;
    # from v2.23 (ring network latency, two ranks a node): 6.6 + (6 - 2) x 1 + 2 x 2.7 = 16.0
    assert collectives.small_all_reduce(4, 2) == pytest.approx(18.0e-6)
    assert collectives.small_all_reduce(4, 2, (2, 28, 3)) == pytest.approx(16.0e-6)
    # 8 ranks on 8 nodes: the tree 6.8 + 2 x 3 x 5.0 = 36.8 under both
    tree = pytest.approx(36.8e-6)
    assert collectives.small_all_reduce(8, 1) == collectives.small_all_reduce(8, 1, (2, 25, 1)) == tree


SCENARIO = """
[pipeline]
schedule = "1f1b"
stages = 2
microbatches = 4
[model]
model_type = "llama"
hidden_size = 1024
num_hidden_layers = 4
num_attention_heads = 8
intermediate_size = 4096
vocab_size = 32000
seq_length = 1024
micro_batch_size = 1
[parallel]
tensor = 8
data = 128
zero = 1
[hardware]
preset = "H100"
{nccl}
[step]
grad_sync = "derived"
grad_sync_buckets = 12
{average}
"""


def _grad_sync(tmp_path, nccl: str = "", average: str = "") -> float:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(nccl=nccl, average=average))
    return load_resolved(path)[1].step_costs.grad_sync[0]


def test_scenario_key_reaches_the_reduce_scatter(tmp_path):
    # TP 8, DP 128: one rank of the data-parallel group a node; a stage's gradients reduce-scattered in 12 buckets
    default = _grad_sync(tmp_path)
    old = _grad_sync(tmp_path, 'nccl_version = "2.22.3"')
    averaged = _grad_sync(tmp_path, 'nccl_version = "2.25.1"', "average_in_collective = true")
    summed = _grad_sync(tmp_path, 'nccl_version = "2.25.1"')
    # v2.20-v2.22 time it by v2.18.5's constants, one ring latency a bucket; stage 0 is Megatron-core's bucketed chunk,
    # its 12 buckets 12 launches, so unset (v2.18.5) pays the same (s14l; one NCCL group would spread over the channels
    # with fewer ring passes: tests/test_nccl_aggregation.py)
    assert old == _grad_sync(tmp_path, 'nccl_version = "2.20.3"')
    assert default == old
    assert summed < averaged  # PAT only for a sum
    assert averaged != default


@pytest.mark.parametrize("given", ['"2.25"', '"v2.25.1"', "2.25"])
def test_bad_release_is_refused(tmp_path, given):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(nccl=f"nccl_version = {given}", average=""))
    with pytest.raises((ScenarioError, ModelError), match="nccl_version"):
        load_resolved(path)


def test_release_needs_kernel_level_costs(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(nccl='nccl_version = "2.25.1"\nefficiency = 0.4', average=""))
    with pytest.raises((ScenarioError, ModelError), match="hardware.nccl_version: needs the kernel-level costs"):
        load_resolved(path)
