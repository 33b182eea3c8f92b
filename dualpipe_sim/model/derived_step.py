"""``[step]``'s ``"derived"`` figures per stage copy (grad_sync, cross_copy_sync, optimizer: derived_sync), put
together from grad_sync.py, optimizer_step.py, fp8_step_casts.py, nemo_optimizer.py, param_gather.py and
comm_slowdown.py; DeepSpeed's bf16 runtime's rules (check_deepspeed); a per-rank figure spread over the stage copies
a rank holds (once_per_rank, stage_copies).

Kept apart from engine/step.py so that the end-of-step simulation (and step_metrics.py, which types its block)
never import the model package.  docs/step.md gives the formulas.
"""

from __future__ import annotations

from . import comm_slowdown, ddp_buckets, derive, fp8_step_casts, grad_sync, loop_step, nemo_optimizer, optimizer_step
from . import param_gather, step_memo
from .config import ModelError


def derived_sync(scenario, key: str, derived=None, memo: dict | None = None) -> tuple[float, ...]:
    """Per-stage times (ms) of ``grad_sync``, ``cross_copy_sync`` or ``optimizer`` from the model.

    The bytes are a rank's gradients of one stage copy: its dense parameters / tensor
    and its routed-expert parameters / expert, times the gradient dtype's size.
    * grad_sync: ring collectives over the data-parallel replicas on the NIC
      (hardware's inter-node per-GPU bandwidth): all-reduce 2(D-1)/D x bytes / bw,
      or with ZeRO >= 1 (sharded optimizer) reduce-scatter (D-1)/D x bytes / bw; the
      dense part over ``data`` ranks, the routed part over ``data x tensor / expert``.
      With ZeRO >= 2 each FSDP unit's gradient is reduce-scattered after every backward
      (model/fsdp.py), so what is left for the end of the step is the last backward's: under ZeRO 3
      what it leaves on the channel (fsdp.backward_tail: the stage's first unit's reduce-scatter, its
      embedding's else its first layer's, behind any earlier one still queued), under ZeRO 2 the stage's whole
      gradient (what the earlier backwards left on the channel is laid out by engine/step.py from the trace).
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
        return grad_sync.grad_sync_parts(scenario, derived, memo)[0]
    f32opt = key == "optimizer" and step is not None and step.fp32_embedding_optimizer
    if key == "cross_copy_sync":
        tied = {}
    else:  # Megatron's tied all-reduce runs after the data-parallel sync: grad_sync_tail's; DeepSpeed's before it,
        # of the fp32 gradients its bf16 optimizer keeps
        mine = key == "grad_sync" and (deepspeed or step is None)
        grad_bytes = nemo_optimizer.FP32_GRAD_BYTES if deepspeed else sh.grads_bytes
        tied = grad_sync.tied_embedding_ms(scenario, st, grad_bytes) if mine else {}
    gather = sh.zero in (1, 2) and not (step is not None and step.param_gather_overlapped())
    # overlapped, the wait for stage 0's all-gather at the next step's start: put on every rank's
    # optimizer figure (the same step period, the gap between two pipelines) once
    fp8 = scenario.model.fp8_params  # only with FP8 linears through Transformer Engine (derive.setup refuses others)
    start = param_gather.step_start_ms(scenario, derived, memo) if key == "optimizer" else 0.0
    # a per-rank figure spread over the stage copies a rank holds (the wait, apex's fixed launches, the norm)
    per_rank = once_per_rank(scenario, len(st.stages)) if key == "optimizer" else None
    share = per_rank if start > 0 else None
    apex = key == "optimizer" and step is not None and step.param_gather == "apex" and not deepspeed
    once = per_rank if apex else None
    master_cast = fp8_step_casts.fp8_master_cast_ms(scenario, st, derived) \
        if key == "optimizer" and fp8 and not deepspeed else None
    # Megatron-core's step start (the gradient buffers zeroed) and its clip's blocking norm all-reduce (once a rank)
    mcore = key == "optimizer" and optimizer_step.megatron_core_optimizer(scenario)
    norm_share = per_rank if mcore else None
    norm = optimizer_step.grad_norm_all_reduce_ms(scenario, st) if mcore else 0.0
    # the A100-era loops' once-a-step timers, host reads and loss reductions (loop_step.py), once a rank
    loop = loop_step.per_stage_ms(scenario, st, derive.stage_ranks(scenario), mcore) if key == "optimizer" else None
    # the overlapped all-gather takes SMs from the next step's forward it runs beside (step.dp_comm_sms)
    beside = key == "optimizer" and sh.zero in (1, 2) and step is not None and step.param_gather_overlapped()
    slow = step_memo.per_call(memo, "dp_comm_slowdown",
                              lambda: comm_slowdown.dp_comm_slowdown(scenario, step.dp_comm_sms, derived)) \
        if beside and step.dp_comm_sms else ()
    held = stage_copies(scenario) if slow else None
    buckets = step_memo.per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived)) \
        if key == "grad_sync" else (1,) * len(st.stages)
    out = []
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        dense = stage.dense_params / sh.tensor * sh.grads_bytes
        if key == "grad_sync" and step is not None and step.fp32_embedding_grads:
            dense += nemo_optimizer.fp32_embedding_extra_bytes(st, where)
        routed = stage.routed_params / sh.routed_ranks * sh.grads_bytes
        if key == "optimizer":
            if f32opt:  # apex holds the stage less the embeddings NeMo 1.x's fp32 AdamW takes
                stage = nemo_optimizer.apex_stage(scenario, st, where, stage)
            updated = optimizer_step.updated_elements(sh, stage)
            per_param = optimizer_step.optimizer_bytes_per_param(scenario.model, sh.optimizer_bytes)
            streamed = updated * per_param
            if deepspeed:  # its gradient norm reads the rank's whole fp32 gradient, not the shard
                streamed += (stage.dense_params / sh.tensor - updated) * optimizer_step.GRAD_NORM_BYTES
            # one fused multi-tensor Adam launch: its floor once (how many launches apex / TE split it
            # into is not published; each adds 2.5 us against milliseconds of streaming)
            ms = (streamed / st.rates.hbm + st.rates.floor) * 1e3
            if apex:  # apex's own kernel: no copy pass, no gradient cast (apex_adam_ms)
                ms = nemo_optimizer.apex_adam_ms(scenario, st, where, stage, once[s])[1]
            # with FP8 parameters, Transformer Engine casts the updated shards to FP8 in place of the 16-bit copy
            ms += master_cast[s] if master_cast else 0.0
            ms += optimizer_step.grad_zero_ms(st, stage) + norm * norm_share[s] if mcore else 0.0
            ms += loop[0][s] + loop[1][s]
            # then the updated weights all-gathered, unless Megatron hides it under the next forward
            fp8_elements = fp8_step_casts.fp8_param_elements(st, where) if fp8 and (gather or slow) else (0.0, 0.0)
            ms += param_gather.param_gather_ms(st, stage, fp8_elements) if gather else 0.0
            # and the next step's first micro-batch refreshes the FP8 weight copies, on this rank's compute
            ms += fp8_step_casts.fp8_weight_cast_ms(st, where) + (start * share[s] if share else 0.0)
            ms += nemo_optimizer.fp32_adamw_ms(st, where) if f32opt else 0.0  # NeMo 1.x's fp32 AdamW of the embeddings
            # v1.17's feed of it
            ms += nemo_optimizer.fp32_grad_add_ms(st, where) if f32opt and step.fp32_embedding_grad_add else 0.0
            if slow:
                whole = param_gather.param_gather_ms(st, stage, fp8_elements)
                forward = scenario.pipeline.microbatches / held[s] * (stage.forward or 0.0)
                waited = param_gather.waited_before_forward(step, s, start)
                chain = param_gather.start_slowdown_ms(scenario, derived, slow[s], memo) if s == 0 else None
                ms += param_gather.forward_under_gather_ms(whole, waited, forward, slow[s]) if chain is None else chain
            out.append(ms)
            continue
        if deepspeed:  # the fp32 gradient cast to bf16, all-reduced (not reduce-scattered), cast back
            whole = stage.dense_params / sh.tensor
            out.append(grad_sync.sync_ms(st, key, whole * grad_sync.BF16, 0.0, op="all_reduce")
                       + whole * grad_sync.DS_BF16_COMM_PASSES / st.rates.hbm * 1e3 + tied.get(s, 0.0))  # fmt: skip
            continue
        if key == "grad_sync" and sh.zero >= 2:
            tail = grad_sync.sync_ms(st, key, *grad_sync.last_unit_grads(st, where))
            if stage.fsdp_tail is not None:  # ZeRO 3: the channel's work left at the last backward's end
                tail = stage.fsdp_tail
            if sh.zero == 2:  # ZeRO 2: the last backward's whole gradient, queued behind what the earlier backwards
                # left on the rank's channel (grad_sync.every_backward_fsdp, engine/step.py)
                tail = max(tail, grad_sync.sync_ms(st, key, dense, routed))
            out.append(tail + tied.get(s, 0.0))
            continue
        group = grad_sync.one_group(scenario, st, s)
        out.append(grad_sync.sync_ms(st, key, dense, routed, buckets=buckets[s], group=group) + tied.get(s, 0.0))
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


def stage_copies(scenario) -> list[int]:
    """How many ranks hold each stage (one each when the schedule cannot be built)."""
    ranks = derive.stage_ranks(scenario)
    return [1] * scenario.pipeline.stages if ranks is None else [len(r) for r in ranks]


def once_per_rank(scenario, stages: int) -> list[float]:
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
