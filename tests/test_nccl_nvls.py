"""NCCL's ring or NVLS for a one-node tensor group on H100 / H200 (s13c), the tuner's arithmetic worked by hand here.

tuning.cc ncclTopoTuneModel: time = latency + bytes / (1000 x algorithm GB/s) per (algorithm, protocol), the fastest
runs (enqueue.cc topoGetAlgoInfo, the ring on a tie).  Ring graph: 12 channels x 30 GB/s = 360 GB/s of bus, algorithm
bandwidth bus x n / steps (steps n - 1 for all-gather / reduce-scatter, 2 (n - 1) for all-reduce); latency baseLat +
steps x NVLink hwLat: LL 6.6 + 0.6, LL128 14.0 + 1.9, Simple 8.4 + 3.4 us.  NVLS graph: n channels, each link loaded
(n + 1) x speed (search.cc ncclTopoSearchTryNvls), the fastest sm90 speed that fits 18 NVLinks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, kernels, nccl_nvls
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parent.parent
H100 = PRESETS["H100"]
V2_25 = (2, 25, 1)


def test_nvls_graph_speed_by_group():
    # v2.20+: 18 x 20.6 = 370.8; group 4: 5 x 60 = 300 fits; group 6: 7 x 60 = 420 no, 7 x 50 = 350; group 8:
    # 9 x 50 = 450 no, 9 x 40 = 360.  v2.18.5: 18 x 20.0 = 360 and no 50 in the array: group 6 at 40 (7 x 40 = 280)
    assert [nccl_nvls.nvls_speed(g, V2_25) for g in (3, 4, 5, 6, 7, 8)] == [60, 60, 60, 50, 40, 40]
    assert [nccl_nvls.nvls_speed(g, None) for g in (4, 6, 8)] == [60, 40, 40]


def test_tp8_all_gather_v2_25_switches_twice():
    # NVLS from v2.23: all-gather not converted, 8 x 40 = 320 GB/s, latency 25 us.  Ring: LL min(141, 360 x 0.5) x 8/7
    # = 161.14 at 6.6 + 7 x 0.6 = 10.8 us; LL128 331.2 x 8/7 = 378.51 at 14 + 7 x 1.9 = 27.3; Simple 411.43 at 32.2.
    # NVLS beats LL above 14.2 / (1/161.14 - 1/320) x 1000 = 4.609 MB, LL128 below 2.3 / (1/320 - 1/378.51) x 1000
    # = 4.761 MB (and Simple below 10.37 MB): NVLS only between 4.609 and 4.761 MB
    ll, ll128, simple, nvls = 141 * 8 / 7, 331.2 * 8 / 7, 360 * 8 / 7, 320.0
    lo = 14.2 / (1 / ll - 1 / nvls) * 1000
    hi = 2.3 / (1 / nvls - 1 / ll128) * 1000
    assert lo == pytest.approx(4.609e6, rel=1e-3) and hi == pytest.approx(4.761e6, rel=1e-3)
    for nbytes, ctas in ((4.5e6, 24), (4.7e6, 16), (4.9e6, 24), (100e6, 24)):
        t_nvls = 25 + nbytes / (1000 * nvls)
        t_ring = min(10.8 + nbytes / (1000 * ll), 27.3 + nbytes / (1000 * ll128), 32.2 + nbytes / (1000 * simple))
        assert (t_nvls < t_ring) == (ctas == 16)
        assert nccl_nvls.nvls_time("all_gather", nbytes, 8, V2_25) == pytest.approx(t_nvls)
        assert min(nccl_nvls.ring_times("all_gather", nbytes, 8, V2_25).values()) == pytest.approx(t_ring)
        h100 = replace(H100, nccl=V2_25)
        assert kernels.tp_nccl_ctas(h100, 8, "all_gather", nbytes) == ctas
        assert kernels.tp_nccl_ctas(h100, 8, "reduce_scatter", nbytes) == ctas


def test_tp4_all_gather_is_the_ring_at_every_size_and_release():
    # v2.19-v2.22: NVLS 4 x 60 x 5/6 = 200 GB/s (v2.23-v2.26 240, v2.27 180) at 23-25 us; the ring's Simple 360 x 4/3 =
    # 480 at 8.4 + 3 x 3.4 = 18.6 us: faster at every size.  v2.18: no NVLS for all-gather / reduce-scatter
    for rel in (None, (2, 19, 3), (2, 22, 3), V2_25, (2, 27, 7), (2, 28, 3)):
        bw = nccl_nvls.nvls_bandwidth("all_gather", 4, rel)
        assert bw is None if rel is None else bw <= 240 < 480
        for nbytes in (1e3, 1e6, 4.7e6, 1e8):
            assert not nccl_nvls.picks_nvls("all_gather", nbytes, 4, rel)
            assert not nccl_nvls.picks_nvls("reduce_scatter", nbytes, 4, rel)
    assert 8.4 + 3 * 3.4 == pytest.approx(18.6)


def test_tp8_all_reduce_v2_18_switch_and_its_bandwidth():
    # v2.18.5 (the default rules): NVLS 8 x 40 x 5/6 = 266.67 GB/s at 23 us; ring LL min(87.7, 360 / 4) x 8/14 =
    # 50.11 at 6.6 + 14 x 0.6 = 15.0 us, LL128 331.2 x 8/14 = 189.26 at 40.6, Simple 205.71 at 56.0.  NVLS beats LL
    # above 8 / (1/50.11 - 1/266.67) x 1000 = 493.7 KB and the others at every size
    ll, nvls = 87.7 * 8 / 14, 8 * 40 * 5 / 6
    switch = 8 / (1 / ll - 1 / nvls) * 1000
    assert switch == pytest.approx(493.7e3, rel=1e-3)
    assert [kernels.tp_nccl_ctas(H100, 8, "all_reduce", b) for b in (400e3, 600e3, 50e6)] == [24, 16, 16]
    assert 15.0 + 400e3 / (1000 * ll) < 23 + 400e3 / (1000 * nvls)  # 22.98 < 24.50: the ring
    assert 15.0 + 600e3 / (1000 * ll) > 23 + 600e3 / (1000 * nvls)  # 26.97 > 25.25: NVLS
    # NVLS's own bandwidth: the tuner's 266.67 over the ring's Simple 205.71 = 1.296; measured on 8 H100s, 330 ->
    # 430 GB/s of bus (NVIDIA/nccl#1221) and 370 -> 480 (#2140): 1.303 and 1.297
    gain = nvls / (360 * 8 / 14)
    assert gain == pytest.approx(1.2963, rel=1e-4) == nccl_nvls.bus_gain("all_reduce", 8)
    assert gain == pytest.approx(430 / 330, rel=0.01) and gain == pytest.approx(480 / 370, rel=0.01)
    nbytes = 2048 * 12288 * 2
    expected = H100.latency + nbytes * 2 * 7 / 8 / (H100.nvlink_bus * gain)
    assert collectives.time("all_reduce", nbytes, 8, H100, "nvlink") == pytest.approx(expected)
    # below the switch, and for this all-gather (the ring's), the ring's bus bandwidth as before
    assert collectives.time("all_reduce", 400e3, 8, H100, "nvlink") == pytest.approx(
        H100.latency + 400e3 * 2 * 7 / 8 / H100.nvlink_bus)
    assert collectives.time("all_gather", nbytes, 8, H100, "nvlink") == pytest.approx(
        H100.latency + nbytes * 7 / 8 / H100.nvlink_bus)


def test_nvls_all_gather_in_its_window_moves_slower_than_the_ring():
    # v2.25.1, TP 8, 4.7 MB (NVLS's window above): the tuner's NVLS 320 GB/s over its ring Simple 360 x 8/7 = 411.43:
    # 0.778 of the ring's bus bandwidth (NVLS sends S where the ring sends (N - 1) / N S: NVIDIA/nccl#1083)
    h100 = replace(H100, nccl=V2_25)
    gain = 320 / (360 * 8 / 7)
    assert gain == pytest.approx(0.7778, rel=1e-4) == nccl_nvls.bus_gain("all_gather", 8, V2_25)
    assert collectives.time("all_gather", 4.7e6, 8, h100, "nvlink") == pytest.approx(
        h100.latency + 4.7e6 * 7 / 8 / (h100.nvlink_bus * gain))
    assert collectives.time("all_gather", 4.5e6, 8, h100, "nvlink") == pytest.approx(
        h100.latency + 4.5e6 * 7 / 8 / h100.nvlink_bus)


def test_no_nvls_for_two_gpus_or_other_presets():
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        assert kernels.tp_nccl_ctas(H100, 2, op, 1e7) == 24  # nvls.cc: gpuCount <= 2 sets none up
        assert kernels.tp_nccl_ctas(H100, 16, op, 1e7) == 0  # across nodes
        assert not nccl_nvls.runs_nvls(PRESETS["H800"], op, 1e7, 8)
        assert not nccl_nvls.runs_nvls(PRESETS["B200"], op, 1e7, 8)


def test_the_rows_tp4_and_tp8_gathers_hold_the_rings_24():
    # mz-qwen3-235b-tp4ep8pp8's output layer (TP 4, the default v2.18.5 rules): the re-gather and reduce-scatter beside
    # its GEMMs hold the ring's 24 SMs, 108 of 132 left
    for name, tp in (("mz-qwen3-235b-tp4ep8pp8", 4), ("mlperf50-llama405b-512", 8)):
        st = derive.setup(scenario.load(ROOT / f"scenarios/validation/{name}.toml", []))
        assert st.layout.tensor == tp
        rows = derive.extra_kernels(st, next(s for s in st.stages if s.head))
        beside = [k for k in rows if "beside NCCL" in k.shape]
        assert beside and all("beside NCCL, 24 SMs held" in k.shape for k in beside), [k.shape for k in rows]
