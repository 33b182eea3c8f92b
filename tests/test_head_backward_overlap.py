"""The output layer's backward collectives hidden as Megatron hides them (s11h).

LinearWithGradAccumulationAndAsyncCommunication.backward (NVIDIA/Megatron-LM df72712
megatron/core/tensor_parallel/layers.py lines 250-325; core_r0.9.0, core_r0.11.0, d339190, 1e05700 the same):
with sequence parallelism it launches the input's re-gather (async_op=True) before the dgrad GEMM and waits
after it, then launches the input gradient's reduce-scatter before the wgrad GEMM and waits after it.  Each
is exposed only for what it takes beyond its GEMM.  Hand-worked on MLPerf v3.1 GPT-3 (H100, TP 4 + SP):
NCCL on NVLink takes 25.5 us + bytes x 3/4 / 321 GB/s (tests/test_eval_forward_kernels.py checks the preset).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, kernels

ROOT = Path(__file__).resolve().parent.parent
GPT3_V31 = ROOT / "scenarios" / "validation" / "mlperf31-gpt3-512.toml"  # TP 4 + SP, H100
LAT, BUS, HBM = 25.5e-6, 321e9, 2.90e12
N, H = 2048, 12288
WHOLE = LAT + N * H * 2 * 3 / 4 / BUS  # 2,048 x 12,288 16-bit values (50.3 MB) over 4 ranks: 143.1 us


def _rows(cfg=None, overrides=()):
    st = derive.setup(scenario.load(GPT3_V31, list(overrides)))
    return st, {(k.name, k.component): k for k in kernels.head(cfg or st.cfg, st.rates, st.layout)}


@pytest.mark.parametrize("overrides,ctas", [
    ((), 8),  # the run's MEGATRON_CORE_TP_MAX_CTAS=8 caps the tensor group's channels (parallel.tp_max_ctas; s14c)
    (("parallel.tp_max_ctas=0",), 16),  # uncapped, an H100 group of 4: the fewer of the ring's 24 and NVLS's 16 (s12m)
])  # fmt: skip
def test_gpt3_head_backward_collectives_hidden_under_their_gemms(overrides, ctas):
    st, rows = _rows(overrides=overrides)
    assert st.layout.tensor == 4 and st.layout.sequence_parallel and WHOLE == pytest.approx(143.1e-6, abs=0.1e-6)
    v = -(-st.cfg.vocab_size // 4)
    dgrad = rows[("output layer dgrad", "mlp_backward_input")]
    # beside the re-gather the dgrad GEMM runs on the 132 - ctas SMs NCCL's CTAs leave (s12j), then whole:
    # c + A (1 - c / H), A alone, H held (beside_transfer)
    alone, held = (gemm.time(N, H, v, st.rates.gemm_bf16, 132, HBM, 2.0, held=h, schedule="persistent", grad="dgrad").seconds
                   for h in (0, ctas))  # fmt: skip
    assert held > alone > WHOLE
    assert dgrad.seconds == pytest.approx(WHOLE + alone * (1 - WHOLE / held), rel=1e-12)
    wgrad = rows[("output layer wgrad", "mlp_backward_weight")]
    assert dgrad.seconds > WHOLE and wgrad.seconds > WHOLE  # 0.78 ms GEMMs: each collective wholly hidden
    assert rows[("tp all-gather (wgrad input)", "mlp_backward_input")].seconds == 0.0
    assert rows[("tp reduce-scatter (grad)", "mlp_backward_weight")].seconds == 0.0
    assert ("tp reduce-scatter (grad)", "mlp_backward_input") not in rows


def test_collectives_longer_than_their_gemms_expose_the_rest():
    """A vocabulary of 256 (64 a rank): GEMMs of about 20 us, so each collective shows 143.1 us less its GEMM."""
    st0 = derive.setup(scenario.load(GPT3_V31))
    _, rows = _rows(replace(st0.cfg, vocab_size=256))
    dgrad = rows[("output layer dgrad", "mlp_backward_input")].seconds
    wgrad = rows[("output layer wgrad", "mlp_backward_weight")].seconds
    assert dgrad < WHOLE and wgrad < WHOLE
    assert rows[("tp all-gather (wgrad input)", "mlp_backward_input")].seconds == pytest.approx(WHOLE - dgrad, rel=1e-9)
    assert rows[("tp reduce-scatter (grad)", "mlp_backward_weight")].seconds == pytest.approx(WHOLE - wgrad, rel=1e-9)


def test_without_sequence_parallelism_nothing_is_re_gathered():
    """Without SP the input is whole on every rank (no re-gather), and the input gradient is all-reduced
    (twice the reduce-scatter's bytes over the bus, 2 x 3/4) beside the 0.78 ms wgrad GEMM, which hides it (s12h)."""
    _, rows = _rows(overrides=["parallel.sequence_parallel=false"])
    assert not any(name == "tp all-gather (wgrad input)" for name, _ in rows)
    assert not any("reduce-scatter" in name for name, _ in rows)
    ar = rows[("tp all-reduce (grad)", "mlp_backward_weight")]
    assert ar.bytes == N * H * 2 and ar.seconds == 0.0
    assert LAT + N * H * 2 * 2 * 3 / 4 / BUS < rows[("output layer wgrad", "mlp_backward_weight")].seconds
