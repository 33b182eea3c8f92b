"""The optimizer step as Megatron runs it: the HBM bytes its mixed-precision Adam streams per parameter, the
parameters a rank updates, and Megatron-core's step start (gradient buffers zeroed) and clip norm all-reduce.

Part of ``[step]``'s derived optimizer figure (derived_step.py); docs/step.md gives the formulas.
"""

from __future__ import annotations

from . import collectives, derive


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


def updated_elements(sh, stage) -> float:
    """Parameters of one stage copy the rank's optimizer updates: its dense ones / tensor and routed ones / expert,
    each sharded over its data-parallel ranks by ZeRO >= 1."""
    shard = (1 / sh.data, 1 / sh.expert_data) if sh.zero >= 1 else (1.0, 1.0)
    return stage.dense_params / sh.tensor * shard[0] + stage.routed_params / sh.routed_ranks * shard[1]


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
