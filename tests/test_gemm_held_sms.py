"""A GEMM beside a kernel its library was not told about (KernelRates.held, gemm.rounds), worked by hand.

The library picks its tiles and grid for the whole GPU; another kernel (an NCCL collective) holds ``s`` SMs;
the GEMM's thread blocks then run on the SMs left as its schedule allows (docs/model.md, "GEMMs beside a kernel
they were not told about"):
- persistent, static (sm_90: CUTLASS's StaticPersistentTileScheduler, cuBLAS's Hopper kernels as
  pytorch/pytorch#143988 saw them): grid = min(units, SMs), block i owns units i, i + grid, ...; the blocks
  start on free SMs in block order and each runs all its units;
- waves (sm_80: one block per unit) and dynamic (sm_100 Cluster Launch Control): units over the SMs left.
"""

from __future__ import annotations

import math

import pytest

from dualpipe_sim.model import comm_slowdown, gemm
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.rates import PRESETS

H100, A100, B200 = PRESETS["H100"], PRESETS["A100"], PRESETS["B200"]


def _body(m, n, k, rates, held=0, schedule="dynamic"):
    """The GEMM's time beyond its launch floor (compute-bound here, so its rounds' time)."""
    t = gemm.time(m, n, k, rates.gemm_bf16, rates.sms, rates.hbm, 2.0, held=held, schedule=schedule)
    assert t.bound == "compute"
    return t.seconds - rates.gemm_bf16.floor


def test_persistent_gemm_of_264_tiles_runs_two_rounds_more():
    """H100, 3,072 x 2,816 x 8,192 BF16: 24 x 11 = 264 tiles of 128 x 256 (useful share 1.0; the other shapes
    tie and the first is kept), 2 per block of a 132-block grid.  With 16 SMs held, blocks 0-115 run their 2
    tiles [0, 2], blocks 116-131 start at 2 and end at 4: 4 rounds where 2 ran, twice the time."""
    m, n, k = 24 * 128, 11 * 256, 8192
    assert H100.gemm_schedule == "persistent"
    assert gemm.rounds(264, 132, 0, "persistent") == 2
    assert gemm.rounds(264, 132, 16, "persistent") == 4
    kfactor = k / (k + H100.gemm_bf16.k_overhead)
    assert gemm.efficiency(m, n, k, 132, H100.gemm_bf16.k_overhead) == pytest.approx(kfactor)
    assert gemm.efficiency(m, n, k, 132, H100.gemm_bf16.k_overhead, 1, 16, "persistent") == pytest.approx(kfactor / 2)
    alone = _body(m, n, k, H100)
    assert alone == pytest.approx(2 * m * n * k / (H100.gemm_bf16.peak * kfactor))
    assert _body(m, n, k, H100, 16, "persistent") == pytest.approx(2 * alone)
    # the same tiles taken by whichever SM is free (dynamic) or launched in waves: ceil(264 / 116) = 3 rounds
    for schedule in ("dynamic", "waves"):
        assert _body(m, n, k, H100, 16, schedule) == pytest.approx(1.5 * alone)


def test_persistent_blocks_with_fewer_tiles_fill_the_gap():
    """200 units on a 132-block grid: blocks 0-67 own 2, blocks 68-131 own 1.  On 116 SMs blocks 0-115 start;
    68-115 end at 1 and blocks 116-131 (1 unit each) take their SMs, ending at 2: as alone, 2 rounds.
    300 units: blocks 0-35 own 3, 36-131 own 2; 36-115 end at 2, 116-131 run [2, 4]: 4 rounds where 3 ran."""
    assert gemm.rounds(200, 132, 0, "persistent") == 2
    assert gemm.rounds(200, 132, 16, "persistent") == 2
    assert gemm.rounds(300, 132, 0, "persistent") == 3
    assert gemm.rounds(300, 132, 16, "persistent") == 4
    # a grid that fits the SMs left runs as alone; one unit per block beyond them waits a whole round
    assert gemm.rounds(116, 132, 16, "persistent") == 1
    assert gemm.rounds(117, 132, 16, "persistent") == 2
    assert [gemm.rounds(300, 132, 16, s) for s in ("waves", "dynamic")] == [math.ceil(300 / 116)] * 2


def test_non_persistent_gemm_keeps_the_whole_gpus_tiles():
    """A100 (one block per tile), 1,152 x 3,072 x 8,192: 9 x 12 = 108 tiles of 128 x 256, one wave on 108 SMs.
    With 16 held, 92 blocks run and 16 wait for a second wave: 2x.  Re-tiled for the 92 SMs (the told rule,
    fewer SMs targeted) it would be 216 tiles of 128 x 128 in 3 waves of 92 at 92 / 108 of the peak: 1.5x."""
    m, n, k = 9 * 128, 12 * 256, 8192
    assert A100.gemm_schedule == "waves"
    assert gemm.utilisation(m, n, 108) == 1.0
    alone = _body(m, n, k, A100)
    assert _body(m, n, k, A100, 16, "waves") == pytest.approx(2 * alone)
    told = gemm.efficiency(m, n, k, 92, A100.gemm_bf16.k_overhead) * 92 / 108
    assert told == pytest.approx(216 / 276 * 92 / 108 * k / (k + A100.gemm_bf16.k_overhead))
    assert gemm.efficiency(m, n, k, 108, A100.gemm_bf16.k_overhead) / told == pytest.approx(1.5)


def test_dynamic_gemm_on_b200_runs_its_tiles_over_the_sms_left():
    """B200 (Cluster Launch Control): 4,736 x 512 is 37 x 4 = 148 tiles of 128 x 128, one wave on 148 SMs;
    with 16 held, 148 tiles over 132 SMs take 2 rounds: 2x."""
    m, n, k = 4736, 512, 8192
    assert B200.gemm_schedule == "dynamic"
    assert gemm.utilisation(m, n, 148) == pytest.approx(1.0)
    assert _body(m, n, k, B200, 16, "dynamic") == pytest.approx(2 * _body(m, n, k, B200))


def test_held_rates():
    """KernelRates.held: the whole GPU's SMs and GEMM peaks kept (gemm.py accounts for the SMs held), flash
    attention at the share left, HBM and links unchanged; comm_slowdown.fewer_sms is the same thing."""
    h = H100.held(16)
    assert (h.sms, h.held_sms, h.gemm_schedule) == (132, 16, "persistent")
    assert h.gemm_bf16 == H100.gemm_bf16 and h.gemm_fp8 == H100.gemm_fp8
    assert h.attention_forward == pytest.approx(H100.attention_forward * 116 / 132)
    assert h.attention_backward == pytest.approx(H100.attention_backward * 116 / 132)
    # the libraries' tables are the whole GPU's (the library is chosen before SMs are held; s11e)
    assert (h.attention_fa2, h.attention_fa1) == (H100.attention_fa2, H100.attention_fa1)
    assert (h.hbm, h.nvlink_bus, h.nic_bus, h.floor) == (H100.hbm, H100.nvlink_bus, H100.nic_bus, H100.floor)
    assert comm_slowdown.fewer_sms(H100, 16) == h
    assert H100.held(0) == H100
    with pytest.raises(ModelError, match="must be below the GPU's 132 SMs, got 132"):
        H100.held(132)
    both = h.held(8)  # a second kernel beside (the ring's P2P under a data-parallel collective): the SMs add up
    assert both.held_sms == 24 and both.attention_forward == pytest.approx(H100.attention_forward * 108 / 132)
    with pytest.raises(ModelError, match="got 132 held"):
        h.held(116)
    assert [PRESETS[g].gemm_schedule for g in ("H800", "H200")] == ["persistent"] * 2


def test_a_layers_gemms_on_held_rates():
    """Through the kernel table (kernels.Table.gemm): on H100 rates with 16 SMs held, an FP8 GEMM no one told
    (Llama 3.1 8B's fc1, 4,096 x 28,672 x 4,096 at TP 1) is timed on the whole GPU's tiles and grid with 16 held;
    a userbuffers GEMM told of its 4-SM reduce-scatter (MLPerf v3.1 GPT-3's atomic fc2, set_sm_margin) is picked
    for the 128 SMs it was told of, its peak 128 / 132, and runs on 128 - 16."""
    from dataclasses import replace
    from pathlib import Path

    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.model import derive

    folder = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
    fp8 = H100.gemm_fp8
    st = derive.setup(scenario.load(folder / "mlperf51-llama8b-64h200.toml", []))
    rows = {k.name: k for k in derive.layer_kernels(replace(st, rates=st.rates.held(16)), 0)}
    want = gemm.time(4096, 28672, 4096, fp8, 132, st.rates.hbm, 1.0, held=16, schedule="persistent")
    alone = gemm.time(4096, 28672, 4096, fp8, 132, st.rates.hbm, 1.0)
    assert rows["fc1"].seconds == pytest.approx(want.seconds) and want.seconds > 1.3 * alone.seconds
    st = derive.setup(scenario.load(folder / "mlperf31-gpt3-512.toml", []))
    rows = {k.name: k for k in derive.layer_kernels(replace(st, rates=st.rates.held(16)), 0)}
    told = replace(fp8, peak=fp8.peak * 128 / 132)
    want = gemm.time(2048, 12288, 12288, told, 128, H100.hbm, 1.0, held=16, schedule="persistent")
    assert rows["fc2"].seconds == pytest.approx(want.seconds)
    assert want.seconds > gemm.time(2048, 12288, 12288, told, 128, H100.hbm, 1.0).seconds
