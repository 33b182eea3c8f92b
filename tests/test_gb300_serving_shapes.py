"""GB300's BF16 GEMM rate and its attention curve at short calls against one GB300 session's kernel times (s21d).

cfregly/ai-performance-engineering's serving-shapes roofline (tests/data/kernels/gb300_serving_shapes.csv: cuDNN SDPA
forward at 8,192-32,768 tokens with 32 query heads, and a cuBLAS BF16 8192^3 anchor, all at a pinned 2,070 MHz, CUDA
graph replay) checks the two open GB300 leads of docs/model.md, "GB300's BF16 GEMMs and short attention calls (s21d)".
Every expected number is worked by hand from the table and the preset's constants (GB300's free-clock cuDNN forward
1,733 TFLOP/s with s_half 220, B200's sustained share 1,237 / 1,450; GB200's BF16 GEMM: 1,579 TFLOP/s, 5.25 us floor,
152 SMs, 128 x 128 tiles), not read from the code's output. Checks: no constant is fitted to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import attention_pair, kernel_table, sdpa_flops

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import GB300_FP8_PEAK, GB300_FP8_SHORT_RUN_PEAK, GB300_FREE_CLOCK, PRESETS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kernels"
ROWS = kernel_table(DATA / "gb300_serving_shapes.csv")


def _sdpa(kv_heads: int, seq: int) -> dict:
    found = [r for r in ROWS if r["source"] == "sdpa_cudnn" and int(r["kv_heads"]) == kv_heads and int(r["seq"]) == seq]
    assert len(found) == 1, (kv_heads, seq)
    return found[0]


def _measured_tflops(r: dict) -> float:
    return sdpa_flops(r) / (float(r["us"]) * 1e-6) / 1e12


def _free_clock_curve(seq: int) -> float:
    # GB300's cuDNN forward at free clock (s19k's fit to cuDNN 9.13.1): 1,733 x s / (s + 220) TFLOP/s
    return 1733 * seq / (seq + 220)


def test_the_table_is_what_its_source_prints():
    # the printed TFLOP/s from the printed times by flash-attention's causal count, 2 x 32 x s^2 x 128 / t
    for r in ROWS:
        if r["source"] == "sdpa_cudnn":
            assert _measured_tflops(r) == pytest.approx(float(r["tflops"]), abs=0.75)
    assert sdpa_flops(_sdpa(8, 8192)) == 2 * 32 * 8192**2 * 128 == pytest.approx(549.756e9, rel=1e-6)


def test_the_preset_curve_is_four_to_five_percent_fast_at_8192_tokens_against_longer_calls():
    # the preset's forward curve by hand: 1,687.68 / 1,710.04 / 1,721.44 TFLOP/s at 8,192 / 16,384 / 32,768 tokens
    for seq, expected in ((8192, 1687.68), (16384, 1710.04), (32768, 1721.44)):
        assert _free_clock_curve(seq) == pytest.approx(expected, abs=0.01)
        assert GB300_FREE_CLOCK.attention_rate(seq, backward=False) / 1e12 == pytest.approx(_free_clock_curve(seq))
    model = _free_clock_curve(8192) / _free_clock_curve(16384)  # 0.98692
    # measured, kernel time: 8,192 against 16,384 tokens = t(16,384) / (4 t(8,192)): MHA 1,098.2 / 1,172.0 = 0.93703,
    # GQA 1,071.8 / 1,139.6 = 0.94051; so the curve runs 5.3% / 4.9% fast at 8,192 against 16,384
    ratio = {kv: _measured_tflops(_sdpa(kv, 8192)) / _measured_tflops(_sdpa(kv, 16384)) for kv in (32, 8)}
    assert ratio[32] == pytest.approx(0.93703, abs=5e-5) and ratio[8] == pytest.approx(0.94051, abs=5e-5)
    assert model / ratio[32] == pytest.approx(1.0532, abs=5e-4) and model / ratio[8] == pytest.approx(1.0493, abs=5e-4)
    # cudnn-frontend's 9.17.0 kernel times on a GB300 with 128 query heads (cudnn_frontend_gb200.csv, gb300_917):
    # 4.448 / (4 x 1.158) = 0.96028, the curve 2.8% fast: the 32-head calls (a quarter of the tiles) lose more
    gb300_917 = {int(r["seq"]): float(r["ms"]) for r in kernel_table(DATA / "cudnn_frontend_gb200.csv")
                 if r["source"] == "gb300_917" and r["library"] == "cudnn" and r["pass"] == "forward"}  # fmt: skip
    assert gb300_917[16384] / (4 * gb300_917[8192]) == pytest.approx(0.96028, abs=5e-5)
    assert model / 0.96028 == pytest.approx(1.0277, abs=5e-4)


def test_at_4096_tokens_the_kernel_time_tables_read_the_curve_8_to_13_percent_fast():
    # the CP 2 rows' ring steps run at 4,096 tokens; the table above stops at 8,192. The two GB300 kernel-time tables
    # with 4,096 (128 head-batches a call: cudnn_frontend_gb200.csv gb300_917, cuDNN 9.17.0, batch 1 x 128 heads;
    # cudnn_frontend_blackwell_ultra.csv llama_gb300, cuDNN 9.22, batch 2 x 64 heads), 4,096 against 16,384 tokens:
    # t(16,384) / (16 t(4,096)) = 4.448 / 5.232 = 0.85015 and 4.593 / 5.168 = 0.88874; the curve 1,644.66 / 1,710.04 =
    # 0.96177, so 13.1% and 8.2% fast at 4,096 relative to 16,384
    model = _free_clock_curve(4096) / _free_clock_curve(16384)
    assert model == pytest.approx(0.96177, abs=5e-5)
    gb300_917 = {int(r["seq"]): float(r["ms"]) for r in kernel_table(DATA / "cudnn_frontend_gb200.csv")
                 if r["source"] == "gb300_917" and r["library"] == "cudnn" and r["pass"] == "forward"}  # fmt: skip
    gb300_922 = {int(r["q_seq"]): float(r["ms"]) for r in kernel_table(DATA / "cudnn_frontend_blackwell_ultra.csv")
                 if r["source"] == "llama_gb300" and r["pass"] == "forward"}  # fmt: skip
    measured = [t[16384] / (16 * t[4096]) for t in (gb300_917, gb300_922)]
    assert measured == pytest.approx([0.85015, 0.88874], abs=5e-5)
    assert [model / m for m in measured] == pytest.approx([1.1313, 1.0822], abs=5e-4)


def test_the_newer_cudnn_runs_above_the_preset_curve_at_every_length():
    # measured at the pinned top clock on NGC 26.05's cuDNN against the 9.13.1 free-clock curve: GQA 1,929.6 / 1,687.7 =
    # 1.143 at 8,192 and 2,051.7 / 1,710.0 = 1.200 at 16,384 (cudnn-frontend's 9.17.0 on 128 heads: 1.125, 1.157)
    assert _measured_tflops(_sdpa(8, 8192)) / _free_clock_curve(8192) == pytest.approx(1.1434, abs=5e-4)
    assert _measured_tflops(_sdpa(8, 16384)) / _free_clock_curve(16384) == pytest.approx(1.1998, abs=5e-4)


def test_the_8b_cp1_rows_attention_call_is_slower_than_the_kernel_the_table_times():
    # mlperf51-llama8b-8gb300-nvfp4 (CP 1, micro-batch 2 of 8,192 tokens, Llama 3.1 8B's 32 query and 8 KV heads): the
    # forward call is two of the GQA cells: 2 x 284.9 = 569.8 us measured, the preset 2.04 us + 1,099.5 GFLOP at
    # 1,687.68 x 1,237 / 1,450 = 1,439.76 TFLOP/s = 765.7 us, 1.344x: at 8,192 tokens the preset is not fast
    flops = 2 * 16384 * 8192 * 32 * 256 / 2
    assert flops == 2 * sdpa_flops(_sdpa(8, 8192))
    fwd, _ = attention_pair(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-8gb300-nvfp4.toml", flops)
    by_hand = 2.04e-6 + flops / (_free_clock_curve(8192) * 1e12 * 1237 / 1450)
    assert fwd.seconds == pytest.approx(by_hand) == pytest.approx(765.7e-6, abs=0.1e-6)
    assert fwd.seconds / (2 * float(_sdpa(8, 8192)["us"]) * 1e-6) == pytest.approx(1.3438, abs=5e-4)


def test_gb300_bf16_at_8192_cubed_against_the_short_run_anchor():
    # the preset (GB200's BF16): 4,096 tiles on 152 SMs in 27 rounds (4,096 / 4,104 useful), 5.25 us + 1,099.5 GFLOP at
    # 1,579 x 4,096 / 4,104 = 702.94 us, 1,564.15 TFLOP/s
    flops = 2 * 8192**3
    by_hand = flops / (5.25e-6 + flops / (1579e12 * 4096 / 4104)) / 1e12
    assert by_hand == pytest.approx(1564.15, abs=0.01)
    r = PRESETS["GB300"]
    t = gemm.time(8192, 8192, 8192, r.gemm_bf16, r.sms, r.hbm, 2.0, schedule=r.gemm_schedule)
    assert flops / t.seconds / 1e12 == pytest.approx(by_hand, rel=1e-9)
    # the anchor, 1,953-2,030 TFLOP/s at the pinned top clock: the preset is 0.801 / 0.771 of it. GB300's own FP8 kept
    # 3,286.3 / 3,883.8 = 0.846 of its short-run rate at 8192^3 on Azure's sustained table (the presets' peaks 3,415 and
    # 3,965 the same ratio within 1.8%); BF16 holding that share would be 1,652.6-1,717.7, the preset 5.3-8.9% below it
    low, high = sorted(float(a["tflops"]) for a in ROWS if a["source"] == "cublas_bf16")
    assert (low, high) == (1953, 2030)
    assert (by_hand / low, by_hand / high) == pytest.approx((0.8009, 0.7705), abs=5e-4)
    share = 3286.3 / 3883.8
    assert GB300_FP8_PEAK / GB300_FP8_SHORT_RUN_PEAK == pytest.approx(share, rel=0.02)
    assert (by_hand / (low * share), by_hand / (high * share)) == pytest.approx((0.9465, 0.9106), abs=5e-4)
