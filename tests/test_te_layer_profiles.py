"""The model's transformer layer against Transformer Engine layers timed in isolation on H100 (issue 21).

Published figures in tests/data/kernels/ (each file names its source and what it times):
``te_getting_started_h100.csv`` (TE's getting-started benchmark, one GPT layer on one H100) and
``fuser_te_gpt3_layer_h100.csv`` (nvFuser's TE baseline, GPT-3's layer over 8 H100 SXM at TP 8).
docs/validation.md ("One transformer layer on Hopper") reads them; benchmarks/te_layer_profiles.py
prints every row.  What agrees is held within a stated tolerance; what does not is held as the
documented discrepancy, so that a change which moves it has to move the docs too."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import sections_only
from dualpipe_sim.model import collectives, derive
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table, short_run_h100

DATA = Path(__file__).parent / "data" / "kernels"
H100 = PRESETS["H100"]


@pytest.fixture(autouse=True)
def _short_run_gemms(monkeypatch):
    # Every source here times a few iterations of a layer (TE's getting-started loop, nvFuser's best of 5 rounds):
    # held to XLA's short-run BF16 fit, like for like; the preset's BF16 peak is a sustained one (docs/model.md)
    short_run_h100(monkeypatch)


def table(name: str) -> list[dict]:
    return kernel_table(DATA / name)


def layer_rows(model: dict, parallel: dict, memory: dict | None = None):
    return derive.layer_kernels(derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "gpt2", "n_layer": 1, "vocab_size": 50304, "n_positions": 2048, "seq_length": 2048,
                  "attention": "flash", **model},
        "parallel": parallel, "memory": memory or {}, "hardware": {"preset": "H100"},
    })), 0)  # fmt: skip


# -- TE's getting-started layer: hidden 4096, 32 heads, FFN 16384, 2048 x 8 tokens, one H100 -----------------
def getting_started_ms(fp8: bool, framework: str) -> float:
    """The model's layer (forward + both backward passes; TE casts the FP8 weights in every forward
    here, so no weight cache) plus what the benchmark loop adds, each worked by hand:
    ``y.sum()`` reads the 16,384 x 4,096 BF16 output (134,217,728 bytes) and its backward writes the
    gradient out (the same bytes); PyTorch adds every gradient into ``.grad``, never zeroed (from the
    second iteration): 201,379,840 parameters (4 weights 201,326,592, biases 36,864, two LayerNorms
    16,384) x (read 2 + 2, write 2 bytes), 12 tensors, one kernel each."""
    rows = layer_rows({"n_embd": 4096, "n_head": 32, "n_inner": 16384, "micro_batch_size": 8, "fp8": fp8},
                      {"tensor": 1}, {"fp8_weight_cache": False} if fp8 else {})  # fmt: skip
    loss_sum = 2 * (H100.floor + 134217728 / H100.hbm)
    accumulate = 12 * H100.floor + 201379840 * 6 / H100.hbm if framework == "pytorch" else 0.0
    return sum(k.ms for k in rows) + (loss_sum + accumulate) * 1e3


def published(framework: str, implementation: str) -> float:
    row = next(r for r in table("te_getting_started_h100.csv")
               if r["framework"] == framework and r["implementation"] == implementation)  # fmt: skip
    return float(row["ms"])


@pytest.mark.parametrize("framework", ["pytorch", "jax"])
def test_te_transformer_layer_fp8_within_15_percent(framework):
    # The whole FP8 kernel list against TE's TransformerLayer + FP8 (no dropout): -6.1% (PyTorch) and
    # -12.8% (JAX). 15% as for Korthikanti et al.'s A100 layer (tests/test_kernels.py): the H100's SKU is
    # not named, and the model leaves out the split accumulator of TE's backward FP8 GEMMs (docs/model.md).
    model = getting_started_ms(True, framework)
    measured = published(framework, "TE TransformerLayer + FP8")
    assert model == pytest.approx(measured, rel=0.15)
    assert model < measured  # fast, as every Hopper row of docs/validation.md


@pytest.mark.parametrize("framework", ["pytorch", "jax"])
def test_te_bf16_layer_is_the_documented_discrepancy(framework):
    # BF16 (TE's linears and attention, its LayerNorms): 17-18% fast in both frameworks, against 6-13% in
    # FP8. docs/validation.md ("One transformer layer on Hopper") gives the reading; PyTorch's two hidden
    # dropouts (0.1) are worked by hand here: forward read 2 + write 2 + a 1-byte mask, backward read
    # 2 + 1, write 2, over 67,108,864 elements each.
    model = getting_started_ms(False, framework)
    if framework == "pytorch":
        model += 2 * 2 * (H100.floor + 67108864 * 5 / H100.hbm) * 1e3
    error = model / published(framework, "TE Unfused + TE Attention") - 1
    assert -0.25 < error < -0.10


# -- nvFuser's TE baseline: GPT-3's layer over 8 H100 SXM, TP 8, BF16 ------------------------------------
def gpt3_rows(sequence_parallel: bool):
    return layer_rows({"n_embd": 12288, "n_head": 96, "micro_batch_size": 1},
                      {"tensor": 8, "sequence_parallel": sequence_parallel, "tp_comm_overlap": False})  # fmt: skip


def test_gpt3_tp8_forward_gemms_match_nsys_within_5_percent():
    # One TP forward's four GEMM kernels from nsys (NVIDIA/Fuser#4844): 109,663 + 384,733 + 401,214 +
    # 288,415 ns = 1.184 ms; the model's qkv, out_proj, fc1 and fc2 at 2,048 tokens over TP 8: 1.217 ms.
    # 5%: the sm_90 BF16 fit's median error is 4.7% (docs/model.md, "Kernel rates").
    measured = sum(float(r["value"]) for r in table("fuser_te_gpt3_layer_h100.csv") if r["kind"] == "gemm") / 1e6
    assert measured == pytest.approx(1.184025)
    forward = [k for k in gpt3_rows(False) if k.component.endswith("forward")]
    gemms = [k for k in forward if k.kind == "gemm"]
    assert [k.name for k in gemms] == ["qkv", "out_proj", "fc1", "fc2"]
    assert sum(k.ms for k in gemms) == pytest.approx(measured, rel=0.05)


def test_gpt3_tp8_layer_is_the_documented_discrepancy():
    # The whole layer's wall time (best of 5 rounds, or the one figure a PR gives) is 13-24% above the
    # model's kernels while its GEMMs agree: the time missing sits outside the GEMMs (docs/validation.md).
    for row in table("fuser_te_gpt3_layer_h100.csv"):
        if row["kind"] != "layer" or row["stat"] == "median":
            continue
        rows = gpt3_rows(row["parallel"] == "sp")
        forward = sum(k.ms for k in rows if k.component.endswith("forward"))
        model = forward if row["pass"] == "forward" else sum(k.ms for k in rows) - forward
        if row["pass"] == "backward":
            # since s12j the qkv / fc1 backward re-gathers and input-gradient reduce-scatters (2,048 x 12,288 BF16
            # over 8) run beside their GEMMs as TE launches them, none exposed, the GEMMs on the 108 SMs the ring's 24
            # CTAs leave while they last (NCCL's tuner runs them on the ring: tests/test_nccl_nvls.py); charged
            # whole, as before, they put the row back in the forward rows' band
            hidden = [k for k in rows if k.name in ("tp all-gather (wgrad input)", "tp reduce-scatter (grad)")]
            assert len(hidden) == 4 and all(k.seconds == 0.0 for k in hidden)
            one = collectives.time("all_gather", 2048 * 12288 * 2, 8, PRESETS["H100"], "nvlink") * 1e3
            assert -0.35 < model / float(row["value"]) - 1 < -0.25, row
            model += 4 * one
        assert -0.25 < model / float(row["value"]) - 1 < -0.12, row
