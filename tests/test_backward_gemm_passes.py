"""The backward's GEMMs at their measured pass ratios (s21j; docs/model.md, "The backward's GEMMs at their measured pass
ratios (s21j)"): Transformer Engine's GEMM profiling guide's per-pass sums (tests/data/kernels/te_gemm_profiling_b300.csv,
te_gemm_profiling_h200nvl.csv) against the code's, and the factors worked by hand from them, not from the code's
output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import kernel_table

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, rates
from dualpipe_sim.model.kernels import linear_pass
from dualpipe_sim.model.rates import PRESETS as RATES

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "kernels"
FLOOR = 5.25e-6  # sm_100's GEMM floor, which the B300 fits keep
F = 2 * 15872 * 4096 * 4096  # the guide's attention-out GEMM; QKV 3F, MLP up and down 4F each: 12F a pass
BLACKWELL, HOPPER = ("B200", "GB200", "GB300", "B300"), ("H100", "H800", "H200")


def _sums(name: str, mode: str, precision: str) -> tuple[float, float, float]:
    rows = [r for r in kernel_table(DATA / name) if r.get("row", "layer") == "layer"
            and (r["mode"], r["precision"]) == (mode, precision)]  # fmt: skip
    assert len(rows) == 1
    return tuple(float(rows[0][p]) for p in ("fprop", "dgrad", "wgrad"))


def _bf16(name: str) -> tuple[float, ...]:
    """BF16: torch.matmul in both modes, the same kernels: the mean of the two runs, pass by pass."""
    a, b = _sums(name, "autocast", "bf16"), _sums(name, "prequantized", "bf16")
    return tuple((x + y) / 2 for x, y in zip(a, b))


B300 = {"bf16": _bf16("te_gemm_profiling_b300.csv"), "fp8": _sums("te_gemm_profiling_b300.csv", "prequantized",
        "fp8_current"), "fp4": _sums("te_gemm_profiling_b300.csv", "prequantized", "nvfp4")}  # fmt: skip
H200_NVL = {"bf16": _bf16("te_gemm_profiling_h200nvl.csv"),
            "fp8": _sums("te_gemm_profiling_h200nvl.csv", "prequantized", "fp8_current")}


def test_the_codes_sums_are_the_guides():
    for code, csv in ((rates.B300_PASSES, B300), (rates.H200_NVL_PASSES, H200_NVL)):
        assert code.keys() == csv.keys()
        for p in csv:
            assert code[p] == pytest.approx(csv[p], abs=1e-9)
    # the guide's figures as printed: B300 FP8 dgrad / fprop 2.329 / 2.158 = 1.079, wgrad 2.325 / 2.158 = 1.077
    assert B300["fp8"][1] / B300["fp8"][0] == pytest.approx(1.0792, abs=1e-4)
    assert B300["fp8"][2] / B300["fp8"][0] == pytest.approx(1.0774, abs=1e-4)
    # the guide's shapes: its "Forward Summary" table, (M, K, N)
    assert rates.TE_GUIDE_SHAPES == ((15872, 4096, 12288), (15872, 4096, 4096), (15872, 4096, 16384), (15872, 16384, 4096))


@pytest.mark.parametrize("precision", ["bf16", "fp8", "fp4"])
def test_blackwell_factors_by_hand(precision):
    # On the B300's 148 SMs every one of the 12 shapes runs 128 x 128 tiles: the fprop and dgrad outputs (15,872 rows:
    # 124 tile rows) at 992/999 of the peak, the wgrad outputs (4,096 or 16,384 rows) at 256/259, all compute-bound.
    # The peak is fitted to the fprop sum (4 floors + 12F x 999/992 / peak = the measured fprop), and a factor scales
    # a pass's math, not its 4 floors (s21p), so dgrad: 4 floors + f 12F x 999/992 / peak = the measured dgrad, i.e.
    # f = (dgrad - 4 floors) / (fprop - 4 floors); wgrad the same over the math's 259/256 / (999/992).
    fprop, dgrad, wgrad = B300[precision]
    math = (fprop - 4 * FLOOR * 1e3) / (999 / 992)  # 12F / peak, ms
    by_hand = ((dgrad - 4 * FLOOR * 1e3) / (math * 999 / 992), (wgrad - 4 * FLOOR * 1e3) / (math * 259 / 256))
    for gpu in BLACKWELL:
        g = getattr(RATES[gpu], f"gemm_{precision}")
        assert (g.dgrad, g.wgrad) == pytest.approx(by_hand, rel=2e-4)  # the peak's rounding to 0.1 TFLOP/s
    # FP8 1.0800 / 1.0732, BF16 1.0331 / 1.0243, NVFP4 1.0414 / 0.9558 (its wgrad shapes measured quicker)
    expected = {"fp8": (1.0800, 1.0732), "bf16": (1.0331, 1.0243), "fp4": (1.0414, 0.9558)}[precision]
    assert by_hand == pytest.approx(expected, abs=1e-4)
    g = getattr(RATES["B200"], f"gemm_{precision}")
    assert (g.dgrad, g.wgrad) == pytest.approx(expected, abs=1e-4)


def test_the_b300_fprop_fit_makes_the_model_time_each_measured_pass():
    # peak fitted to the fprop sum, the factors carrying dgrad and wgrad: the model's three sums are the guide's
    r = RATES["B300"]
    for precision, sums in B300.items():
        g = getattr(r, f"gemm_{precision}")
        nbytes = rates.PRECISION_BYTES[precision]
        fprop = sum(gemm.time(m, n, k, g, r.sms, r.hbm, nbytes).seconds for m, k, n in rates.TE_GUIDE_SHAPES)
        dgrad = sum(gemm.time(m, k, n, g, r.sms, r.hbm, nbytes, grad="dgrad").seconds for m, k, n in rates.TE_GUIDE_SHAPES)
        wgrad = sum(gemm.time(k, n, m, g, r.sms, r.hbm, nbytes, grad="wgrad").seconds for m, k, n in rates.TE_GUIDE_SHAPES)
        assert (fprop * 1e3, dgrad * 1e3, wgrad * 1e3) == pytest.approx(sums, rel=2e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_hopper_factors_from_the_h200_nvl_run(precision):
    # the H200 preset's tile model at the guide's 12 shapes (132 SMs; its BF16 K overhead and persistent tiles give
    # ratios of 1.001-1.014, not 1), the measured ratio over it
    r = RATES["H200"]
    plain = replace(getattr(r, f"gemm_{precision}"), dgrad=1.0, wgrad=1.0)
    nbytes = {"bf16": 2.0, "fp8": 1.0}[precision]
    one = lambda m, n, k: gemm.time(m, n, k, plain, r.sms, r.hbm, nbytes).seconds  # noqa: E731
    fprop = sum(one(m, n, k) for m, k, n in rates.TE_GUIDE_SHAPES)
    dgrad = sum(one(m, k, n) for m, k, n in rates.TE_GUIDE_SHAPES)  # K and N swapped
    wgrad = sum(one(k, n, m) for m, k, n in rates.TE_GUIDE_SHAPES)  # the tokens as K
    assert 1.0 <= dgrad / fprop < 1.006 and 1.0 <= wgrad / fprop < 1.015
    # the factor scales each pass's math (its sum less its 4 floors) so that the pass's sum is the model's fprop x the
    # measured ratio
    f, d, w = H200_NVL[precision]
    floors = 4 * plain.floor
    by_hand = ((fprop * d / f - floors) / (dgrad - floors), (fprop * w / f - floors) / (wgrad - floors))
    for gpu in HOPPER:
        g = getattr(RATES[gpu], f"gemm_{precision}")
        assert (g.dgrad, g.wgrad) == pytest.approx(by_hand, rel=1e-9)
    # FP8 1.0096 / 0.9812, BF16 1.0116 / 0.9889: Hopper's weight gradients get quicker
    g = getattr(RATES["H100"], f"gemm_{precision}")
    assert (g.dgrad, g.wgrad) == pytest.approx({"fp8": (1.0096, 0.9812), "bf16": (1.0116, 0.9889)}[precision], abs=1e-4)


def test_no_factor_where_nothing_was_measured():
    # A100: no run of the guide; DeepGEMM's FP8 kernels (model.fp8_gemm = "deepgemm"): not the library it timed
    assert (RATES["A100"].gemm_bf16.dgrad, RATES["A100"].gemm_bf16.wgrad) == (1.0, 1.0)
    deepgemm = RATES["H800"].with_fp8_gemm("deepgemm")
    assert (deepgemm.gemm_fp8.dgrad, deepgemm.gemm_fp8.wgrad) == (1.0, 1.0)
    assert deepgemm.gemm_bf16 == RATES["H800"].gemm_bf16  # its BF16 GEMMs stay cuBLAS's


def test_a_gemms_pass_is_its_linears_by_name():
    assert [linear_pass(n) for n in ("fc1 dgrad", "qkv wgrad", "experts fc1 wgrad (grouped)", "experts fc2 dgrad (grouped)",
                                     "fc1", "out_proj", "attention over V dgrad (batched)",
                                     "attention over V wgrad: dV (batched)")] == [
        "dgrad", "wgrad", "wgrad", "dgrad", "fprop", "fprop", "fprop", "fprop"]  # fmt: skip


def test_one_dgrad_gemm_on_b200_by_hand():
    # Llama 3.1 8B on 8 B200s (TP 1): fc1's input gradient, 16,384 x 4,096 x 28,672 FP8. 128 x 128 tiles: 128 x 32 = 4,096
    # tiles in 28 rounds of 148 (256/259 useful); 2 x 16,384 x 4,096 x 28,672 = 3.8483e12 FLOP at 2,972 TFLOP/s x 256/259
    # = 1,310.0 us, x (2.329 - 4 floors) / (2.158 - 4 floors) ms (the B300 run's FP8 dgrad over fprop, each less its four
    # floors: the factor scales the math alone; the tile model's own ratio there is 1) = 1,414.8 us, + 5.25 us = 1,420.0 us
    sc = scenario.load(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-8b200.toml")
    st = sc.derived().setup
    row = next(k for k in derive.layer_kernels(st, 0) if k.name == "fc1 dgrad")
    assert row.shape == "16384 x 4096 x 28672 fp8" and row.component == "mlp_backward_input"
    flops = 2 * 16384 * 4096 * 28672
    by_hand = FLOOR + flops / (2972e12 * 256 / 259) * (2.329e-3 - 4 * FLOOR) / (2.158e-3 - 4 * FLOOR)
    assert by_hand == pytest.approx(1420.0e-6, abs=0.1e-6)
    assert row.seconds == pytest.approx(by_hand, rel=1e-4)  # the B300 peak's rounding
    # its forward, 16,384 x 28,672 x 4,096: 128 x 224 = 28,672 tiles in 194 rounds, no factor
    forward = next(k for k in derive.layer_kernels(st, 0) if k.name == "fc1")
    assert forward.seconds == pytest.approx(FLOOR + flops / (2972e12 * 28672 / (194 * 148)), rel=1e-9)


def test_the_factor_scales_the_math_alone():
    # s21p: the guide timed compute-bound shapes; its factor scales a GEMM's math, not the bytes it moves or its launch.
    # One SM, one 128 x 128 tile (useful fraction 1), K = 1,024, BF16: 2 x 128 x 128 x 1,024 = 33,554,432 FLOP, 33.554 us
    # at 1 PFLOP/s; (2 x 128 x 1,024 + 128 x 128) x 2 B = 557,056 B, 55.706 us at 10 GB/s: memory-bound.
    g = gemm.GemmRates(peak=1e12, k_overhead=0.0, floor=5e-6, dgrad=1.5, wgrad=2.0)
    t = lambda grad: gemm.time(128, 128, 1024, g, 1, 1e10, 2.0, grad=grad)  # noqa: E731
    assert t("fprop").bound == "memory"
    assert t("fprop").seconds == pytest.approx(5e-6 + 55.706e-6, abs=1e-9)
    # dgrad: 1.5 x 33.554 = 50.33 us of math, still under the bytes' 55.706: no change (before s21p: x 1.5 on the whole)
    assert t("dgrad").seconds == pytest.approx(5e-6 + 55.706e-6, abs=1e-9) and t("dgrad").bound == "memory"
    # wgrad: 2 x 33.554 = 67.109 us of math outlasts the bytes: compute-bound, the floor not scaled
    assert t("wgrad").seconds == pytest.approx(5e-6 + 67.109e-6, abs=1e-9) and t("wgrad").bound == "compute"
    # a latency-bound GEMM (K = 16: 0.524 us of math, x 2 = 1.049; 40,960 B, 0.41 us at 0.1 PB/s) pays its floor once,
    # unscaled (before s21p: 2 x (5 + 1.049) us)
    short = gemm.time(128, 128, 16, g, 1, 1e14, 2.0, grad="wgrad")
    assert short.bound == "latency" and short.seconds == pytest.approx(5e-6 + 2 * 2 * 128 * 128 * 16 / 1e12, abs=1e-12)


def test_a_measured_shape_that_is_not_compute_bound_is_refused():
    # the rule scales the tile model's math; a pass measured so quick that its shape would be bound by its bytes at the
    # factor cannot be matched by scaling math. One SM, (M, K, N) = (128, 1,024, 128) at 1 PFLOP/s and 10 GB/s: fprop
    # memory-bound at 5 + 55.706 us; dgrad (128 x 1,024 out, K = 128: 33.554 us of math, 557,056 B = 55.706 us) measured
    # at half the fprop: 30.35 us, its factor (30.35 - 5) / 33.554 = 0.755, its math 25.35 us under its bytes' 55.7
    g = gemm.GemmRates(peak=1e12, k_overhead=0.0, floor=5e-6)
    with pytest.raises(ValueError, match="compute-bound"):
        gemm.measured_passes(g, (1.0, 0.5, 1.0), ((128, 1024, 128),), 1, 1e10, 2.0)
    # the same at a pass ratio whose math outlasts the bytes: (2 x 60.706 - 5) / 33.554 = 3.469
    assert gemm.measured_passes(g, (1.0, 2.0, 2.0), ((128, 1024, 128),), 1, 1e10, 2.0).dgrad == pytest.approx(
        (2 * 60.706 - 5) / 33.554, rel=1e-4)
