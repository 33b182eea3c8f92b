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
    # 124 tile rows) at 992/999 of the peak, the wgrad outputs (4,096 or 16,384 rows) at 256/259. So the tile model's
    # dgrad sum is its fprop sum (ratio 1: the factor is the measured ratio), and its wgrad / fprop is
    # (4 floors + 12F / (peak x 256/259)) / (4 floors + 12F / (peak x 992/999)), 1.0046 at every peak here.
    fprop, dgrad, wgrad = B300[precision]
    peak = getattr(RATES["B300"], f"gemm_{precision}").peak
    model_wgrad = (4 * FLOOR + 12 * F * 259 / 256 / peak) / (4 * FLOOR + 12 * F * 999 / 992 / peak)
    assert model_wgrad == pytest.approx(1.0046, abs=1e-4)
    for gpu in BLACKWELL:
        g = getattr(RATES[gpu], f"gemm_{precision}")
        assert g.dgrad == pytest.approx(dgrad / fprop, rel=1e-9)
        assert g.wgrad == pytest.approx(wgrad / fprop / model_wgrad, rel=1e-6)
    # FP8 1.0792 / 1.0725, BF16 1.0329 / 1.0242, NVFP4 1.0407 / 0.9566 (its wgrad shapes measured quicker)
    expected = {"fp8": (1.0792, 1.0725), "bf16": (1.0329, 1.0242), "fp4": (1.0407, 0.9566)}[precision]
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
    f, d, w = H200_NVL[precision]
    for gpu in HOPPER:
        g = getattr(RATES[gpu], f"gemm_{precision}")
        assert (g.dgrad, g.wgrad) == pytest.approx((d / f / (dgrad / fprop), w / f / (wgrad / fprop)), rel=1e-9)
    # FP8 1.0096 / 0.9813, BF16 1.0116 / 0.9889: Hopper's weight gradients get quicker
    g = getattr(RATES["H100"], f"gemm_{precision}")
    assert (g.dgrad, g.wgrad) == pytest.approx({"fp8": (1.0096, 0.9813), "bf16": (1.0116, 0.9889)}[precision], abs=1e-4)


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
    # = 1,310.0 us, + 5.25 us = 1,315.3 us; x 2.329 / 2.158 (the B300 run's FP8 dgrad / fprop; the tile model's own ratio
    # there is 1) = 1,419.5 us
    sc = scenario.load(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-8b200.toml")
    st = sc.derived().setup
    row = next(k for k in derive.layer_kernels(st, 0) if k.name == "fc1 dgrad")
    assert row.shape == "16384 x 4096 x 28672 fp8" and row.component == "mlp_backward_input"
    flops = 2 * 16384 * 4096 * 28672
    by_hand = (FLOOR + flops / (2972e12 * 256 / 259)) * 2.329 / 2.158
    assert by_hand == pytest.approx(1419.5e-6, abs=0.1e-6)
    assert row.seconds == pytest.approx(by_hand, rel=1e-9)
    # its forward, 16,384 x 28,672 x 4,096: 128 x 224 = 28,672 tiles in 194 rounds, no factor
    forward = next(k for k in derive.layer_kernels(st, 0) if k.name == "fc1")
    assert forward.seconds == pytest.approx(FLOOR + flops / (2972e12 * 28672 / (194 * 148)), rel=1e-9)
