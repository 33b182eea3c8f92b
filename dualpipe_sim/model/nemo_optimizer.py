"""NeMo's optimizer on apex (``step.param_gather = "apex"``): DistributedFusedAdam's Adam step, NeMo's fp32
embedding gradients (``step.fp32_embedding_grads``), the stage as apex holds it, and NeMo 1.x's explicit fp32 AdamW
of the embeddings (``step.fp32_embedding_optimizer``) and its feed (``step.fp32_embedding_grad_add``).

Part of ``[step]``'s derived figures (derived_step.py); docs/step.md gives the formulas.
"""

from __future__ import annotations

from dataclasses import replace

from . import fp8_step_casts, params


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
    fp8 = fp8_step_casts.fp8_param_elements(st, where) if scenario.model.fp8_params else (0.0, 0.0)
    fp8_shard = fp8[0] * shard[0] + fp8[1] * shard[1]
    wide, narrow = apex_adam_bytes(scenario.model, sh)
    nbytes = (dense + routed - fp8_shard) * wide + fp8_shard * narrow
    if scenario.step is not None and scenario.step.fp32_embedding_grads:  # the embedding's fp32 gradient shard
        nbytes += fp32_embedding_extra_bytes(st, where) * shard[0] * APEX_GRAD_READS
    launches = apex_adam_launches(dense + routed) + APEX_FIXED_LAUNCHES * once
    return nbytes, (nbytes / rates.hbm + launches * rates.floor) * 1e3


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
