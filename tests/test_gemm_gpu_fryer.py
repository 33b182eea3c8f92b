"""The BF16 GEMM presets against huggingface/gpu-fryer's sustained burn: one 8192^3 cuBLASLt matmul back to back.

Issue 21 (s13a) searched for a per-shape table of BF16 GEMMs on H100 SXM under sustained load, as Azure's FP8 table is
(docs/validation.md, the searched list of "One transformer layer on Hopper"): none was reached. The nearest is
gpu-fryer's reference figure per GPU (tests/data/kernels/gpu_fryer_sustained.csv): one shape, back to back for a
minute or more, rounded. The H100 / H800 / H200 BF16 peak is set from it (s13: XLA's sm_90 table, which gives the
shape terms, is short runs; the FP8 and A100 rates are sustained tables); checked here: the model at that shape, worked
by hand, against each GPU's figure, and against A100, whose rate is fitted to Azure's sustained FP16 table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

TABLE = Path(__file__).parent / "data" / "kernels" / "gpu_fryer_sustained.csv"
ROWS = {r["gpu"]: r for r in kernel_table(TABLE)}
H100, H100_CUBLAS121 = "NVIDIA H100-SXM5-80GB HBM3", "NVIDIA H100 80GB HBM3 (cuBLAS 12.1 image)"
A100, GH200, GB200 = "NVIDIA A100-SXM4-80GB HBM2e", "NVIDIA GH200 480GB HBM3e", "NVIDIA GB200-NVL72 186GB HBM3e"
AZURE_A100_8192 = 253.7  # tests/data/kernels/azure_a100.csv: cuBLASLt FP16 8192^3 after 10,000 warm-up iterations
S = 8192
FLOPS = 2 * S**3


def _model_tflops(preset: str) -> float:
    p = PRESETS[preset]
    return FLOPS / gemm.time(S, S, S, p.gemm_bf16, p.sms, p.hbm, 2.0).seconds / 1e12


def test_table_rows():
    assert set(ROWS) == {H100, H100_CUBLAS121, A100, GH200, GB200}
    assert all((int(r["m"]), int(r["n"]), int(r["k"])) == (S, S, S) for r in ROWS.values())


# 8192^3 worked by hand through the tile/wave model (compute-bound: 403 MB of operands and output move in 0.13 ms on
# H100's 3.0 TB/s, the math takes 1.37 ms): 128 x 256 tiles give 64 x 32 = 2,048 tiles (more than 2 x SMs, so no
# split-K), in ceil(2048 / SMs) waves; 128 x 128 tiles give twice the tiles in twice the waves, the same share.
# * H100, 132 SMs: 16 waves, 8192^2 / (16 x 132 x 128 x 256) = 96.97% useful, x 8192 / (8192 + 103) for the short-K
#   overhead = 95.77%; at 765 TFLOP/s plus the 5.54 us floor: 729.9 TFLOP/s (at XLA's short-run 836: 797.4).
# * A100, 108 SMs: 19 waves, 99.81% useful, x 8192 / (8192 + 67) = 99.00%; at 262.7 plus 5.54 us: 259.7.
# * B200, 148 SMs: 14 waves, 98.84% useful, k_overhead 0; at 1,579 plus 5.25 us: 1,549.2.
@pytest.mark.parametrize("preset, sms, waves, peak, k_overhead, floor, by_hand_tflops", [
    ("H100", 132, 16, 765e12, 103, 5.54e-6, 729.9),
    ("A100", 108, 19, 262.7e12, 67, 5.54e-6, 259.7),
    ("B200", 148, 14, 1579e12, 0, 5.25e-6, 1549.2),
])
def test_model_at_8192_by_hand(preset, sms, waves, peak, k_overhead, floor, by_hand_tflops):
    useful = S * S / (waves * sms * 128 * 256)
    by_hand = FLOPS / (floor + FLOPS / (peak * useful * S / (S + k_overhead))) / 1e12
    assert by_hand == pytest.approx(by_hand_tflops, abs=0.05)
    assert _model_tflops(preset) == pytest.approx(by_hand, rel=1e-9)


def test_h100_bf16_peak_reproduces_the_sustained_burn():
    # The peak that reproduces gpu-fryer's H100 SXM5 burn (730 TFLOP/s, cuBLASLt, CUDA 12.9) at this shape, XLA's
    # k_overhead and floor held: 2 x 8192^3 / (2 x 8192^3 / 730e12 - 5.54 us) / 95.77% = 765.1 TFLOP/s, 8.5% under
    # XLA's short-run 836; the preset takes it rounded (765), so the model reads 729.9 there.
    peak = FLOPS / (FLOPS / 730e12 - 5.54e-6) / gemm.efficiency(S, S, S, 132, 103)
    assert peak / 1e12 == pytest.approx(765.1, abs=0.05)
    assert PRESETS["H100"].gemm_bf16.peak == pytest.approx(peak, rel=0.001)
    for preset in ("H100", "H800", "H200"):  # one sm_90 rate for the three
        assert PRESETS[preset].gemm_bf16 == PRESETS["H100"].gemm_bf16
    model = _model_tflops("H100")
    assert model / float(ROWS[H100]["value"]) - 1 == pytest.approx(0.0, abs=0.001)
    # Against the tool's earlier cuBLAS 12.1 image (676) the model is 8.0% fast; against GH200 (705; the same GPU at a
    # higher power limit, no preset of its own) 3.5%: the newest cuBLAS's figure is taken, the fastest of the three.
    assert model / float(ROWS[H100_CUBLAS121]["value"]) - 1 == pytest.approx(0.080, abs=0.001)
    assert model / float(ROWS[GH200]["value"]) - 1 == pytest.approx(0.035, abs=0.001)
    assert model >= max(float(ROWS[r]["value"]) for r in (H100, H100_CUBLAS121, GH200)) - 0.5


def test_a100_calibrates_the_tool_against_azures_sustained_table():
    # On A100, whose rate is fitted to Azure's sustained table, the tool reads 270 / 253.7 = 1.064 times Azure's 8192^3
    # row and the model sits between them (259.7). Were the tool's reading over a sustained table the same on H100,
    # a sustained H100 8192^3 would run 730 / 1.064 = 686 TFLOP/s, the model 6.4% above it: so the H100 rate taken
    # from the burn is, if anything, still high (not a factor to apply: one GPU's ratio).
    ratio = float(ROWS[A100]["value"]) / AZURE_A100_8192
    assert ratio == pytest.approx(1.064, abs=0.001)
    assert AZURE_A100_8192 < _model_tflops("A100") < float(ROWS[A100]["value"])
    assert _model_tflops("H100") / (float(ROWS[H100]["value"]) / ratio) - 1 == pytest.approx(0.064, abs=0.001)


def test_b200_bf16_rate_is_not_above_gb200s_burn():
    # GB200 is B200's GPU at a higher power limit (up to 1,200 W against 1,000 W), so its burn bounds a B200's from
    # above: the B200 preset (XLA's sm_100 fit) is 0.05% under GB200's 1,550 TFLOP/s, so not shown fast by it.
    model = _model_tflops("B200")
    assert model / float(ROWS[GB200]["value"]) - 1 == pytest.approx(-0.0005, abs=0.0005)
    assert model <= float(ROWS[GB200]["value"])
