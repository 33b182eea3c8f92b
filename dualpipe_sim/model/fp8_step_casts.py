"""The FP8 weights' casts a step pays once (``model.fp8_params``, the FP8 weight cache): the FP8 weights a rank
holds, Transformer Engine's optimizer-side cast of the master shards to FP8 with its amax all-reduce (or NeMo's on
apex), and the first micro-batch's refresh of the FP8 weight copies.

Part of ``[step]``'s derived optimizer figure (derived_step.py); docs/step.md, "FP8 parameters' optimizer-side cast".
"""

from __future__ import annotations

from . import collectives, derive, kernels, optimizer_step, params, shard_pieces


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
# TE's multi_tensor_apply.cuh (depth_to_max_tensors): tensors one multi-tensor launch takes, by list count (depth)
MULTI_TENSOR_MAX = {2: 64, 3: 48}


def fp8_param_elements(st, where) -> tuple[float, float]:
    """(dense, routed) linear-weight elements one rank holds of a stage copy: what FP8 parameters
    (``model.fp8_params``) keep at 1 byte."""
    units = [params.linear_weights(st.cfg, i) for i in where.layers] + [params.mtp_linear_weights(st.cfg)] * where.mtp
    return sum(d for d, _ in units) / st.sharding.tensor, sum(r for _, r in units) / st.sharding.routed_ranks


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


def fp8_shard_bytes(recipe: str, transpose: bool, master_weights: bool = True) -> float:
    """HBM bytes per FP8-parameter shard element that Transformer Engine's optimizer-side cast streams beyond the
    16-bit copy it replaces (FP8_SHARD_*): delayed 6 + 2 + 1 (+ 1 transposed) - 6, current 2 more for the amax."""
    skipped = 2 + (optimizer_step.MASTER_COPY_BYTES if master_weights else 0)  # optimizer_bytes_per_param's copy pass
    cast = FP8_SHARD_TO_BF16 + FP8_SHARD_CAST_READ + (2.0 if transpose else 1.0)
    return cast + (FP8_SHARD_AMAX if recipe == "current" else 0) - skipped


def apex_fp8_shard_bytes() -> float:
    """HBM bytes per FP8-parameter shard element of NeMo's cast on apex: the fp32 shard read and the FP8 byte written
    (APEX_FP8_SHARD_CAST).  Nothing is skipped: apex's Adam (apex_adam_bytes) writes no 16-bit copy of an FP8 element."""
    return APEX_FP8_SHARD_CAST


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
        if held[s]:  # the rank's once-per-step part, spread evenly over the copies it holds (as derived_step.once_per_rank)
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
    return (optimizer_step.megatron_core_optimizer(scenario) and st.rates is not None and st.sharding.zero >= 1
            and not st.cfg.moe)  # fmt: skip


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
    sh = st.sharding
    # st.layout last: a plan asks for thousands of steps' figures, and the Layout is built afresh each time
    if not ((sh.fp8_weight_cache or sh.fp8_params) and st.rates is not None and st.layout.te_fp8):
        return 0.0
    dense, routed = fp8_param_elements(st, where)  # every linear weight the rank holds of the stage copy
    elements = dense + routed
    per = kernels.fp8_weight_cast_bytes(sh.fp8_params, sh.fp8_transpose, sh.fp4)  # FP8 parameters: the transpose alone
    # a 16-bit weight's cast that writes its transpose is TE's cast_transpose kernel (model.te_cast_transpose)
    share = st.cast_transpose_share if sh.fp8_transpose and not sh.fp8_params else 1.0
    return elements * per / (st.rates.hbm * share) * 1e3 if elements else 0.0
