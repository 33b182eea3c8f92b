"""A checkpointed layer's first forward as Transformer Engine runs it with autograd off (issue 21, s21t; docs/model.md,
"What a checkpointed forward skips").

What the code does (read in NVIDIA/TransformerEngine release_v0.8 8e5f00f, release_v1.6 c81733f, release_v1.14
3b2a7b0, release_v2.8 40c69e7; NVIDIA/Megatron-LM @ 1e05700):
* Megatron-core's full recomputation checkpoints each layer with ``te_checkpoint`` under FP8 (``tensor_parallel.
  checkpoint`` in BF16); both run the first forward under ``torch.no_grad()`` (TE ``distributed.py``
  ``_CheckpointFunction.forward``) and the rerun under ``torch.enable_grad()``.  So the first forward's modules see
  ``is_grad_enabled`` False, as an evaluation's do: LayerNormLinear / LayerNormMLP turn the userbuffers all-gather
  overlap off (release_v1.14 ``layernorm_linear.py`` line 117, ``layernorm_mlp.py`` line 150) and gather with NCCL
  before one whole GEMM; Linear casts its input with ``cast_to_fp8``, not ``fp8_cast_transpose_fused`` (release_v1.14
  ``linear.py`` lines 116-139: ``is_grad_enabled and weight.requires_grad and not sequence_parallel``).
* Delayed scaling: each FP8 module's ``prepare_forward`` clones its forward amax history, scale and scale_inv in
  the first forward (``copy_forward_fp8_meta_tensors_for_recompute``: 3 clones) and copies them in and back around
  the rerun (release_v1.14 ``get_old_fp8_meta_tensors_for_recompute``, ``restore_fp8_meta_tensors``: 3 + 3 copy_).
* The FP8 weight's transposed copy is still made in the first forward (release_v1.14 ``module/base.py``
  ``get_fp8_workspace``: ``with_transpose_cache`` True when activation recompute is on and not in the rerun).

The layer: the MLPerf v3.1 GPT-3 175B row (TP 4 + SP, userbuffers, FP8 delayed scaling, TE v0.7-v1.6's
cast-transpose kernel) with ``memory.recompute = "full"``: no validation row runs it so (they run none).  Preset
figures (tests/test_eval_forward_kernels.py checks them): H100 HBM 2.90 TB/s, kernel floor 2.5 us, NCCL on NVLink
25.5 us + bytes x (t - 1) / t / 321 GB/s; #101's cast-transpose kernel at 1.292 TB/s."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels

VAL = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
GPT3_V31 = VAL / "mlperf31-gpt3-512.toml"
QWEN3_30B = VAL / "pai643-qwen3-30b-a3b-pp4ep4.toml"
HBM, FLOOR, LAT, BUS = 2.90e12, 2.5e-6, 25.5e-6, 321e9
CAST_TRANSPOSE = 4 * 4096**2 / 51.95e-6  # NVIDIA/TransformerEngine#101: 4,096^2 cast + transpose in 51.95 us
# GPT-3 175B at TP 4, micro-batch 1 x 2,048: n tokens, hidden h, heads a rank a_t of d
N, H, A_T, D = 2048, 12288, 24, 128
BF16 = ["model.fp8_amax_reduction", "model.te_cast_transpose", "parallel.tp_overlap_atomic"]  # FP8-only keys of the row
UB = ["parallel.tp_overlap_sms", "parallel.tp_overlap_not_told", "parallel.tp_overlap_ring_rs"]  # userbuffers' keys


def _setup(path, recompute, *extra, unset=()):
    return derive.setup(scenario.load(path, [f"memory.recompute={recompute}", *extra], unset))


def _forward(rows):
    return [k for k in rows if k.component.endswith("_forward")]


def _key(k):
    return (k.name, k.component, k.shape, k.bytes, k.seconds)


def test_the_first_forward_by_hand():
    none, full = (_setup(GPT3_V31, r) for r in ("none", "full"))
    assert none.layout.cast_transpose_share * HBM == pytest.approx(CAST_TRANSPOSE, rel=1e-12)
    assert none.layout.amax_history == 1024
    fn, ff = (_forward(derive.layer_kernels(st, 1)) for st in (none, full))
    gone = [k for k in fn if _key(k) not in {_key(x) for x in ff}]
    new = [k for k in ff if _key(k) not in {_key(x) for x in fn}]
    assert [(k.name, k.component) for k in gone] == [
        ("qkv", "attn_forward"), ("tp all-gather (ring overlap)", "attn_forward"),
        ("out_proj input cast", "attn_forward"),
        ("fc1", "mlp_forward"), ("tp all-gather (ring overlap)", "mlp_forward")]
    assert [(k.name, k.component) for k in new] == [
        ("qkv", "attn_forward"), ("tp all-gather", "attn_forward"), ("out_proj input cast", "attn_forward"),
        ("fc1", "mlp_forward"), ("tp all-gather", "mlp_forward"),
        ("fp8 scaling state stash (checkpoint)", "attn_forward"),
        ("fp8 scaling state stash (checkpoint)", "mlp_forward")]
    by = {(k.name, k.component): k for k in new}
    old = {(k.name, k.component): k for k in gone}
    # out_proj's input cast: n x a_t x d = 6,291,456 values; with autograd on read 2 B, write 1 B twice at the
    # cast-transpose kernel's 1.292 TB/s (22.0 us); off, one FP8 copy at HBM speed (9.0 us)
    elems = N * A_T * D
    assert elems == 6_291_456
    cast, cast_on = by[("out_proj input cast", "attn_forward")], old[("out_proj input cast", "attn_forward")]
    assert (cast_on.bytes, cast.bytes) == (4 * elems, 3 * elems)
    assert cast_on.seconds == pytest.approx(FLOOR + 4 * elems / CAST_TRANSPOSE, rel=1e-12)  # 21.98 us
    assert cast.seconds == pytest.approx(FLOOR + 3 * elems / HBM, rel=1e-12)  # 9.01 us
    # the FP8 norm output (n x h, 1 B) gathered by NCCL before the GEMM: all exposed, 84.3 us each
    for comp in ("attn_forward", "mlp_forward"):
        gather = by[("tp all-gather", comp)]
        assert gather.bytes == N * H == 25_165_824
        assert gather.seconds == pytest.approx(LAT + N * H * 3 / 4 / BUS, rel=1e-12)
        assert "splits" in old[("qkv" if comp == "attn_forward" else "fc1", comp)].shape
        assert "splits" not in by[("qkv" if comp == "attn_forward" else "fc1", comp)].shape
    # the scaling state: 2 modules a block (qkv, out_proj; fc1, fc2) of 3 forward amaxes each, history 1,024 + scale
    # + scale_inv in fp32, cloned (read + write): 2 x 2 x 3 x 1,026 x 4 = 49,248 B in 6 kernels, 15.02 us
    for comp in ("attn_forward", "mlp_forward"):
        stash = by[("fp8 scaling state stash (checkpoint)", comp)]
        assert stash.bytes == 2 * 2 * 3 * 1026 * 4 == 49_248
        assert stash.seconds == pytest.approx(6 * FLOOR + 49_248 / HBM, rel=1e-12)
    # and in the rerun 6 copies a module: 12 kernels, twice the bytes
    swaps = [k for k in derive.layer_kernels(full, 1) if k.name == "fp8 scaling state swap (recompute)"]
    assert [(k.component, k.bytes) for k in swaps] == [("attn_backward_input", 98_496), ("mlp_backward_input", 98_496)]
    assert all(k.seconds == pytest.approx(12 * FLOOR + 98_496 / HBM, rel=1e-12) for k in swaps)
    # the layer's first forward: 2 x (ring exposure + 4-split GEMM - NCCL gather - whole GEMM) + 13.0 us less cast
    # + 30.0 us of stashes; the GEMMs' difference is the tile model's, taken from the rows
    gemms = sum(old[(g, c)].seconds - by[(g, c)].seconds for g, c in (("qkv", "attn_forward"), ("fc1", "mlp_forward")))
    rings = sum(old[("tp all-gather (ring overlap)", c)].seconds for c in ("attn_forward", "mlp_forward"))
    saved = sum(k.seconds for k in fn) - sum(k.seconds for k in ff)
    expected = gemms + rings - 2 * (LAT + N * H * 3 / 4 / BUS) + (cast_on.seconds - cast.seconds) \
        - 2 * (6 * FLOOR + 49_248 / HBM)
    assert saved == pytest.approx(expected, rel=1e-9)


def test_one_rule_with_the_evaluation_forward():
    """The first forward's TE rows are the evaluation forward's (Layout.evaluation), and the rerun in the input
    gradient is the forward without recomputation, row for row (autograd on)."""
    none, full = (_setup(GPT3_V31, r) for r in ("none", "full"))
    evaluation = _forward(derive.layer_kernels(replace(none, evaluation=True), 1))
    first = [k for k in _forward(derive.layer_kernels(full, 1)) if "scaling state" not in k.name]
    assert [_key(k) for k in first] == [_key(k) for k in evaluation]
    tb = kernels._layer_table(full.cfg, 1, full.rates, full.layout)
    rerun = [replace(tb.rows[i], component=tb.rows[i].component.replace("_backward_input", "_forward"))
             for r in tb.reruns for i in r]
    assert [_key(k) for k in rerun] == [_key(k) for k in _forward(derive.layer_kernels(none, 1))]


def test_bf16_with_userbuffers_only_the_gathers_move():
    """BF16 (tensor_parallel.checkpoint, no FP8 state): only the two all-gathers and their GEMMs change."""
    none, full = (_setup(GPT3_V31, r, "model.fp8=false", unset=BF16) for r in ("none", "full"))
    fn, ff = (_forward(derive.layer_kernels(st, 1)) for st in (none, full))
    new = [(k.name, k.component) for k in ff if _key(k) not in {_key(x) for x in fn}]
    assert new == [("qkv", "attn_forward"), ("tp all-gather", "attn_forward"),
                   ("fc1", "mlp_forward"), ("tp all-gather", "mlp_forward")]
    # without userbuffers nothing moves
    none, full = (_setup(GPT3_V31, r, "model.fp8=false", "parallel.tp_comm_overlap=false",
                         unset=BF16 + UB)
                  for r in ("none", "full"))
    assert [_key(k) for k in _forward(derive.layer_kernels(none, 1))] == \
        [_key(k) for k in _forward(derive.layer_kernels(full, 1))]


def test_current_scaling_stashes_nothing():
    """Current scaling keeps no amax history: TE release_v2.8 returns unless ``recipe.delayed()``."""
    full = _setup(GPT3_V31, "full", "model.fp8_recipe=current",
                  unset=["model.fp8_amax_reduction", "model.te_cast_transpose"])
    assert not [k for k in derive.layer_kernels(full, 1) if "scaling state" in k.name]


def test_an_evaluation_skips_the_aux_loss():
    """router.py computes the aux loss only ``if self.training and torch.is_grad_enabled()``: an evaluation's forward
    has none, as a checkpoint's first forward has none."""
    st = derive.setup(scenario.load(QWEN3_30B))
    assert st.layout.aux_loss
    names = {k.name for k in derive.layer_kernels(replace(st, evaluation=True), 0)}
    assert not {"aux-loss scores", "aux loss"} & names
    assert {"aux-loss scores", "aux loss"} <= {k.name for k in derive.layer_kernels(st, 0)}


def test_recompute_mlp_stashes_the_mlp_modules_only():
    """--recompute-modules mlp checkpoints the dense MLP alone (te_checkpoint under FP8, transformer_layer.py @
    1e05700 lines 586-601): fc1's gather runs by NCCL and fc1 / fc2 stash their state; the attention is untouched."""
    none = _setup(GPT3_V31, "none")
    mlp = _setup(GPT3_V31, "selective", 'memory.recompute_modules=["mlp"]')
    stash = [(k.component, k.bytes) for k in derive.layer_kernels(mlp, 1) if "scaling state" in k.name]
    assert stash == [("mlp_forward", 49_248), ("mlp_backward_input", 98_496)]
    fn, fm = (_forward(derive.layer_kernels(st, 1)) for st in (none, mlp))
    assert [_key(k) for k in fn if k.component == "attn_forward"] == \
        [_key(k) for k in fm if k.component == "attn_forward"]
    assert ("tp all-gather", "mlp_forward") in {(k.name, k.component) for k in fm}
