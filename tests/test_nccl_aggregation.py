"""A group of bucket collectives on NCCL v2.17-v2.19's channels (collectives.aggregated, bucketed's channels).

NCCL @ 4365458 (v2.18.5, the MLPerf v3.1 GPT-3 build) src/enqueue.cc scheduleCollTasksToPlan: a channel's share is
2 MiB x min(16, ranks), halved while the group's bytes are under share x channels; each op runs on
ceil(whole bytes / share) channels (at most the communicator's), least loaded first, a channel's pieces one after
another; the tuner picks the protocol for the group with latency x ceil(op-channels / channels), those counted from
each op's per-rank count, the first op left out.  Every figure below is worked by hand from those rules.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import collectives, grad_sync
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
MIB = 2**20
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "validation"


def test_nine_100_mib_buckets_over_8_channels_by_hand():
    # share 2 MiB x 16 = 32 MiB; 900 MiB is not under 32 MiB x 8, so no halving.  Each op: 100 / 32 = 3.125 -> 4
    # channels; 9 x 4 = 36 pieces on 8 channels: 5 on the busiest.  Tuner: 100 MiB / 128 ranks = 0.78 MiB per rank
    # -> 1 channel each, 8 ops after the first -> 8, over min(8, 8) channels: 1 latency, the whole bus.
    assert collectives.aggregated(900 * MIB, 128, 9, 8) == (1, 1.0, 5)
    # 16 channels: still 4 an op, 36 / 16 -> 3 passes; the tuner's 8 op-channels over min(16, 8) = 8: 1, 8/16 of the bus
    assert collectives.aggregated(900 * MIB, 128, 9, 16) == (1, 0.5, 3)


def test_small_group_halves_the_share_by_hand():
    # 4 buckets of 1 MiB over 16 ranks, 8 channels: 32 MiB halves while 4 MiB < share x 8: 16, 8, 4, 2, 1 MiB, 512 KiB
    # (512 KiB x 8 = 4 MiB, not under).  Each op 1 MiB / 512 KiB = 2 channels: 8 pieces, 1 a channel.  Tuner: 64 KiB a
    # rank -> 1 channel each, 3 ops after the first: 3 op-channels over min(8, 3) = 3: 1 latency, 3/8 of the bus.
    assert collectives.aggregated(4 * MIB, 16, 4, 8) == (1, 3 / 8, 1)


def test_v31_chunk_reduce_scatter_by_hand():
    # DP 128 on 64 nodes (2 ranks a node, each on its NIC: 2 x 47 GB/s), NCCL tuning.cc @ 4365458:
    # Simple 8.4 + 64 x 3.4 + 63 x 14 = 1,108.0 us, LL128 14 + 64 x 1.9 + 63 x 4 = 387.6 us at 0.92 of the bus.
    nbytes, n, bus = 900 * MIB, 128, 2 * 47e9
    moved = nbytes * 127 / 128
    simple, ll128 = 1108.0e-6, 387.6e-6
    # the tuner, one latency: Simple 1,108.0 us + moved / bus against LL128 387.6 us + moved / (0.92 bus)
    assert simple + moved / bus < ll128 + moved / (0.92 * bus)  # Simple: 0.72 ms of latency saved < 0.83 ms of bus
    # the run: 5 ring passes of Simple
    assert collectives.bucketed("reduce_scatter", nbytes, n, H100, 2, 9, channels=8, grouped=True) == pytest.approx(
        5 * simple + moved / bus, rel=1e-12)
    # before (no channels given): 9 passes of the faster protocol at 9 latencies, LL128
    assert collectives.bucketed("reduce_scatter", nbytes, n, H100, 2, 9) == pytest.approx(
        9 * ll128 + moved / (0.92 * bus), rel=1e-12)


def test_v31_at_dp_256_takes_ll128_by_hand():
    # 128 nodes: Simple 8.4 + 128 x 3.4 + 127 x 14 = 2,221.6 us, LL128 14 + 128 x 1.9 + 127 x 4 = 765.2 us;
    # 1.46 ms of latency saved > 0.83 ms of bus: LL128, paid 5 times.
    nbytes, bus = 900 * MIB, 2 * 47e9
    moved = nbytes * 255 / 256
    assert collectives.bucketed("reduce_scatter", nbytes, 256, H100, 2, 9, channels=8, grouped=True) == pytest.approx(
        5 * 765.2e-6 + moved / (0.92 * bus), rel=1e-12)


def test_one_bucket_and_later_releases_keep_a_latency_a_bucket():
    nbytes, bus = 900 * MIB, 2 * 47e9
    # one op: no aggregation (nAggOps 1), one ring pass on every channel
    one = collectives.bucketed("reduce_scatter", nbytes, 256, H100, 2, 1, channels=8)
    assert one == pytest.approx(765.2e-6 + nbytes * 255 / 256 / (0.92 * bus), rel=1e-12)
    # v2.21.5, the buckets not one group (Megatron-core's, one launch each): 9 latencies as before
    # (one group from v2.20: tests/test_nccl_group_plan.py)
    v2_21 = replace(H100, nccl=(2, 21, 5))
    assert collectives.bucketed("reduce_scatter", nbytes, 256, v2_21, 2, 9, channels=8) == pytest.approx(
        9 * 765.2e-6 + nbytes * 255 / 256 / (0.92 * bus), rel=1e-12)
    # v2.19 has v2.18's code (enqueue.cc v2.19.3-1 lines 470-590)
    assert collectives.aggregates((2, 19, 3)) and collectives.aggregates(None) and not collectives.aggregates((2, 20, 3))


def test_v31_row_passes_its_8_channels():
    sc = load(SCENARIOS / "mlperf31-gpt3-8192.toml")
    derived = sc.derived()
    st = derived.setup
    assert st.dp_channels == 8  # step.dp_comm_sms = 8 (MEGATRON_CORE_DP_MAX_CTAS=8)
    parts = grad_sync.nemo_sync(sc, derived)
    overlapped, _ = grad_sync.grad_sync_parts(sc, derived)
    nbytes = parts.dense[8]  # a one-layer chunk's bf16 gradients, 9 buckets, DP 256
    assert parts.buckets[8] == 9
    moved = nbytes * 255 / 256
    assert overlapped[8] == pytest.approx((5 * 765.2e-6 + moved / (0.92 * 2 * 47e9)) * 1e3, rel=1e-9)
    # no [step] dp_comm_sms (0): NCCL's own 16 channels
    assert load(SCENARIOS / "mlperf31-gpt3-8192.toml", ["step.dp_comm_sms=0"]).derived().setup.dp_channels == 16


def test_megatron_core_bucketed_chunk_is_not_one_group_on_v218():
    # xt-qwen3-235b-tp2ep8pp8: Megatron-core's DDP, no hardware.nccl_version (v2.18.5's rules), 16 channels.  Stage 0's
    # chunk is bucketed (8 buckets, each its own bucket group: start_grad_sync coalesces only within a group), so NCCL
    # gets 8 launches, one ring latency each, not s14c's spread group; stages 1-7 are unbucketed: one group each.
    sc = load(SCENARIOS / "xt-qwen3-235b-tp2ep8pp8.toml")
    derived = sc.derived()
    st = derived.setup
    assert st.rates.nccl is None and st.dp_channels == 16 and not st.dp_grouped
    parts = grad_sync.nemo_sync(sc, derived)
    assert parts.buckets[:2] == (8, 1)
    assert not grad_sync.one_group(sc, st, 0) and all(grad_sync.one_group(sc, st, s) for s in range(1, 8))
    # DP 16 (TP 2: 4 ranks a node on 4 nodes, 4 x 47 GB/s).  tuning.cc @ 4365458: Simple 8.4 + (15 - 3) x 3.4 + 3 x 14 =
    # 91.2 us, LL128 14 + 12 x 1.9 + 3 x 4 = 48.8 us.  2,836,769,792 B, 15/16 moved: 14.146 ms at 188 GB/s, 15.376 ms at
    # 0.92 of it.  8 launches: Simple 8 x 91.2 us + 14.146 ms = 14.876 ms < LL128 0.390 + 15.376 ms.
    dense, bus = parts.dense[0], 4 * 47e9
    assert dense == 2_836_769_792
    assert collectives.ring_latency("simple", 16, 4) == pytest.approx(91.2e-6, rel=1e-12)
    assert collectives.ring_latency("ll128", 16, 4) == pytest.approx(48.8e-6, rel=1e-12)
    moved = dense * 15 / 16
    apart = 8 * 91.2e-6 + moved / bus
    assert apart < 8 * 48.8e-6 + moved / (0.92 * bus)
    # the routed experts' buffer: one reduce-scatter over the 4 expert-data ranks on one NIC (collectives.time)
    routed = parts.routed[0] * 3 / 4 / 47e9 + 25.5e-6
    overlapped, _ = grad_sync.grad_sync_parts(sc, derived)
    assert overlapped[0] == pytest.approx((apart + routed) * 1e3, rel=1e-9)
    # s14c's rule, were the 8 one group: 32 MiB a channel's share; a 354.6 MB bucket on ceil(10.57) = 11 channels,
    # 88 pieces on 16 channels: 6 passes (two latencies fewer), which the rule keeps for one NCCL group
    grouped = collectives.bucketed("reduce_scatter", dense, 16, st.rates, 4, 8, channels=16, grouped=True)
    assert grouped == pytest.approx(6 * 91.2e-6 + moved / bus, rel=1e-9)
