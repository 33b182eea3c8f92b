"""GB300's NVFP4 GEMM rate (s17l): fitted to cuBLASLt's NVFP4 GEMM measured on a GB300 at 8192^3
(tests/data/kernels/gb300_nvfp4_cublaslt.csv), in place of the datasheet-ratio assumption (docs/model.md, "GB300
NVL72"). The numbers here are worked by hand from the table, not taken from the code. Since s20b that short-run peak is
a check (rates.GB300_NVFP4_SHORT_RUN_PEAK); the preset takes Azure's sustained table (tests/test_gb300_sustained_gemm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import kernel_table

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import GB300_FP4_OVER_GB200, GB300_NVFP4_SHORT_RUN_PEAK
from dualpipe_sim.model.rates import PRESETS as RATES

DATA = Path(__file__).resolve().parent / "data" / "kernels"
NVFP4 = 0.5 + 1 / 16  # a 4-bit value and 1/16 of its block's one-byte E4M3 scale
S = 8192
FLOPS = 2 * S**3  # 1.0995e12


def _rows():
    return {r["row"]: r for r in kernel_table(DATA / "gb300_nvfp4_cublaslt.csv")}


def _short_run():
    """The peak these rows fit, with the preset's shape terms (B200's floor, k_overhead 0)."""
    r = RATES["GB300"].gemm_fp4
    return gemm.GemmRates(GB300_NVFP4_SHORT_RUN_PEAK, r.k_overhead, r.floor)


def _gb300(m, n, k, rates=None):
    r = RATES["GB300"]
    return gemm.time(m, n, k, rates or _short_run(), r.sms, r.hbm, NVFP4, schedule=r.gemm_schedule)


def test_the_table_is_self_consistent():
    rows = _rows()
    # 2 x 8192^3 / 130.5 us = 8,425 TFLOP/s (8,427 printed); 127.6 us = 8,617 (8,607-8,622 printed)
    for name in ("median", "warmed"):
        r = rows[name]
        assert (int(r["m"]), int(r["n"]), int(r["k"])) == (S, S, S)
        assert FLOPS / (float(r["microseconds"]) * 1e-6) / 1e12 == pytest.approx(float(r["tflops"]), rel=0.002)


def test_the_peak_is_fitted_to_the_median_by_hand():
    # 8192^3 in 128 x 128 tiles: 64 x 64 = 4,096 tiles over 152 SMs (s18f; 148 until then), ceil(4096 / 152) = 27
    # rounds, so the tensor cores are busy 4,096 / (27 x 152) = 512 / 513 of the time; the B200 fit's floor is 5.25 us,
    # k_overhead 0: peak = 1.0995e12 / (512/513 x (130.5 - 5.25) us) = 8,796 TFLOP/s (8,881 with 148 SMs' 256/259)
    t_meas = float(_rows()["median"]["microseconds"]) * 1e-6
    rates = _short_run()
    assert rates.floor == 5.25e-6 and rates.k_overhead == 0.0
    by_hand = FLOPS / (512 / 513 * (t_meas - 5.25e-6))
    assert by_hand == pytest.approx(8796e12, rel=1e-3)
    assert rates.peak == pytest.approx(by_hand, rel=1e-3)
    t = _gb300(S, S, S)
    assert t.utilisation == pytest.approx(512 / 513) and t.bound == "compute"
    assert t.seconds == pytest.approx(t_meas, rel=1e-3)


def test_the_warmed_run_is_within_2pct_and_faster():
    t, warmed = _gb300(S, S, S).seconds, float(_rows()["warmed"]["microseconds"]) * 1e-6
    assert warmed < t < warmed * 1.03  # 127.6 us against the fit's 130.5: the median, not the best run


def test_the_replaced_assumption_was_6pct_slow_here():
    # B200's fitted peak (5,510) x 15,000 / 10,000 = 8,265 TFLOP/s: at 8192^3, 125.25 us x 8,796 / 8,265 + 5.25 us
    # = 138.6 us against the measured 130.5 (139.8 on 148 SMs)
    old = RATES["GB300"].gemm_fp4.__class__(5510e12 * GB300_FP4_OVER_GB200, 0.0, 5.25e-6)
    t_old = _gb300(S, S, S, old).seconds
    assert t_old == pytest.approx(125.25e-6 * 8796 / 8265 + 5.25e-6, rel=2e-3)
    assert t_old / 130.5e-6 - 1 == pytest.approx(0.062, abs=0.003)


def test_the_measured_gb300_over_b200_lies_between_the_datasheets():
    # the same shape on B200 (pytorch/ao#2427): 5,370 TFLOP/s; GB300 8,427: 1.57x, between GB300 / GB200 dense FP4
    # (15,000 / 10,000 = 1.5) and GB300 / B200 (15,000 / 9,000 = 1.67)
    b200 = {int(r["m"]): float(r["tflops"]) for r in kernel_table(DATA / "ao2427_b200_nvfp4.csv") if r["dtype"] == "nvfp4"}
    ratio = float(_rows()["median"]["tflops"]) / b200[S]
    assert ratio == pytest.approx(1.569, abs=0.002)
    assert 15000 / 10000 < ratio < 15000 / 9000
    # and the fitted peak stays below the GB300 datasheet's 15,000 TFLOP/s dense FP4
    assert RATES["GB300"].gemm_fp4.peak < 15000e12 * 0.6
