"""Issue 21: compute slowed by a collective beside it; the model (SMs only) against the kernel-level reports found.

The model slows compute beside a collective by the SMs the collective's CTAs hold, never by HBM: a GEMM told of
them (the userbuffers GEMMs' ``sm_margin``) is re-tiled for the SMs left; one not told (``step.dp_comm_sms``,
``KernelRates.held``) keeps the tiles and grid its library picks for the whole GPU and runs them on the SMs left
as the GPU's schedule allows (persistent on H100, one block per tile on A100: tests/test_gemm_held_sms.py). Two
reports time a kernel alone and beside an NCCL collective on these GPUs
(tests/data/kernels/nccl1428_a100_overlap.csv, nvforum_h100_gemm_allgather.csv); neither gives the kernel's
shape. These tests work the model and the HBM-sharing rule that NCCL's maintainer gave by hand at what the
reports do give, and hold docs/validation.md's reading ("Compute beside a collective"): the forum's GEMM lies
between the re-tiled rule and the rule the model now applies (above it: the model is 17.5% slower than measured);
nccl#1428's slowdowns are larger than the model's and HBM sharing does not explain the GEMM's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.model import collectives, comm_slowdown, gemm
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

DATA = Path(__file__).parent / "data" / "kernels"
# NCCL's maintainer in NVIDIA/nccl#1428: a collective's link traffic crosses HBM 2x (stored, read back), 3x with the
# user buffers read or written too
HBM_CROSSINGS = (2, 3)


def _nccl1428() -> dict[str, dict]:
    return {row["kernel"]: row for row in kernel_table(DATA / "nccl1428_a100_overlap.csv")}


def _body(t: gemm.GemmTime, rates: gemm.GemmRates) -> float:
    return t.seconds - rates.floor


def test_forum_gemm_lies_between_the_retiled_rule_and_the_whole_gpus_grid():
    (row,) = kernel_table(DATA / "nvforum_h100_gemm_allgather.csv")
    h100 = PRESETS["H100"]
    assert int(row["sms"]) == h100.sms == int(row["gemm_blocks"]) == 132
    taken = int(row["nccl_blocks"])
    measured = float(row["mfu_alone"]) / float(row["mfu_overlapped"])  # same FLOPs: time ratio 0.80 / 0.47 = 1.70
    # a GEMM of exactly 132 tiles on 132 SMs: 12 x 11 tiles of 128 x 256, one full wave (the report's shape is not
    # given; any one-wave GEMM of 132 tiles has the same waves)
    m, n, k = 12 * 128, 11 * 256, 8192
    assert gemm.utilisation(m, n, h100.sms) == 1.0
    rates = h100.gemm_bf16
    full = gemm.time(m, n, k, rates, h100.sms, h100.hbm, 2.0)
    # told of the 24 SMs (as a userbuffers GEMM is, sm_margin), the library re-picks 128 x 128 tiles for 108 SMs
    # (264 of them, 3 waves of 108: 264 / 324 useful) at 108 / 132 of the peak: 132 / (108 x 264 / 324) = 1.5
    left = h100.sms - taken
    told = gemm.time(m, n, k, replace(rates, peak=rates.peak * left / h100.sms), left, h100.hbm, 2.0)
    assert _body(told, rates) / _body(full, rates) == pytest.approx(1.5, rel=1e-9)
    # not told (the model's rule beside an NCCL collective, comm_slowdown.fewer_sms): the 132-block persistent grid
    # on 108 SMs, 24 blocks waiting for a second round: 2 rounds where 1 ran
    held = comm_slowdown.fewer_sms(h100, taken)
    assert held.gemm_schedule == "persistent" and held.held_sms == taken
    less = gemm.time(m, n, k, held.gemm_bf16, held.sms, held.hbm, 2.0, held=held.held_sms, schedule=held.gemm_schedule)
    model = _body(less, rates) / _body(full, rates)
    assert model == pytest.approx(math.ceil(132 / left), rel=1e-9) == pytest.approx(2.0)
    # the measured 1.70x lies between: the model is 17.5% slower than measured (the re-tiled rule 12% faster)
    assert 1.5 < measured < model
    assert model / measured == pytest.approx(2 * 0.47 / 0.80) == pytest.approx(1.175)
    assert 1.5 / measured == pytest.approx(0.88, abs=0.005)


def test_pytorch143988_persistent_matmuls_take_twice_as_long():
    """H100's cuBLAS matmuls beside an NCCL kernel holding ~10% of the SMs: 132 blocks, several tiles each, "2x
    as long". The model's persistent grid: any whole number of tiles per block, 13 (10%) or 16 (NCCL's default
    CTAs) SMs held: blocks 0-118 (or 0-115) run their tiles, the rest start after them: twice the rounds."""
    (row,) = kernel_table(DATA / "pytorch143988_h100_persistent.csv")
    h100 = PRESETS["H100"]
    assert int(row["sms"]) == int(row["gemm_blocks"]) == h100.sms and h100.gemm_schedule == "persistent"
    for taken in (round(float(row["nccl_share_of_sms"]) * h100.sms), collectives.NCCL_DP_CTAS):
        for per_block in (1, 2, 3, 8):
            units = per_block * h100.sms
            alone = gemm.rounds(units, h100.sms)
            assert gemm.rounds(units, h100.sms, taken, "persistent") / alone == float(row["slowdown"]) == 2.0
        # taken dynamically, 8 tiles a block would run over the SMs left: 9 or 10 rounds where 8 ran (1.125-1.25x;
        # "~10% slower" was what the report's author hoped for)
        assert gemm.rounds(8 * h100.sms, h100.sms, taken, "dynamic") == math.ceil(8 * h100.sms / (h100.sms - taken))
        assert gemm.rounds(8 * h100.sms, h100.sms, taken, "dynamic") / 8 <= 1.25


def test_nccl1428_gemm_is_slowed_past_both_the_sm_share_and_hbm_sharing():
    a100 = PRESETS["A100"]
    row = _nccl1428()["gemm"]
    measured = float(row["overlapped_ms"]) / float(row["alone_ms"])  # 2.08 / 1.18 = 1.76
    # a GEMM as long as the report's alone (4,096 x 4,096 x 8,192 BF16: 1.12 ms in the model, compute-bound)
    m, n, k = 4096, 4096, 8192
    alone = gemm.time(m, n, k, a100.gemm_bf16, a100.sms, a100.hbm, 2.0)
    assert alone.bound == "compute" and alone.seconds == pytest.approx(1.18e-3, rel=0.1)
    # HBM sharing at the maintainer's worst (3 crossings of an NVLink all-gather at the A100's 230 GB/s bus
    # bandwidth: 0.69 of 1.61 TB/s): the GEMM's bytes still take less than its math, so it is not slowed at all
    shared = gemm.time(m, n, k, a100.gemm_bf16, a100.sms, a100.hbm - max(HBM_CROSSINGS) * a100.nvlink_bus, 2.0)
    assert shared.seconds == alone.seconds
    # NCCL's 16 CTAs (step.dp_comm_sms' default) beside A100's one-block-per-tile GEMM, by hand: the whole GPU's
    # 512 tiles of 128 x 256 in 5 waves of 108 SMs alone, in 6 waves of the 92 left beside the collective: 6 / 5
    # (the launch floor aside; re-tiled for 92 SMs it would be the same 512 tiles)
    held = comm_slowdown.fewer_sms(a100, collectives.NCCL_DP_CTAS)
    assert held.gemm_schedule == "waves"
    less = gemm.time(m, n, k, held.gemm_bf16, held.sms, held.hbm, 2.0, held=held.held_sms, schedule=held.gemm_schedule)
    model = less.seconds / alone.seconds
    assert model == pytest.approx(6 / 5, rel=0.002)
    assert measured > 1.5 > model


def test_nccl1428_attention_is_slowed_past_the_sm_share():
    a100 = PRESETS["A100"]
    row = _nccl1428()["attention"]
    measured = float(row["overlapped_ms"]) / float(row["alone_ms"])  # 0.33 / 0.18 = 1.83
    # flash attention (compute-bound) at the share of SMs NCCL's 16 CTAs leave: 108 / 92 = 1.17
    left = comm_slowdown.fewer_sms(a100, collectives.NCCL_DP_CTAS)
    for backward in (False, True):
        model = a100.attention_rate(4096, backward) / left.attention_rate(4096, backward)
        assert model == pytest.approx(108 / 92)
        assert measured > 1.5 > model


def test_nccl1428_elementwise_kernel_is_slowed_past_hbm_sharing():
    a100 = PRESETS["A100"]
    row = _nccl1428()["elementwise"]
    # published to two decimals: alone at most 0.025 ms, overlapped at least 0.045 ms, so at least 1.8x
    least = (float(row["overlapped_ms"]) - 0.005) / (float(row["alone_ms"]) + 0.005)
    assert least == pytest.approx(1.8)
    # a memory-bound kernel on the HBM an all-gather leaves it, 2 or 3 crossings of 230 GB/s: 1.40x or 1.75x
    bound = [a100.hbm / (a100.hbm - c * a100.nvlink_bus) for c in HBM_CROSSINGS]
    assert bound == pytest.approx([1.61 / 1.15, 1.61 / 0.92])
    assert max(bound) < least
