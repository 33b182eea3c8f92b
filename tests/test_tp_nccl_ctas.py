"""NCCL's CTAs for a one-node tensor-parallel collective on H100 / H200 / H800 / B200 (s12m), worked from NCCL's rules.

Each count is worked here from the rule, not read from the model: the ring search (graph/search.cc ncclTopoCompute)
starts at the fastest speed of the GPU's intra-node speed array and keeps the graph with the most channels x speed,
channels at a speed being what the GPU's NVLink width (links x per-link GB/s, graph/topo.h) holds; it stops when that
reaches the width, or when the next speed is no more than 0.49 of the best's.  ncclTopoDupChannels doubles it unless
the speed is under 25 GB/s, or (sm_90 and later) under 50 with more than 4 channels; ncclTopoPostset (graph/connect.cc)
doubles again, then clamps to [max(NCCL_MIN_NCHANNELS, minCTAs), min(NCCL_MAX_NCHANNELS, maxCTAs)].
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.model.rates import PRESETS

# intra-node speed arrays, GB/s a channel (search.cc)
SM90_V2_28 = [60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0]  # v2.21.5 .. v2.28.3 line 957
SM90_V2_18 = [60.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 6.0, 3.0]  # v2.18.5 line 812
SM100_V2_28 = [90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0]  # v2.28.3 line 962
ROOT = Path(__file__).resolve().parent.parent
RING_MAX = 64 // 2  # init.cc: ringGraph->maxChannels = MAXCHANNELS / 2 (MAXCHANNELS 64 from v2.26; 32 before)


def ring_search(width: float, speeds: list[float]) -> tuple[int, float]:
    """Pass 1 of ncclTopoCompute for a ring through one NVSwitch: (channels, GB/s a channel) of the best graph."""
    best = (0, 0.0)
    for i, s in enumerate(speeds):
        if s > width:
            continue
        ch = min(RING_MAX, math.floor(width / s + 1e-9))
        if ch * s > best[0] * best[1]:  # ncclTopoCompareGraphs: strictly more channels x speed
            best = (ch, s)
        if best[0] * best[1] >= width:  # "nChannels * bwInter >= totalBw": done
            break
        if i + 1 == len(speeds) or speeds[i + 1] / best[1] <= 0.49:
            break
    return best


def channels(width: float, speeds: list[float], cc: int, min_ctas: int = 1, max_ctas: int = 64) -> int:
    ch, bw = ring_search(width, speeds)
    if bw >= 25.0 and not (cc > 80 and bw < 50.0 and ch > 4):  # ncclTopoDupChannels
        ch, bw = min(2 * ch, RING_MAX), bw / 2
    faster = [s for s in speeds if s > bw]
    assert all(s * ch > width for s in faster)  # pass 2: no faster speed holds that many channels
    ch = min(64, 2 * ch)  # ncclTopoPostset: doubled
    return max(min_ctas, min(max_ctas, ch))


def test_h800_eight_nvlinks_worked_from_the_search():
    width = 8 * 20.6  # H800: 8 NVLink4 links x SM90_NVLINK_BW
    assert width == pytest.approx(164.8)
    # 60: 2 (120); 50: 3 (150, better); 40: 4 (160, better); 30: 5 (150); 24: 6 (144); 20: 8 (160, not better);
    # 15 / 40 = 0.375: stop.  4 at 40: doubled (4 is not more than 4): 8 at 20; Postset: 16
    assert ring_search(width, SM90_V2_28) == (4, 40.0)
    assert channels(width, SM90_V2_28, 90) == 16 == 2 * 2 * 4
    # v2.18.5: 8 x 20.0 = 160: 60 gives 2, 40 gives 4 = 160 >= 160, done; the same 16
    assert channels(8 * 20.0, SM90_V2_18, 90) == 16
    # NVLS, where it runs, has NVLS_NCHANNELS_SM90 = 16 CTAs: the same count either way
    assert kernels.TP_NCCL_CTAS["H800"] == 16
    h800 = PRESETS["H800"]
    assert [kernels.tp_nccl_ctas(h800, g, "all_gather", 1e8) for g in (1, 2, 4, 8, 16)] == [0, 16, 16, 16, 0]


def test_h100_eighteen_nvlinks_ring():
    width = 18 * 20.6  # 370.8
    # 60: 6 (360 < 370.8); 50: 7 (350); 40: 9 (360, not better); 30: 12 (360, not better); 24 / 60 = 0.4: stop.
    # 6 at 60 (>= 50: doubled): 12 at 30; Postset: 24
    assert ring_search(width, SM90_V2_28) == (6, 60.0)
    assert channels(width, SM90_V2_28, 90) == 24
    assert channels(18 * 20.0, SM90_V2_18, 90) == 24  # v2.18.5: 6 x 60 = 360, done at once
    # NVLS (16 CTAs) is never set up for a group of 2 GPUs (nvls.cc: gpuCount <= 2 returns); for 3-8 NCCL's tuner
    # runs these all-gathers of 100 MB on the ring (tests/test_nccl_nvls.py works where it picks NVLS)
    for name in ("H100", "H200"):
        r = PRESETS[name]
        ring = channels(width, SM90_V2_28, 90)
        assert [kernels.tp_nccl_ctas(r, g, "all_gather", 1e8) for g in (1, 2, 3, 4, 8, 16)] == [0, *[ring] * 4, 0]


def test_b200_nvlink5_and_the_runs_cta_clamp():
    width = 18 * 40.1  # SM100_NVLINK_BW at v2.28.3
    # 90: 8 (720 < 721.8); 80: 9 (720, not better); 70: 10; 60: 12 (720); 50: 14; 40 / 90 = 0.44: stop.
    # 8 at 90: doubled to 16 at 45 (50 x 16 = 800 > 721.8: no faster); Postset: 32
    assert ring_search(width, SM100_V2_28) == (8, 90.0)
    # the runs' NCCL_MIN_CTAS=16, NCCL_MAX_CTAS=32 replace the tp yaml's 1 / 8 (envConfigOverride): 32 stays
    assert channels(width, SM100_V2_28, 100, min_ctas=16, max_ctas=32) == 32 == channels(width, SM100_V2_28, 100)
    assert channels(width, SM100_V2_28, 100, min_ctas=1, max_ctas=8) == 8  # what the yaml alone would have given
    b200 = PRESETS["B200"]
    assert [kernels.tp_nccl_ctas(b200, g, "all_gather", 1e8) for g in (1, 2, 4, 8, 16)] == [0, 32, 32, 32, 0]


def test_the_rows_messages_keep_every_channel():
    """getAlgoInfo (enqueue.cc v2.28.3 lines 1848-1870) drops channels while nBytes < nc x nt x threshold (ring Simple:
    512 threads, 64 B): the B200 405B rows' smallest tensor-parallel message (4,096 tokens x 16,384, FP8 all-gather,
    67.1 MB) and the xtuner H800 rows' (4,096 x 4,096 x 2 B = 33.6 MB) are far above it."""
    assert 4096 * 16384 * 1 > 32 * 512 * 64 == 1_048_576
    assert 4096 * 4096 * 2 > 16 * 512 * 64
    st = derive.setup(scenario.load(ROOT / "scenarios/validation/mlperf51-llama405b-256b200.toml", []))
    rows = {(k.name, k.component): k for k in derive.layer_kernels(st, 1)}
    assert "32 SMs held" in rows[("fc1 wgrad", "mlp_backward_weight")].shape
    st = derive.setup(scenario.load(ROOT / "scenarios/validation/xt-qwen3-235b-tp2ep8pp8.toml", []))
    rows = {(k.name, k.component): k for k in derive.layer_kernels(st, 1)}
    assert "16 SMs held" in rows[("qkv wgrad", "attn_backward_weight")].shape


def test_run_cap_tp_max_ctas_v31_and_v4x():
    """parallel.tp_max_ctas (s14c): the MLPerf v3.1 GPT-3 runs' MEGATRON_CORE_TP_MAX_CTAS=8 (Megatron-core df72712
    parallel_state.py lines 254-261) and v4.x's `tp: max_ctas: 8` yaml clamp the H100 tensor ring's 24 channels
    (v2.18.5: 18 x 20.0 GB/s, 6 at 60, 12, 24) to 8; NCCL_MIN_NCHANNELS=4 is below it."""
    width = 18 * 20.0
    assert channels(width, SM90_V2_18, 90) == 24
    assert channels(width, SM90_V2_18, 90, min_ctas=4, max_ctas=8) == 8
    by_cap = {}
    for cap in (0, 8, 30):
        st = derive.setup(scenario.load(ROOT / "scenarios/validation/mlperf31-gpt3-4096.toml", [f"parallel.tp_max_ctas={cap}"]))
        last = st.stages[-1]
        rows = {(k.name, k.component): k for k in derive.extra_kernels(st, last)}
        by_cap[cap] = rows[("output layer dgrad", "mlp_backward_input")]
    assert "24 SMs held" in by_cap[0].shape  # no cap: the ring's 24, as the model times the head's all-gather
    assert "24 SMs held" in by_cap[30].shape  # a cap above the channels found changes nothing
    assert "8 SMs held" in by_cap[8].shape  # min(24, 8)
    # the scenario as shipped carries the cap
    st = derive.setup(scenario.load(ROOT / "scenarios/validation/mlperf31-gpt3-4096.toml", []))
    assert st.tp_max_ctas == 8 and st.layout.tp_max_ctas == 8


@pytest.mark.parametrize("value,rule", [("-1", "input should be greater than or equal to 0, got -1"),
                                        ("65", "input should be less than or equal to 64, got 65"),
                                        ("2.5", "must be a whole number, got 2.5")])
def test_tp_max_ctas_bad_input_is_one_line(tmp_path, value, rule):
    from helpers import cli_error

    scen = ROOT / "scenarios/validation/mlperf31-gpt3-4096.toml"
    assert cli_error(tmp_path, "run", str(scen), "--set", f"parallel.tp_max_ctas={value}") == \
        f"error: parallel.tp_max_ctas: {rule}"
