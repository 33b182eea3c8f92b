"""NVFP4 in memory (s17j; docs/model.md, "NVFP4 in memory"): one Llama 3.1 8B layer's saved bytes under NVFP4 and
under FP8 worked by hand from Transformer Engine release_v2.8's Linear / LayerNormLinear (what each keeps for its
backward), the weight copies a rank holds all step, and the once-a-step weight cast's bytes."""

from __future__ import annotations

import pytest
from test_nvfp4 import LLAMA_8B

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import activations, derive, fp8_step_casts, kernels, memory, params

NVFP4 = 0.5 + 1 / 16  # a 4-bit E2M1 value and 1/16 of its block's one-byte E4M3 scale (NVFP4Quantizer.make_empty)
FP8 = 1 + 4 / 128  # the FP8 path's cached input (activations.FP8_BYTES)
H, F, A, KV, D, S = 4096, 14336, 32, 8, 128, 8192  # Llama 3.1 8B; one 8,192-token sequence


def llama8b(fp4: bool = True, tensor: int = 2, sp: bool = True, cache: bool = True):
    model = {**LLAMA_8B, **({"fp4": "nvfp4"} if fp4 else {"fp8": True, "fp8_recipe": "current"})}
    return derive.setup(scenario.sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 2},
        "model": model,
        "parallel": {"tensor": tensor, "data": 4, "sequence_parallel": sp, "tp_comm_overlap": False},
        "memory": {"fp8_weight_cache": cache},
        "hardware": {"preset": "GB200"},
    }))  # fmt: skip


def saved(st) -> dict[str, float]:
    return activations.layer(st.cfg, 0, st.seq, st.mb, st.policy, st.act_bytes, st.sharding.tensor,
                             st.sequence_parallel, st.modules, st.legacy, st.sharding.expert_tensor, st.fp4)  # fmt: skip


def by_hand(qkv: float, o_proj: float, mlp_in: float, down: float, tp: int) -> float:
    """One layer's saved bytes per rank, no recompute, flash attention, sequence parallel: every tensor over ``tp``."""
    per_token = (2 * H  # norm1 input
                 + qkv * H  # qkv's cached input (the norm1 output)
                 + 2 * (A + KV) * D + 2 * KV * D  # q, k (after RoPE) and v, 16-bit
                 + 4 * A  # flash attention's fp32 log-sum-exp a head
                 + o_proj * A * D  # the attention output as the projection's backward needs it
                 + 2 * H  # norm2 input
                 + mlp_in * H  # fc1's cached input (the norm2 output)
                 + 2 * 2 * F  # the SwiGLU's input (gate and up), 16-bit
                 + down * F)  # fc2's cached input (the SwiGLU output)  # fmt: skip
    return per_token * S / tp


def test_one_layers_saved_bytes_nvfp4_against_fp8_by_hand():
    # NVFP4, TP 2 with sequence parallelism: qkv and fc1 (LayerNormLinear, column-parallel) keep their input's row-wise
    # and column-wise copies (the backward all-gathers it again), proj and fc2 (Linear, row-parallel) the column-wise
    # one; proj's input is also the attention's own 16-bit output, which the attention's backward reads
    fp4, fp8 = saved(llama8b()), saved(llama8b(fp4=False))
    assert sum(fp4.values()) == pytest.approx(by_hand(2 * NVFP4, 2 + NVFP4, 2 * NVFP4, NVFP4, 2), rel=1e-12)
    assert fp4["qkv input (norm1 output)"] == 2 * NVFP4 * S * H / 2 == 1.125 * S * H / 2
    assert fp4["down input (SwiGLU output)"] == 0.5625 * S * F / 2
    assert fp4["o_proj input"] == 2.5625 * S * A * D / 2
    # FP8 (unchanged): every cached input 1 + 4/128, the attention output E5M6 (1.5 + 4/128)
    assert sum(fp8.values()) == pytest.approx(by_hand(FP8, 1.5 + 4 / 128, FP8, FP8, 2), rel=1e-12)
    # FP8 - NVFP4 a token, before the split over 2: qkv and fc1 (1.03125 - 1.125) x 4096 = -384 each, proj
    # (1.53125 - 2.5625) x 4096 = -4,224, fc2 (1.03125 - 0.5625) x 14,336 = 6,720: 1,728 bytes
    assert sum(fp8.values()) - sum(fp4.values()) == pytest.approx(1728 * S / 2, rel=1e-12)


def test_without_a_backward_gather_every_linear_keeps_one_nvfp4_copy():
    # TP 1 (and TP 2 without sequence parallelism): nothing is gathered again, so the row-wise copy is dropped (without
    # sequence parallelism the norm outputs are whole on every rank: Korthikanti et al. Sec. 4.2.2)
    for st in (llama8b(tensor=1), llama8b(sp=False)):
        got = saved(st)
        assert got["qkv input (norm1 output)"] == NVFP4 * S * H == 0.5625 * 8192 * 4096
        assert got["mlp input (norm2 output)"] == NVFP4 * S * H
    one = saved(llama8b(tensor=1))
    assert sum(one.values()) == pytest.approx(by_hand(NVFP4, 2 + NVFP4, NVFP4, NVFP4, 1), rel=1e-12)


def test_the_stage_activations_take_the_nvfp4_bytes():
    st = llama8b()
    d = derive.derive(st)
    # the stage's 32 layers, the embedding (nothing) and the head: its two 16-bit norm tensors and fp32 logits over TP
    head = (2 * 2 * S * H + 4 * S * 128256) / 2
    assert d.stages[0].activation_bytes == pytest.approx(32 * by_hand(2 * NVFP4, 2 + NVFP4, 2 * NVFP4, NVFP4, 2) + head,
                                                    rel=1e-12)  # fmt: skip


def test_weight_copies_are_two_nvfp4_copies_a_weight():
    st = llama8b()
    # a linear's weight: the row-wise copy (fprop) and the column-wise one (dgrad), each 0.5625 bytes a value
    assert memory.fp8_copy_bytes(st.sharding) == 2 * NVFP4 == 1.125
    # FP8 on Blackwell: the copy alone (no transpose: derive.fp8_transpose), 1 byte; NVFP4 always keeps both
    assert memory.fp8_copy_bytes(llama8b(fp4=False).sharding) == 1.0
    static, _ = derive.stage_memory(st, st.stages[0])
    # every linear of the 32 layers (qkv 4096 x 6144, proj 4096 x 4096, fc1 4096 x 28672, fc2 14336 x 4096) over TP 2
    per_layer = H * (A + 2 * KV) * D + A * D * H + H * 2 * F + F * H
    assert params.linear_weights(st.cfg, 0) == (per_layer, 0)
    assert static.fp8_weights == pytest.approx(32 * per_layer / 2 * 1.125, rel=1e-12)


def test_the_once_a_step_weight_cast_bytes():
    # one kernel a weight: read the 16-bit weight (2), write both NVFP4 copies (2 x 0.5625)
    assert kernels.fp8_weight_cast_bytes(False, True, fp4=True) == 2 + 2 * NVFP4 == 3.125
    assert kernels.fp8_weight_cast_bytes(False, True) == 4  # FP8: 2 + 1 + 1
    assert kernels.fp8_weight_cast_bytes(False, False) == 3
    st = llama8b()
    per_layer = sum(params.linear_weights(st.cfg, 0))
    ms = fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0])
    assert ms == pytest.approx(32 * per_layer / 2 * 3.125 / st.rates.hbm * 1e3, rel=1e-12)
    fp8 = llama8b(fp4=False)
    # FP8 on Blackwell writes the copy alone: 2 + 1
    assert ms / fp8_step_casts.fp8_weight_cast_ms(fp8, fp8.stages[0]) == pytest.approx(3.125 / 3, rel=1e-12)


def test_uncached_per_use_casts_take_the_nvfp4_bytes():
    st = llama8b(cache=False)
    rows = [k for k in derive.layer_kernels(st, 0) if "weights fp8 cast (uncached)" in k.name]
    assert rows
    per_layer = sum(params.linear_weights(st.cfg, 0)) / 2
    assert sum(k.bytes for k in rows) == pytest.approx(per_layer * 3.125, rel=1e-12)
    # and uncached, the rank holds the largest layer's copies only, at NVFP4's bytes
    static, _ = derive.stage_memory(st, st.stages[0])
    assert static.fp8_weights == pytest.approx(per_layer * 1.125, rel=1e-12)
