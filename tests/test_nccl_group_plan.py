"""A group of bucket collectives on NCCL v2.20 and later (collectives.group_tuner_count, group_passes, bucketed's grouped).

NCCL v2.20-v2.21 (enqueue.cc @ v2.21.5-1 scheduleCollTasksToPlan / addCBDCollToPlan) and v2.22 on (ncclPrepareTasks,
scheduleCollTasksToPlan @ v2.22.3-1, v2.28.3-1) lay the group's per-rank bytes end to end over the communicator's
channels, an equal share each; a channel runs its pieces one after another, each a ring pass.  The tuner is asked
once for the whole group: latency x 1 up to v2.21, x ceil(tasks / channels) from v2.22.  Figures worked by hand below;
one test holds the closed form against a transliteration of NCCL's own loops.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import collectives, ddp_buckets, grad_sync, param_gather
from dualpipe_sim.model.rates import PRESETS

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "validation"


def test_tuner_count_by_release():
    # v2.20-v2.21: getTunerInfo(aggInfo, ..., 1): one latency whatever the group
    assert collectives.group_tuner_count(13, 8, (2, 21, 5)) == 1
    assert collectives.group_tuner_count(13, 8, (2, 20, 3)) == 1
    # v2.22 on: nTasksPerChannel = divUp(nTasksColl, nChannels)
    assert collectives.group_tuner_count(13, 8, (2, 22, 3)) == 2  # 13 / 8 -> 2
    assert collectives.group_tuner_count(35, 16, (2, 28, 3)) == 3  # 35 / 16 -> 3
    assert collectives.group_tuner_count(16, 16, (2, 28, 3)) == 1


def test_busiest_channel_by_hand():
    # 9 ops over 8 channels, 1.125 ops a channel: channel 0 holds [0, 1.125): ops 0 and 1
    assert collectives.group_passes(9, 8) == 2
    # 13 over 8, 1.625 a channel: channel 1 holds [1.625, 3.25): ops 1, 2 and 3
    assert collectives.group_passes(13, 8) == 3
    # 16 over 8: 2 whole ops a channel
    assert collectives.group_passes(16, 8) == 2
    # 4 over 8: each op on 2 whole channels; 3 over 16: channel 5 holds [15/16, 18/16): ops 0 and 1
    assert collectives.group_passes(4, 8) == 1
    assert collectives.group_passes(3, 16) == 2
    # 35 over 16, 2.1875 a channel: channel 5 holds [10.9375, 13.125): ops 10-13
    assert collectives.group_passes(35, 16) == 4


def _v21_cbd(k: int, per_rank: int, channels: int, align: int) -> int:
    """NCCL v2.21.5 addCBDCollToPlan on k equal tasks (bytes; the piece rounded up to ``align``, at most the rest)."""
    cap = -(-(-(-k * per_rank // channels)) // 16) * 16  # maxBytesPerChannel
    used, pieces = [0] * channels, [0] * channels
    for _ in range(k):
        left = per_rank
        for c in range(channels):
            if cap <= used[c]:
                continue
            if left == 0:
                break
            take = min(-(-min(cap - used[c], left) // align) * align, left)
            used[c], left, pieces[c] = used[c] + take, left - take, pieces[c] + 1
    return max(pieces)


def _v228_cells(k: int, per_rank: int, n: int, channels: int) -> int:
    """NCCL v2.28.3 scheduleCollTasksToPlan (not collnet) on k equal reduce-scatters of bf16 (traffic = bytes x n)."""
    least = 16 << 10
    cell = -(-(-(-least // n)) // 16) * 16
    per_cell, elements = cell * n, cell // 2
    cells = -(-per_rank // cell)
    per_channel = max(least, k * max(least, per_rank * n) // channels)
    pieces, channel, current = [0] * channels, 0, 0
    for _ in range(k):
        cpc = min(cells, -(-per_channel // per_cell))
        lo = cells if channel + 1 == channels else min(cells, -(-(per_channel - current) // per_cell))
        mid, hi = (cells - lo) // cpc, (cells - lo) % cpc
        if channels < channel + (lo != 0) + mid + (hi != 0):
            mid = channels - channel - 2
            cpc = (cells - lo) // (mid + 1)
            hi = cpc + (cells - lo) % (mid + 1)
        if hi == 0 and mid != 0:
            hi, mid = cpc, mid - 1
        if lo == 0:
            channel += 1
            lo, hi, mid = (hi, 0, mid) if mid == 0 else (cpc, hi, mid - 1)
        used = (lo != 0) + mid + (hi != 0)
        for c in range(channel, channel + used):
            pieces[c] += 1
        if hi:
            channel, current = channel + used - 1, hi * elements * 2 * n
        elif mid:
            channel, current = channel + used, 0
        else:
            current += lo * elements * 2 * n
        if current >= per_channel and channel + 1 != channels:
            channel, current = channel + 1, 0
    return max(pieces)


@pytest.mark.parametrize("channels", [8, 16, 32])
def test_closed_form_matches_nccls_loops(channels):
    # per-rank bytes whole cells, so the group splits into channel shares exactly (equal buckets of aligned shards)
    for n in (16, 128, 448):
        cell = -(-(-(-(16 << 10) // n)) // 16) * 16
        for k in range(2, 41):
            per_rank = 4096 * cell * channels  # a multiple of v2.21's Simple alignment and of v2.28's cell, x channels
            want = collectives.group_passes(k, channels)
            assert _v21_cbd(k, per_rank, channels, 4096) == want, (k, n)
            assert _v228_cells(k, per_rank, n, channels) == want, (k, n)


def test_v40_chunk_reduce_scatter_by_hand():
    # MLPerf v4.0 GPT-3 at 10,752 GPUs, its first chunk: 13 apex buckets, 2,537,902,080 B over DP 448 (224 nodes, 2 ranks
    # a node on 2 x 47 GB/s NICs), 8 channels, NCCL 2.21.5.  tuning.cc as in collectives.ring_latency:
    # LL128 14 + 224 x 1.9 + 223 x 4 = 1,331.6 us at 0.92 of the bus; Simple 8.4 + 224 x 3.4 + 223 x 14 = 3,892.0 us.
    h100 = replace(PRESETS["H100"], nccl=(2, 21, 5))
    nbytes, bus = 2_537_902_080, 2 * 47e9
    moved = nbytes * 447 / 448
    ll128, simple = 1331.6e-6, 3892.0e-6
    # the tuner once (count 1): LL128 1.33 ms + 29.28 ms < Simple 3.89 ms + 26.94 ms
    assert ll128 + moved / (0.92 * bus) < simple + moved / bus
    # the run: 13 / 8 = 1.625 ops a channel, 3 ring passes on the busiest
    got = collectives.bucketed("reduce_scatter", nbytes, 448, h100, 2, 13, channels=8, grouped=True)
    assert got == pytest.approx(3 * ll128 + moved / (0.92 * bus), rel=1e-9)
    # not one group (Megatron-core's buckets, one launch each): 13 passes of LL128, as before
    apart = collectives.bucketed("reduce_scatter", nbytes, 448, h100, 2, 13, channels=8)
    assert apart == pytest.approx(13 * ll128 + moved / (0.92 * bus), rel=1e-9)


def test_v41_tuner_counts_two_by_hand():
    # MLPerf v4.1 GPT-3 at 512 GPUs: 12 buckets, 2,537,312,256 B over DP 16 (8 nodes, 2 a node), 8 channels, NCCL 2.22.3.
    # LL128 14 + 8 x 1.9 + 7 x 4 = 57.2 us; Simple 8.4 + 8 x 3.4 + 7 x 14 = 133.6 us.  Tuner count ceil(12 / 8) = 2:
    # Simple 0.27 ms + 25.31 ms < LL128 0.11 ms + 27.51 ms; 12 / 8 = 1.5 ops a channel: 2 passes of Simple.
    h100 = replace(PRESETS["H100"], nccl=(2, 22, 3))
    nbytes, bus = 2_537_312_256, 2 * 47e9
    moved = nbytes * 15 / 16
    got = collectives.bucketed("reduce_scatter", nbytes, 16, h100, 2, 12, channels=8, grouped=True)
    assert got == pytest.approx(2 * 133.6e-6 + moved / bus, rel=1e-9)


def test_v40_rows_are_grouped_and_megatron_core_buckets_apart():
    v40 = load(SCENARIOS / "mlperf40-gpt3-10752.toml").derived().setup
    assert v40.dp_grouped and v40.dp_channels == 8  # step.param_gather = "apex"
    sc = load(SCENARIOS / "mlperf51-llama8b-256b200.toml")
    derived = sc.derived()
    st = derived.setup
    assert not st.dp_grouped and st.dp_channels == 16 and st.rates.nccl == (2, 28, 3)
    # the overlapped reduce-scatter: 35 buckets, 33 bucket groups launched one after another (partition_buckets):
    # one LL128 ring latency a bucket, 14 + (255 - 31) x 1.9 + 31 x 4 = 563.6 us, at 0.92 of 8 x 47 GB/s
    dense = grad_sync.nemo_sync(sc, derived).dense[0]
    assert ddp_buckets.per_stage(sc, derived)[0] == 35
    overlapped, _ = grad_sync.grad_sync_parts(sc, derived)
    assert overlapped[0] == pytest.approx((35 * 563.6e-6 + dense * 255 / 256 / (0.92 * 8 * 47e9)) * 1e3, rel=1e-9)
    # one bucket group of 3 (the 16-bit buffer's two and an FP8 bucket, one _coalescing_manager): NCCL's group plan.
    # 2,143,821,824 B, 255/256 of it moved: 5.679 ms at 8 x 47 GB/s, 6.173 ms at 0.92 of it.  The tuner's count
    # ceil(3 / 16) = 1: LL128 0.564 + 6.173 ms < Simple 1.204 + 5.679 ms; 3 / 16 of an op a channel: 2 passes of LL128
    nbytes = 2_143_821_824
    assert collectives.ring_latency("simple", 256, 8, (2, 28, 3)) == pytest.approx(1204.0e-6, rel=1e-12)
    ll128 = 563.6e-6
    moved = nbytes * 255 / 256
    assert ll128 + moved / (0.92 * 8 * 47e9) < 1204.0e-6 + moved / (8 * 47e9)
    got = param_gather.gather_ms(st, nbytes, 3, group=True)
    assert got == pytest.approx((2 * ll128 + moved / (0.92 * 8 * 47e9)) * 1e3, rel=1e-9)
    # apart (3 launches): 3 LL128 passes, one more latency
    assert param_gather.gather_ms(st, nbytes, 3) == pytest.approx(got + ll128 * 1e3, rel=1e-9)


def test_megatron_core_unbucketed_chunk_is_one_group():
    # Megatron-core's DDP buckets only stage 0's first chunk; every other chunk's buffers (FP8 and 16-bit) are one
    # bucket each, in one bucket group (partition_buckets(force_single_bucket_group=disable_bucketing))
    sc = load(SCENARIOS / "mlperf50-llama405b-8192.toml")
    derived = sc.derived()
    st = derived.setup
    # the row sets step.overlap_param_gather_with_optimizer_step: no chunk bucketed, stage 0 included
    assert all(grad_sync.one_group(sc, st, s) for s in range(len(st.stages)))
    assert not grad_sync.one_group(load(SCENARIOS / "mlperf50-llama405b-8192.toml",
                                           ["step.overlap_param_gather_with_optimizer_step=false"]), st, 0)
    assert ddp_buckets.per_stage(sc, derived)[1] == 2
    # its two buckets, FP8 and 16-bit, are of different sizes: one NCCL group, 2 pieces on the channel holding the
    # boundary (group_passes not equal), the protocol the tuner's at count ceil(2 / 16) = 1.  By hand on 8 H100 nodes,
    # 2 ranks a node (DP 16), 2.25.1: LL128 14 + 8 x 1.9 + 7 x 4 = 57.2 us, Simple 8.4 + 8 x 3.4 + 7 x 14 = 133.6 us;
    # 1 GB, 15/16 of it moved: 9.973 ms at 94 GB/s, 10.841 ms at 0.92 of it.  Count 1: Simple (10.107 < 10.898 ms)
    h100 = replace(PRESETS["H100"], nccl=(2, 25, 1))
    moved = 1e9 * 15 / 16
    assert collectives.group_passes(2, 16, equal=False) == 2 and collectives.group_passes(2, 16) == 1
    unequal = collectives.bucketed("reduce_scatter", 1e9, 16, h100, 2, 2, channels=16, grouped=True, equal=False)
    assert unequal == pytest.approx(2 * 133.6e-6 + moved / 94e9, rel=1e-9)
    # apex's two equal buckets: each on 8 whole channels, one pass of Simple
    equal = collectives.bucketed("reduce_scatter", 1e9, 16, h100, 2, 2, channels=16, grouped=True)
    assert equal == pytest.approx(133.6e-6 + moved / 94e9, rel=1e-9)
    # the 8B rows' one stage is stage 0, bucketed: its groups go one at a time
    b200 = load(SCENARIOS / "mlperf51-llama8b-256b200.toml")
    assert not grad_sync.one_group(b200, b200.derived().setup, 0)
