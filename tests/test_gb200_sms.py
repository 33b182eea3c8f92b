"""GB200's SM count and its FP8 GEMM rate refitted at it (s18k; docs/model.md, "GB200's SM count (s18k)").

The count against the device reports transcribed in tests/data/hardware/gb200_sms.csv; the tile rounds it changes worked
by hand on one shape; the FP8 peak against Azure's GB200 table (tests/data/kernels/azure_gb200_fp8.csv) by a 1-D scan of
the fit's error, written here independently of benchmarks/fit_kernel_rates.py's grid search."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import hardware_source, kernel_table

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import GB200_FP8_PEAK, GB200_SMS
from dualpipe_sim.model.rates import PRESETS as RATES

DATA = Path(__file__).resolve().parent / "data"
S = 8192
FLOPS = 2 * S**3  # 1.0995e12


def test_sm_count_is_what_a_gb200_reports():
    src = hardware_source(DATA / "hardware" / "gb200_sms.csv")
    assert RATES["GB200"].sms == GB200_SMS == src["mscclpp", "sm_count"] == 152
    assert (src["mscclpp", "compute_capability_major"], src["mscclpp", "compute_capability_minor"]) == (10, 0)
    # each measured winner's grid is the count less its SM margin: 148 + 4 = 150 + 2 = 146 + 6 = 152
    for w in "abc":
        assert src["mscclpp", f"winner_ctas_{w}"] + src["mscclpp", f"winner_margin_{w}"] == 152
    # sm_100 parts come in both counts (flashinfer's per-count kernels): B200's 148, GB200's 152
    assert {src["flashinfer", "sm100a_target_low"], src["flashinfer", "sm100a_target_high"]} == {148, 152}
    assert src["flashinfer_b200", "sms"] == RATES["B200"].sms == 148
    # GB300 reports the same 152 (s18f), so GB300 no longer changes the count GB200 carries
    assert RATES["GB300"].sms == RATES["GB200"].sms


def test_tile_rounds_at_148_and_152_on_an_8192_cube():
    # 8192^3 FP8: 128 x 256 tiles, 64 x 32 = 2,048: ceil(2048 / 148) = 14 rounds (2048 / 2072 useful), ceil(2048 / 152)
    # = 14 (2048 / 2128); 128 x 128 tiles, 4,096: 28 rounds on 148 (4096 / 4144), 27 on 152 (4096 / 4104 = 512/513).
    # Best: 256/259 on 148 SMs (either tile), 512/513 on 152 (128 x 128). No split-K: 2,048 tiles > 2 x 152.
    assert gemm.efficiency(S, S, S, 148, 0.0) == pytest.approx(2048 / 2072) == pytest.approx(256 / 259)
    assert gemm.efficiency(S, S, S, 152, 0.0) == pytest.approx(4096 / 4104) == pytest.approx(512 / 513)
    # 268 MB (two 64 MiB FP8 operands, a 128 MiB FP16 output) at 6.858 TB/s is 39 us: compute-bound. The GB200 preset:
    # 5.25 us + 1.0995e12 / (2,976e12 x 512/513) = 375.43 us, 2,928.7 TFLOP/s; the B200 preset (the same table fitted
    # at 148 SMs): 5.25 + 1.0995e12 / (2,972e12 x 256/259) = 379.54 us, 2,897.0. Azure measured 2,876.6 on the GB200.
    gb, b = RATES["GB200"], RATES["B200"]
    t_gb = gemm.time(S, S, S, gb.gemm_fp8, gb.sms, gb.hbm, 1.0, schedule=gb.gemm_schedule)
    t_b = gemm.time(S, S, S, b.gemm_fp8, b.sms, b.hbm, 1.0, schedule=b.gemm_schedule)
    assert t_gb.bound == t_b.bound == "compute"
    assert t_gb.seconds == pytest.approx(5.25e-6 + FLOPS / (2976e12 * 512 / 513))
    assert t_gb.seconds * 1e6 == pytest.approx(375.43, abs=0.01) and t_b.seconds * 1e6 == pytest.approx(379.54, abs=0.01)
    measured = next(float(r["value"]) for r in kernel_table(DATA / "kernels" / "azure_gb200_fp8.csv")
                    if r["kind"] == "gemm" and int(r["m"]) == int(r["n"]) == int(r["k"]) == S)  # fmt: skip
    assert measured == 2876.6
    assert FLOPS / t_gb.seconds / 1e12 / measured - 1 == pytest.approx(0.018, abs=0.001)
    assert FLOPS / t_b.seconds / 1e12 / measured - 1 == pytest.approx(0.007, abs=0.001)
    # the other way on 4096^3: 1,024 tiles of 128 x 128 take 7 rounds either way, 1024 / 1036 on 148, 1024 / 1064 on 152
    assert gemm.efficiency(4096, 4096, 4096, 148, 0.0) == pytest.approx(1024 / 1036)
    assert gemm.efficiency(4096, 4096, 4096, 152, 0.0) == pytest.approx(1024 / 1064)


def _scan_fp8_peak(sms: int) -> float:
    """The peak (TFLOP/s, to 0.05) that least-squares the log time of Azure's GB200 rows the fit uses: those slower than
    the floor plus their FLOPs at the datasheet's 4,500 TFLOP/s, k_overhead 0, sm_100's 5.25 us floor, the fit's HBM
    (0.9 x 8 TB/s)."""
    floor = 5.25e-6
    rows = [r for r in kernel_table(DATA / "kernels" / "azure_gb200_fp8.csv") if r["kind"] == "gemm"]
    shapes = [(int(r["m"]), int(r["n"]), int(r["k"]), float(r["value"])) for r in rows]
    used = [(m, n, k, 2 * m * n * k / (v * 1e12)) for m, n, k, v in shapes
            if 2 * m * n * k / (v * 1e12) > floor + 2 * m * n * k / 4500e12]  # fmt: skip
    assert len(used) == 6  # 1024^3, 2048^3 and 1024 x 2145 x 1024 ran under the floor's reach

    def err(tflops: float) -> float:
        rates = gemm.GemmRates(tflops * 1e12, 0.0, floor)
        return sum((math.log(gemm.time(m, n, k, rates, sms, 7.2e12, 1.0).seconds) - math.log(t)) ** 2
                   for m, n, k, t in used)  # fmt: skip

    return min((2900 + i * 0.05 for i in range(3001)), key=err)


def test_fp8_peak_is_the_fit_at_152_sms():
    # the same rows, floor and error as B200's fit, only the SM count changed: 2,976.15 at 152 (the fit's grid, 2 TFLOP/s
    # steps: 2,976), 2,971.05 at 148 (2,972, B200's): the 152-SM waves of the 8192^3 .. 32768^3 rows are fuller
    at_152, at_148 = _scan_fp8_peak(152), _scan_fp8_peak(148)
    assert at_152 == pytest.approx(2976.15, abs=0.05) and at_148 == pytest.approx(2971.05, abs=0.05)
    assert abs(GB200_FP8_PEAK / 1e12 - at_152) <= 2 and abs(RATES["B200"].gemm_fp8.peak / 1e12 - at_148) <= 2
    assert RATES["GB200"].gemm_fp8 == gemm.GemmRates(2976e12, 0.0, 5.25e-6, RATES["B200"].gemm_fp8.dgrad,
                                                     RATES["B200"].gemm_fp8.wgrad)  # Blackwell's pass factors (s21j)
    # below the datasheet's 5,000 dense FP8 (the GB200 NVL72's 720 PFLOPS sparse / 72 / 2)
    assert GB200_FP8_PEAK < 720e15 / 72 / 2
