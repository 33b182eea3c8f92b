"""GB200's flash attention rates (s19m) against NVIDIA/cudnn-frontend's SDPA benchmarks.

No GB200 table of the B200 table's software (cuDNN 9.13.1) exists and no run timed a GB200 beside a B200; a GB300 ran
beside each: GB300 / B200 at cuDNN 9.13.1 (tests/data/kernels/cudnn_frontend_sdpa.csv, b200_913 and gb300_913) and
GB200 / GB300 at cuDNN 9.17.0 (tests/data/kernels/cudnn_frontend_gb200.csv), both on Llama 3.1 405B's heads. GB200 /
B200 at 16,384 tokens is their product; the GB200 preset is B200's free-clock curves times it, at B200's sustained
share. docs/model.md, "GB200's attention (s19m)".
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.model.rates import (B200_ATTENTION_SUSTAINED, B200_FREE_CLOCK, GB200_FREE_CLOCK,
                                      GB200_OVER_B200_CUDNN, GB200_OVER_B200_FA2, PRESETS)
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from helpers import kernel_table, sdpa_flops

ROOT = Path(__file__).resolve().parents[1]
SDPA = ROOT / "tests" / "data" / "kernels" / "cudnn_frontend_sdpa.csv"
GB200 = ROOT / "tests" / "data" / "kernels" / "cudnn_frontend_gb200.csv"


def _ms(path: Path, source: str, library: str, kind: str, seq: int) -> float:
    return next(float(r["ms"]) for r in kernel_table(path) if r["source"] == source and r["library"] == library
                and r["pass"] == kind and int(r["seq"]) == seq)  # fmt: skip


def test_the_gb200_run_is_what_its_source_says():
    every = kernel_table(GB200)
    rows = [r for r in every if r["source"].endswith("_917")]
    # 9 lengths x forward, backward x cuDNN, PyTorch's flash-attn 2, on each GPU; the later cuDNN's checks, 5 lengths of
    # cuDNN both ways on each GPU at 9.18.1 and 9.19.1
    assert len(rows) == 72 and len(every) == 72 + 40
    assert {(r["source"], r["gpu"]) for r in every} == {(f"{g.lower()}_{v}", g) for g in ("GB200", "GB300")
                                                        for v in ("917", "918", "919")}  # fmt: skip
    # each row's time and the file's own TFLOP/s agree by flash-attention's count, within the two printed roundings
    # (times to 1 us, TFLOP/s to 1) and 0.05% more (the files round their times apart from their rates: 17.536 ms at
    # 2,007 TFLOP/s, GB300 forward at 32,768)
    for r in every:
        ms, tflops = float(r["ms"]), float(r["tflops"])
        assert sdpa_flops(r) / tflops / 1e12 * 1e3 == pytest.approx(ms, rel=0.5 / tflops + 0.0005 / ms + 5e-4)
    # the B200 and GB300 tables' shapes: one row per (library, pass, length), 128 query and 8 KV heads of 128, batch 1
    for source in ("gb200_917", "gb300_917"):
        picked = [r for r in rows if r["source"] == source]
        assert {(r["batch"], r["q_heads"], r["kv_heads"], r["head_dim"]) for r in picked} == {("1", "128", "8", "128")}
        assert sorted({int(r["seq"]) for r in picked}) == sorted(
            {int(r["seq"]) for r in kernel_table(SDPA) if r["source"] == "b200_913"})
    # the 16,384-token cuDNN rows, as the files print them: GB200 5.273 / 16.863 ms, GB300 4.448 / 15.721 ms
    assert [_ms(GB200, s, "cudnn", k, 16384) for s in ("gb200_917", "gb300_917") for k in ("forward", "backward")] == \
        [5.273, 16.863, 4.448, 15.721]


def test_gb200_over_b200_is_the_two_runs_ratios_by_hand():
    # cuDNN at 16,384 tokens: GB300 / B200 at 9.13.1 = 6.602 / 5.167 = 1.27773 forward, 20.460 / 17.345 = 1.17959
    # backward; GB200 / GB300 at 9.17.0 = 4.448 / 5.273 = 0.84354, 15.721 / 16.863 = 0.93228; products 1.07781, 1.09971
    assert GB200_OVER_B200_CUDNN == pytest.approx((1.07781, 1.09971), abs=1e-5)
    # flash-attn 2: 20.690 / 18.936 = 1.09263 and 65.324 / 59.595 = 1.09613 (Dao's); 20.296 / 20.445 = 0.99271 and
    # 61.516 / 62.397 = 0.98588 (PyTorch's): 1.08466, 1.08066
    assert GB200_OVER_B200_FA2 == pytest.approx((1.08466, 1.08066), abs=1e-5)
    # from the tables themselves
    for kind, want in (("forward", GB200_OVER_B200_CUDNN[0]), ("backward", GB200_OVER_B200_CUDNN[1])):
        chained = (_ms(SDPA, "b200_913", "cudnn", kind, 16384) / _ms(SDPA, "gb300_913", "cudnn", kind, 16384)
                   * _ms(GB200, "gb300_917", "cudnn", kind, 16384) / _ms(GB200, "gb200_917", "cudnn", kind, 16384))
        assert chained == pytest.approx(want, rel=1e-12)
    # the ratios sit near the parts' SM count and maximum SM clock ratios, 152 / 148 x 2,062 / 1,965 = 1.0777 (a
    # plausibility bound, not a source): the same die at a higher power limit, not Blackwell Ultra's 1.18-1.28
    assert all(1.0 < r < 1.15 for r in GB200_OVER_B200_CUDNN + GB200_OVER_B200_FA2)


def test_gb200_against_gb300_is_a_stable_ratio_across_cudnn_versions():
    # the chain assumes GB200 / GB300 does not depend on the cuDNN build. GB200's rate over GB300's (GB300's time over
    # GB200's) at 9.17.0, 2,048-16,384 tokens: forward 0.105 / 0.129 = 0.814, 0.824, 0.834, 0.844; backward 1.034,
    # 0.950, 0.937, 0.932
    def ratio(version: str, kind: str, seq: int) -> float:
        return _ms(GB200, f"gb300_{version}", "cudnn", kind, seq) / _ms(GB200, f"gb200_{version}", "cudnn", kind, seq)

    assert [ratio("917", "forward", s) for s in (2048, 4096, 8192, 16384)] == \
        pytest.approx([0.81395, 0.82368, 0.83369, 0.84354], abs=1e-5)
    assert [ratio("917", "backward", s) for s in (2048, 4096, 8192, 16384)] == \
        pytest.approx([1.03429, 0.95015, 0.93703, 0.93228], abs=1e-5)
    # at 16,384 tokens on later cuDNN (64 query heads): 9.18.1 2.202 / 2.672 = 0.824 and 7.361 / 8.018 = 0.918,
    # 9.19.1 2.235 / 2.606 = 0.858 and 7.380 / 7.845 = 0.941; 9.22 (batch 2) 4.593 / 5.150 = 0.892,
    # 14.593 / 16.554 = 0.882
    later = {"forward": [ratio("918", "forward", 16384), ratio("919", "forward", 16384)],
             "backward": [ratio("918", "backward", 16384), ratio("919", "backward", 16384)]}
    assert later["forward"] == pytest.approx([0.82410, 0.85764], abs=1e-5)
    assert later["backward"] == pytest.approx([0.91806, 0.94073], abs=1e-5)
    ultra = kernel_table(ROOT / "tests" / "data" / "kernels" / "cudnn_frontend_blackwell_ultra.csv")
    for kind in ("forward", "backward"):
        ms = {r["source"]: float(r["ms"]) for r in ultra
              if r["source"] in ("llama_gb200", "llama_gb300") and r["pass"] == kind and int(r["q_seq"]) == 16384}
        later[kind].append(ms["llama_gb300"] / ms["llama_gb200"])
    # the ratio the preset takes (9.17.0's) lies within the later builds' spread, forward 0.824-0.892, backward
    # 0.882-0.941
    assert min(later["forward"]) <= ratio("917", "forward", 16384) <= max(later["forward"])
    assert min(later["backward"]) <= ratio("917", "backward", 16384) <= max(later["backward"])


def test_gb200_preset_is_b200s_curves_times_the_ratio_at_b200s_sustained_share():
    gb200, b200 = PRESETS["GB200"], PRESETS["B200"]
    kept = 1237 / 1450
    assert B200_ATTENTION_SUSTAINED == kept
    # cuDNN: 1,591 x 1.07781 = 1,714.8 and 1,323 x 1.09971 = 1,454.9 TFLOP/s free; x 0.85310: 1,462.9 / 1,241.2
    assert (GB200_FREE_CLOCK.attention_forward, GB200_FREE_CLOCK.attention_backward) == \
        pytest.approx((1714.80e12, 1454.91e12), rel=1e-5)
    assert (gb200.attention_forward, gb200.attention_backward) == pytest.approx((1462.90e12, 1241.19e12), rel=1e-5)
    # B200's half-rate lengths (the same die's curve)
    assert (gb200.attention_seq_half, gb200.attention_seq_half_backward) == (2790.0, 3660.0)
    # flash-attn 2: 452 x 1.08466 = 490.3, 397 x 1.08066 = 429.0, then x 0.85310; B200's 1,020 / 2,170
    assert gb200.attention_fa2 == pytest.approx((490.27e12 * kept, 429.02e12 * kept, 1020.0, 2170.0), rel=1e-5)
    # at every length GB200 / B200 is the ratio (one shape): 8,192 tokens, either pass, either library
    for library in ("cudnn", "flash-attn-2"):
        g, b = gb200.with_attention_kernel(library), b200.with_attention_kernel(library)
        ratio = GB200_OVER_B200_CUDNN if library == "cudnn" else GB200_OVER_B200_FA2
        for backward in (False, True):
            assert g.attention_rate(8192, backward) / b.attention_rate(8192, backward) == \
                pytest.approx(ratio[backward], rel=1e-12)
    # only attention moved: the rest of the preset is B200's with GB200's SMs, FP8 peak and 72-GPU domain
    assert replace(gb200, attention_forward=b200.attention_forward, attention_backward=b200.attention_backward,
                   attention_fa2=b200.attention_fa2) == \
        replace(b200, name="GB200", nvlink_domain=72, sms=152, gemm_fp8=gb200.gemm_fp8)  # fmt: skip
    # GB300 and B300 keep their own (s19k)
    assert PRESETS["GB300"].attention_forward == pytest.approx(1733e12 * kept)


def test_gb200_attention_time_by_hand():
    # Llama 3.1 8B on one GB200 rack (mlperf51-llama8b-72gb200, its context pair folded into data, CP 1: the ring's
    # steps are tested elsewhere): micro-batch 1 of 8,192 tokens, BF16 attention, 32 heads of 128. F = 2 x 8,192^2 x 32
    # x 128 = 549.76 GFLOP forward, 2.5 F backward, at cuDNN 1,462.90 x 8,192 / 10,982 forward and 1,241.19 x 8,192 /
    # 11,852 backward TFLOP/s, plus the 2.04 us kernel floor: 0.5058 / 1.6041 ms (B200's curves: 0.5450 / 1.7638)
    data = tomllib.loads((ROOT / "scenarios" / "validation" / "mlperf51-llama8b-72gb200.toml").read_text())
    data["parallel"]["context"], data["parallel"]["data"] = 1, 2 * data["parallel"]["data"]
    rows = {(k.name, k.component): k for k in derive.layer_kernels(derive.setup(scenario.from_dict(data)), 0)}
    fwd = rows[("flash attention", "attn_forward")]
    bwd = rows[("flash attention backward", "attn_backward_input")]
    flops = 2 * 8192 ** 2 * 32 * 128
    assert (fwd.flops, bwd.flops) == (flops, 2.5 * flops)
    assert fwd.seconds == pytest.approx(2.04e-6 + flops / (1462.904e12 * 8192 / 10982), rel=1e-5)
    assert bwd.seconds == pytest.approx(2.04e-6 + 2.5 * flops / (1241.190e12 * 8192 / 11852), rel=1e-5)
    assert (fwd.seconds * 1e3, bwd.seconds * 1e3) == pytest.approx((0.5058, 1.6041), abs=1e-4)
