"""The B200 preset's GEMM rates against the one B200 SXM GEMM measurement reached (issue 21).

The preset's B200 rates come from XLA's sm_100 table (BF16, short runs) and Azure's cuBLASLt FP8 table on GB200 (10,000
warm-up iterations back to back). No per-shape B200 SXM table under sustained load was reached (docs/validation.md,
the searched list of "One transformer layer on Hopper"); the nearest is stas00/ml-engineering's maximum achievable
matmul FLOPS (MAMF): one best shape per dtype, each call timed alone with an L2 flush and an output copy between calls,
so the GEMMs run about two thirds of the time (tests/data/kernels/mamf_blackwell.csv). Checked here, not fitted: what
the model gives at those shapes, worked by hand, and where it stands against the same method on GB200, the GPU whose
sustained table the FP8 rate is fitted to."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

B200 = PRESETS["B200"]
TABLE = Path(__file__).parent / "data" / "kernels" / "mamf_blackwell.csv"
ROWS = {(r["gpu"], r["dtype"]): r for r in kernel_table(TABLE)}


def _model_tflops(row: dict) -> float:
    m, n, k = int(row["m"]), int(row["n"]), int(row["k"])
    fp8 = row["dtype"] == "fp8"
    t = gemm.time(m, n, k, B200.gemm_fp8 if fp8 else B200.gemm_bf16, B200.sms, B200.hbm, 1.0 if fp8 else 2.0)
    return 2 * m * n * k / t.seconds / 1e12


def test_table_holds_one_best_shape_per_gpu_and_dtype():
    assert sorted(ROWS) == [("B200", "bf16"), ("B200", "fp8"), ("GB200", "bf16"), ("GB200", "fp8")]


# Each best shape worked by hand through the tile/wave model, compute-bound, no split-K, k_overhead 0, the 5.25 us floor:
# * BF16 1792 x 16128 x 3072 on 148 SMs: 128 x 256 tiles give 14 x 63 = 882 tiles, ceil(882 / 148) = 6 waves,
#   1792 x 16128 / (6 x 148 x 128 x 256) = 99.32% useful (128 x 128: 1,764 tiles in 12 waves, the same share); 882 tiles
#   > 2 x 148, so no split-K; 168 MB at 6.858 TB/s is 25 us of 113: compute-bound. At 1,579 TFLOP/s: 1,498.8 TFLOP/s,
#   14.1% under the 1,745.0 measured.
# * FP8 15360 x 4096 x 3072: 128 x 256 tiles give 120 x 16 = 1,920 tiles in ceil(1920 / 148) = 13 waves, 99.79% useful;
#   at the GB200-fitted 2,972 TFLOP/s: 2,851.0 TFLOP/s, 16.9% under the 3,432.5 measured.
@pytest.mark.parametrize("dtype, m, n, k, waves, peak, by_hand_tflops, error", [
    ("bf16", 1792, 16128, 3072, 6, 1579e12, 1498.8, -0.141),
    ("fp8", 15360, 4096, 3072, 13, 2972e12, 2851.0, -0.169),
])
def test_b200_best_shape_by_hand(dtype, m, n, k, waves, peak, by_hand_tflops, error):
    flops = 2 * m * n * k
    useful = m * n / (waves * 148 * 128 * 256)
    by_hand = flops / (5.25e-6 + flops / (peak * useful)) / 1e12
    row = ROWS[("B200", dtype)]
    assert (int(row["m"]), int(row["n"]), int(row["k"])) == (m, n, k)
    assert _model_tflops(row) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(by_hand_tflops, abs=0.1)
    assert by_hand / float(row["value"]) - 1 == pytest.approx(error, abs=0.001)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_b200_rates_stay_under_mamf_best_shapes(dtype):
    # MAMF rests the GPU between calls (flush, output copy): a best shape so timed bounds the sustained rate from above.
    # A rate raised to MAMF's figure would describe that duty, not a training step's back-to-back kernels.
    row = ROWS[("B200", dtype)]
    assert _model_tflops(row) < float(row["value"])


def test_b200_fp8_gap_is_within_the_methods_gap_on_gb200():
    # On GB200, where a sustained table exists (Azure's, which the FP8 rate is fitted to), MAMF's best shape reads 23.4%
    # above the model (3,615.6 measured, 2,768.9 modelled); on B200 it reads 16.9% above. So against what the method
    # reads on the GPU with the sustained table, the B200 FP8 rate is not slow: were B200's sustained / MAMF ratio
    # GB200's, a sustained B200 would run its best shape at 0.766 x 3,432.5 = 2,628 TFLOP/s, the model 8% above that.
    # The two runs differ in software (torch 2.7.1+cu128 on B200, a 2.10 nightly on CUDA 13.0 on GB200), so this is a
    # bound on the direction, not a factor to apply.
    b200, gb200 = ROWS[("B200", "fp8")], ROWS[("GB200", "fp8")]
    gap_b200 = 1 - _model_tflops(b200) / float(b200["value"])
    gap_gb200 = 1 - _model_tflops(gb200) / float(gb200["value"])
    assert gap_gb200 == pytest.approx(0.234, abs=0.001)
    assert 0 < gap_b200 < gap_gb200
