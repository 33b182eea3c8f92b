"""GB300's FP8 and NVFP4 GEMM peaks from Azure's cuBLASLt tables after 10,000 warm-up iterations (s20b; docs/model.md,
"GB300's GEMMs under sustained load (s20b)"; tests/data/kernels/azure_gb300.csv), the benchmark B200's and GB200's FP8
rate comes from. The numbers are worked by hand from the table, not taken from the code."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import kernel_table

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import (GB300_FP8_PEAK, GB300_FP8_SHORT_RUN_PEAK, GB300_NVFP4_PEAK,
                                      GB300_NVFP4_SHORT_RUN_PEAK)
from dualpipe_sim.model.rates import PRESETS as RATES

DATA = Path(__file__).resolve().parent / "data" / "kernels"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fit_kernel_rates  # noqa: E402
NVFP4 = 0.5 + 1 / 16  # bytes a value: a 4-bit value and 1/16 of its block's E4M3 scale
S = 8192
FLOOR = 5.25e-6  # sm_100's (the B200 fit's), which every GB300 GEMM fit holds


def _table(dtype):
    return {(int(r["m"]), int(r["n"]), int(r["k"])): float(r["value"]) * 1e12
            for r in kernel_table(DATA / "azure_gb300.csv") if r["dtype"] == dtype}


def _model(m, n, k, peak, size):
    r = RATES["GB300"]
    return gemm.time(m, n, k, gemm.GemmRates(peak, 0.0, FLOOR), r.sms, r.hbm, size, schedule=r.gemm_schedule)


def test_the_preset_takes_the_sustained_peaks():
    gb3 = RATES["GB300"]
    assert gb3.gemm_fp8.peak == GB300_FP8_PEAK == 3415e12 and gb3.gemm_fp4.peak == GB300_NVFP4_PEAK == 8322e12
    for rates in (gb3.gemm_fp8, gb3.gemm_fp4):
        assert (rates.k_overhead, rates.floor) == (0.0, FLOOR)
    # the short runs' peaks stay as checks of their own tables (tests/test_gb300_sources.py, test_gb300_nvfp4_rate.py)
    assert (GB300_FP8_SHORT_RUN_PEAK, GB300_NVFP4_SHORT_RUN_PEAK) == (3965e12, 8796e12)


@pytest.mark.parametrize("dtype, top, kept", [
    # FP8 at 5,000 TFLOP/s: 1024^3 2.1 GFLOP (0.43 us), 2048^3 (3.4 us) and 1024 x 2145 x 1024 (0.9 us) take less
    # than the 5.25 us floor, and each was measured faster than floor + that (3.9, 7.5 and 4.0 us): GB200's rule drops
    # them too
    ("fp8", 5000e12, {(4096,) * 3, (8192,) * 3, (16384,) * 3, (32768,) * 3, (6144, 12288, 12288), (802816, 192, 768)}),
    # NVFP4 at 15,000: the same three take 0.14, 1.15 and 0.30 us, less than the floor; measured 6.8, 10.2 and 8.2 us,
    # slower than floor + that, which GB200's rule alone would keep
    ("nvfp4", 15000e12, {(4096,) * 3, (8192,) * 3, (16384,) * 3, (32768,) * 3, (802816, 192, 768)}),
])
def test_the_rows_that_pin_the_peak(dtype, top, kept):
    rows = _table(dtype)
    at_top = {s: 2 * math.prod(s) / top for s in rows}
    pinned = {s for s in rows if at_top[s] > FLOOR and 2 * math.prod(s) / rows[s] > FLOOR + at_top[s]}
    assert pinned == kept
    # and the fit script keeps those rows (benchmarks/fit_kernel_rates.py)
    table = np.array([(1, *s, 2 * math.prod(s) / rate) for s, rate in rows.items()])
    assert {tuple(int(x) for x in r[1:4]) for r in fit_kernel_rates.rows_that_pin_the_peak(table, FLOOR, top)} == kept


@pytest.mark.parametrize("dtype, size, peak, kept", [
    ("fp8", 1.0, GB300_FP8_PEAK, [(4096,) * 3, (8192,) * 3, (16384,) * 3, (32768,) * 3, (6144, 12288, 12288),
                                  (802816, 192, 768)]),
    ("nvfp4", NVFP4, GB300_NVFP4_PEAK, [(4096,) * 3, (8192,) * 3, (16384,) * 3, (32768,) * 3, (802816, 192, 768)]),
])
def test_the_peak_is_the_least_squares_fit_on_log_time(dtype, size, peak, kept):
    rows = _table(dtype)

    def err(p):
        return sum(math.log(_model(*s, p, size).seconds / (2 * math.prod(s) / rows[s])) ** 2 for s in kept)

    # the rounded peak lies within 0.1% of the minimum: 0.2% either side costs more
    assert err(peak) < err(peak * 1.002) and err(peak) < err(peak * 0.998)


def test_8192_cubed_by_hand():
    # FP8: 1.0995e12 FLOPs at 3,286.3 TFLOP/s = 334.57 us measured; the model, 4,096 tiles of 128 x 128 in 27 rounds of
    # 152 SMs (512/513 useful): 5.25 + 1.0995e12 / (512/513 x 3,415e12) = 5.25 + 322.59 = 327.84 us, 2.0% quick
    flops = 2 * S**3
    fp8 = _model(S, S, S, GB300_FP8_PEAK, 1.0)
    assert fp8.utilisation == pytest.approx(512 / 513) and fp8.bound == "compute"
    assert fp8.seconds * 1e6 == pytest.approx(5.25 + flops / (512 / 513 * 3415e12) * 1e6, rel=1e-9)
    assert fp8.seconds * 1e6 == pytest.approx(327.84, abs=0.01)
    assert fp8.seconds / (flops / _table("fp8")[S, S, S]) - 1 == pytest.approx(-0.020, abs=0.001)
    # NVFP4: 8,155.9 TFLOP/s = 134.81 us measured; 5.25 + 1.0995e12 / (512/513 x 8,322e12) = 137.63 us, 2.1% slow
    fp4 = _model(S, S, S, GB300_NVFP4_PEAK, NVFP4)
    assert fp4.seconds * 1e6 == pytest.approx(137.63, abs=0.01)
    assert fp4.seconds / (flops / _table("nvfp4")[S, S, S]) - 1 == pytest.approx(0.021, abs=0.001)


def test_the_worst_fp8_row_is_4096_cubed():
    # 1,024 tiles in 7 rounds (1024/1064 useful): 5.25 + 1.3744e11 / (1024/1064 x 3,415e12) = 47.07 us against 42.20 us
    # measured (3,257.0 TFLOP/s): 11.5% slow, the fit's worst row
    t = _model(4096, 4096, 4096, GB300_FP8_PEAK, 1.0).seconds
    assert t * 1e6 == pytest.approx(5.25 + 2 * 4096**3 / (1024 / 1064 * 3415e12) * 1e6, rel=1e-9)
    assert t / (2 * 4096**3 / _table("fp8")[4096, 4096, 4096]) - 1 == pytest.approx(0.115, abs=0.001)


def test_sustained_against_the_short_runs_at_8192_cubed():
    # the same shape, cuBLASLt both: FP8 3,286.3 after 10,000 warm-up calls against the short runs' median 283.1 us
    # (3,883.8 TFLOP/s): 0.846; NVFP4 8,155.9 against 130.5 us (8,425.4): 0.968. The FP8 share lies in the range a B300
    # holds over 15 s of NVFP4 (0.785-0.868, docs/model.md "HGX B300 (s18m)"); NVFP4 on the 1,400 W GB300 loses less
    flops = 2 * S**3
    assert _table("fp8")[S, S, S] / (flops / 283.1e-6) == pytest.approx(0.846, abs=0.001)
    assert _table("nvfp4")[S, S, S] / (flops / 130.5e-6) == pytest.approx(0.968, abs=0.001)
    assert 0.785 < _table("fp8")[S, S, S] / (flops / 283.1e-6) < 0.868
    # and the preset's peaks fall by about as much: 3,415 / 3,965 = 0.861, 8,322 / 8,796 = 0.946
    assert GB300_FP8_PEAK / GB300_FP8_SHORT_RUN_PEAK == pytest.approx(0.861, abs=0.001)
    assert GB300_NVFP4_PEAK / GB300_NVFP4_SHORT_RUN_PEAK == pytest.approx(0.946, abs=0.001)


def test_gb300_against_gb200_on_the_same_benchmark():
    # Azure's GB200 table (CUDA 12.8) at 8192^3: 2,876.6 TFLOP/s; GB300's (CUDA 13.0) 3,286.3: 1.142, where the
    # datasheets give both 5,000 dense FP8 (the short runs read 1.35x). The presets' peaks, both fitted on 152 SMs:
    # 3,415 / 2,976 = 1.148
    gb200 = {(int(r["m"]), int(r["n"]), int(r["k"])): float(r["value"])
             for r in kernel_table(DATA / "azure_gb200_fp8.csv") if r["kind"] == "gemm"}
    assert _table("fp8")[S, S, S] / 1e12 / gb200[S, S, S] == pytest.approx(1.142, abs=0.001)
    assert RATES["GB300"].gemm_fp8.peak / RATES["GB200"].gemm_fp8.peak == pytest.approx(1.148, abs=0.001)
    # the fitted peaks stay below the datasheet's dense figures (5,000 FP8, 15,000 FP4)
    assert GB300_FP8_PEAK < 5000e12 and GB300_NVFP4_PEAK < 15000e12
