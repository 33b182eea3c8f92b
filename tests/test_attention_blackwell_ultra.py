"""GB300's and B300's flash attention rates (s19k) against NVIDIA/cudnn-frontend's SDPA benchmarks.

GB300: its own table (tests/data/kernels/cudnn_frontend_sdpa.csv, gb300_913: the B200 table's script, cuDNN 9.13.1 and
shapes, on an "NVIDIA GB300", free clock), fitted by benchmarks/fit_kernel_rates.py as B200's (a host cost per series,
T0 below, inside each time and not charged by the model). B300: GB300's curves x B300 / GB300 from one pair of
like-for-like forward kernels (tests/data/kernels/cudnn_frontend_blackwell_ultra.csv). Both presets then take B200's
sustained share (flashinfer#2899). docs/model.md, "Attention on Blackwell Ultra (s19k)".
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.model.rates import (B200_ATTENTION_SUSTAINED, B200_FREE_CLOCK, B300_OVER_GB300_ATTENTION,
                                      GB300_FREE_CLOCK, PRESETS)
from helpers import attention_pair, kernel_table, sdpa_flops

ROOT = Path(__file__).resolve().parents[1]
SDPA = ROOT / "tests" / "data" / "kernels" / "cudnn_frontend_sdpa.csv"
PAIRS = ROOT / "tests" / "data" / "kernels" / "cudnn_frontend_blackwell_ultra.csv"
# the fit's host cost per series (benchmarks/fit_kernel_rates.py), seconds, and its stated worst |error|, 512-16,384
T0 = {("cudnn", "forward"): 140e-6, ("cudnn", "backward"): 138e-6,
      ("flash-attn-2", "forward"): 134e-6, ("flash-attn-2", "backward"): 287e-6}  # fmt: skip
WORST = {("cudnn", "forward"): 0.072, ("cudnn", "backward"): 0.094,
         ("flash-attn-2", "forward"): 0.039, ("flash-attn-2", "backward"): 0.035}  # fmt: skip

_flops = sdpa_flops  # flash-attention's count (tests/helpers.py)


def _rows(source: str, library: str | None = None, kind: str | None = None) -> list[dict]:
    return [r for r in kernel_table(SDPA) if r["source"] == source and (library is None or r["library"] == library)
            and (kind is None or r["pass"] == kind)]  # fmt: skip


def _row(source: str, library: str, kind: str, seq: int) -> dict:
    return next(r for r in _rows(source, library, kind) if int(r["seq"]) == seq)


def _pair_ms(source: str, library: str, q_seq: int) -> float:
    return next(float(r["ms"]) for r in kernel_table(PAIRS)
                if r["source"] == source and r["library"] == library and int(r["q_seq"]) == q_seq)


def test_the_gb300_table_is_what_its_source_says():
    assert len(_rows("gb300_913")) == 36  # 9 lengths x forward, backward x cuDNN, flash-attn 2
    # the source file's own TFLOP/s at 8,192 tokens (1,495.674 and 1,130.076) from its times, by the model's count
    r = _row("gb300_913", "cudnn", "forward", 8192)
    assert _flops(r) / (float(r["ms"]) * 1e-3) / 1e12 == pytest.approx(1495.674, rel=1e-3)
    r = _row("gb300_913", "cudnn", "backward", 8192)
    assert _flops(r) / (float(r["ms"]) * 1e-3) / 1e12 == pytest.approx(1130.076, rel=1e-3)
    # the same shapes as the B200 table (the same script): one row per (library, pass, length) in each
    shape = {(r["library"], r["pass"], r["seq"], r["batch"], r["q_heads"], r["kv_heads"], r["head_dim"])
             for r in _rows("gb300_913")}
    assert shape == {(r["library"], r["pass"], r["seq"], r["batch"], r["q_heads"], r["kv_heads"], r["head_dim"])
                     for r in _rows("b200_913")}  # fmt: skip


@pytest.mark.parametrize("library", ["cudnn", "flash-attn-2"])
@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_gb300_curves_reproduce_the_fitted_rows_within_the_stated_error(library, kind):
    rates = GB300_FREE_CLOCK.with_attention_kernel(library)
    rows = [r for r in _rows("gb300_913", library, kind) if int(r["seq"]) <= 16384]
    assert len(rows) == 6
    err = np.array([abs((T0[(library, kind)] + _flops(r) / rates.attention_rate(int(r["seq"]), kind == "backward"))
                        / (float(r["ms"]) * 1e-3) - 1) for r in rows])  # fmt: skip
    assert err.max() <= WORST[(library, kind)] + 0.005
    assert np.median(err) < 0.05


def test_gb300_over_b200_like_for_like_at_16k():
    # at 16,384 tokens (the fitted range's longest; the harness's host cost under 3% of the time) cuDNN 9.13.1 ran
    # 6.602 / 5.167 = 1.278x as fast forward and 20.460 / 17.345 = 1.180x backward on the GB300 as on the B200;
    # the two free-clock curves' ratio there: 1,733 x 16,384 / 16,604 over 1,591 x 16,384 / 19,174 = 1.258 forward,
    # 1,485 x 16,384 / 18,764 over 1,323 x 16,384 / 20,044 = 1.199 backward: within 2% of the measured ratios
    measured = {kind: float(_row("b200_913", "cudnn", kind, 16384)["ms"]) / float(_row("gb300_913", "cudnn", kind, 16384)["ms"])
                for kind in ("forward", "backward")}  # fmt: skip
    assert measured["forward"] == pytest.approx(1.278, abs=1e-3)
    assert measured["backward"] == pytest.approx(1.180, abs=1e-3)
    for kind, by_hand in (("forward", 1.258), ("backward", 1.199)):
        backward = kind == "backward"
        model = GB300_FREE_CLOCK.attention_rate(16384, backward) / B200_FREE_CLOCK.attention_rate(16384, backward)
        assert model == pytest.approx(by_hand, abs=1e-3)
        assert model == pytest.approx(measured[kind], rel=0.02)


def test_b300_over_gb300_is_the_dit_pair_by_hand():
    # cuDNN, the same DiT shapes (9 heads of 128, 62,208 keys, forward): 0.579 / 0.588 at 4,096 queries and
    # 1.147 / 1.175 at 8,192, GB300's time over B300's: 0.98469 and 0.97617, mean 0.98043
    ratios = [_pair_ms("dit_gb300", "cudnn", q) / _pair_ms("dit_b300", "cudnn", q) for q in (4096, 8192)]
    assert ratios == pytest.approx([0.98469, 0.97617], abs=1e-5)
    assert B300_OVER_GB300_ATTENTION == pytest.approx(0.98043, abs=1e-5)
    # FA4 on the same pairs agrees within 1% (0.98811, 0.97470)
    fa4 = [_pair_ms("dit_gb300", "flash-attn-4", q) / _pair_ms("dit_b300", "flash-attn-4", q) for q in (4096, 8192)]
    assert np.mean(fa4) == pytest.approx(B300_OVER_GB300_ATTENTION, rel=0.01)
    # GB300 / GB200 on the same shapes and cuDNN, for scale: 1.290 and 1.281 (the Blackwell Ultra forward's gain)
    assert [_pair_ms("dit_gb200", "cudnn", q) / _pair_ms("dit_gb300", "cudnn", q) for q in (4096, 8192)] == \
        pytest.approx([1.2902, 1.2807], abs=1e-4)


def test_presets_are_their_free_clock_curves_at_b200s_sustained_share():
    kept = 1237 / 1450
    gb300, b300 = PRESETS["GB300"], PRESETS["B300"]
    # GB300: cuDNN 1,733 / 1,485 TFLOP/s free -> 1,478.4 / 1,266.9; flash-attn 2 470 / 373 -> 401.0 / 318.2
    assert (gb300.attention_forward, gb300.attention_backward) == pytest.approx((1478.43e12, 1266.86e12), rel=1e-5)
    assert (gb300.attention_seq_half, gb300.attention_seq_half_backward) == (220.0, 2380.0)
    assert gb300.attention_fa2 == pytest.approx((470e12 * kept, 373e12 * kept, 300.0, 350.0))
    # B300: the same x 0.98043: 1,449.5 / 1,242.1 and 393.1 / 312.0
    assert (b300.attention_forward, b300.attention_backward) == pytest.approx((1449.50e12, 1242.07e12), rel=1e-5)
    assert (b300.attention_seq_half, b300.attention_seq_half_backward) == (220.0, 2380.0)
    assert b300.attention_fa2 == pytest.approx((470e12 * kept * 0.98043, 373e12 * kept * 0.98043, 300.0, 350.0),
                                               rel=1e-5)
    assert B200_ATTENTION_SUSTAINED == kept
    # only attention moved: the rest of each preset as before (GB300 from GB200, B300 from B200)
    assert replace(gb300, attention_forward=PRESETS["GB200"].attention_forward,
                   attention_backward=PRESETS["GB200"].attention_backward, attention_seq_half=2790.0,
                   attention_seq_half_backward=3660.0, attention_fa2=PRESETS["GB200"].attention_fa2) == \
        replace(PRESETS["GB200"], name="GB300", sms=gb300.sms, nic_bus=gb300.nic_bus, gemm_fp8=gb300.gemm_fp8,
                gemm_fp4=gb300.gemm_fp4)  # fmt: skip
    # GB200 has its own since s19m (B200's curves x a measured ratio: tests/test_attention_gb200.py), not GB300's
    assert (PRESETS["GB200"].attention_forward, PRESETS["GB200"].attention_seq_half) != \
        (gb300.attention_forward, gb300.attention_seq_half)


def test_gb300_attention_time_by_hand():
    # Llama 3.1 8B on two GB300 trays (mlperf51-llama8b-8gb300-nvfp4: CP 1, micro-batch 2 of 8,192 tokens, attention in
    # BF16): 2 x 16,384 x 8,192 x 32 x 256 / 2 FLOPs forward, 2.5x backward; the rate at 8,192 tokens, cuDNN
    # 1,733 x s / (s + 220) forward, 1,485 x s / (s + 2,380) backward, x 1,237 / 1,450, plus the 2.04 us kernel floor
    flops = 2 * 16384 * 8192 * 32 * 256 / 2
    fwd, bwd = attention_pair(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-8gb300-nvfp4.toml", flops)
    assert fwd.seconds == pytest.approx(2.04e-6 + flops / (1733e12 * 1237 / 1450 * 8192 / 8412))
    assert bwd.seconds == pytest.approx(2.04e-6 + 2.5 * flops / (1485e12 * 1237 / 1450 * 8192 / 10572))
    # 0.766 / 2.802 ms (B200's curves: 1.088 / 3.526)
    assert (fwd.seconds * 1e3, bwd.seconds * 1e3) == pytest.approx((0.7657, 2.8022), abs=1e-4)
