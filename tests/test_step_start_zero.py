"""Megatron-core's step start and clip norm (optimizer_step.grad_zero_ms, grad_norm_all_reduce_ms; docs/step.md).

Read at NVIDIA/Megatron-LM 25.09-alpha.rc1 (d339190), the MLPerf v5.1 rows' Megatron-core: NeMo's
MegatronStrategy.training_step calls ``zero_grad_buffer`` on every model chunk before the forward (outside the
whole-iteration CUDA graph, which captures forward_backward_func only: full_cuda_graph.py), and each buffer's ``reset``
runs ``grad_data.zero_()``; the optimizer's ``clip_grad_norm`` -> ``get_grad_norm_fp32`` all-reduces one fp32 over
the grad-stats group (the whole world for the distributed optimizer) and reads it with ``.item()``.  Figures worked
by hand from the Llama 3.1 8B parameter count and the B200 preset's rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derived_step, fp8_step_casts, optimizer_step, step_end
from dualpipe_sim.model.rates import PRESETS

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
# Llama 3.1 8B: embedding and output layer 128,256 x 4,096 each, 32 layers of q/k/v/o (4,096 x 6,144 + 4,096 x 4,096),
# SwiGLU (3 x 4,096 x 14,336) and two norms (2 x 4,096), the final norm (4,096)
PARAMS = 2 * 128256 * 4096 + 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096) + 4096


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


def test_the_8b_rows_buffer_zeroed_by_hand():
    # bf16 gradients (grad_reduce_in_fp32 False): 8,030,261,248 x 2 B = 16.06 GB written at 6.858 TB/s = 2.3419 ms, plus
    # two fill kernels (the FP8 parameters' buffer and the 16-bit one) at B200's 2.04 us floor: 2.3460 ms a step
    sc = _load("mlperf51-llama8b-64b200")
    d = sc.derived()
    b200 = PRESETS["B200"]
    assert PARAMS == 8_030_261_248 == d.stages[0].dense_params
    assert (b200.hbm, b200.floor) == (6.858e12, 2.04e-6)
    assert optimizer_step.grad_zero_ms(d.setup, d.stages[0]) == pytest.approx(
        (PARAMS * 2 / 6.858e12 + 2 * 2.04e-6) * 1e3, rel=1e-12)
    assert optimizer_step.grad_zero_ms(d.setup, d.stages[0]) == pytest.approx(2.3460, abs=1e-4)
    # fp32 gradients double the bytes; one buffer without FP8 parameters
    d32 = _load("mlperf51-llama8b-64b200", ["model.grads_dtype=fp32", "model.fp8_params=false"]).derived()
    assert optimizer_step.grad_zero_ms(d32.setup, d32.stages[0]) == pytest.approx(
        (PARAMS * 4 / 6.858e12 + 2.04e-6) * 1e3, rel=1e-12)


@pytest.mark.parametrize("gpus, by_hand_us", [(64, 45.2), (256, 65.2)])
def test_grad_norm_all_reduce_by_hand(gpus, by_hand_us):
    # the distributed optimizer sums the norm over the whole world: 64 ranks on 8 nodes, 256 on 32 (TP 1, PP 1).
    # NCCL's LL tree (v2.18.5 tuning model): base 6.8 us + 2 x ((8 - 1) x 0.6 us NVLink + log2(nodes) x 5.0 us network):
    # 8 nodes 6.8 + 2 x (4.2 + 15) = 45.2 us; 32 nodes 6.8 + 2 x (4.2 + 25) = 65.2 us (the ring, 2 x 63 or 2 x 255
    # steps, is longer at both)
    sc = _load(f"mlperf51-llama8b-{gpus}b200")
    st = sc.derived().setup
    assert optimizer_step.grad_norm_ranks(sc, st) == gpus
    assert optimizer_step.grad_norm_all_reduce_ms(sc, st) == pytest.approx(by_hand_us / 1e3, abs=1e-9)


def test_the_optimizer_figure_gains_exactly_the_two_parts():
    # the invariant: the optimizer figure is the same sum as before plus the zeroing (per stage copy) and the norm's
    # all-reduce (once a rank); a runtime whose optimizer was not read for them (apex's, DeepSpeed's, Megatron-LM
    # 2021's) takes neither
    sc = _load("mlperf51-llama8b-64b200")
    d = sc.derived()
    assert optimizer_step.megatron_core_optimizer(sc)
    items = {i.name: i for i in step_end.items(sc, d)}
    zero, norm = items["gradient buffers zeroed at the step's start"], items["gradient norm all-reduce (clip)"]
    assert zero.ms[0] == optimizer_step.grad_zero_ms(d.setup, d.stages[0])
    assert norm.ms[0] == optimizer_step.grad_norm_all_reduce_ms(sc, d.setup)
    parts = sum(i.ms[0] for i in items.values() if i.figure == "optimizer")
    assert derived_step.derived_sync(sc, "optimizer")[0] == pytest.approx(parts, rel=1e-12)
    for name in ("mlperf31-gpt3-512", "n21-145b", "bloom-176b"):
        assert not optimizer_step.megatron_core_optimizer(_load(name)), name


def test_pipeline_ranks_count_in_the_world_and_the_norm_is_once_a_rank(monkeypatch):
    # Llama 3.1 405B on 512 H100 (TP 8, PP 8, 8 chunks a rank, CP 2, DP 4): the world is all 512 GPUs; each of a
    # rank's 8 stage copies carries 1/8 of the norm's all-reduce, its buffer zeroing per copy.  The invariant: the
    # figure is the one without Megatron-core's two parts, plus those parts exactly
    sc = _load("mlperf50-llama405b-512")
    d = sc.derived()
    st = d.setup
    assert optimizer_step.grad_norm_ranks(sc, st) == 512
    shares = derived_step.once_per_rank(sc, len(st.stages))
    assert shares[0] == pytest.approx(1 / 8) and len(shares) == 64
    with_parts = derived_step.derived_sync(sc, "optimizer", d)
    norm = optimizer_step.grad_norm_all_reduce_ms(sc, st)
    zeros = [optimizer_step.grad_zero_ms(st, f) for f in d.stages]
    counted = fp8_step_casts.shard_counted(sc, st)  # the shard's pieces (FP8 cast launches) kept as they are
    monkeypatch.setattr(optimizer_step, "megatron_core_optimizer", lambda _: False)
    monkeypatch.setattr(fp8_step_casts, "shard_counted", lambda *_: counted)
    without = derived_step.derived_sync(sc, "optimizer", d)
    assert with_parts == pytest.approx([w + z + norm * s for w, z, s in zip(without, zeros, shares)], rel=1e-12)
