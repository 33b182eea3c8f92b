"""[step] figures from the model: derived sync times, and the tokens and FLOPs of a step.

Kept apart from step.py so that the end-of-step simulation (and step_metrics.py,
which types its block) never import the model package.  docs/step.md gives the formulas.
"""

from __future__ import annotations

from ..step_costs import Throughput
from . import collectives, derive, flops, params
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


def _sync_ms(st, key: str, dense: float, routed: float, buckets: int = 1) -> float:
    """One grad sync (reduce-scatter with ZeRO >= 1, else all-reduce) or cross-copy sum of ``dense``
    bytes over the data-parallel ranks and ``routed`` bytes over the expert-data ranks (ms); a
    reduce-scatter across nodes as ``buckets`` NCCL rings (collectives.bucketed)."""
    sh, hw = st.sharding, st.hw
    if st.rates is not None:
        nic = "nvlink" if sh.tensor * sh.data <= st.rates.gpus_per_node else "nic"
        # Megatron's rank order puts tensor innermost, then data: a node holds gpus_per_node / tensor
        # ranks of each data-parallel group, each on its own NIC
        per_node = max(1, min(sh.data, st.rates.gpus_per_node // sh.tensor))
        op = "reduce_scatter" if sh.zero >= 1 else "all_reduce"
        if key == "cross_copy_sync":
            return collectives.p2p(dense + routed, st.rates, "nic") * 1e3
        if op == "reduce_scatter" and nic == "nic":
            dense_s = collectives.bucketed(op, dense, sh.data, st.rates, per_node, buckets)
        else:
            dense_s = collectives.time(op, dense, sh.data, st.rates, nic, nics=per_node)
        return (dense_s + collectives.time(op, routed, int(sh.expert_data), st.rates, "nic")) * 1e3
    if key == "cross_copy_sync":
        return (dense + routed) / (hw.p2p_gbps * 1e9) * 1e3
    factor = 1.0 if sh.zero >= 1 else 2.0  # reduce-scatter or all-reduce

    def ring(nbytes: float, ranks: float) -> float:
        return factor * (ranks - 1) / ranks * nbytes if ranks > 1 else 0.0

    return (ring(dense, sh.data) + ring(routed, sh.expert_data)) / (hw.a2a_gbps * 1e9) * 1e3


def _stage_copies(scenario) -> list[int]:
    """How many ranks hold each stage (2 for DualPipe's and Chimera's two directions), read off the
    scenario's own schedule."""
    from ..schedules import registry
    from ..schedules.ir import ScheduleError

    p = scenario.pipeline
    held = [0] * p.stages
    try:
        schedule = registry.build(p.schedule, p.stages, p.microbatches, **scenario.options())
    except ScheduleError:  # the run refuses it with its own words; one copy each meanwhile
        return [1] * p.stages
    for stages in schedule.stages_on_rank():
        for s in stages:
            held[s] += 1
    return held


def _zero2_backlog(scenario, st, stage, copies: int, full_ms: float) -> float:
    """ZeRO 2's end-of-step wait bounded by its data-parallel channel's load (ms).

    ZeRO 2 reduce-scatters a stage copy's whole gradient after every backward it runs (M / copies
    of them per step), where ZeRO 1 does it once.  They run on the data-parallel channel beside the
    rank's compute, so at best they hide under all of that copy's compute (F + B + W per micro-batch);
    what the channel still has to carry when the pipeline ends is waited for.  A lower bound: the
    pipeline's P2P and the expert all-to-all on the same NIC are not counted.
    """
    backwards = scenario.pipeline.microbatches / copies
    compute = (stage.forward or 0.0) + (stage.backward or 0.0) + (stage.weight or 0.0)
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


def derived_sync(scenario, key: str, derived=None) -> tuple[float, ...]:
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
    ``derived``: the scenario's derived figures when the caller has them (else derived here).
    Raises model.config.ModelError when [model] or [hardware] is missing.
    """
    if scenario.model is None or scenario.hardware is None:
        raise ModelError('"derived" needs the [model] and [hardware] sections')
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    sh, hw = st.sharding, st.hw
    if key == "optimizer" and st.rates is None:
        raise ModelError('"derived" needs a hardware.preset without hardware.efficiency (the kernel rates)')
    copies = _stage_copies(scenario) if key == "grad_sync" and sh.zero == 2 else None
    buckets = scenario.step.grad_sync_buckets if key == "grad_sync" and scenario.step is not None else 1
    out = []
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        dense = stage.dense_params / sh.tensor * sh.grads_bytes
        routed = stage.routed_params / sh.expert * sh.grads_bytes
        if key == "optimizer":
            shard = lambda ranks: 1 / ranks if sh.zero >= 1 else 1.0  # noqa: E731
            updated = stage.dense_params / sh.tensor * shard(sh.data) + stage.routed_params / sh.expert * shard(sh.expert_data)
            per_param = optimizer_bytes_per_param(scenario.model, sh.optimizer_bytes)
            # one fused multi-tensor Adam launch: its floor once (how many launches apex / TE split it
            # into is not published; each adds 2.5 us against milliseconds of streaming)
            out.append((updated * per_param / st.rates.hbm + st.rates.floor) * 1e3)
            continue
        if key == "grad_sync" and sh.zero >= 2:
            first = params.layer(st.cfg, where.layers[0]) if where.layers else params.mtp_module(st.cfg)
            unit_dense, unit_routed = (params.embedding(st.cfg), 0) if where.embedding else (first.dense, first.routed)
            tail = _sync_ms(st, key, unit_dense / sh.tensor * sh.grads_bytes, unit_routed / sh.expert * sh.grads_bytes)
            if copies is not None and stage.forward is not None:
                tail = max(tail, _zero2_backlog(scenario, st, stage, copies[s], _sync_ms(st, key, dense, routed)))
            out.append(tail)
            continue
        out.append(_sync_ms(st, key, dense, routed, buckets))
    return tuple(out)
