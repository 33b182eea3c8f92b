"""FP8 current scaling (model.fp8_recipe = "current") as Transformer Engine release_v2.8 (@ 40c69e7) runs it,
worked by hand against the delayed-scaling rows of the same layer.

What TE runs (docs/model.md, "FP8 current scaling"): a quantize of a 16-bit tensor launches zero_amax_kernel,
amax_kernel (one read of the tensor) and compute_scale_from_amax_kernel before the cast (quantizer.cpp
quantize_impl, common/recipe/current_scaling.cu); a norm or activation that feeds an FP8 GEMM writes 16 bits and
the amax in its own pass, then amax.zero_(), the scale kernel and a cast of its own (FUSED_NORM_AMAX_FP8,
FUSED_ACTIVATION_AMAX_FP8); LayerNormMLP's bgrad_quantize has no fused bias + cast kernel (a sum over the
gradient first); with sequence parallelism the amax of a tensor cast before its all-gather is all-reduced over
the tensor-parallel group; no amax history and no per-chunk reduction.

The B200 preset's figures used below: memory-bound kernels at 6.858 TB/s (rates.PRESETS["B200"].hbm), each kernel
at least 2.04 us (the floor; both NVIDIA/cccl#7391's B200 table, docs/model.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from dualpipe_sim.model.rates import PRESETS

from helpers import run_refused

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
L8B = VAL / "mlperf51-llama8b-16b200.toml"  # Llama 3.1 8B, TP 1, no SP, micro-batch 2 x 8192: n = 16,384 tokens
L405B = VAL / "mlperf51-llama405b-256b200.toml"  # TP 4 with SP, CP 2
HBM, FLOOR = 6.858e12, 2.04e-6


def test_preset_figures_the_hand_work_uses():
    assert (PRESETS["B200"].hbm, PRESETS["B200"].floor) == (HBM, FLOOR)


def _rows(path, overrides=()):
    st = derive.setup(scenario.load(path, list(overrides)))
    return st, derive.layer_kernels(st, 0)


def test_one_linear_by_hand():
    # out_proj's input: the attention output, n x (32 heads x 128) = 16,384 x 4,096 = 67,108,864 bf16 values.
    # Its amax pass reads them once: 134,217,728 B / 6.858e12 B/s = 19.571 us, plus zero + amax + scale = 3 floors
    # (6.12 us): 25.691 us. The cast itself is delayed scaling's, on B200 with TE release_v2.8 without a transpose
    # (read 2 B, write 1 B: 201,326,592 B; docs/model.md, "FP8 transposes").
    _, rows = _rows(L8B)
    by = {(k.name, k.component): k for k in rows}
    amax = by[("out_proj input amax", "attn_forward")]
    assert amax.bytes == 134_217_728
    assert amax.seconds == pytest.approx(3 * FLOOR + 134_217_728 / HBM)
    assert amax.seconds == pytest.approx(25.691e-6, abs=1e-9)
    assert by[("out_proj input cast", "attn_forward")].bytes == 201_326_592
    # fc2's input after LayerNormMLP's SwiGLU, n x f = 16,384 x 14,336: the activation writes 2 B (not 1) with the
    # amax, then its own cast reads 2 and writes 1 (3 kernels: zero, scale, cast): 704,643,072 B -> 108.87 us
    cast = by[("fc2 input cast", "mlp_forward")]
    assert cast.bytes == 16384 * 14336 * 3 == 704_643_072
    assert cast.seconds == pytest.approx(3 * FLOOR + 704_643_072 / HBM)
    assert cast.seconds == pytest.approx(108.868e-6, abs=1e-9)


def test_layer_against_delayed_by_hand():
    # Llama 3.1 8B, TP 1: h = 4096, q heads 32 x 128 = 4096 (out_proj input), qkv out 6144, f = 14336, up = 28672.
    # Bytes per token current scaling adds:
    #   input norm and pre-mlp norm write 16 bits, not 8:            2 x h x 1   =   8,192
    #   qkv and fc1 input casts (read 2, write 1):                  2 x h x 3   =  24,576
    #   out_proj input amax, two output-gradient amaxes (read 2):   3 x 4096 x 2 = 24,576
    #   qkv gradient amax:                                          6144 x 2    =  12,288
    #   SwiGLU writes 16 bits (+1), fc2 input cast (3):             f x 4       =  57,344
    #   fc1 gradient: bias sum (2) and amax (2):                    up x 4      = 114,688
    #                                                                            241,664 B per token
    # Kernels: 8 rows of 3 launches + the bias sum = 25 floors. No all-reduce (TP 1).
    n = 16384
    _, cur = _rows(L8B)
    _, dly = _rows(L8B, ["model.fp8_recipe=delayed"])
    extra_bytes = sum(k.bytes for k in cur) - sum(k.bytes for k in dly)
    assert extra_bytes == pytest.approx(241_664 * n)
    extra_s = sum(k.seconds for k in cur) - sum(k.seconds for k in dly)
    assert extra_s == pytest.approx(25 * FLOOR + 241_664 * n / HBM)
    assert not [k for k in cur if k.kind == "comm"]


def test_sequence_parallel_all_reduces_the_amax_over_the_tensor_group():
    # TP 4 with SP: the QKV and fc1 inputs (forward) and the out_proj and fc2 output gradients (backward) are cast
    # before their all-gather, each amax all-reduced over the 4 tensor-parallel ranks: NCCL's ring with LL on one
    # node, 6.6 + 2 x 3 x 0.6 = 10.2 us (tests/test_te_runtime.py works that model), 4 B each
    _, rows = _rows(L405B)
    reds = [k for k in rows if k.name == "fp8 amax all-reduce (tp)"]
    assert sorted(k.component for k in reds) == sorted(
        ["attn_forward", "mlp_forward", "attn_backward_input", "mlp_backward_input"])
    assert all(k.bytes == 4.0 and k.seconds == pytest.approx(10.2e-6) for k in reds)
    # the output gradient's amax is of this rank's rows only (n / t = 8192 / 2 (CP) / 4 = 1,024 tokens x 16,384)
    grad = next(k for k in rows if k.name == "grad amax" and k.component == "attn_backward_input")
    assert grad.bytes == 1024 * 16384 * 2


def test_no_history_and_no_chunk_reduction():
    st, _ = _rows(L405B)
    assert derive.chunk_kernels(st, st.stages[1]) == []
    st, _ = _rows(L405B, ["model.fp8_recipe=delayed"])
    assert derive.chunk_kernels(st, st.stages[1])  # delayed: the history update at least


def test_default_is_delayed():
    # a scenario without the key costs exactly what "delayed" does (today's costs)
    path = VAL / "mlperf30-gpt3-512.toml"
    _, plain = _rows(path)
    _, dly = _rows(path, ["model.fp8_recipe=delayed"])
    assert plain == dly
    assert not [k for k in plain if "amax" in k.name and "history" not in k.name]


def test_explain_lists_the_current_scaling_rows(capsys):
    assert main(["model", str(L8B), "--explain"]) == 0
    out = capsys.readouterr().out
    for name in ("qkv input cast", "out_proj input amax", "fc2 input cast", "fc1 grad bias sum (unfused)",
                 "fc1 grad amax"):  # fmt: skip
        assert name in out


def test_bad_value_names_the_key(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(L8B), "--set", "model.fp8_recipe=tensorwise", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.fp8_recipe" in err and "current" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("extra, key", [
    (["model.fp8_gemm=deepgemm", "hardware.preset=H100"], "model.fp8_recipe"),  # DeepGEMM scales per tile
    (["model.fp8_amax_reduction=hidden"], "model.fp8_amax_reduction"),  # delayed scaling only
])  # fmt: skip
def test_keys_that_do_not_go_with_current_scaling(tmp_path, capsys, extra, key):
    err = run_refused(capsys, tmp_path, L8B, extra)
    assert key in err and "Traceback" not in err
