"""[step] figures from the model: derived sync times, and the tokens and FLOPs of a step.

Kept apart from step.py so that the end-of-step simulation (and step_metrics.py,
which types its block) never import the model package.  docs/step.md gives the formulas.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from ..step_costs import Throughput
from . import collectives, ddp_buckets, derive, flops, kernels, loop_step, params, shard_pieces
from .config import ModelError

# Bytes an Adam step reads and writes per parameter it updates, beyond the two moments: the fp32
# master weight (read + write), the fp32 gradient (read) and the new 16-bit weight (write).
ADAM_FIXED_BYTES = 4 + 4 + 4 + 2
# Passes Megatron's mixed-precision optimizer makes around Adam (megatron/optimizer/ at 6985e58, 2021;
# megatron/core/optimizer/ today), bytes per parameter: the gradient norm for clipping (multi_tensor_l2norm
# reads the fp32 gradient; --clip-grad is 1.0 by default); the copy of the updated fp32 master weight
# into the 16-bit one (_copy_main_params_to_model_params, a pass of its own: it reads the fp32 weight,
# its 16-bit write is counted above); with fp16 weights the loss-scale unscale and inf check
# (_amp_foreach_non_finite_check_and_unscale_: reads and writes the fp32 gradient); with 16-bit
# gradients their cast into fp32 main gradients (main_param.grad = model_param.grad.float()).
GRAD_NORM_BYTES = 4
MASTER_COPY_BYTES = 4
UNSCALE_BYTES = 4 + 4
GRAD_CAST_BYTES = 2 + 4
# DeepSpeed's data-parallel all-reduce of its fp32 gradients (v0.6.5 runtime/engine.py, allreduce_bucket):
# cast to the communication dtype (bf16 for a bf16 run: read 4, write 2), scaled by 1/D after the
# all-reduce (read 2, write 2), copied back into the fp32 gradient (read 2, write 4).
DS_BF16_COMM_PASSES = (4 + 2) + (2 + 2) + (2 + 4)
BF16 = 2  # bytes: DeepSpeed's bf16 communication dtype and bf16 weights
# SMs a data-parallel ring reduce-scatter / all-gather occupies (step.dp_comm_sms' default): collectives.NCCL_DP_CTAS.
NCCL_DP_CTAS = collectives.NCCL_DP_CTAS
# FP8 parameters (model.fp8_params, Megatron-core's --fp8-param-gather): the distributed optimizer skips the 16-bit
# copy of an FP8 weight's shard ("FP8 params are quantized in the above quantize_param_shard", distrib_optimizer.py
# _copy_main_params_to_model_params @ 25.09-alpha.rc1 d339190), so the copy's read 4 / write 2 go, and
# quantize_param_shard hands every FP8 weight to Transformer Engine's cast_master_weights_to_fp8 (fp8_utils.py, TE >= 2.2;
# tensor/utils.py @ release_v2.8 40c69e7): per shard, master_weight.to(bf16) (read 4, write 2), with current scaling
# tex.compute_amax of that bf16 shard (read 2: zero_amax_kernel + amax kernel), then the cast (read 2, write 1, and 1
# more where TE makes transposes: the weight's quantizer asks for column-wise data, so quantizer.cpp
# convert_and_update_tensor gives the shard a transpose on GPUs without non-TN FP8 GEMMs and the cast writes it;
# delayed scaling's cast also records the shard's amax). docs/step.md, "FP8 parameters' optimizer-side cast".
FP8_SHARD_TO_BF16 = 4 + 2
FP8_SHARD_AMAX = 2
FP8_SHARD_CAST_READ = 2
# kernels per FP8 weight with a shard on the rank: delayed, the bf16 copy, 1 / scale (create_tensor_from_data's
# fp8_scale_inv, a CUDA op) and the cast; current, the bf16 copy, compute_amax's two and the cast
FP8_SHARD_KERNELS = {"delayed": 3, "current": 4}
# The same with apex's DistributedFusedAdam under NeMo (step.param_gather = "apex"; NeMo v2.0.0.rc0.beta and
# 24.09-alpha.rc0 nemo/core/optim/distributed_adam.py, apex 24.04 / 24.09 distributed_fused_adam.py): an FP8 weight's
# bucket syncs in uint8, so step() hands the Adam kernel the fp32 master shard itself as its output (a non-floating
# param_sync_dtype takes state_bucket.params_shard): no 16-bit weight is written and no copy pass runs (the 2 + 4 of
# the copy skipped); _check_params_shard_dtypes then casts each fragment of the fp32 shard straight to FP8 with
# Transformer Engine 1.x's cast_to_fp8 (read 4, write 1; the kernel records the amax; no transpose): one kernel a
# fragment.  Delayed scaling only (it reads the weight's fp8_meta).  docs/step.md, "FP8 parameters' optimizer-side cast".
APEX_FP8_SHARD_CAST = 4 + 1
APEX_FP8_SHARD_KERNELS = 1
# apex's Adam step itself (step.param_gather = "apex"; apex 23.05-24.09 contrib/optimizers/distributed_fused_adam.py
# _local_step, _local_step_with_param_remainders; contrib/csrc/optimizers/multi_tensor_distopt_adam_kernel.cu, the same
# kernels at all four tags): one fused kernel reads each shard element's master, two moments and 16-bit gradient and
# writes the master, the moments and the element's param-sync copy (p_out), so there is no copy pass and no gradient
# cast.  The master is what NeMo's megatron_base_model.setup_optimization picks: with FP8 parameters store_params (an
# fp32 shard, read and written: 4 + 4; an FP8 bucket's p_out is that shard itself, nothing more written), else with
# bf16 weights store_param_remainders (the bf16 weight read, a 16-bit remainder read and written: 2 + 2 + 2).  The
# gradient norm (_local_grad_norm, multi_tensor_l2norm) reads the 16-bit gradient shard once more.
APEX_REMAINDER_BYTES = 2 + 2 + 2
APEX_FP32_MASTER_BYTES = 4 + 4
# apex multi_tensor_apply.py MultiTensorApply(2048 * 32) and csrc/multi_tensor_apply.cuh depth_to_max_blocks (320):
# one launch carries at most 320 chunks of 65,536 elements
APEX_ELEMENTS_PER_LAUNCH = 320 * 2048 * 32
# launches once per step besides those: the Adam kernel at least once per multi_tensor_applier call, one per (param group,
# dtypes) in each of step()'s two _local_step calls (the first bucket's, then the rest: 2 x NeMo's 2 weight-decay
# groups), and the norm's cleanup kernel
APEX_FIXED_LAUNCHES = 2 * 2 + 1
# NeMo's with_fp32_embedding_grads (step.fp32_embedding_grads; NeMo v2.0.0.rc0.beta and 24.09-alpha.rc0
# megatron_gpt_model.py configure_optimizers, default True): the word embedding (first and, tied, last pipeline stage)
# and the learned positions get _with_fp32_optimizer, which distributed_adam.py init_params_bucket puts in buckets of
# grad_sync_dtype float32, so their reduce-scatter and the tied all-reduce of their main_grad (a view of apex's fp32
# grad buffer) carry 4 bytes an element
FP32_GRAD_BYTES = 4.0
# apex's Adam step reads each shard element's gradient twice in its bucket's grad_sync_dtype: the fused kernel
# (_local_step: grads_bucket.grads_shard) and the clip norm (_local_grad_norm groups the shards by grad_sync_dtype);
# so an fp32 embedding shard element streams 2 x (4 - model.grads_dtype) bytes more (apex_adam_ms)
APEX_GRAD_READS = 2
# NeMo 1.x's explicit fp32 optimizer for the embeddings (step.fp32_embedding_optimizer; NVIDIA/NeMo v1.17.0_pt_23.04 and
# bd0b818 nemo/core/optim/distributed_adam.py, MegatronDistributedFusedAdam): the parameters named word_embedding /
# position_embedding (megatron_base_model.py setup_optimization) get fp32 copies in a plain torch.optim.AdamW, outside
# apex.  Once a step, per element of those fp32 copies, on every data-parallel rank (unsharded): NeMo's step()
# multiplies the gradient by the grad scale (read 4, write 4), its grad_norm() reads it (torch.linalg.norm, 4), the
# AdamW step, then copy_ into the 16-bit model parameter (read 4, write 2); its zero_grad zeroes the gradient (write 4).
NEMO_FP32_OPTIM_BYTES = (4 + 4) + 4 + (4 + 2) + 4
# torch.optim.AdamW's default on CUDA tensors, _multi_tensor_adamw without capturable (pytorch/pytorch
# torch/optim/adamw.py @ 002d2f0; the images' 2.1.0a0 builds were not read): _foreach_mul_ of the params (weight
# decay: 4 + 4), _foreach_lerp_ of exp_avg toward the grad (4 + 4 + 4), _foreach_mul_ and _foreach_addcmul_ of
# exp_avg_sq (4 + 4, then exp_avg_sq, grad, grad read and exp_avg_sq written: 16), _foreach_sqrt into a new list
# (4 + 4), _foreach_div_ and _foreach_add_ on it (8 each), _foreach_addcdiv_ of the params (params, exp_avg, denom read,
# params written: 16): 8 foreach kernels, 84 bytes an element
TORCH_ADAMW_BYTES = (4 + 4) + (4 + 4 + 4) + (4 + 4) + (4 + 4 + 4 + 4) + (4 + 4) + (4 + 4) + (4 + 4) + (4 + 4 + 4 + 4)
TORCH_ADAMW_FOREACH = 8
# kernels NeMo launches per fp32 tensor besides: the grad-scale multiply, the norm, its square / process-group division /
# accumulation (3), the copy_ into the model parameter; and one foreach zero_ (zero_grad(set_to_none=False))
NEMO_FP32_PER_TENSOR = 1 + 1 + 3 + 1
NEMO_FP32_FOREACH = 1
# NeMo v1.17.0_pt_23.04's feed of that AdamW (step.fp32_embedding_grad_add; nemo/core/optim/distributed_adam.py
# _fp32_optim_grad_sync, lines 173-175, and zero_grad, lines 198-199): the embeddings' bf16 .grad, which autograd keeps
# (apex's post-backward hook skips them), is added into the fp32 copy's gradient once a step before the all-reduce,
# ``main_param.grad += model_param.grad`` (read 4 + 2, write 4), and zeroed at the next zero_grad (write 2): two
# kernels a tensor that has a .grad.  Only on the embedding stage: the tied head's copy gets its gradient through
# gradient_accumulation_fusion straight into main_grad (the v3.0 megatron_gpt_config.yaml sets it), so its .grad is
# None.  bd0b818 (v3.1) runs the add in a hook every micro-batch and sets .grad to None: not this key (the
# backward's, derive.embedding_grad_bytes).
NEMO_GRAD_ADD_BYTES = (4 + 2 + 4) + 2
NEMO_GRAD_ADD_KERNELS = 2
# TE's multi_tensor_apply.cuh (depth_to_max_tensors): tensors one multi-tensor launch takes, by list count (depth)
MULTI_TENSOR_MAX = {2: 64, 3: 48}


def optimizer_bytes_per_param(model_section, optimizer_bytes: float) -> float:
    """HBM bytes one Adam step of Megatron's mixed-precision optimizer streams per parameter."""
    m = model_section
    per_param = ADAM_FIXED_BYTES + 2 * (optimizer_bytes - 4) + GRAD_NORM_BYTES  # the two moments read and written
    if m.master_weights:
        per_param += MASTER_COPY_BYTES
        if m.grads_dtype in ("fp16", "bf16"):
            per_param += GRAD_CAST_BYTES
    if m.params_dtype == "fp16":
        per_param += UNSCALE_BYTES
    return per_param


def fp8_shard_bytes(recipe: str, transpose: bool, master_weights: bool = True) -> float:
    """HBM bytes per FP8-parameter shard element that Transformer Engine's optimizer-side cast streams beyond the
    16-bit copy it replaces (FP8_SHARD_*): delayed 6 + 2 + 1 (+ 1 transposed) - 6, current 2 more for the amax."""
    skipped = 2 + (MASTER_COPY_BYTES if master_weights else 0)  # optimizer_bytes_per_param's copy pass
    cast = FP8_SHARD_TO_BF16 + FP8_SHARD_CAST_READ + (2.0 if transpose else 1.0)
    return cast + (FP8_SHARD_AMAX if recipe == "current" else 0) - skipped


def apex_fp8_shard_bytes() -> float:
    """HBM bytes per FP8-parameter shard element of NeMo's cast on apex: the fp32 shard read and the FP8 byte written
    (APEX_FP8_SHARD_CAST).  Nothing is skipped: apex's Adam (apex_adam_bytes) writes no 16-bit copy of an FP8 element."""
    return APEX_FP8_SHARD_CAST


def apex_adam_bytes(model_section, sharding) -> tuple[float, float]:
    """HBM bytes apex's DistributedFusedAdam streams per shard element it updates, (a 16-bit-synced element, an
    FP8-parameter element): its fused kernel's reads and writes (the master as NeMo stores it, the two moments read and
    written, the gradient read, the param-sync copy written) and the gradient norm's read (APEX_* above)."""
    m, sh = model_section, sharding
    moments = 2 * (sh.optimizer_bytes - (4.0 if m.master_weights else 0.0))
    if m.fp8_params or not m.master_weights or m.params_dtype != "bf16":
        master = APEX_FP32_MASTER_BYTES if m.master_weights else 2 * sh.params_bytes
    else:
        master = APEX_REMAINDER_BYTES
    common = master + moments + 2 * sh.grads_bytes  # the kernel's gradient read and the norm's
    return common + sh.params_bytes, common


def apex_adam_launches(elements: float) -> int:
    """Kernels apex's Adam step and its gradient norm launch over ``elements`` shard elements, beyond the fixed ones
    (APEX_FIXED_LAUNCHES): each multi_tensor_apply launch takes APEX_ELEMENTS_PER_LAUNCH, one kernel of each."""
    return 2 * -(-int(elements) // APEX_ELEMENTS_PER_LAUNCH) if elements > 0 else 0


def apex_adam_ms(scenario, st, where, stage, once: float) -> tuple[float, float]:
    """(HBM bytes, ms) of apex's Adam step over a stage copy's shard on its rank (step.param_gather = "apex"): the
    shard's 16-bit and FP8 elements at apex_adam_bytes (with step.fp32_embedding_grads the embedding's elements read
    their fp32 gradient twice: APEX_GRAD_READS), its launches at the kernel floor, and the rank's fixed launches
    weighted by ``once`` (1 / the stage copies the rank holds)."""
    sh, rates = st.sharding, st.rates
    shard = (1 / sh.data, 1 / sh.expert_data) if sh.zero >= 1 else (1.0, 1.0)
    dense, routed = stage.dense_params / sh.tensor * shard[0], stage.routed_params / sh.routed_ranks * shard[1]
    fp8 = fp8_param_elements(st, where) if scenario.model.fp8_params else (0.0, 0.0)
    fp8_shard = fp8[0] * shard[0] + fp8[1] * shard[1]
    wide, narrow = apex_adam_bytes(scenario.model, sh)
    nbytes = (dense + routed - fp8_shard) * wide + fp8_shard * narrow
    if scenario.step is not None and scenario.step.fp32_embedding_grads:  # the embedding's fp32 gradient shard
        nbytes += fp32_embedding_extra_bytes(st, where) * shard[0] * APEX_GRAD_READS
    launches = apex_adam_launches(dense + routed) + APEX_FIXED_LAUNCHES * once
    return nbytes, (nbytes / rates.hbm + launches * rates.floor) * 1e3


def apex_fp8_cast_fixed_launches(tensors: int) -> int:
    """Kernels NeMo's _check_params_shard_dtypes launches once per step over ``tensors`` FP8 weights, besides the amax
    all-reduce: four packed copies (scales in, scale-inverses out, amaxes in and out; apex's _multi_tensor_copy, the
    fused maybe_cast_mt, 64 one-element tensors a launch at depth 2: csrc/multi_tensor_apply.cuh) and
    torch.reciprocal; its packed buffers are torch.empty, no kernel."""
    return 4 * -(-tensors // MULTI_TENSOR_MAX[2]) + 1 if tensors > 0 else 0


def fp8_cast_fixed_launches(recipe: str, tensors: int) -> int:
    """Kernels cast_master_weights_to_fp8 launches once per optimizer call over ``tensors`` FP8 weights (every FP8
    weight in the optimizer's buffers, shard or not), besides the amax all-reduce: delayed, the overflow buffer's
    zeros, four multi_tensor_scale copies (amaxes and scales packed and unpacked) and torch.reciprocal; current, two
    zeros (overflow buffer, packed amaxes) and multi_tensor_compute_scale_and_scale_inv (MULTI_TENSOR_MAX a launch)."""
    if tensors <= 0:
        return 0
    if recipe == "current":
        return 2 + -(-tensors // MULTI_TENSOR_MAX[3])
    return 1 + 4 * -(-tensors // MULTI_TENSOR_MAX[2]) + 1


def fp8_param_tensors(st, where) -> tuple[int, int]:
    """(dense, routed) FP8 weights one rank holds of a stage copy: one per Transformer Engine linear
    (kernels.fp8_linears; a GroupedLinear's weight per local expert), an MTP module's layer and its projection."""
    cfg, lay = st.cfg, st.layout
    dense = routed = 0
    for i in list(where.layers) + [cfg.num_layers] * where.mtp:
        experts = 2 * max(1, cfg.num_experts // lay.expert) if cfg.is_moe_layer(i) else 0
        dense += kernels.fp8_linears(cfg, i, lay) - experts
        routed += experts
    return dense + where.mtp, routed


def fp8_amax_all_reduce_ms(st, dense_tensors: int, routed_tensors: int) -> float:
    """cast_master_weights_to_fp8's amax all-reduce (MAX) of one fp32 per FP8 weight, packed, once per optimizer:
    Megatron-core's dense optimizer over the data x context ranks (intra_dp_cp_group), its expert optimizer over the
    expert-data ranks; torch.distributed.all_reduce without async_op, so the compute stream waits (ms, NCCL's latency
    model: collectives.small_all_reduce)."""
    sh, nccl = st.sharding, st.rates.nccl
    dense = collectives.small_all_reduce(sh.data, st.group("dp-cp").per_node, nccl) if dense_tensors else 0.0
    edp = int(sh.expert_data)
    routed = collectives.small_all_reduce(edp, st.group("edp").per_node, nccl) if routed_tensors else 0.0
    return (dense + routed) * 1e3


def fp8_master_cast_ms(scenario, st, derived=None) -> list[float]:
    """Per stage copy, what Transformer Engine's optimizer-side cast of a rank's FP8 weight shards adds to its
    optimizer figure (ms; ``model.fp8_params``): after the Adam step, before the parameter all-gather
    (Megatron-core's step_with_ready_grads -> _copy_main_params_to_model_params -> quantize_param_shard ->
    cast_master_weights_to_fp8).  The copy's bytes beyond the 16-bit copy it replaces (fp8_shard_bytes) over the
    preset's HBM bandwidth, FP8_SHARD_KERNELS launch floors per FP8 weight with a piece in the rank's shard (one
    with none there launches nothing of its own: TE's loops ``continue``; shard_pieces.fp8_pieces counts them where
    shard_counted; elsewhere, and for apex's fragments, every weight is taken to have one: an upper bound, exact
    without ZeRO), and once per rank, spread over the stage copies it
    holds, the launches around the amax all-reduce (fp8_cast_fixed_launches) and that all-reduce itself.  With
    ``step.param_gather = "apex"`` the optimizer is apex's DistributedFusedAdam under NeMo, whose cast is its own
    (apex_fp8_shard_bytes, APEX_FP8_SHARD_KERNELS, apex_fp8_cast_fixed_launches); the all-reduce is the same."""
    sh, rates, m = st.sharding, st.rates, scenario.model
    apex = scenario.step is not None and scenario.step.param_gather == "apex"
    held = derive.stage_ranks(scenario) or [{s} for s in range(len(st.stages))]
    tensors = [fp8_param_tensors(st, where) for where in st.stages]
    # rank: [dense weights, routed weights, stage copies held, its first chunk's dense weights]
    per_rank: dict[int, list[int]] = {}
    for ranks, (d, r) in zip(held, tensors):
        for rank in ranks:
            total = per_rank.setdefault(rank, [0, 0, 0, d])
            total[0], total[1], total[2] = total[0] + d, total[1] + r, total[2] + 1
    per_element = apex_fp8_shard_bytes() if apex else fp8_shard_bytes(m.fp8_recipe, sh.fp8_transpose,
                                                                       m.master_weights)
    # Megatron-core's overlap_param_gather_with_optimizer_step: the first chunk's dense optimizer is one of its own
    # (optimizer/__init__.py, all_dense_model_chunks = [[model_chunks[0]], model_chunks[1:]]), so two casts' fixed
    # launches and two amax all-reduces; the experts' optimizer stays one
    split = not apex and scenario.step is not None and scenario.step.overlap_param_gather_with_optimizer_step
    per_weight = APEX_FP8_SHARD_KERNELS if apex else FP8_SHARD_KERNELS[m.fp8_recipe]
    counted = shard_pieces.fp8_pieces(scenario, scenario.derived() if derived is None else derived, held) \
        if not apex and shard_counted(scenario, st) else None

    def fixed_launches(tensors: int) -> int:
        return apex_fp8_cast_fixed_launches(tensors) if apex else fp8_cast_fixed_launches(m.fp8_recipe, tensors)

    out = []
    for s, where in enumerate(st.stages):
        dense, routed = fp8_param_elements(st, where)
        if sh.zero >= 1:  # the distributed optimizer's shard (Megatron-core needs it for --fp8-param-gather)
            dense, routed = dense / sh.data, routed / sh.expert_data
        launches = (sum(tensors[s]) if counted is None else counted[s]) * per_weight
        ms = ((dense + routed) * per_element / rates.hbm + launches * rates.floor) * 1e3
        if held[s]:  # the rank's once-per-step part, spread evenly over the copies it holds (as _once_per_rank)
            d, r, copies, first = per_rank[min(held[s])]
            fixed = fixed_launches(d) + fixed_launches(r)
            if split and d > first:  # the first chunk's dense cast apart: its own fixed launches and all-reduce
                fixed += fixed_launches(first) + fixed_launches(d - first) - fixed_launches(d)
                ms += (fp8_amax_all_reduce_ms(st, first, 0) + fp8_amax_all_reduce_ms(st, d - first, 0)
                       - fp8_amax_all_reduce_ms(st, d, 0)) / copies
            ms += (fixed * rates.floor * 1e3 + fp8_amax_all_reduce_ms(st, d, r)) / copies
        out.append(ms)
    return out


def shard_counted(scenario, st) -> bool:
    """Whether the rank's shard is counted piece by piece (shard_pieces.py): Megatron-core's distributed optimizer
    (megatron_core_optimizer, ZeRO 1+) with the kernel-level model, dense models only (the experts' buffer is not
    counted)."""
    return megatron_core_optimizer(scenario) and st.rates is not None and st.sharding.zero >= 1 and not st.cfg.moe


def megatron_core_optimizer(scenario) -> bool:
    """Whether the step's end is Megatron-core's DDP and optimizer (step.runtime "megatron", step.param_gather
    "megatron-core", not model.runtime "megatron-lm-2021"): the runtime whose step start and gradient norm
    grad_zero_ms and grad_norm_all_reduce_ms read (apex's DistributedFusedAdam, DeepSpeed's and Megatron-LM 2021's
    optimizers were not read for them)."""
    step, m = scenario.step, scenario.model
    return (step is not None and step.runtime == "megatron" and step.param_gather == "megatron-core"
            and m is not None and m.runtime != "megatron-lm-2021")  # fmt: skip


def grad_zero_ms(st, stage) -> float:
    """Megatron-core's DDP zeroes its gradient buffers at each step's start (ms; DistributedDataParallel.zero_grad_buffer
    -> _ParamAndGradBuffer.reset: grad_data.zero_(), @ 25.09-alpha.rc1 d339190), which NeMo's
    MegatronStrategy.training_step calls before the forward, outside the whole-iteration CUDA graph: the stage copy's
    whole gradient buffer written once (model.grads_dtype bytes an element) at the HBM rate, one fill kernel a buffer
    (one per parameter dtype: the FP8 parameters' buffer apart; the experts' apart)."""
    sh = st.sharding
    nbytes = (stage.dense_params / sh.tensor + stage.routed_params / sh.routed_ranks) * sh.grads_bytes
    buffers = (2 if sh.fp8_params else 1) + (1 if stage.routed_params else 0)
    return (nbytes / st.rates.hbm + buffers * st.rates.floor) * 1e3


def grad_norm_ranks(scenario, st) -> int:
    """Ranks the gradient norm's square is summed over: Megatron-core's distributed optimizer, the whole world
    (get_grad_stats_parallel_group, distrib_optimizer.py); otherwise its model-parallel group (tensor x pipeline)."""
    sh = st.sharding
    return sh.tensor * derive.pipeline_ranks(scenario) * (sh.data if sh.zero >= 1 else 1)


def grad_norm_all_reduce_ms(scenario, st) -> float:
    """The clip's gradient norm summed over its ranks (ms, once per rank a step): get_grad_norm_fp32
    (clip_grads.py @ d339190) all-reduces one fp32 and reads it back with .item(), so the rank waits for it before
    the Adam step; NCCL's latency model (collectives.small_all_reduce).  Its multi_tensor_l2norm is in the Adam
    figure's bytes (GRAD_NORM_BYTES)."""
    ranks = grad_norm_ranks(scenario, st)
    return collectives.small_all_reduce(ranks, grad_norm_group(scenario, st).per_node, st.rates.nccl) * 1e3


def grad_norm_group(scenario, st):
    """Where grad_norm_ranks sit (placement.group): the whole world, or the model-parallel group (tensor x pipeline)."""
    return st.group("world" if st.sharding.zero >= 1 else "tp-pp")


def fp32_embedding_extra_bytes(st, where) -> float:
    """Gradient bytes NeMo's fp32 embedding gradients add to a stage copy's reduction on its rank
    (step.fp32_embedding_grads): the embedding stage's word and position embeddings, and a tied head's own copy of
    the word embedding on another stage, at FP32_GRAD_BYTES an element instead of model.grads_dtype's; counted over
    tensor as the stage's dense parameters are."""
    cfg, sh = st.cfg, st.sharding
    elements = params.embedding_over_tensor(cfg, sh.tensor) if where.embedding else 0
    if where.head and cfg.tie_word_embeddings and not where.embedding:
        elements += cfg.vocab_size * cfg.hidden_size
    return elements / sh.tensor * (FP32_GRAD_BYTES - sh.grads_bytes)


def fp32_optimizer_params(cfg, where, tensor: int) -> int:
    """Whole-model parameter counts of a stage copy that NeMo 1.x's explicit fp32 AdamW holds instead of apex
    (step.fp32_embedding_optimizer), counted as the stage counts them (params.embedding_over_tensor on the embedding
    stage: the learned positions whole on each tensor rank; a tied head's own copy of the word embedding, V x h, on
    another stage): what apex's buckets and shards leave out."""
    n = params.embedding_over_tensor(cfg, tensor) if where.embedding else 0
    if not where.embedding and where.head and cfg.tie_word_embeddings:
        n += cfg.vocab_size * cfg.hidden_size
    return n


def fp32_optimizer_elements(st, where) -> float:
    """Elements of one rank's fp32 copies in NeMo 1.x's explicit AdamW for a stage copy: the word embedding's shard
    (V x h / tensor, a VocabParallelEmbedding) and the learned positions whole (max_positions x h: a
    torch.nn.Embedding on every tensor rank; NeMo v1.17.0_pt_23.04 language_model.py lines 256 and 263) on the
    embedding stage, a tied head's copy of the word embedding (V x h / tensor) on another stage."""
    cfg, sh = st.cfg, st.sharding
    n = 0.0
    if where.embedding:
        n += cfg.vocab_size * cfg.hidden_size / sh.tensor + cfg.max_positions * cfg.hidden_size
    if where.head and not where.embedding and cfg.tie_word_embeddings:
        n += cfg.vocab_size * cfg.hidden_size / sh.tensor
    return n


def apex_stage(scenario, st, where, stage):
    """The stage copy as apex's DistributedFusedAdam holds it: without the embeddings NeMo 1.x's explicit fp32 AdamW
    takes (step.fp32_embedding_optimizer; its filter keeps them out of apex's buckets, shards and all-gather)."""
    step = scenario.step
    if step is None or not step.fp32_embedding_optimizer:
        return stage
    return replace(stage, dense_params=stage.dense_params - fp32_optimizer_params(st.cfg, where, st.sharding.tensor))


def fp32_optimizer_all_reduce_ms(st, where) -> float:
    """NeMo 1.x's all-reduce (AVG) of a stage copy's fp32 embedding gradients over the data-parallel group
    (_fp32_optim_grad_sync: one coalesced group, the rank's fp32 tensors at 4 bytes), on the group's link (ms)."""
    nbytes = fp32_optimizer_elements(st, where) * FP32_GRAD_BYTES
    return _sync_ms(st, "grad_sync", nbytes, 0.0, op="all_reduce") if nbytes else 0.0


def fp32_adamw_bytes(st, where) -> float:
    """HBM bytes of NeMo 1.x's explicit fp32 AdamW step over a stage copy's fp32 embedding copies on its rank (every
    data-parallel rank runs it whole): TORCH_ADAMW_BYTES + NEMO_FP32_OPTIM_BYTES an element."""
    return fp32_optimizer_elements(st, where) * (TORCH_ADAMW_BYTES + NEMO_FP32_OPTIM_BYTES)


def fp32_adamw_ms(st, where) -> float:
    """That step's time (ms): its bytes at the HBM rate, and its launches at the kernel floor: each foreach op once per
    APEX_ELEMENTS_PER_LAUNCH elements (PyTorch's MultiTensorApply.cuh: chunks of 65,536, at most 320 blocks a launch,
    as apex's), NeMo's per-tensor kernels once per tensor."""
    elements = fp32_optimizer_elements(st, where)
    if not elements:
        return 0.0
    tensors = 2 if where.embedding and st.cfg.max_positions else 1  # word (and position) embedding
    per_op = -(-int(elements) // APEX_ELEMENTS_PER_LAUNCH)
    launches = (TORCH_ADAMW_FOREACH + NEMO_FP32_FOREACH) * per_op + NEMO_FP32_PER_TENSOR * tensors
    return (fp32_adamw_bytes(st, where) / st.rates.hbm + launches * st.rates.floor) * 1e3


def fp32_grad_add_elements(st, where) -> float:
    """Elements NeMo 1.17's step-end add streams on a stage copy (NEMO_GRAD_ADD_BYTES each): the embedding stage's
    word embedding shard (V x h / tensor) and learned positions (whole), its fp32 copies; none elsewhere."""
    if not where.embedding:
        return 0.0
    return fp32_optimizer_elements(st, where)


def fp32_grad_add_ms(st, where) -> float:
    """That add and zeroing on a stage copy (ms): its bytes at the HBM rate, NEMO_GRAD_ADD_KERNELS floors a tensor."""
    elements = fp32_grad_add_elements(st, where)
    if not elements:
        return 0.0
    tensors = 2 if st.cfg.max_positions else 1  # word (and position) embedding
    return (elements * NEMO_GRAD_ADD_BYTES / st.rates.hbm + NEMO_GRAD_ADD_KERNELS * tensors * st.rates.floor) * 1e3


def sequence_parallel_elements(cfg, where) -> int:
    """Whole-model counts of a stage copy's parameters Transformer Engine marks ``sequence_parallel`` (TE 09ba842 and
    v1.6rc1 layernorm_linear.py, layernorm_mlp.py, linear.py): each layer's two LayerNorms (weight and bias) and its
    row-parallel biases (the attention projection's and fc2's, with biases)."""
    h = cfg.hidden_size
    per_layer = 2 * params._norm(cfg, h) + (2 * h if cfg.bias else 0)
    return per_layer * len(where.layers)


def _held_ranks(scenario, st, ranks) -> set[int]:
    """The pipeline ranks holding a parameter NeMo marks _disable_overlap_grad_sync (step.grad_sync_held): every rank
    with sequence-parallel layers (TE sets the mark where tensor > 1), the head's rank for its final norm, the
    embedding's and a tied head's ranks for the word embedding (NeMo marks it with PP > 1 only)."""
    held, cfg, sh = set(scenario.step.grad_sync_held), st.cfg, st.sharding
    out = set()
    for s, where in enumerate(st.stages):
        mine = ranks[s]
        if "sequence-parallel" in held and st.sequence_parallel and sh.tensor > 1 and where.layers:
            out |= mine
        if "final-norm" in held and where.head:
            out |= mine
        tied = cfg.tie_word_embeddings and len(set().union(*ranks)) > 1  # NeMo: pipeline world size > 1
        if "embedding" in held and tied and (where.embedding or where.head) and not scenario.step.fp32_embedding_optimizer:
            out |= mine
    return out


@dataclass(frozen=True)
class NemoSync:
    """NeMo's end of step on apex, per stage copy (grad_sync_parts): the reduce-scatter overlapped as step.grad_sync
    describes it (``dense``, ``routed`` bytes in ``buckets``), the held group reduce-scattered in the tail (``held_*``),
    NeMo 1.x's fp32 embedding all-reduce (``fp32_ms``, tail) and the tied all-reduce (``tied_ms``, in the tail where
    ``in_tail``)."""

    dense: tuple[float, ...]
    routed: tuple[float, ...]
    buckets: tuple[int, ...]
    held_dense: tuple[float, ...]
    held_routed: tuple[float, ...]
    held_buckets: tuple[int, ...]
    fp32_ms: tuple[float, ...]
    tied_ms: tuple[float, ...]
    in_tail: tuple[bool, ...]


def nemo_sync(scenario, derived=None, memo: dict | None = None) -> NemoSync:
    """The parts of NeMo's end of step on apex (step.grad_sync_held, step.fp32_embedding_optimizer), per stage copy.

    * step.grad_sync_held: apex launches a bucket only once every parameter of its init_params_bucket call has
      registered its gradient (apex 23.09-24.09 distributed_fused_adam.py, init_params_bucket ties the call's buckets to
      all its parameters; _try_start_bucket_grad_sync), and a parameter marked _disable_overlap_grad_sync never
      registers (NeMo's post-backward hook and try_grad_sync skip it); NeMo puts the marked parameters into the last
      call, the rank's first model chunk's (megatron_gpt_model.py configure_optimizers, buckets[-1].extend).  So on a
      rank holding one, that group's whole reduce-scatter, with the marked parameters of the rank's other stage copies,
      runs in apex's grad_sync() after NeMo's _finish_bucket_grad_sync and the tied all-reduce: the tail of the rank's
      first stage copy; with FP8 parameters its 16-bit bucket(s), with fp32 embedding gradients their fp32 buckets,
      are buckets more (step.bucket_cap_mb); the rank's tied all-reduce joins the tail.
    * step.fp32_embedding_optimizer: the embeddings leave apex's reduce-scatter (apex_stage); their fp32 all-reduce (in
      grad_norm, after apex's grad_sync) and the tied all-reduce (of their fp32 main_grad) are their copy's tail."""
    derived = scenario.derived() if derived is None else derived
    st, step = derived.setup, scenario.step
    sh, cfg = st.sharding, st.cfg
    if sh.zero != 1:
        raise ModelError("step.grad_sync_held and step.fp32_embedding_optimizer describe apex's DistributedFusedAdam, "
                         f"a ZeRO 1 optimizer: parallel.zero must be 1, got {sh.zero}")
    S = len(st.stages)
    f32opt = step.fp32_embedding_optimizer
    fp32 = step.fp32_embedding_grads or f32opt  # the tied all-reduce reads the fp32 main_grad
    tied = tied_embedding_ms(scenario, st, FP32_GRAD_BYTES if fp32 else sh.grads_bytes)
    buckets = per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))
    dense, routed = [], []
    for where, stage in zip(st.stages, derived.stages):
        d = apex_stage(scenario, st, where, stage).dense_params / sh.tensor * sh.grads_bytes
        dense.append(d + (fp32_embedding_extra_bytes(st, where) if step.fp32_embedding_grads else 0.0))
        routed.append(stage.routed_params / sh.routed_ranks * sh.grads_bytes)
    held_dense, held_routed, held_buckets = [0.0] * S, [0.0] * S, [0] * S
    fp32_ms = [fp32_optimizer_all_reduce_ms(st, w) if f32opt else 0.0 for w in st.stages]
    in_tail = [f32opt] * S  # the tied all-reduce in the tail (NeMo runs it after _finish_bucket_grad_sync)
    ranks = derive.stage_ranks(scenario) if step.grad_sync_held else None
    marks = set(step.grad_sync_held)
    for r in sorted(_held_ranks(scenario, st, ranks)) if ranks is not None else ():
        mine = [s for s in range(S) if r in ranks[s]]
        first = mine[0]
        held_dense[first], held_routed[first], held_buckets[first] = dense[first], routed[first], buckets[first]
        dense[first] = routed[first] = 0.0
        fp32_tensors: list[int] = []
        sixteen = 0.0  # the rank's non-FP8 elements in apex: with FP8 parameters NeMo's 16-bit bucket(s)
        for s in mine:
            where = st.stages[s]
            in_tail[s] = True
            if s != first:  # the marked parameters of the rank's other copies join the held group
                moved = 0.0
                # norms and row-parallel biases are whole on every tensor rank (params.whole_on_tensor): not / tensor
                if "sequence-parallel" in marks and st.sequence_parallel and sh.tensor > 1:
                    moved += sequence_parallel_elements(cfg, where) * sh.grads_bytes
                if "final-norm" in marks and where.head:
                    moved += params._norm(cfg, cfg.hidden_size) * sh.grads_bytes
                if "embedding" in marks and where.head and cfg.tie_word_embeddings and not where.embedding and not f32opt:
                    moved += cfg.vocab_size * cfg.hidden_size / sh.tensor * sh.grads_bytes
                    moved += fp32_embedding_extra_bytes(st, where) if step.fp32_embedding_grads else 0.0
                moved = min(moved, dense[s])
                dense[s] -= moved
                held_dense[first] += moved
            if step.fp32_embedding_grads and (where.embedding or (where.head and cfg.tie_word_embeddings)):
                fp32_tensors.append(cfg.vocab_size * cfg.hidden_size // sh.tensor)
                if where.embedding and cfg.max_positions:  # the learned positions, whole on every tensor rank
                    fp32_tensors.append(cfg.max_positions * cfg.hidden_size)
            if scenario.model.fp8_params:  # the stage's apex elements less its FP8 weights and fp32 embeddings
                sixteen += apex_stage(scenario, st, where, derived.stages[s]).dense_params / sh.tensor
                sixteen -= fp8_param_elements(st, where)[0]
                if step.fp32_embedding_grads:
                    sixteen -= fp32_optimizer_params(cfg, where, sh.tensor) / sh.tensor  # the same embeddings, as counted
        cap, grad_bytes = step.bucket_cap_mb, int(sh.grads_bytes)
        if fp32_tensors:  # NeMo's init_params_bucket: the fp32 gradients in buckets of their own
            held_buckets[first] += ddp_buckets.apex_buckets(fp32_tensors, cap, sh.data, grad_bytes)
        if sixteen > 0:  # and the 16-bit ones apart from the FP8 (uint8) ones
            held_buckets[first] += ddp_buckets.apex_buckets([int(sixteen)], cap, sh.data, grad_bytes)
    return NemoSync(tuple(dense), tuple(routed), tuple(buckets), tuple(held_dense), tuple(held_routed),
                    tuple(held_buckets), tuple(fp32_ms), tuple(tied.get(s, 0.0) for s in range(S)), tuple(in_tail))


def held_ms(st, parts: NemoSync, s: int) -> float:
    """The held group's reduce-scatter on stage copy ``s``'s tail (ms): its bytes in its buckets, one NCCL ring each."""
    if not (parts.held_dense[s] or parts.held_routed[s]):
        return 0.0
    return _sync_ms(st, "grad_sync", parts.held_dense[s], parts.held_routed[s], buckets=max(1, parts.held_buckets[s]))


def grad_sync_parts(scenario, derived=None, memo: dict | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stage copy, (the reduction overlapped as step.grad_sync describes it, the tail run after the rank's pipeline
    and every other sync of the rank: StepCosts.grad_sync_tail), in ms (nemo_sync's parts timed)."""
    return per_call(memo, "parts", lambda: _grad_sync_parts(scenario, derived, memo))


def _grad_sync_parts(scenario, derived, memo: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    p = nemo_sync(scenario, derived, memo)
    overlapped, tail = [], []
    for s in range(len(p.dense)):
        o = _sync_ms(st, "grad_sync", p.dense[s], p.routed[s], buckets=p.buckets[s], group=one_group(scenario, st, s)) \
            if p.dense[s] or p.routed[s] else 0.0
        overlapped.append(o + (0.0 if p.in_tail[s] else p.tied_ms[s]))
        tail.append(held_ms(st, p, s) + p.fp32_ms[s] + (p.tied_ms[s] if p.in_tail[s] else 0.0))
    return tuple(overlapped), tuple(tail)


def one_group(scenario, st, s: int) -> bool:
    """Whether stage copy ``s``'s data-parallel buckets go to NCCL as one group: apex's (st.dp_grouped), or a chunk
    Megatron-core's DDP does not bucket (ddp_buckets.fill_size None: ``partition_buckets(...,
    force_single_bucket_group=disable_bucketing)``, distributed_data_parallel.py @ d339190 line 249), whose buffers'
    buckets are one bucket group; a bucketed chunk's groups are launched one at a time."""
    step = scenario.step
    return st.dp_grouped or (st.grad_hook == "ddp" and step is not None
                             and ddp_buckets.fill_size(step, s, st.sharding.data) is None)


def _sync_ms(st, key: str, dense: float, routed: float, op: str | None = None, buckets: int = 1,
             group: bool = False) -> float:
    """One grad sync (``op``; default reduce-scatter with ZeRO >= 1, else all-reduce) or cross-copy sum
    of ``dense`` bytes over the data-parallel ranks and ``routed`` bytes over the expert-data ranks (ms);
    a reduce-scatter across nodes as ``buckets`` NCCL rings (collectives.bucketed), one NCCL group if ``group`` (one
    Megatron-core bucket group, its buffers' buckets of different sizes) or on apex (st.dp_grouped, equal buckets)."""
    sh, hw = st.sharding, st.hw
    op = op or ("reduce_scatter" if sh.zero >= 1 else "all_reduce")
    if st.rates is not None:
        # the data-parallel group (placement.group): its ranks in one domain, each on its own NIC
        nic, per_node = st.group("dp-cp").link, st.group("dp-cp").per_node
        if key == "cross_copy_sync":
            return collectives.p2p(dense + routed, st.rates, "nic") * 1e3
        if op == "reduce_scatter" and nic == "nic":
            dense_s = collectives.bucketed(op, dense, sh.data, st.rates, per_node, buckets, st.grads_averaged,
                                           st.dp_channels, group or st.dp_grouped, st.dp_grouped)
        else:
            dense_s = collectives.time(op, dense, sh.data, st.rates, nic, nics=per_node)
        return (dense_s + collectives.time(op, routed, int(sh.expert_data), st.rates, "nic")) * 1e3
    if key == "cross_copy_sync":
        return (dense + routed) / (hw.p2p_gbps * 1e9) * 1e3
    factor = 2.0 if op == "all_reduce" else 1.0  # all-reduce, or reduce-scatter / all-gather

    def ring(nbytes: float, ranks: float) -> float:
        return factor * (ranks - 1) / ranks * nbytes if ranks > 1 else 0.0

    return (ring(dense, sh.data) + ring(routed, sh.expert_data)) / (hw.a2a_gbps * 1e9) * 1e3



def _stage_copies(scenario) -> list[int]:
    """How many ranks hold each stage (one each when the schedule cannot be built)."""
    ranks = derive.stage_ranks(scenario)
    return [1] * scenario.pipeline.stages if ranks is None else [len(r) for r in ranks]


def tied_embedding_ms(scenario, st, grad_bytes: float) -> dict[int, float]:
    """{stage: ms} of the tied word embedding's gradient all-reduce, on the stage holding the embedding
    and the one holding the head.

    Megatron all-reduces the word embedding's gradient between the first and the last pipeline stage
    after the data-parallel reduction, before the optimizer (megatron/training.py @ 6985e58, "All-reduce
    word_embeddings' grad across first and last stages"; Megatron-core's finalize_model_grads,
    _allreduce_word_embedding_grads @ d98e8a6); DeepSpeed's pipeline engine does it before its
    reduction (_exec_reduce_tied_grads, v0.6.5).  V x h / tensor elements of ``grad_bytes`` each, over
    a group of 2 ranks (one per node: nics = 1), across nodes unless the two pipeline ranks' GPUs share
    one (Megatron's order: tensor, data, then pipeline outermost).  Nothing when the head is untied,
    when one stage holds both, or when one rank holds both stages (a V-shaped schedule's rank 0).
    """
    cfg, sh = st.cfg, st.sharding
    embed = [i for i, w in enumerate(st.stages) if w.embedding]
    head = [i for i, w in enumerate(st.stages) if w.head]
    if not cfg.tie_word_embeddings or not embed or not head or embed[0] == head[0]:
        return {}
    e, h = embed[0], head[0]
    ranks = derive.stage_ranks(scenario)
    if ranks is None or ranks[e] & ranks[h]:
        return {}
    nbytes = cfg.vocab_size * cfg.hidden_size / sh.tensor * grad_bytes
    gpus_per_rank = sh.tensor * sh.data
    nodes = {(min(ranks[s]) * gpus_per_rank) // st.hw.domain for s in (e, h)}
    link = "nvlink" if len(nodes) == 1 else "nic"
    if st.rates is not None:
        ms = collectives.time("all_reduce", nbytes, 2, st.rates, link) * 1e3
    else:  # a ring all-reduce over 2 ranks carries the tensor once: 2 (2 - 1) / 2 x bytes
        gbps = st.hw.a2a_intra_gbps if link == "nvlink" else st.hw.a2a_gbps
        ms = nbytes / (gbps * 1e9) * 1e3
    return {e: ms, h: ms}


def tp_reduced_elements(scenario, st, where) -> int:
    """Whole-model counts of a stage copy's parameters whose gradients the step's end all-reduces over the tensor
    ranks after the data-parallel sync: each tensor rank computed a different part of them (its sequence shard, or its
    heads), though every rank holds them whole (params.whole_on_tensor).

    * Megatron-core's finalize_model_grads -> _allreduce_layernorm_grads (NVIDIA/Megatron-LM @ 1e05700
      megatron/core/distributed/finalize_model_grads.py lines 192-228): with TP > 1, every parameter with the
      ``sequence_parallel`` attribute (with sequence parallelism: the norms, TE's row-parallel biases, the router,
      moe/router.py line 62, a shared expert's gate, moe/shared_experts.py line 57; the whole_on_tensor set, the
      expert bias a buffer), and by name any ``q_layernorm`` / ``k_layernorm`` (``--qk-layernorm``, with or without
      sequence parallelism); Megatron-LM 2022's train_step the same sequence_parallel set.
    * NeMo 1.x / 2.0rc on apex (step.grad_sync_held): allreduce_sequence_parallel_gradients reads the attribute NeMo
      marks _disable_overlap_grad_sync by, so its elements are those of the marks (sequence_parallel_elements for
      "sequence-parallel", the final norm for "final-norm"), with TP > 1 and sequence parallelism."""
    cfg, sh, step = st.cfg, st.sharding, scenario.step
    if sh.tensor <= 1:
        return 0
    norm = params._norm(cfg, cfg.hidden_size)
    if step.grad_sync_held:
        if not st.sequence_parallel:
            return 0
        marks = set(step.grad_sync_held)
        n = sequence_parallel_elements(cfg, where) if "sequence-parallel" in marks else 0
        return n + (norm if "final-norm" in marks and where.head else 0)
    if st.sequence_parallel:
        bias = cfg.num_experts if cfg.router_bias else 0  # the expert bias: a buffer, no gradient
        n = sum(params.whole_on_tensor(cfg, i) - (bias if cfg.is_moe_layer(i) else 0) for i in where.layers)
        return n + (norm if where.head else 0) + where.mtp * (params.mtp_module(cfg).whole - bias)
    return params.attention_norms(cfg) * (len(where.layers) + where.mtp) if cfg.qk_norm and not cfg.mla else 0


def tp_grad_all_reduce_ms(scenario, st) -> tuple[float, ...]:
    """Per stage copy, its share of its rank's all-reduce of tp_reduced_elements over the tensor ranks (ms): one
    coalesced tensor a rank (_flatten_dense_tensors over every model chunk, model.grads_dtype bytes an element), on
    NVLink where the tensor group fits in a node; a rank's time split over its copies by their bytes."""
    sh = st.sharding
    nbytes = [tp_reduced_elements(scenario, st, w) * sh.grads_bytes for w in st.stages]
    if not any(nbytes):
        return (0.0,) * len(nbytes)
    held = derive.stage_ranks(scenario) or [{s} for s in range(len(nbytes))]
    rank = [min(r) if r else -1 for r in held]  # a copy's time on its first rank, as _once_per_rank puts it
    total = {r: sum(b for b, q in zip(nbytes, rank) if q == r) for r in set(rank)}
    out = []
    for b, r in zip(nbytes, rank):
        if not b:
            out.append(0.0)
            continue
        if st.rates is not None:
            whole = collectives.time("all_reduce", total[r], sh.tensor, st.rates, st.group("tp").link) * 1e3
        else:
            whole = 2 * (sh.tensor - 1) / sh.tensor * total[r] / (st.hw.a2a_intra_gbps * 1e9) * 1e3
        out.append(whole * b / total[r])
    return tuple(out)


def grad_sync_tail(scenario, derived=None, memo: dict | None = None) -> tuple[float, ...]:
    """Per stage copy, what the step's end runs after its rank's pipeline and every data-parallel sync of the rank
    (StepCosts.grad_sync_tail, ms), in the runtime's order: the tensor-parallel all-reduce of tp_reduced_elements, then
    the tied embedding's all-reduce between the first and the last stage (Megatron-core's finalize_model_grads @
    1e05700 lines 270-299: finish_grad_sync, _allreduce_layernorm_grads, _allreduce_embedding_grads; Megatron-LM 2022's
    train_step the same), then NeMo's held group and fp32 embedding all-reduce on apex (grad_sync_parts, whose tied
    all-reduce stays overlapped where NeMo runs it so).  DeepSpeed's bf16 runtime: none (its tied all-reduce comes
    before its reduction, _exec_reduce_tied_grads)."""
    derived = scenario.derived() if derived is None else derived
    st, step = derived.setup, scenario.step
    S = len(st.stages)
    if step is None or step.runtime == "deepspeed-bf16":
        return (0.0,) * S
    if step.grad_sync_held or step.fp32_embedding_optimizer:
        rest = grad_sync_parts(scenario, derived, memo)[1]
    else:
        fp32 = step.fp32_embedding_grads
        tied = tied_embedding_ms(scenario, st, FP32_GRAD_BYTES if fp32 else st.sharding.grads_bytes)
        rest = tuple(tied.get(s, 0.0) for s in range(S))
    return tuple(a + b for a, b in zip(tp_grad_all_reduce_ms(scenario, st), rest))


def fp8_param_elements(st, where) -> tuple[float, float]:
    """(dense, routed) linear-weight elements one rank holds of a stage copy: what FP8 parameters
    (``model.fp8_params``) keep at 1 byte."""
    units = [params.linear_weights(st.cfg, i) for i in where.layers] + [params.mtp_linear_weights(st.cfg)] * where.mtp
    return sum(d for d, _ in units) / st.sharding.tensor, sum(r for _, r in units) / st.sharding.routed_ranks


def param_gather_ms(st, stage, fp8: tuple[float, float] = (0.0, 0.0)) -> float:
    """All-gathering a stage copy's updated weights from their ZeRO 1/2 shards after the optimizer
    (Megatron's distributed optimizer: gather_model_params after optimizer.step, in the parameters'
    dtype since 57bfa7c, Sep 2022; DeepSpeed's bf16 optimizer: all_gather_dp_groups in step(),
    v0.6.5), over the same groups and links as the gradient reduction (ms).  ``fp8``: the (dense,
    routed) elements held as FP8 parameters, 1 byte each (fp8_param_elements)."""
    sh = st.sharding
    saved = sh.params_bytes - 1.0
    return _sync_ms(st, "grad_sync", stage.dense_params / sh.tensor * sh.params_bytes - fp8[0] * saved,
                    stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * saved, op="all_gather")  # fmt: skip


def fp8_weight_cast_ms(st, where) -> float:
    """A stage copy's FP8 weight refresh on its rank, once per step (ms): the first micro-batch's
    forward of each model chunk casts and transposes every FP8 linear weight it holds, which the
    cache (``memory.fp8_weight_cache = true``) then keeps for the step's other micro-batches
    (kernels.FP8_WEIGHT_CAST_BYTES gives the source; without the cache every forward pays it there).
    Nothing unless the linears run through Transformer Engine (``model.fp8_gemm = "cublas"``) with
    the cache or FP8 parameters (whose transpose lives on the Float8Tensor until the optimizer resets it,
    whatever the cache: TE release_v2.8 get_weight_workspace returns a QuantizedTensor weight as it is,
    and update_usage makes the transpose only while ``_transpose_invalid``); a preset's kernel rates give
    the HBM bandwidth."""
    cfg, sh = st.cfg, st.sharding
    # st.layout last: a plan asks for thousands of steps' figures, and the Layout is built afresh each time
    if not ((sh.fp8_weight_cache or sh.fp8_params) and st.rates is not None and st.layout.te_fp8):
        return 0.0
    units = [params.linear_weights(cfg, i) for i in where.layers] + [params.mtp_linear_weights(cfg)] * where.mtp
    elements = sum(d for d, _ in units) / sh.tensor + sum(r for _, r in units) / sh.routed_ranks
    per = kernels.fp8_weight_cast_bytes(sh.fp8_params, sh.fp8_transpose, sh.fp4)  # FP8 parameters: the transpose alone
    return elements * per / st.rates.hbm * 1e3 if elements else 0.0


def step_start_ms(scenario, derived, memo: dict | None = None) -> float:
    """The wait at a step's start for stage 0's overlapped parameter all-gather (ms; 0 unless ZeRO 1/2 with
    step.overlap_param_gather): Megatron-core's bucket-group chain outside its interleaved schedule; apex's whole
    gather (with FP8 parameters NeMo's extra 16-bit bucket, apex_fp8_first_bucket); Megatron-core's interleaved
    schedule: chunk 0's whole gather, or with step.overlap_param_gather_with_optimizer_step what of it outlasts the
    optimizer step of the rank's other chunks (optimizer_overlap_ms)."""
    st, step = derived.setup, scenario.step
    sh = st.sharding
    if step is None or sh.zero not in (1, 2) or not step.param_gather_overlapped():
        return 0.0
    first = apex_stage(scenario, st, st.stages[0], derived.stages[0])
    bucket = per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))[0]
    fp8 = fp8_param_elements(st, st.stages[0]) if scenario.model.fp8_params else (0.0, 0.0)
    if step.param_gather == "apex":
        extra = 0.0
        if scenario.model.fp8_params:
            more, extra = apex_fp8_first_bucket(scenario, derived)
            bucket += more
        return start_gather_ms(st, first, bucket, fp8, extra)
    if not scenario._megatron_interleaved():
        return prefetch_gather_ms(scenario, st, st.stages[0], first, bucket)
    whole = start_gather_ms(st, first, bucket, fp8, group=one_group(scenario, st, 0))
    if step.overlap_param_gather_with_optimizer_step:
        # chunk 0 unbucketed (disable_bucketing) is still one bucket a buffer, FP8's uint8 and 16-bit: two all-gathers
        # in one coalesced group (partition_buckets case 1, start_param_sync; core_r0.11.0 param_and_grad_buffer.py
        # lines 193-203, 788-800), launched mid-step
        return max(0.0, whole - optimizer_overlap_ms(scenario, derived))
    return whole


def _waited_before_forward(step, stage: int, start: float) -> float:
    """How much of a stage copy's overlapped gather is over before its forward (forward_under_gather_ms's ``waited``):
    stage 0's wait at the step's start; with overlap_param_gather_with_optimizer_step all of it (the rest of it ran
    beside the optimizer step, whose memory-bound kernels the model does not slow)."""
    if stage != 0:
        return 0.0
    return math.inf if step.overlap_param_gather_with_optimizer_step else start


def optimizer_overlap_ms(scenario, derived) -> float:
    """What of the optimizer step runs beside the first chunk's all-gather with Megatron-core's
    overlap_param_gather_with_optimizer_step (ms): the rank holding stage 0 steps its first chunk's optimizer, launches
    that chunk's all-gather (ChainedOptimizer.step_with_ready_grads, start_param_sync(force_dispatch=True)), then steps
    the optimizer of its other chunks (their Adam step, the same figure as derived_sync's) until that optimizer's
    blocking FP8 amax all-reduce, which queues behind the gather on the same data-parallel communicator.  The other
    chunks' FP8 cast is not counted here (a lower bound of the overlap)."""
    st = derived.setup
    held = derive.stage_ranks(scenario)
    if held is None or not held[0]:
        return 0.0
    rank = min(held[0])
    per_param = optimizer_bytes_per_param(scenario.model, st.sharding.optimizer_bytes)
    out = 0.0
    for s, stage in enumerate(derived.stages):
        if s == 0 or rank not in held[s]:
            continue
        out += (updated_elements(st.sharding, stage) * per_param / st.rates.hbm + st.rates.floor) * 1e3
    return out


def updated_elements(sh, stage) -> float:
    """Parameters of one stage copy the rank's optimizer updates: its dense ones / tensor and routed ones / expert,
    each sharded over its data-parallel ranks by ZeRO >= 1."""
    shard = (1 / sh.data, 1 / sh.expert_data) if sh.zero >= 1 else (1.0, 1.0)
    return stage.dense_params / sh.tensor * shard[0] + stage.routed_params / sh.routed_ranks * shard[1]


def apex_fp8_first_bucket(scenario, derived) -> tuple[int, float]:
    """What NeMo's separate FP8 and 16-bit buckets add to stage 0's apex all-gather with FP8 parameters: (buckets,
    bytes).  NeMo's configure_optimizers makes each layer's bucket of its FP8 weights only and puts every other
    parameter of the rank (the other chunks' biases and norms too) into the first layer's (megatron_gpt_model.py,
    make_parameter_bucket, buckets[-1].extend); its init_params_bucket then splits that one into uint8 and 16-bit
    apex buckets (distributed_adam.py): one bucket more, and the rank's other stage copies' non-FP8 parameters
    gathered with stage 0 at params_bytes each."""
    st = derived.setup
    sh = st.sharding
    held = derive.stage_ranks(scenario)
    if held is None or not held[0]:
        return 1, 0.0
    rank = min(held[0])
    extra = 0.0
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        if s != 0 and rank in held[s]:
            extra += (stage.dense_params / sh.tensor - fp8_param_elements(st, where)[0]) * sh.params_bytes
    return 1, extra


def start_gather_ms(st, first_stage, buckets: int, fp8: tuple[float, float] = (0.0, 0.0), extra: float = 0.0,
                    group: bool = False) -> float:
    """The wait before a step's first forward for the whole of the first stage's overlapped parameter
    all-gather (ms): apex's DistributedFusedAdam, and Megatron-core's interleaved schedule.

    With ``--overlap-param-gather`` the optimizer leaves its updated shards to be gathered under the
    next step: Megatron's interleaved schedule launches the all-gathers of model chunks 0 and 1
    before its first forward (``param_sync_func[0]``, ``[1]``, Megatron-core schedules.py), the
    others as the schedule reaches each chunk's first micro-batch, and a chunk's forward waits for
    its parameters.  The pipeline's first forward is stage 0's, at time 0 in every schedule, and
    every other stage's first forward waits for it: so the whole pipeline starts once stage 0's
    all-gather (its ``buckets``, the gradients' buckets, on the data-parallel link) has landed.
    The other stages' gathers run beside it from time 0 and are taken as landed before their input
    arrives; chunk 1's and later ones as landed before their chunk's first forward.  ``fp8``: as
    param_gather_ms's; ``extra``: dense bytes gathered with the stage beyond its own (apex_fp8_first_bucket);
    ``group``: the buckets one Megatron-core bucket group (_gather_ms)."""
    sh = st.sharding
    nbytes = first_stage.dense_params / sh.tensor * sh.params_bytes - fp8[0] * (sh.params_bytes - 1.0) + extra
    if st.rates is not None and st.group("dp-cp").link == "nic":
        dense = _gather_ms(st, nbytes, buckets, group)
        routed = first_stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * (sh.params_bytes - 1.0)
        return dense + _sync_ms(st, "grad_sync", 0.0, routed, op="all_gather")
    if extra:  # inside a node: one collective on its link, as param_gather_ms's
        routed = first_stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * (sh.params_bytes - 1.0)
        return _sync_ms(st, "grad_sync", nbytes, routed, op="all_gather")
    return param_gather_ms(st, first_stage, fp8)


def _gather_ms(st, nbytes: float, buckets: int, group: bool = False) -> float:
    """An all-gather of ``nbytes`` of dense parameters over the data-parallel ranks (ms): across nodes as
    ``buckets`` NCCL rings (collectives.bucketed; one NCCL group if ``group``, one Megatron-core bucket group, or on
    apex), else one collective on its link."""
    sh = st.sharding
    if st.rates is not None and st.group("dp-cp").link == "nic":
        return collectives.bucketed("all_gather", nbytes, sh.data, st.rates, st.group("dp-cp").per_node, buckets,
                                    channels=st.dp_channels, grouped=group or st.dp_grouped, equal=st.dp_grouped) * 1e3
    return _sync_ms(st, "grad_sync", nbytes, 0.0, op="all_gather")


def chained_wait_ms(gathers: list[float], computes: list[float]) -> float:
    """What the forward waits for when each bucket group's all-gather is launched as the previous one is
    waited for (Megatron-core's forward pre-hook, ms): the first group's whole gather, then, group by
    group, what gather k takes beyond ``computes[k - 1]``, the forward's compute from group k - 1's
    first parameter to group k's."""
    return gathers[0] + sum(max(0.0, g - f) for g, f in zip(gathers[1:], computes)) if gathers else 0.0


def prefetch_gather_ms(scenario, st, where, stage, buckets: int) -> float:
    """The wait before a step's first forward for stage 0's overlapped parameter all-gather as Megatron-core
    runs it outside its interleaved schedule (ms).

    There ``align_param_gather`` is off (training/arguments.py), no ``param_sync_func`` launches anything,
    and each module's forward pre-hook calls ``finish_param_sync`` of its parameters' bucket group: the
    first group is launched there and waited for, and each wait launches the next group in the chain
    (``next_param_gather_bucket_group``: the groups in reverse bucket order, the forward's).  So the forward
    waits for the first group whole, then for what each group's gather takes beyond the forward's compute
    since the previous group's wait (chained_wait_ms).  The groups (ddp_buckets.gather_groups): the given
    ``step.grad_sync_buckets`` as equal buckets, or "derived" by Megatron's fill rule; each an NCCL ring
    per bucket on the data-parallel link; the stage's forward spread over its parameters in forward order.
    The routed experts' own buffer is waited for whole, as start_gather_ms does."""
    sh = st.sharding
    tensors, groups = _bucket_groups(scenario, st, where, stage, buckets)
    gathers = [_gather_ms(st, w * sh.params_bytes + n, b, group=True) for _, w, n, b in groups]
    per_element = (stage.forward or 0.0) / sum(tensors)
    computes = [(b[0] - a[0]) * per_element for a, b in zip(groups, groups[1:])]
    routed_linear = fp8_param_elements(st, where)[1] if scenario.model.fp8_params else 0.0
    routed = stage.routed_params / sh.routed_ranks * sh.params_bytes - routed_linear * (sh.params_bytes - 1.0)
    return chained_wait_ms(gathers, computes) + _sync_ms(st, "grad_sync", 0.0, routed, op="all_gather")


def _bucket_groups(scenario, st, where, stage, buckets: int,
                   s: int = 0) -> tuple[list[int], list[tuple[int, float, float, int]]]:
    """Stage copy ``s``'s dense tensors (ddp_buckets.stage_zero_tensors) and Megatron-core's bucket groups of them in
    the forward's order (ddp_buckets.gather_groups: the given ``step.grad_sync_buckets`` as equal buckets, or
    "derived" by Megatron's fill rule at ddp_buckets.fill_size), each as (forward position, 16-bit elements, FP8 elements, buckets), the elements scaled
    to the stage's dense parameters / tensor as param_gather_ms counts them."""
    cfg, sh = st.cfg, st.sharding
    fp8 = scenario.model.fp8_params
    tensors = ddp_buckets.stage_zero_tensors(cfg, where, sh.tensor)
    given = None if scenario.step.grad_sync_buckets == "derived" else buckets
    alone = ddp_buckets.alone(cfg, where, sh)  # Megatron splits a shared embedding under the distributed optimizer only
    size = ddp_buckets.fill_size(scenario.step, s, sh.data)
    groups = ddp_buckets.gather_groups(tensors, ddp_buckets.stage_zero_linears(cfg, where), given, size, fp8,
                                       alone)  # fmt: skip
    linear = fp8_param_elements(st, where)[0] if fp8 else 0.0
    wide_all, narrow_all = sum(g[1] for g in groups), sum(g[2] for g in groups)
    wide = (stage.dense_params / sh.tensor - linear) / wide_all if wide_all else 0.0
    narrow = linear / narrow_all if narrow_all else 0.0
    return tensors, [(pos, w * wide, n * narrow, b) for pos, w, n, b in groups]


def grad_sync_shares(scenario, derived=None, memo: dict | None = None) -> tuple[tuple[float, ...], ...]:
    """Per stage, its overlapped grad sync's bucket groups as shares of it in release order (the backward's), or ()
    where they are equal buckets (StepCosts.grad_sync_shares).

    Megatron-core's DDP reduce-scatters a bucket group once every parameter in it has its gradient
    (``register_grad_ready`` -> ``start_grad_sync``, one coalesced NCCL call per bucket), and the groups are the ones
    it gathers by (``partition_buckets`` @ d339190): with FP8 parameters every bucket of the 16-bit buffer (the
    embedding, the output layer, the norms) joins the group of the last FP8 bucket, the forward's first layer, so
    the output layer's gradient, ready first, waits with the embedding's, ready last, for the backward's end.  Each
    group's share is its reduce-scatter as _sync_ms times it (its buckets' ring latencies, its gradient bytes);
    the stage's grad sync keeps its total.  Only where that rule holds: Megatron-core's DDP (not apex's
    DistributedFusedAdam, not DeepSpeed), FP8 parameters, the overlap, ZeRO <= 1, a derived grad sync, the stage
    bucketed."""
    step, m = scenario.step, scenario.model
    if (step is None or m is None or not m.fp8_params or not step.overlap_grad_sync or step.grad_sync != "derived"
            or step.param_gather == "apex" or step.runtime != "megatron"):
        return ()
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    if st.sharding.zero >= 2:
        return ()
    buckets = per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))
    out = []
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        if buckets[s] <= 1 or not where.layers:
            out.append(())
            continue
        groups = _bucket_groups(scenario, st, where, stage, buckets[s], s)[1]
        times = [_sync_ms(st, "grad_sync", (w + n) * st.sharding.grads_bytes, 0.0, buckets=b, group=True)
                 for _, w, n, b in groups]
        out.append(tuple(t / sum(times) for t in reversed(times)) if len(times) > 1 and sum(times) > 0 else ())
    return tuple(out) if any(out) else ()


def _once_per_rank(scenario, stages: int) -> list[float]:
    """Per stage, the weight that puts a per-rank figure on each rank once when spread over the
    stage copies it holds (a rank's optimizer figure is the sum over its copies): 1 / copies held."""
    held = derive.stage_ranks(scenario)
    if held is None:
        return [1.0] + [0.0] * (stages - 1)
    per_rank: dict[int, int] = {}
    for ranks in held:
        for r in ranks:
            per_rank[r] = per_rank.get(r, 0) + 1
    return [1.0 / per_rank[min(ranks)] if ranks else 0.0 for ranks in held]


def last_unit_grads(st, where) -> tuple[float, float]:
    """(dense, routed) gradient bytes of a stage copy's last unit to reduce-scatter under ZeRO >= 2 (model/fsdp.py):
    the last backward's last unit, the stage's first (its embedding, else its first layer, else its MTP module)."""
    cfg, sh = st.cfg, st.sharding
    first = params.layer(cfg, where.layers[0]) if where.layers else params.mtp_module(cfg)
    dense, routed = (params.embedding_over_tensor(cfg, sh.tensor), 0) if where.embedding else (first.dense_over_tensor(sh.tensor), first.routed)
    return dense / sh.tensor * sh.grads_bytes, routed / sh.routed_ranks * sh.grads_bytes


def _zero2_backlog(scenario, st, stage, copies: int, full_ms: float) -> float:
    """ZeRO 2's end-of-step wait bounded by its data-parallel channel's load (ms).

    ZeRO 2 reduce-scatters a stage copy's whole gradient after every backward it runs (M / copies
    of them per step), where ZeRO 1 does it once.  They run on the data-parallel channel beside the
    rank's compute, so at best they hide under all of that copy's compute (F + B per micro-batch: B holds W);
    what the channel still has to carry when the pipeline ends is waited for.  A lower bound: the
    pipeline's P2P and the expert all-to-all on the same NIC are not counted.
    """
    backwards = scenario.pipeline.microbatches / copies
    compute = (stage.forward or 0.0) + (stage.backward or 0.0)  # B already holds W (I = B - W)
    return max(0.0, backwards * (full_ms - compute))


def throughput(scenario, derived=None) -> Throughput | None:
    """The model's tokens and FLOPs per step, or None without a [model].  ``derived``: the
    scenario's derived figures when the caller has them (their setup is the scenario's)."""
    if scenario.model is None:
        return None
    st = derive.setup(scenario) if derived is None else derived.setup
    sh = st.sharding
    return Throughput(
        tokens=float(scenario.pipeline.microbatches * st.tokens * sh.data),
        flops_per_token=flops.per_token(st.cfg, st.seq).training,
        devices_per_rank=sh.tensor * sh.data,
        peak=st.hw.peak(st.cfg.fp8) if st.hw is not None else None,
    )


def per_call(memo: dict | None, name: str, work):
    """``work()``, worked out once per ``memo``: a dict that one caller keeps for one scenario and one derivation
    (Scenario.step_costs: its grad sync, optimizer and StepCosts read the buckets per stage and the compute's slowdown
    under a collective, each of which took as long as a figure); None: worked out every time."""
    if memo is None:
        return work()
    if name not in memo:
        memo[name] = work()
    return memo[name]


def derived_sync(scenario, key: str, derived=None, memo: dict | None = None) -> tuple[float, ...]:
    """Per-stage times (ms) of ``grad_sync``, ``cross_copy_sync`` or ``optimizer`` from the model.

    The bytes are a rank's gradients of one stage copy: its dense parameters / tensor
    and its routed-expert parameters / expert, times the gradient dtype's size.
    * grad_sync: ring collectives over the data-parallel replicas on the NIC
      (hardware's inter-node per-GPU bandwidth): all-reduce 2(D-1)/D x bytes / bw,
      or with ZeRO >= 1 (sharded optimizer) reduce-scatter (D-1)/D x bytes / bw; the
      dense part over ``data`` ranks, the routed part over ``data x tensor / expert``.
      With ZeRO >= 2 each FSDP unit's gradient is reduce-scattered after every backward
      (model/fsdp.py), so what is left for the end of the step is the last backward's last
      reduce-scatter: the stage's first unit (its embedding, else its first layer).
    * cross_copy_sync: an all-reduce between the two ranks holding the copies,
      2(2-1)/2 x bytes / bw = bytes / bw, on the pipeline's P2P bandwidth.
    * optimizer: an Adam step over the parameters the rank updates (sharded by ZeRO >= 1):
      the bytes it and the passes around it stream through HBM (optimizer_bytes_per_param) /
      achievable bandwidth (needs a preset's kernel rates).
    With a preset's kernel rates the collectives are nccl-tests' bus-bandwidth model
    (collectives.py: latency + bytes x factor / bus bandwidth) on the NIC, or on NVLink when
    the data-parallel group fits in one node.
    ``derived``: the scenario's derived figures when the caller has them (else derived here).  ``memo``: the
    figures the caller's other figures of the same scenario and derivation share (``per_call``), or None.
    Raises model.config.ModelError when [model] or [hardware] is missing.
    """
    if scenario.model is None or scenario.hardware is None:
        raise ModelError('"derived" needs the [model] and [hardware] sections')
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    sh, hw = st.sharding, st.hw
    if key == "optimizer" and st.rates is None:
        raise ModelError('"derived" needs a hardware.preset without hardware.efficiency (the kernel rates)')
    step = scenario.step
    deepspeed = step is not None and step.runtime == "deepspeed-bf16"
    if deepspeed and key != "cross_copy_sync":
        check_deepspeed(st)
    nemo_tail = step is not None and (step.grad_sync_held or step.fp32_embedding_optimizer)
    if key == "grad_sync" and nemo_tail:  # NeMo's order on apex: what is not in the tail (grad_sync_parts)
        return grad_sync_parts(scenario, derived, memo)[0]
    f32opt = key == "optimizer" and step is not None and step.fp32_embedding_optimizer
    if key == "cross_copy_sync":
        tied = {}
    else:  # Megatron's tied all-reduce runs after the data-parallel sync: grad_sync_tail's; DeepSpeed's before it,
        # of the fp32 gradients its bf16 optimizer keeps
        mine = key == "grad_sync" and (deepspeed or step is None)
        tied = tied_embedding_ms(scenario, st, FP32_GRAD_BYTES if deepspeed else sh.grads_bytes) if mine else {}
    gather = sh.zero in (1, 2) and not (step is not None and step.param_gather_overlapped())
    # overlapped, the wait for stage 0's all-gather at the next step's start: put on every rank's
    # optimizer figure (the same step period, the gap between two pipelines) once
    fp8 = scenario.model.fp8_params  # only with FP8 linears through Transformer Engine (derive.setup refuses others)
    start = step_start_ms(scenario, derived, memo) if key == "optimizer" else 0.0
    # a per-rank figure spread over the stage copies a rank holds (the wait, apex's fixed launches, the norm)
    per_rank = _once_per_rank(scenario, len(st.stages)) if key == "optimizer" else None
    share = per_rank if start > 0 else None
    apex = key == "optimizer" and step is not None and step.param_gather == "apex" and not deepspeed
    once = per_rank if apex else None
    master_cast = fp8_master_cast_ms(scenario, st, derived) if key == "optimizer" and fp8 and not deepspeed else None
    # Megatron-core's step start (the gradient buffers zeroed) and its clip's blocking norm all-reduce (once a rank)
    mcore = key == "optimizer" and megatron_core_optimizer(scenario)
    norm_share = per_rank if mcore else None
    norm = grad_norm_all_reduce_ms(scenario, st) if mcore else 0.0
    # the A100-era loops' once-a-step timers, host reads and loss reductions (loop_step.py), once a rank
    loop = loop_step.per_stage_ms(scenario, st, derive.stage_ranks(scenario), mcore) if key == "optimizer" else None
    # the overlapped all-gather takes SMs from the next step's forward it runs beside (step.dp_comm_sms)
    beside = key == "optimizer" and sh.zero in (1, 2) and step is not None and step.param_gather_overlapped()
    slow = per_call(memo, "dp_comm_slowdown", lambda: dp_comm_slowdown(scenario, step.dp_comm_sms, derived)) \
        if beside and step.dp_comm_sms else ()
    held = _stage_copies(scenario) if slow else None
    copies = _stage_copies(scenario) if key == "grad_sync" and sh.zero == 2 else None
    buckets = per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived)) if key == "grad_sync" \
        else (1,) * len(st.stages)
    out = []
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        dense = stage.dense_params / sh.tensor * sh.grads_bytes
        if key == "grad_sync" and step is not None and step.fp32_embedding_grads:
            dense += fp32_embedding_extra_bytes(st, where)
        routed = stage.routed_params / sh.routed_ranks * sh.grads_bytes
        if key == "optimizer":
            if f32opt:  # apex holds the stage less the embeddings NeMo 1.x's fp32 AdamW takes
                stage = apex_stage(scenario, st, where, stage)
            updated = updated_elements(sh, stage)
            per_param = optimizer_bytes_per_param(scenario.model, sh.optimizer_bytes)
            streamed = updated * per_param
            if deepspeed:  # its gradient norm reads the rank's whole fp32 gradient, not the shard
                streamed += (stage.dense_params / sh.tensor - updated) * GRAD_NORM_BYTES
            # one fused multi-tensor Adam launch: its floor once (how many launches apex / TE split it
            # into is not published; each adds 2.5 us against milliseconds of streaming)
            ms = (streamed / st.rates.hbm + st.rates.floor) * 1e3
            if apex:  # apex's own kernel: no copy pass, no gradient cast (apex_adam_ms)
                ms = apex_adam_ms(scenario, st, where, stage, once[s])[1]
            # with FP8 parameters, Transformer Engine casts the updated shards to FP8 in place of the 16-bit copy
            ms += master_cast[s] if master_cast else 0.0
            ms += grad_zero_ms(st, stage) + norm * norm_share[s] if mcore else 0.0
            ms += loop[0][s] + loop[1][s]
            # then the updated weights all-gathered, unless Megatron hides it under the next forward
            ms += param_gather_ms(st, stage, fp8_param_elements(st, where) if fp8 else (0.0, 0.0)) if gather else 0.0
            # and the next step's first micro-batch refreshes the FP8 weight copies, on this rank's compute
            ms += fp8_weight_cast_ms(st, where) + (start * share[s] if share else 0.0)
            ms += fp32_adamw_ms(st, where) if f32opt else 0.0  # NeMo 1.x's fp32 AdamW of the embeddings
            ms += fp32_grad_add_ms(st, where) if f32opt and step.fp32_embedding_grad_add else 0.0  # v1.17's feed of it
            if slow:
                whole = param_gather_ms(st, stage, fp8_param_elements(st, where) if fp8 else (0.0, 0.0))
                forward = scenario.pipeline.microbatches / held[s] * (stage.forward or 0.0)
                ms += forward_under_gather_ms(whole, _waited_before_forward(step, s, start), forward, slow[s])
            out.append(ms)
            continue
        if deepspeed:  # the fp32 gradient cast to bf16, all-reduced (not reduce-scattered), cast back
            whole = stage.dense_params / sh.tensor
            out.append(_sync_ms(st, key, whole * BF16, 0.0, op="all_reduce")
                       + whole * DS_BF16_COMM_PASSES / st.rates.hbm * 1e3 + tied.get(s, 0.0))  # fmt: skip
            continue
        if key == "grad_sync" and sh.zero >= 2:
            tail = _sync_ms(st, key, *last_unit_grads(st, where))
            if copies is not None and stage.forward is not None:
                tail = max(tail, _zero2_backlog(scenario, st, stage, copies[s], _sync_ms(st, key, dense, routed)))
            out.append(tail + tied.get(s, 0.0))
            continue
        out.append(_sync_ms(st, key, dense, routed, buckets=buckets[s], group=one_group(scenario, st, s))
                   + tied.get(s, 0.0))
    return tuple(out)


def check_deepspeed(st) -> None:
    """What step.runtime = "deepspeed-bf16" describes: DeepSpeed v0.6.5's BF16_Optimizer (optimizer
    states sharded over the data-parallel ranks: ZeRO 1) reducing dense gradients only.  Each message
    names step.runtime, the key whose rule it is (Scenario.step_costs raises it as it stands)."""
    if st.rates is None:
        raise ModelError('step.runtime: "deepspeed-bf16" needs a hardware.preset without hardware.efficiency')
    if st.sharding.zero != 1:
        raise ModelError('step.runtime: "deepspeed-bf16" shards the optimizer as ZeRO 1 does: '
                         f"parallel.zero must be 1, got {st.sharding.zero}")
    if st.cfg.moe:
        raise ModelError('step.runtime: "deepspeed-bf16" reduces dense gradients only (DeepSpeed v0.6.5 '
                         "refuses experts there): the model must have no experts")


def forward_under_gather_ms(gather: float, waited: float, forward: float, slowdown: float) -> float:
    """What a stage copy's overlapped parameter all-gather adds to the next step's forward (ms): the part of
    the gather not already waited for at the step's start runs beside that copy's forward compute (at most
    all of it), which runs ``slowdown`` times slower meanwhile: (slowdown - 1) x that overlap."""
    return (slowdown - 1.0) * min(max(0.0, gather - waited), forward)


def fewer_sms(rates, sms: int):
    """The GPU's kernel rates with ``sms`` SMs taken by a communication kernel the compute was not told
    about (a data-parallel NCCL collective): KernelRates.held."""
    return rates.held(sms)


def dp_comm_slowdown(scenario, sms: int, derived=None) -> tuple[float, ...]:
    """Per stage, how much longer its compute (forward + backward, ms) runs while a data-parallel
    collective holds ``sms`` of the GPU's SMs: the stage derived again on fewer_sms' rates, over the
    stage as derived.  () when the compute is not timed from a preset's kernel rates."""
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    if st.rates is None:
        return ()
    out = []
    for fig, less in zip(derived.stages, _slowed_compute(st, sms)):
        # the stage as derived: the same sum (_stage_compute), plus FSDP's exposed collectives, which are not compute
        base = fig.forward + fig.backward - (sum(fig.fsdp_exposed) if fig.fsdp_exposed else 0.0)
        out.append(less / base if base > 0 else 1.0)
    return tuple(out)


def _slowed_compute(st, sms: int) -> tuple[float, ...]:
    """Each stage's compute (ms, _stage_compute) on fewer_sms' rates; kept for the plan's candidates, whose
    step figures ask twice (grad sync's slowdown and the optimizer's gather term) and whose layouts differ
    often only in what this does not read (the data-parallel degree, ZeRO, how the layers are staged)."""
    slowed = _slowed_kernels(_KernelReads(st), sms)
    return tuple(slowed.stage(stage) for stage in st.stages)


class _KernelReads:
    """A Setup seen through what its kernels read of it (derive.times_key: with rates the model, the rates
    and the kernels' Layout); equal keys, equal per-layer and per-stage figures."""

    __slots__ = ("st", "key")

    def __init__(self, st) -> None:
        self.st, self.key = st, derive.times_key(st)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _KernelReads) and self.key == other.key


class _Slowed:
    """One Setup's kernels on fewer SMs: each stage's compute (_stage_compute) worked out once, its
    layers' times shared between stages (keyed by stage: the layers, embedding, head and MTP it holds)."""

    def __init__(self, st, sms: int) -> None:
        self.slow = replace(st, rates=fewer_sms(st.rates, sms))
        self.per_layer: dict = {}
        self.stages: dict = {}

    def stage(self, stage) -> float:
        if stage not in self.stages:
            self.stages[stage] = _stage_compute(self.slow, stage, self.per_layer)
        return self.stages[stage]


@functools.lru_cache(maxsize=256)
def _slowed_kernels(reads: _KernelReads, sms: int) -> _Slowed:
    return _Slowed(reads.st, sms)


def _stage_compute(st, stage, per_layer: dict) -> float:
    """A stage's forward + backward kernels for one micro-batch (ms), summed as derive.derive sums them
    (its layers, all-to-all included, its embedding, head and MTP modules, its per-chunk kernels), without
    running derive() again (a run derives once); tests/test_dp_comm_sms.py holds it equal to derive's."""
    total = 0.0
    for i in stage.layers:
        key = st.cfg.layer_kind(i)  # layers of one kind (MoE, NoPE, window) cost alike
        if key not in per_layer:
            t = derive.layer_times(st, i)
            per_layer[key] = t.forward + t.backward + t.dispatch_forward + t.combine_forward + \
                t.dispatch_backward + t.combine_backward
        total += per_layer[key]
    extras = ("extras", stage.embedding, stage.head, stage.mtp)  # all extra_times reads of the stage
    if extras not in per_layer:  # the last stage's head and MTP modules, whichever layers it holds
        per_layer[extras] = sum(derive.extra_times(st, stage))
    return total + per_layer[extras] + sum(ms for _, ms in kernels.passes(derive.chunk_kernels(st, stage)))
