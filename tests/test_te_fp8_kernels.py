"""Transformer Engine's FP8 casts, transposes and fused epilogue kernels in a layer's table, worked by hand.

The kernels follow TE's modules (release_v0.8 to v1.6, docs/model.md "Kernel-level costs"): a row-parallel
linear's output gradient under sequence parallelism is cast on this rank's rows, with the bias gradient
summed apart, and the gathered FP8 tensor transposed for the wgrad GEMM; LayerNormLinear / LayerNormMLP
transpose their FP8 inputs (the gathered norm output, the activation output) for the wgrad GEMMs; the GeLU
backward is one kernel with the FP8 cast and transpose of its result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.model import derive
from dualpipe_sim.inputs.scenario import load

ROOT = Path(__file__).resolve().parent.parent
MLPERF = ROOT / "scenarios" / "validation" / "mlperf31-gpt3-512.toml"
# the row's "hidden" is TE's delayed scaling and its cast-transpose TE's kernel: both refused with DeepGEMM
NO_TE_AMAX = ["model.fp8_amax_reduction=data", 'model.te_cast_transpose="nvrtc"']
HBM = 2.90e12  # H100's achievable HBM bandwidth (rates.py)
FLOOR = 2.5e-6


def _rows(overrides=()):
    st = derive.setup(load(MLPERF, list(overrides)))
    return st, {(k.name, k.component): k for k in derive.layer_kernels(st, 0)}


def test_mlperf_gpt3_layer_te_fp8_kernels_by_hand():
    # GPT-3 175B at TP 4 with sequence parallelism: n = 2048 tokens, h = 12288, each rank's sequence shard
    # 512 rows, FFN 4h / 4 = 12288 per rank, bf16 activations (2 B), FP8 (1 B), biases
    st, rows = _rows()
    assert st.layout.te_fp8
    n, rows_local, h, f = 2048, 512, 12288, 12288
    want = {
        # row-parallel output gradients (out_proj, fc2): sum over the local rows for the bias gradient (read 2 B),
        # cast of the local rows (read 2, write 1), transpose of the gathered FP8 tensor (read 1, write 1)
        ("bias gradient", "attn_backward_input"): rows_local * h * 2,
        ("grad cast", "attn_backward_input"): rows_local * h * 3,
        ("grad transpose (wgrad)", "attn_backward_weight"): n * h * 2,
        ("bias gradient", "mlp_backward_input"): rows_local * h * 2,
        ("grad cast", "mlp_backward_input"): rows_local * h * 3,
        ("grad transpose (wgrad)", "mlp_backward_weight"): n * h * 2,
        # LayerNormLinear / LayerNormMLP: the gathered FP8 norm output transposed for qkv / fc1 wgrad
        ("qkv input transpose (wgrad)", "attn_backward_weight"): n * h * 2,
        ("fc1 input transpose (wgrad)", "mlp_backward_weight"): n * h * 2,
        # the FP8 GeLU output transposed for fc2 wgrad
        ("fc2 input transpose (wgrad)", "mlp_backward_weight"): n * f * 2,
        # dgelu fused with the FP8 cast and transpose: reads fc2 dgrad and fc1's output (2 + 2), writes 1 + 1
        ("dgelu + grad cast (fused)", "mlp_backward_input"): n * f * 6,
    }
    for key, nbytes in want.items():
        assert rows[key].bytes == nbytes, key
        assert rows[key].seconds == pytest.approx(FLOOR + nbytes / HBM), key
    # what the fused kernel replaces is gone: no separate activation backward or fc1 grad cast
    names = {name for name, _ in rows}
    assert "activation backward" not in names and "fc1 grad cast" not in names


def test_without_sequence_parallelism_the_output_gradient_is_one_fused_cast():
    # no sequence parallelism: TE's fp8_cast_transpose_bgrad_fused over the whole n x h gradient (2 + 1 + 1 B)
    _, rows = _rows(["parallel.sequence_parallel=false"])
    n, h = 2048, 12288
    assert rows[("grad cast", "attn_backward_input")].bytes == n * h * 4
    assert rows[("grad cast", "mlp_backward_input")].bytes == n * h * 4
    assert not any(name in ("bias gradient", "grad transpose (wgrad)") for name, _ in rows)


def test_deepgemm_runtime_has_none_of_te_s_transposes():
    # model.fp8_gemm = "deepgemm": DeepSeek's runtime quantises its own way; none of TE's kernels are listed
    st, rows = _rows(["model.fp8_gemm=deepgemm", *NO_TE_AMAX])
    assert not st.layout.te_fp8
    assert not any("transpose" in name or name == "bias gradient" for name, _ in rows)
    assert ("activation backward", "mlp_backward_input") in rows


def test_uncached_fp8_weights_cast_in_every_forward_by_hand():
    # memory.fp8_weight_cache = false: every forward refreshes the FP8 weight copies (TE's is_first_microbatch
    # None), one cast + transpose kernel per linear: read 2, write 1 + 1 bytes a weight element.  At TP 4:
    # QKV 3h^2 / 4 and out_proj h^2 / 4 in the attention (2 kernels), fc1 and fc2 4h^2 / 4 each (2 kernels)
    h = 12288
    _, rows = _rows(["memory.fp8_weight_cache=false"])
    attn = rows[("attention weights fp8 cast (uncached)", "attn_forward")]
    mlp = rows[("mlp weights fp8 cast (uncached)", "mlp_forward")]
    assert attn.bytes == h * h * 4 and mlp.bytes == 2 * h * h * 4
    # the row's TE @ 09ba842 runs TE v0.7-v1.6's cast_transpose (model.te_cast_transpose): NVIDIA/TransformerEngine
    # #101's 4,096^2 row on an H100 SXM, 4 bytes an element in 51.95 us; TE v1.7 on ("nvrtc") streams at the HBM row
    te101 = 4 * 4096 * 4096 / 51.95e-6
    assert attn.seconds == pytest.approx(2 * FLOOR + h * h * 4 / te101)
    assert mlp.seconds == pytest.approx(2 * FLOOR + 2 * h * h * 4 / te101)
    _, rows = _rows(["memory.fp8_weight_cache=false", 'model.te_cast_transpose="nvrtc"'])
    assert rows[("attention weights fp8 cast (uncached)", "attn_forward")].seconds == pytest.approx(2 * FLOOR + h * h * 4 / HBM)
    # cached (the default), and DeepGEMM's runtime: no such rows in the micro-batch's layer
    for over in ([], ["memory.fp8_weight_cache=false", "model.fp8_gemm=deepgemm", *NO_TE_AMAX]):
        _, rows = _rows(over)
        assert not any("weights fp8 cast" in name for name, _ in rows), over
