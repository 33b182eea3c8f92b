"""The context-parallel ring's P2P kernels hold SMs beside the step's attention (kernels.RING_P2P_CTAS,
KernelRates.held; docs/model.md "The ring's P2P kernels beside the attention").  Figures are worked by hand from
the H100 preset's and the B200's published rates (its attention at the free clock its table measured,
rates.B200_FREE_CLOCK: the ring's rule, not the preset's sustained attention fraction, is checked here) and NCCL's
channel rules; the invariant is that no SMs held gives the model before the rule exactly."""

from __future__ import annotations

import pytest

from dualpipe_sim.model import comm_slowdown, kernels
from dualpipe_sim.model.config import ModelConfig
from dualpipe_sim.model.rates import B200_FREE_CLOCK, PRESETS

H100, B200 = PRESETS["H100"], B200_FREE_CLOCK
LLAMA8B = ModelConfig("llama", 4096, 1, 128256, 32, 8, 128, 128, 14336)


def _ring(rates, seq=8192, context=2, tensor=1):
    lay = kernels.Layout(seq, 1, tensor=tensor, context=context)
    tb = kernels.Table(rates, lay, LLAMA8B)
    core = 2.0 * lay.tokens * seq * (32 // tensor) * 256 * 0.5
    tb.attention("flash attention", "attn_forward", core, backward=False)
    tb.attention("flash attention backward", "attn_backward_input", 2.5 * core, backward=True)
    kernels.context_exchange(tb)
    return tb.rows


def test_held_is_fewer_sms_and_zero_is_the_gpu():
    assert H100.held(0) == H100
    held = B200.held(16)
    assert (held.sms, held.held_sms) == (148, 16) and held.hbm == B200.hbm and held.floor == B200.floor
    assert held.attention_forward == pytest.approx(1591e12 * 132 / 148)
    assert held.gemm_bf16.peak == B200.gemm_bf16.peak  # GEMMs keep their peak; their blocks run on the SMs left
    twice = held.held(16)  # beside a data-parallel collective and the ring's P2P: both kernels' SMs held
    assert twice.held_sms == 32 and twice.attention_forward == pytest.approx(1591e12 * 116 / 148)
    assert comm_slowdown.fewer_sms(B200, 16) == held  # the data-parallel slowdown's rates are the same rule
    with pytest.raises(ValueError, match="below the GPU's 132 SMs"):
        H100.held(132)


def test_b200_cp2_step_by_hand():
    # Llama 3.1 8B at CP 2 on B200 (the MLPerf v5.1 8B rows' layout, TP 1): L = 4,096; forward step 0 is the
    # diagonal, 2 x 8192^2 x 32 x 128 / 4 = 137.4 GFLOP at the causal rate at 4,096: 1591 x 4096 / (4096 + 2790)
    # = 946.4 TFLOP/s, 145.2 us + B200's 2.04 us floor = 147.3 us alone.  Its K/V transfer, 4,096 x 8 x 256 x 2 B =
    # 16.8 MB on NVLink: 25.5 us + 16.8 MB / 620 GB/s = 52.6 us, the P2P kernel holding 16 of 148 SMs all that time.
    # Beside it the step does its work at 132/148 of the rate (alone it would take 2.04 + 145.2 x 148/132 = 164.9
    # us); 52.6 / 164.9 = 31.9% of the work is done by then, the rest at the full rate: 52.6 + 147.3 x 0.681 = 152.9 us
    steps = [k for k in _ring(B200) if k.kind == "attention" and k.component == "attn_forward"]
    flops = 2 * 8192**2 * 32 * 128 / 4
    body = flops / (1591e12 * 4096 / (4096 + 2790.0))
    alone, held = 2.04e-6 + body, 2.04e-6 + body * 148 / 132
    send = 25.5e-6 + 4096 * 8 * 256 * 2 / 620e9
    assert (alone, held, send) == pytest.approx((147.3e-6, 164.9e-6, 52.6e-6), abs=0.05e-6)
    assert steps[0].seconds == pytest.approx(send + alone * (1 - send / held))
    assert steps[0].seconds == pytest.approx(152.9e-6, abs=0.05e-6)
    assert steps[1].seconds == pytest.approx(alone)  # the last forward step sends nothing: no P2P kernel beside it
    assert "beside P2P, 16 SMs held for 52.6 us" in steps[0].shape


def test_no_sms_held_is_the_model_before(monkeypatch):
    # the invariant: with the P2P kernels holding no SM every step is its attention alone (floor + FLOPs / rate),
    # bit for bit, and the exposed transfers are the transfer beyond that window as before
    monkeypatch.setattr(kernels, "RING_P2P_CTAS", {"nvlink": 0, "nic": 0})
    for rates, seq, context, tensor in ((H100, 8192, 2, 1), (B200, 16384, 4, 1), (H100, 2048, 2, 8)):
        rows = _ring(rates, seq, context, tensor)
        for k in rows:
            if k.kind == "attention":
                backward = k.component == "attn_backward_input"
                rate_len = int(k.shape.split("(at the ")[1].split(" rate")[0])
                assert k.seconds == rates.floor + k.flops / rates.attention_rate(rate_len, backward), k.name
                assert "beside" not in k.shape


def test_more_sms_held_never_faster(monkeypatch):
    # each step's time rises with the SMs held, between its time alone and its time wholly on the SMs left
    times = []
    for ctas in (0, 2, 16, 64):
        monkeypatch.setattr(kernels, "RING_P2P_CTAS", {"nvlink": ctas, "nic": ctas})
        times.append([k.seconds for k in _ring(H100, 16384, 4) if k.kind == "attention"])
    for before, after in zip(times, times[1:]):
        assert all(a >= b for a, b in zip(after, before)) and sum(after) > sum(before)
    assert kernels.beside_transfer(1.0, 2.0, 0.0) == 1.0
    assert kernels.beside_transfer(1.0, 2.0, 3.0) == 2.0  # the transfer outlasts the kernel: all of it held
    assert kernels.beside_transfer(1.0, 2.0, 1.0) == 1.5  # half the work beside, half alone
    assert kernels.beside_transfer(1.0, 2.0, 2.0) == 2.0  # continuous where the transfer ends with the kernel


def test_across_nodes_two_ctas():
    # TP 8 x CP 2: the ring crosses nodes, where NCCL gives a network peer 2 channels (2 CTAs); the steps are shorter
    # than the transfer, so each is held all through: its body at 132/130
    rows = _ring(H100, 2048, 2, 8)
    steps = [k for k in rows if k.kind == "attention"]
    last_forward = [k for k in steps if k.component == "attn_forward"][-1]
    assert "beside" not in last_forward.shape
    assert all("beside P2P, 2 SMs held" in k.shape for k in steps if k is not last_forward)
    fwd0 = steps[0]
    rate = 562e12 * 1024 / (1024 + 390.0)
    assert fwd0.seconds == pytest.approx(2.5e-6 + fwd0.flops / rate * 132 / 130)
