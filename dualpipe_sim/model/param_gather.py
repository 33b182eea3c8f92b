"""The parameter all-gather after the optimizer (ZeRO 1/2): gathered in the optimizer figure, or overlapped
with the next step (``step.overlap_param_gather``): the wait for stage 0's gather at the step's start, Megatron-core's
prefetch chain of bucket groups, apex's first bucket, and the gather's slowdown of the forward it runs beside.

Part of ``[step]``'s derived optimizer figure (derived_step.py); docs/step.md gives the formulas.
"""

from __future__ import annotations

import math

from . import collectives, ddp_buckets, derive, fp8_step_casts, grad_sync, nemo_optimizer, optimizer_step, step_memo


def param_gather_ms(st, stage, fp8: tuple[float, float] = (0.0, 0.0)) -> float:
    """All-gathering a stage copy's updated weights from their ZeRO 1/2 shards after the optimizer
    (Megatron's distributed optimizer: gather_model_params after optimizer.step, in the parameters'
    dtype since 57bfa7c, Sep 2022; DeepSpeed's bf16 optimizer: all_gather_dp_groups in step(),
    v0.6.5), over the same groups and links as the gradient reduction (ms).  ``fp8``: the (dense,
    routed) elements held as FP8 parameters, 1 byte each (fp8_param_elements)."""
    sh = st.sharding
    saved = sh.params_bytes - 1.0
    dense = stage.dense_params / sh.tensor * sh.params_bytes - fp8[0] * saved
    routed = stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * saved
    return grad_sync.sync_ms(st, "grad_sync", dense, routed, op="all_gather")


def gather_ms(st, nbytes: float, buckets: int, group: bool = False) -> float:
    """An all-gather of ``nbytes`` of dense parameters over the data-parallel ranks (ms): across nodes as
    ``buckets`` NCCL rings (collectives.bucketed; one NCCL group if ``group``, one Megatron-core bucket group, or on
    apex), else one collective on its link."""
    sh = st.sharding
    if st.rates is not None and st.group("dp-cp").link == "nic":
        return collectives.bucketed("all_gather", nbytes, sh.data, st.rates, st.group("dp-cp").per_node, buckets,
                                    channels=st.dp_channels, grouped=group or st.dp_grouped, equal=st.dp_grouped) * 1e3
    return grad_sync.sync_ms(st, "grad_sync", nbytes, 0.0, op="all_gather")


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
    ``group``: the buckets one Megatron-core bucket group (gather_ms)."""
    sh = st.sharding
    nbytes = first_stage.dense_params / sh.tensor * sh.params_bytes - fp8[0] * (sh.params_bytes - 1.0) + extra
    if st.rates is not None and st.group("dp-cp").link == "nic":
        dense = gather_ms(st, nbytes, buckets, group)
        routed = first_stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * (sh.params_bytes - 1.0)
        return dense + grad_sync.sync_ms(st, "grad_sync", 0.0, routed, op="all_gather")
    if extra:  # inside a node: one collective on its link, as param_gather_ms's
        routed = first_stage.routed_params / sh.routed_ranks * sh.params_bytes - fp8[1] * (sh.params_bytes - 1.0)
        return grad_sync.sync_ms(st, "grad_sync", nbytes, routed, op="all_gather")
    return param_gather_ms(st, first_stage, fp8)


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
            linear = fp8_step_casts.fp8_param_elements(st, where)[0]
            extra += (stage.dense_params / sh.tensor - linear) * sh.params_bytes
    return 1, extra


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
    gathers, computes, routed_ms = _prefetch_chain(scenario, st, where, stage, buckets)
    return chained_wait_ms(gathers, computes) + routed_ms


def _prefetch_chain(scenario, st, where, stage, buckets: int) -> tuple[list[float], list[float], float]:
    """prefetch_gather_ms's chain: each bucket group's all-gather (ms, forward order), the forward's compute between
    two groups' waits (ms), and the routed experts' buffer's all-gather, waited for whole (ms)."""
    sh = st.sharding
    tensors, groups = grad_sync.bucket_groups(scenario, st, where, stage, buckets)
    gathers = [gather_ms(st, w * sh.params_bytes + n, b, group=True) for _, w, n, b in groups]
    per_element = (stage.forward or 0.0) / sum(tensors)
    computes = [(b[0] - a[0]) * per_element for a, b in zip(groups, groups[1:])]
    routed_linear = fp8_step_casts.fp8_param_elements(st, where)[1] if scenario.model.fp8_params else 0.0
    routed = stage.routed_params / sh.routed_ranks * sh.params_bytes - routed_linear * (sh.params_bytes - 1.0)
    return gathers, computes, grad_sync.sync_ms(st, "grad_sync", 0.0, routed, op="all_gather")


def chained_slowdown_ms(gathers: list[float], computes: list[float], slowdown: float) -> float:
    """What the SMs the chained all-gathers hold add to chained_wait_ms's chain (ms).  Between two waits the
    forward's compute c runs beside the next group's gather g, ``slowdown`` (f) times slower while that gather runs
    and at full speed after it, so the interval lasts g + max(0, c - g / f) where chained_wait_ms counted
    max(g, c): max(0, c - g / f) - max(0, c - g) more.  Nothing when the gather outlasts the slowed compute (the
    compute hides under it: the wait already holds the interval), (1 - 1 / f) x g when the compute outlasts the
    gather; never more than (f - 1) x min(g, c), the rule of forward_under_gather_ms, which charged it on top of
    the wait."""
    return sum(max(0.0, c - g / slowdown) - max(0.0, c - g) for g, c in zip(gathers[1:], computes))


def start_slowdown_ms(scenario, derived, slowdown: float, memo: dict | None = None) -> float | None:
    """Stage 0's forward slowed beside its overlapped all-gather where step_start_ms waits for Megatron-core's
    chain outside its interleaved schedule (ms, chained_slowdown_ms over prefetch_gather_ms's chain: the forward
    after the last group's wait runs beside no gather); None on the other paths (forward_under_gather_ms's rule)."""
    st, step = derived.setup, scenario.step
    if step is None or st.sharding.zero not in (1, 2) or not step.param_gather_overlapped() \
            or step.param_gather == "apex" or scenario._megatron_interleaved():
        return None
    held = nemo_optimizer.apex_stage(scenario, st, st.stages[0], derived.stages[0])  # what step_start_ms gathers
    bucket = step_memo.per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))[0]
    gathers, computes, _ = _prefetch_chain(scenario, st, st.stages[0], held, bucket)
    return chained_slowdown_ms(gathers, computes, slowdown)


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
    first = nemo_optimizer.apex_stage(scenario, st, st.stages[0], derived.stages[0])
    bucket = step_memo.per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))[0]
    fp8 = fp8_step_casts.fp8_param_elements(st, st.stages[0]) if scenario.model.fp8_params else (0.0, 0.0)
    if step.param_gather == "apex":
        extra = 0.0
        if scenario.model.fp8_params:
            more, extra = apex_fp8_first_bucket(scenario, derived)
            bucket += more
        return start_gather_ms(st, first, bucket, fp8, extra)
    if not scenario._megatron_interleaved():
        return prefetch_gather_ms(scenario, st, st.stages[0], first, bucket)
    whole = start_gather_ms(st, first, bucket, fp8, group=grad_sync.one_group(scenario, st, 0))
    if step.overlap_param_gather_with_optimizer_step:
        # chunk 0 unbucketed (disable_bucketing) is still one bucket a buffer, FP8's uint8 and 16-bit: two all-gathers
        # in one coalesced group (partition_buckets case 1, start_param_sync; core_r0.11.0 param_and_grad_buffer.py
        # lines 193-203, 788-800), launched mid-step
        return max(0.0, whole - optimizer_overlap_ms(scenario, derived))
    return whole


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
    per_param = optimizer_step.optimizer_bytes_per_param(scenario.model, st.sharding.optimizer_bytes)
    out = 0.0
    for s, stage in enumerate(derived.stages):
        if s == 0 or rank not in held[s]:
            continue
        out += (optimizer_step.updated_elements(st.sharding, stage) * per_param / st.rates.hbm + st.rates.floor) * 1e3
    return out


def waited_before_forward(step, stage: int, start: float) -> float:
    """How much of a stage copy's overlapped gather is over before its forward (forward_under_gather_ms's ``waited``):
    stage 0's wait at the step's start; with overlap_param_gather_with_optimizer_step all of it (the rest of it ran
    beside the optimizer step, whose memory-bound kernels the model does not slow)."""
    if stage != 0:
        return 0.0
    return math.inf if step.overlap_param_gather_with_optimizer_step else start


def forward_under_gather_ms(gather: float, waited: float, forward: float, slowdown: float) -> float:
    """What a stage copy's overlapped parameter all-gather adds to the next step's forward (ms): the part of
    the gather not already waited for at the step's start runs beside that copy's forward compute (at most
    all of it), which runs ``slowdown`` times slower meanwhile: (slowdown - 1) x that overlap."""
    return (slowdown - 1.0) * min(max(0.0, gather - waited), forward)
