"""Hopper FP8 GEMMs at the MLPerf rows' own shapes (issue 21, s19j; docs/searches.md, "Hopper FP8 GEMMs at the rows'
shapes: what was searched (s19j)").

The model's forward is 7-30% short of every MLPerf row whose logs time an evaluation (docs/validation.md, "Forward
only"), and most of that forward is FP8 GEMMs at the cuBLASLt rate fitted to Azure's 9-shape H100 table (docs/model.md,
"FP8 GEMM, cuBLASLt"). Here: the GEMMs one evaluation forward runs on the GPT-3 175B v3.1 row (TP 4 + SP, micro-batch
1 x 2,048) and the Llama 3.1 405B v5.0 H100 row (TP 8, CP 2, 8,192 tokens: 4,096 a rank), their shapes worked from
the configs by hand and their times from the tile / wave arithmetic by hand; and the two per-shape FP8 tables on a
Hopper part near those shapes that the search reached in text: TileLang's H800 benchmark
(tests/data/kernels/tilelang_h800_fp8.csv: its own kernel, autotuned, short runs; two published versions of one
table) and less_slow.cpp's cuBLASLt FP8 squares on an H200 (tests/data/kernels/less_slow_h200_fp8.csv: short runs, a
sync after every call). Checked, not fitted: no rate moved."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
H100, H800 = PRESETS["H100"], PRESETS["H800"]
TILELANG = kernel_table(Path(__file__).parent / "data" / "kernels" / "tilelang_h800_fp8.csv")
OLD, NEW = "fb8b3afa0", "b2acfc379"  # the README's two versions: before and after its swizzled C store (#1067)
AZURE_8192 = 1290.1  # Azure's sustained cuBLASLt FP8 8192^3 on H100 (tests/data/kernels/azure_h100_fp8.csv)


def _forward_fp8_gemms(path: Path) -> dict[str, object]:
    """The FP8 GEMM rows of one layer's forward as an evaluation runs it (autograd off), on a middle stage."""
    st = replace(derive.setup(scenario.load(path)), evaluation=True)
    layer = st.stages[1].layers[0]
    return {k.name: k for k in derive.layer_kernels(st, layer) if k.kind == "gemm" and k.component.endswith("_forward")}


# -- the rows' shapes, from the configs by hand ---------------------------------------------------------------------
# GPT-3 175B (hidden 12,288, 96 heads of 128, FFN 4h, GeLU), TP 4 with sequence parallelism: the forward all-gathers
# the 2,048 tokens of a micro-batch before qkv and fc1 (TE turns its userbuffers ring off without grad), so every
# GEMM has M = 2,048: qkv N = 3h / 4, out_proj K = h / 4, fc1 N = 4h / 4, fc2 K = 4h / 4.
H3 = 12288
GPT3 = {"qkv": (2048, 3 * H3 // 4, H3), "out_proj": (2048, H3, H3 // 4),
        "fc1": (2048, 4 * H3 // 4, H3), "fc2": (2048, H3, 4 * H3 // 4)}  # fmt: skip
# Llama 3.1 405B (hidden 16,384, 128 query and 8 KV heads of 128, SwiGLU FFN 53,248), TP 8, CP 2 at 8,192 tokens:
# M = 8,192 / 2 = 4,096; qkv N = (128 + 2 x 8) x 128 / 8, out_proj K = 128 x 128 / 8, fc1 N = 2 x 53,248 / 8 (gate and
# up), fc2 K = 53,248 / 8.
H4, F4 = 16384, 53248
L405 = {"qkv": (4096, (128 + 2 * 8) * 128 // 8, H4), "out_proj": (4096, H4, 128 * 128 // 8),
        "fc1": (4096, 2 * F4 // 8, H4), "fc2": (4096, H4, F4 // 8)}  # fmt: skip


@pytest.mark.parametrize("path,shapes", [(VAL / "mlperf31-gpt3-512.toml", GPT3), (VAL / "mlperf50-llama405b-512.toml", L405)],
                         ids=["gpt3-v3.1", "llama405b-v5.0"])  # fmt: skip
def test_the_rows_forward_fp8_gemms_are_the_configs_shapes(path, shapes):
    assert GPT3["qkv"] == (2048, 9216, 12288) and L405["qkv"] == (4096, 2304, 16384)  # the arithmetic above
    assert L405["fc1"] == (4096, 13312, 16384) and L405["fc2"] == (4096, 16384, 6656)
    rows = _forward_fp8_gemms(path)
    assert set(rows) == set(shapes)  # the four linears, nothing else in FP8 (the logits GEMM is BF16)
    for name, (m, n, k) in shapes.items():
        assert rows[name].shape.startswith(f"{m} x {n} x {k} fp8"), (name, rows[name].shape)
        assert rows[name].flops == 2 * m * n * k


# -- the model's time at those shapes, by hand ----------------------------------------------------------------------
def _by_hand(m: int, n: int, k: int, useful: float) -> float:
    """The cuBLASLt FP8 rate on a whole H100: floor 5.54 us + FLOPs at 1,382 TFLOP/s x the waves' useful share (no K
    overhead: the fit's k_overhead is 0)."""
    return 5.54e-6 + 2 * m * n * k / (1382e12 * useful)


def test_the_rows_whole_fp8_gemms_by_hand():
    gpt3, l405 = _forward_fp8_gemms(VAL / "mlperf31-gpt3-512.toml"), _forward_fp8_gemms(VAL / "mlperf50-llama405b-512.toml")
    # GPT-3 fc1 2,048 x 12,288 x 12,288: 128 x 256 tiles -> 16 x 48 = 768, ceil(768 / 132) = 6 waves: 768 / 792
    # (128 x 128: 1,536 tiles in 12 waves, the same share) -> 467.0 us, 1,324 TFLOP/s; qkv (N 9,216): 128 x 256 gives
    # 16 x 36 = 576 tiles in 5 waves (576 / 660), 128 x 128 gives 1,152 in 9 (1,152 / 1,188), the better.
    fc1 = _by_hand(2048, 12288, 12288, 768 / 792)
    assert fc1 == pytest.approx(467.0e-6, abs=0.05e-6)
    assert gpt3["fc1"].seconds == pytest.approx(fc1, rel=1e-9)
    assert gpt3["qkv"].seconds == pytest.approx(_by_hand(2048, 9216, 12288, 1152 / 1188), rel=1e-9)
    # 405B fc1 4,096 x 13,312 x 16,384: 32 x 52 = 1,664 tiles of 128 x 256, 13 waves: 1,664 / 1,716 -> 1,338.8 us;
    # qkv 4,096 x 2,304 x 16,384: 128 x 256 gives 32 x 9 = 288 tiles in 3 waves (288 / 396 = 0.727), 128 x 128 gives
    # 576 in 5 (576 / 660 = 0.873), the better -> 261.9 us, 1,181 TFLOP/s: the rows' lowest whole-GPU FP8 rate.
    assert l405["fc1"].seconds == pytest.approx(_by_hand(4096, 13312, 16384, 1664 / 1716), rel=1e-9)
    assert l405["fc1"].seconds == pytest.approx(1338.8e-6, abs=0.05e-6)
    qkv = _by_hand(4096, 2304, 16384, 576 / 660)
    assert l405["qkv"].seconds == pytest.approx(qkv, rel=1e-9) and qkv == pytest.approx(261.9e-6, abs=0.05e-6)
    # the preset the hand work takes
    assert (H100.gemm_fp8.peak, H100.gemm_fp8.k_overhead, H100.gemm_fp8.floor, H100.sms) == (1382e12, 0.0, 5.54e-6, 132)


# -- TileLang's H800 FP8 table --------------------------------------------------------------------------------------
def _tilelang(version: str) -> dict[int, float]:
    return {int(r["k"]): float(r["value"]) for r in TILELANG if r["version"] == version}


def _model_h800(k: int) -> float:
    return 2 * 8192 * 8192 * k / gemm.time(8192, 8192, k, H800.gemm_fp8, H800.sms, H800.hbm, 1.0).seconds / 1e12


def test_tilelang_table_as_transcribed():
    # each row's latency (ms) and TFLOP/s agree: 2 x 8192^2 x K / latency, the published TFLOP/s rounded to 1
    assert len(TILELANG) == 14 and {r["version"] for r in TILELANG} == {OLD, NEW}
    for r in TILELANG:
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        assert 2 * m * n * k / (float(r["latency_ms"]) * 1e-3) / 1e12 == pytest.approx(float(r["value"]), abs=0.6)
    # the epilogue change of #1067 moved every row up: 1% (K 16,384) to 51% (K 256), so the spread is the kernel's
    old, new = _tilelang(OLD), _tilelang(NEW)
    assert all(new[k] > old[k] for k in old)
    assert new[16384] / old[16384] - 1 == pytest.approx(0.012, abs=0.005)


@pytest.mark.parametrize("k", [4096, 8192, 16384])
def test_model_sits_under_tilelangs_short_runs_at_long_k(k):
    # At the K of the rows' linears from 4,096 up the preset (Azure's sustained cuBLASLt fit) is below both versions'
    # short runs of a tuned Hopper kernel, by no more than a sustained figure sits under a short one plus the fit's
    # error: Azure's 8192^3 under load (1,290.1) is 0.856 of the newer version's 8192^3 (1,507), and the fit holds
    # Azure's large shapes within 4.3%, so 0.856 x 0.957 = 0.82. Not the model too fast at these shapes, then: a
    # faster rate (+4% at K = 4,096) or a slower one (-5% at K = 16,384) fails here.
    model, old, new = _model_h800(k), _tilelang(OLD)[k], _tilelang(NEW)[k]
    assert model < old < new
    assert AZURE_8192 / _tilelang(NEW)[8192] == pytest.approx(0.856, abs=0.001)
    assert model / new > 0.82


def test_model_at_short_k_against_tilelang():
    # K = 2,048 (the 405B rows' out_proj): the model (1,305) between the two versions (1,174 and 1,343). The model's
    # K-dependence is flatter than the kernel's: 2,048 -> 16,384 gains it 2.4% where TileLang's rows gain 15% (newer)
    # and 30% (older), so at K = 1,024 (no row's linear) it is above both versions' short runs, 13-37%: the
    # k_overhead of 0 the Azure fit rests on (fitted to the grid's edge) is fast at short K, as on B200
    # (tests/test_gemm_b200_triton_cublas.py). A K overhead from a cuBLASLt table would move this; none was reached.
    old, new = _tilelang(OLD), _tilelang(NEW)
    assert old[2048] < _model_h800(2048) < new[2048]
    assert _model_h800(16384) / _model_h800(2048) - 1 == pytest.approx(0.024, abs=0.003)
    assert new[16384] / new[2048] - 1 == pytest.approx(0.147, abs=0.001)
    assert old[16384] / old[2048] - 1 == pytest.approx(0.297, abs=0.001)
    assert _model_h800(1024) / new[1024] - 1 == pytest.approx(0.126, abs=0.01)
    assert _model_h800(1024) / old[1024] - 1 == pytest.approx(0.372, abs=0.01)


# -- less_slow.cpp's cuBLASLt FP8 table on an H200 -------------------------------------------------------------------
LESS_SLOW = {int(r["n"]): float(r["value"]) for r in kernel_table(Path(__file__).parent / "data" / "kernels" / "less_slow_h200_fp8.csv")}


def _model_h200(n: int) -> float:
    """The H200 preset's cuBLASLt FP8 rate at n^3 in the source's count, n^2 (2n - 1) per call; FP32 output."""
    h200 = PRESETS["H200"]
    return n * n * (2 * n - 1) / gemm.time(n, n, n, h200.gemm_fp8, h200.sms, h200.hbm, 1.0, out_bytes=4.0).seconds / 1e12


def test_less_slow_table_as_transcribed():
    assert sorted(LESS_SLOW) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    # the repository's own figure (its best, "1'338 T" on H200) is the 8192^3 row to the release's 3 digits
    assert abs(LESS_SLOW[8192] - 1338) < 5 and LESS_SLOW[8192] == max(LESS_SLOW.values())
    # below 4,096 every call's cudaDeviceSynchronize dominates: 2,048^3 takes 25.8 us a call, the model's kernel 18.4
    assert 2048 * 2048 * 4095 / (LESS_SLOW[2048] * 1e12) == pytest.approx(25.8e-6, abs=0.05e-6)


@pytest.mark.parametrize("n", [4096, 8192])
def test_less_slow_h200_at_the_rows_sizes(n):
    # at the sizes of the rows' GEMMs (0.1-0.8 ms a call; the rows' 0.1-2.6 ms) the preset is within 3% of cuBLASLt's
    # FP8 on an H200 (+0.9% at 4,096, -0.7% at 8,192), the per-call sync included in the measured side
    assert _model_h200(n) / LESS_SLOW[n] - 1 == pytest.approx(0.0, abs=0.03)


def test_less_slow_h200_at_16384_reads_below_azure():
    # 16,384^3 (7.2 ms a call, larger than any row's GEMM): the preset is 11.5% above this run, and Azure's sustained
    # table (10,000 warm-up iterations; its H200 file within 3% of its H100 one) is 12.0% above it too: the two
    # cuBLASLt tables part here (no workspace and FP32 output in this one, not settled), the model sits with Azure's
    assert _model_h200(16384) / LESS_SLOW[16384] - 1 == pytest.approx(0.115, abs=0.01)
    azure = next(float(r["value"]) for r in kernel_table(Path(__file__).parent / "data" / "kernels" / "azure_h100_fp8.csv")
                 if r["m"] == "16384")  # fmt: skip
    assert azure / LESS_SLOW[16384] - 1 == pytest.approx(0.120, abs=0.002)
