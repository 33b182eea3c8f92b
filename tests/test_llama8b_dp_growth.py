"""Where the model's step grows with the data-parallel group on the MLPerf v5.1 Llama 3.1 8B B200 rows
(docs/validation.md, "Whole training runs on B200"; issue 21: measured +14.7% from 16 to 32 nodes).

The rows differ only in DP (TP 1, PP 1, CP 2, one micro-batch a step): their compute is the same, and
what grows is the data-parallel collectives' ring latency.  Worked by hand from NCCL's tuning model
(src/graph/tuning.cc; the run's v2.28.3-1 has the ring's Simple and LL128 constants of the v2.18.5 build
the model cites: base 8.4 / 14.0 us, NVLink step 3.4 / 1.9 us, network step 14.0 / 4.0 us; the per-step
network overhead getNetOverhead is 1 us on the runs' Intel Xeon 8570 hosts, x3 for Simple) and the B200
preset's NIC bus bandwidth (47 GB/s per NDR NIC, 8 a node).

``start_gather_ms`` is the whole bf16 gather the model waited for when this was written; these rows now
take Megatron-core's chained wait with FP8 parameters (tests/test_param_gather_start.py), and the whole
gather is the figure of ``step.param_gather = "apex"`` and of Megatron-core's interleaved schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import ddp_buckets, param_gather

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
PARAMS = 8_030_261_248  # Llama 3.1 8B, untied: 2 x 128,256 x 4,096 + 32 layers + the final norm
BUS = 8 * 47e9  # eight NDR NICs a node, one per rank of the group on it


def ll128_latency(ranks: int, nodes: int) -> float:
    """NCCL's LL128 ring latency (s): 14 + (ranks - nodes) x max(1.9, 1.0) + (nodes - 1) x 4.0 us."""
    return (14.0 + (ranks - nodes) * 1.9 + (nodes - 1) * 4.0) * 1e-6


def simple_latency(ranks: int, nodes: int) -> float:
    """NCCL's Simple ring latency (s): 8.4 + (ranks - nodes) x max(3.4, 3 x 1.0) + (nodes - 1) x 14 us."""
    return (8.4 + (ranks - nodes) * 3.4 + (nodes - 1) * 14.0) * 1e-6


def start_gather(gpus: int) -> float:
    sc = scenario.load(FOLDER / f"mlperf51-llama8b-{gpus}b200.toml")
    derived = sc.derived()
    return param_gather.start_gather_ms(derived.setup, derived.stages[0], ddp_buckets.per_stage(sc, derived)[0])


def test_the_rows_data_parallel_group_is_dp_times_cp():
    # Megatron reduces and gathers over the data-parallel group with the context ranks: 128 x 2 ranks at 32 nodes
    for gpus in (128, 256):
        sc = scenario.load(FOLDER / f"mlperf51-llama8b-{gpus}b200.toml")
        st = sc.derived().setup
        assert st.sharding.data == gpus
        assert sc.derived().stages[0].dense_params == PARAMS


@pytest.mark.parametrize("gpus, nodes, by_hand_ms", [
    # 256 ranks, 32 nodes: LL128 35 x 563.6 us + 255/256 x 16,060.5 MB / (0.92 x 376 GB/s) = 19.726 + 46.247
    (256, 32, 65.973),
    # 128 ranks, 16 nodes: LL128 35 x 286.8 us + 127/128 x 16,060.5 MB / 345.92 GB/s = 10.038 + 46.066
    (128, 16, 56.104),
])  # fmt: skip
def test_start_gather_is_35_nccl_rings_by_hand(gpus, nodes, by_hand_ms):
    # the overlapped all-gather's wait at the step's start: stage 0's bf16 weights in 35 buckets (the scenario's
    # derived buckets, 33 FP8 + 2 16-bit: tests/test_make_validation.py), each an NCCL ring whose latency LL128 makes
    # the lower of the two
    nbytes = PARAMS * 2
    ll128 = 35 * ll128_latency(gpus, nodes) + (gpus - 1) / gpus * nbytes / (0.92 * BUS)
    simple = 35 * simple_latency(gpus, nodes) + (gpus - 1) / gpus * nbytes / BUS
    assert ll128 < simple
    assert start_gather(gpus) == pytest.approx(ll128 * 1e3, rel=1e-12)
    assert start_gather(gpus) == pytest.approx(by_hand_ms, abs=0.001)


def test_the_models_growth_from_16_to_32_nodes_is_the_rings_latency():
    # the bandwidth term barely moves ((n - 1)/n: 127/128 -> 255/256, +0.18 ms); the latency term
    # doubles with the ring's length: 35 x (563.6 - 286.8) us = 9.69 ms of the model's 9.9 ms
    growth = start_gather(256) - start_gather(128)
    latency = 35 * (ll128_latency(256, 32) - ll128_latency(128, 16)) * 1e3
    bandwidth = (255 / 256 - 127 / 128) * PARAMS * 2 / (0.92 * BUS) * 1e3
    assert latency == pytest.approx(9.688, abs=1e-4)
    assert growth == pytest.approx(latency + bandwidth, rel=1e-9)
    # the measured steps grew by 28.4 ms (0.1927 -> 0.2211 s, docs/validation.md): 2.9x what this explains (3x at 34 buckets)
    assert 0.2211e3 - 0.1927e3 > 2.85 * growth
