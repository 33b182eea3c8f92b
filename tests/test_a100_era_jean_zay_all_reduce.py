"""BLOOM's inter-node figures against an NCCL all-reduce timed on its own machine with its own NCCL (issue 21, s15g).

Issue 21's s15g searched for kernel-level measurements on A100 under the 2020-2022 runs' libraries (docs/searches.md,
"A100 rates and the runs' software era: leads", lists every lead). The one reached that names its GPU and its NCCL is
BigScience's all-reduce benchmark on 4 Jean Zay A100 80GB nodes, run from the tr11-176B-ml environment in January 2022
(NCCL 2.10.3+cuda11.3; tests/data/kernels/bigscience_jz_a100_all_reduce.csv): one 4e9-byte fp32 tensor over 32 GPUs,
8 a node, five trials. One size and one group shape, so a check, not a rate: nothing in the model is fitted to it.

The model takes Jean Zay's network as the scenario types it (scenarios/validation/bloom-176b.toml: 4 Omni-Path links of
100 Gb/s for 8 GPUs, 6.25 GB/s a GPU, the A100 preset's HDR figures scaled to it: 23.5 x 6.25 / 25 = 5.875 GB/s of bus
a GPU, 25.5 us) and runs a ring over every GPU's share of a node (collectives.time, nics = ranks a node). Measured,
both of NCCL 2.10.3's rings left each node through one HFI (the log's NET/IB/3 send, NET/IB/1 receive, 2 channels):
the node's whole egress was about 5.1 GB/s, less than the model's share of one GPU. These tests hold the gap."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive
from helpers import kernel_table

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "data" / "kernels" / "bigscience_jz_a100_all_reduce.csv"
BLOOM = ROOT / "scenarios" / "validation" / "bloom-176b.toml"
ROWS = kernel_table(TABLE)
SIZE = 500_000 * 2_000 * 4  # all_reduce_bench.py: N x M fp32
RANKS, PER_NODE = 32, 8
MOVED = SIZE * 2 * (RANKS - 1) / RANKS  # a ring all-reduce's bytes a rank sends (nccl-tests' bus convention)


def _durations(trials):
    return [float(r["duration_s"]) for r in ROWS if int(r["trial"]) in trials]


def test_table_is_five_trials_of_32_ranks():
    assert [sum(int(r["trial"]) == t for r in ROWS) for t in range(5)] == [32] * 5


def test_readme_throughput_range_from_the_durations():
    # The benchmark prints "algo throughput" = 2 x SIZE x 8 / duration bits a second; the README sums the run up as
    # "15 to 42 Gbps": the slowest row (trial 0, 4.2224 s) and the fastest (1.5186 s) give exactly that range.
    everything = _durations(range(5))
    assert 2 * SIZE * 8 / max(everything) / 1e9 == pytest.approx(15.16, abs=0.005)
    assert 2 * SIZE * 8 / min(everything) / 1e9 == pytest.approx(42.14, abs=0.005)


def test_steady_trials_bus_bandwidth_by_hand():
    steady = _durations(range(1, 5))  # trial 0 includes the communicator's first use: 3.96-4.22 s
    assert (min(steady), max(steady)) == (1.5186, 1.5312)
    assert statistics.median(steady) == pytest.approx(1.529)
    # 4e9 x 62/32 = 7.75e9 bytes a rank in 1.5186-1.5312 s: 5.10-5.06 GB/s bus bandwidth
    assert MOVED / min(steady) / 1e9 == pytest.approx(5.103, abs=0.001)
    assert MOVED / max(steady) / 1e9 == pytest.approx(5.061, abs=0.001)
    assert min(_durations([0])) > 2.5 * max(steady)


def test_model_on_bloom_network_by_hand():
    rates = derive.setup(scenario.load(BLOOM, [])).rates
    bus = 23.5e9 * 6.25 / 25  # the HDR NIC's 23.5 GB/s scaled to Jean Zay's 6.25 GB/s a GPU
    assert rates.nic_bus == pytest.approx(bus)
    by_hand = 25.5e-6 + MOVED / (PER_NODE * bus)  # 0.16492 s: a ring over 8 NIC shares a node at 47 GB/s
    assert by_hand == pytest.approx(0.16492, abs=1e-5)
    assert collectives.time("all_reduce", SIZE, RANKS, rates, "nic", nics=PER_NODE) == pytest.approx(by_hand, rel=1e-12)


def test_model_is_nine_times_faster_than_the_measurement():
    # Held, not fitted: the model 9.2-9.3x faster than every steady trial (median 1.529 s against 0.1649 s). Even one
    # GPU's bus share in the model (5.875 GB/s) is 1.16x the whole node's measured bus bandwidth (5.07 GB/s at the median).
    rates = derive.setup(scenario.load(BLOOM, [])).rates
    model = collectives.time("all_reduce", SIZE, RANKS, rates, "nic", nics=PER_NODE)
    steady = _durations(range(1, 5))
    assert min(steady) / model == pytest.approx(9.21, abs=0.01)
    assert max(steady) / model == pytest.approx(9.28, abs=0.01)
    assert rates.nic_bus / (MOVED / statistics.median(steady)) == pytest.approx(1.159, abs=0.001)
