"""A column-parallel linear's input gradient without sequence parallelism, as each runtime runs it (s12h).

Megatron-LM 2021 (6985e58 ``mpu/layers.py`` ColumnParallelLinear.forward, ``model/language_model.py``
parallel_lm_logits: ``copy_to_tensor_model_parallel_region`` then ``F.linear``; ``mpu/mappings.py``
``_CopyToModelParallelRegion.backward`` -> ``_reduce``, a blocking ``all_reduce``): the input gradient is all-reduced
over the tensor group after the linear's whole backward, exposed.  From 2022 (80389ef ``mpu/layers.py``
LinearWithGradAccumulationAndAsyncCommunication.backward lines 241-312; Megatron-core df72712 / 1e05700 the same;
TE 09ba842 / release_v2.4 Linear and LayerNormLinear): launched async after the dgrad GEMM, waited for after the
wgrad GEMM, exposed only beyond it.  An all-reduce is 2 (t - 1) / t of the bytes over the bus, a reduce-scatter
(t - 1) / t: at TP 2 the all-reduce is twice the reduce-scatter the head used to be charged.

Hand-worked on Narayanan et al.'s GPT 3.6B (n21-3.6b: A100, TP 2, no SP, fp16, micro-batch 16 x 2,048 tokens,
h 3,072, vocabulary 51,200): the input gradient is 32,768 x 3,072 x 2 B = 201,326,592 B.  The A100 preset's measured
NVLink bus bandwidth (nccl-tests all_reduce_perf rows, docs/model.md) is 174.18 GB/s at 128 MiB and 213.87 GB/s at
256 MiB, linear in log2(bytes) between: at 192 MiB 174.18 + 39.69 x log2(1.5) = 197.397 GB/s.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, kernels

ROOT = Path(__file__).resolve().parent.parent
N21 = ROOT / "scenarios" / "validation" / "n21-3.6b.toml"
N, H, T = 16 * 2048, 3072, 2
GRAD = N * H * 2  # fp16 input gradient
BUS = (174.18 + (213.87 - 174.18) * math.log2(GRAD / 2**27)) * 1e9
ALL_REDUCE = GRAD * 2 * (T - 1) / T / BUS  # 1.0199 ms
REDUCE_SCATTER = GRAD * (T - 1) / T / BUS  # 0.5100 ms: what the head was charged


def _setup(overrides=()):
    return derive.setup(scenario.load(N21, list(overrides)))


def _rows(rows):
    return {(k.name, k.component): k for k in rows}


def test_hand_worked_figures():
    assert GRAD == 201_326_592 and BUS == pytest.approx(197.397e9, rel=1e-5)
    assert ALL_REDUCE == pytest.approx(1.01991e-3, rel=1e-5) and ALL_REDUCE == pytest.approx(2 * REDUCE_SCATTER)


def test_megatron_2021_head_all_reduces_after_its_backward():
    st = _setup()
    assert st.layout.legacy and st.layout.tensor == T and not st.layout.sequence_parallel
    rows = _rows(kernels.head(st.cfg, st.rates, st.layout))
    ar = rows[("tp all-reduce (grad, after the backward)", "mlp_backward_input")]
    assert ar.bytes == GRAD and ar.seconds == pytest.approx(ALL_REDUCE, rel=1e-9)  # whole, not hidden
    assert not any("reduce-scatter" in name or name == "tp all-reduce (grad)" for name, _ in rows)


def test_megatron_2021_layer_all_reduces_qkv_and_fc1_input_gradients_exposed():
    st = _setup()
    rows = [k for k in kernels.layer(st.cfg, 0, st.rates, st.layout) if k.name.startswith("tp all-reduce (grad")]
    assert sorted(k.component for k in rows) == ["attn_backward_input", "mlp_backward_input"]
    for k in rows:
        assert k.bytes == GRAD and k.seconds == pytest.approx(ALL_REDUCE, rel=1e-9)


def test_async_head_all_reduce_hidden_under_the_wgrad_gemm():
    """Megatron-core's runtime on the same layout: the output layer's wgrad (3,072 x 25,600 x 32,768, about 20 ms
    on A100) hides the 1.02 ms all-reduce whole, on the SMs NCCL's 24 CTAs leave while it runs (s12j), all 108 after."""
    st = _setup(["model.runtime=megatron-core"])
    rows = _rows(kernels.head(st.cfg, st.rates, st.layout))
    wgrad = rows[("output layer wgrad", "mlp_backward_weight")].seconds
    r = st.rates
    alone, held = (gemm.time(H, 25600, N, r.gemm_bf16, r.sms, r.hbm, 2.0, out_bytes=st.layout.wgrad_out, held=h,
                             schedule="waves").seconds for h in (0, 24))  # fmt: skip
    assert wgrad == pytest.approx(ALL_REDUCE + alone * (1 - ALL_REDUCE / held), rel=1e-12)
    assert wgrad > ALL_REDUCE
    ar = rows[("tp all-reduce (grad)", "mlp_backward_weight")]
    assert ar.bytes == GRAD and ar.seconds == 0.0
    assert ("tp all-reduce (grad, after the backward)", "mlp_backward_input") not in rows


def test_async_head_all_reduce_exposed_beyond_a_short_wgrad():
    """A vocabulary of 256 (128 a rank): a wgrad GEMM far under 1.02 ms, so the all-reduce shows the rest."""
    st = _setup(["model.runtime=megatron-core"])
    rows = _rows(kernels.head(replace(st.cfg, vocab_size=256), st.rates, st.layout))
    wgrad = rows[("output layer wgrad", "mlp_backward_weight")].seconds
    assert 0 < wgrad < ALL_REDUCE / 2
    assert rows[("tp all-reduce (grad)", "mlp_backward_weight")].seconds == pytest.approx(ALL_REDUCE - wgrad, rel=1e-9)


def test_async_layer_all_reduces_hidden_under_their_wgrad_gemms():
    """qkv's wgrad (3,072 x 4,608 x 32,768) and fc1's (3,072 x 6,144 x 32,768) each take several ms on A100."""
    st = _setup(["model.runtime=megatron-core"])
    rows = _rows(kernels.layer(st.cfg, 0, st.rates, st.layout))
    for block, proj in (("attn", "qkv"), ("mlp", "fc1")):
        assert rows[(f"{proj} wgrad", f"{block}_backward_weight")].seconds > ALL_REDUCE
        ar = rows[("tp all-reduce (grad)", f"{block}_backward_weight")]
        assert ar.bytes == GRAD and ar.seconds == 0.0
