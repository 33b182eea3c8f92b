"""The data-parallel gradient sync at a step's end: one collective over the data-parallel or expert-data ranks
timed (sync_ms), Megatron-core's bucket groups, ZeRO 2/3's releases (Megatron-FSDP's post-backward hooks), the tied
embedding's and the tensor-parallel all-reduces after the sync (grad_sync_tail), NeMo's sync on apex (nemo_sync,
grad_sync_parts) and DeepSpeed's bf16 all-reduce's passes.

Part of ``[step]``'s derived grad sync figure (derived_step.py); docs/step.md gives the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import collectives, ddp_buckets, derive, fp8_step_casts, nemo_optimizer, params, step_memo
from .config import ModelError


# DeepSpeed's data-parallel all-reduce of its fp32 gradients (v0.6.5 runtime/engine.py, allreduce_bucket):
# cast to the communication dtype (bf16 for a bf16 run: read 4, write 2), scaled by 1/D after the
# all-reduce (read 2, write 2), copied back into the fp32 gradient (read 2, write 4).
DS_BF16_COMM_PASSES = (4 + 2) + (2 + 2) + (2 + 4)
BF16 = 2  # bytes: DeepSpeed's bf16 communication dtype and bf16 weights


def sync_ms(st, key: str, dense: float, routed: float, op: str | None = None, buckets: int = 1,
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


def one_group(scenario, st, s: int) -> bool:
    """Whether stage copy ``s``'s data-parallel buckets go to NCCL as one group: apex's (st.dp_grouped), or a chunk
    Megatron-core's DDP does not bucket (ddp_buckets.fill_size None: ``partition_buckets(...,
    force_single_bucket_group=disable_bucketing)``, distributed_data_parallel.py @ d339190 line 249), whose buffers'
    buckets are one bucket group; a bucketed chunk's groups are launched one at a time."""
    step = scenario.step
    return st.dp_grouped or (st.grad_hook == "ddp" and step is not None
                             and ddp_buckets.fill_size(step, s, st.sharding.data) is None)


def last_unit_grads(st, where) -> tuple[float, float]:
    """(dense, routed) gradient bytes of a stage copy's last unit to reduce-scatter under ZeRO >= 2 (model/fsdp.py):
    the last backward's last unit, the stage's first (its embedding, else its first layer, else its MTP module)."""
    cfg, sh = st.cfg, st.sharding
    first = params.layer(cfg, where.layers[0]) if where.layers else params.mtp_module(cfg)
    dense, routed = (params.embedding_over_tensor(cfg, sh.tensor), 0) if where.embedding else (first.dense_over_tensor(sh.tensor), first.routed)
    return dense / sh.tensor * sh.grads_bytes, routed / sh.routed_ranks * sh.grads_bytes


def zero2_units(where) -> int:
    """How many FSDP units a ZeRO 2 stage copy reduce-scatters in its backward (model/fsdp.py's units: a layer, an
    MTP module, the embedding, the head)."""
    return len(where.layers) + where.mtp + int(where.embedding) + int(where.head)


def grad_sync_shares_fsdp(scenario, derived, figures) -> tuple[tuple[float, ...], ...]:
    """Per stage, ZeRO 2/3's grad sync (``figures``: the derived grad_sync per stage) as shares in release order
    (StepCosts.grad_sync_shares), or () when not Megatron-FSDP's (Scenario.fsdp_grad_sync).  Its post-backward
    hooks launch each unit's reduce-scatter once the unit's backward is done (megatron_fsdp.py @ d98e8a6
    _process_post_backward_gradients, lines 757-783), so the stage's first unit, the backward's last, goes at the
    backward's end.  ZeRO 3: one share, the whole figure (fsdp.backward_tail: what the last backward leaves on
    the channel) at the backward's end.  ZeRO 2: its units' reduce-scatters released one after another through the
    last backward (the engine releases share k of n k/n of the way through it), the stage's first unit,
    ``last_unit_grads``, last, at the backward's end, and the other units in equal shares before it (the units'
    sizes apart from the last are not told apart); one share where nothing is left but the last unit's."""
    if not figures or not scenario.fsdp_grad_sync():
        return ()
    st = (scenario.derived() if derived is None else derived).setup
    if st.sharding.zero >= 3:
        return ((1.0,),) * len(figures)
    out = []
    for where, total in zip(st.stages, figures):
        units = zero2_units(where)
        tail = sync_ms(st, "grad_sync", *last_unit_grads(st, where))
        if units <= 1 or total <= tail or total <= 0:
            out.append((1.0,))
            continue
        rest = (total - tail) / (units - 1) / total
        out.append((rest,) * (units - 1) + (tail / total,))
    return tuple(out) if any(out) else ()


def every_backward_fsdp(scenario, derived=None) -> tuple[tuple[float, ...], ...]:
    """ZeRO 2: per stage, the reduce-scatters each of a copy's backwards but its last releases (ms, in release order;
    StepCosts.every_backward), or () when the grad sync is not Megatron-FSDP's ZeRO 2.  Megatron-FSDP's
    post-backward hooks reduce-scatter each unit after its backward in every micro-batch (``grad_reduce_every_bprop``,
    megatron_fsdp.py @ d98e8a6 lines 757-783, the overlap forced on, lines 331-337), on one reduce-scatter stream
    that waits for the compute stream (param_and_grad_buffer.py @ d98e8a6 lines 4037-4045), so each backward
    releases the copy's whole gradient (ZeRO 1's figure, ``full``) as the last one releases its share of it
    (grad_sync_shares_fsdp): the units one after another, the stage's first (``last_unit_grads``) at the backward's
    end.  The engine queues them with the grad syncs on the rank's one data-parallel channel (engine/step.py
    _earlier_jobs): what they leave there when the last backward's are released, the backlog, is laid out from the
    trace, not worked out here (s21k; before, a per-copy carry, (n - 1) x (full - (F + B)), in the grad sync
    figure), and the compute beside them is slowed by step.dp_comm_sms as beside the grad syncs."""
    if not scenario.fsdp_grad_sync() or scenario.parallel.zero != 2:
        return ()
    derived = scenario.derived() if derived is None else derived
    st, step = derived.setup, scenario.step
    sh = st.sharding
    out = []
    for where, stage in zip(st.stages, derived.stages):
        dense = stage.dense_params / sh.tensor * sh.grads_bytes  # as derived_sync's grad_sync reads it
        if step.fp32_embedding_grads:
            dense += nemo_optimizer.fp32_embedding_extra_bytes(st, where)
        full = sync_ms(st, "grad_sync", dense, stage.routed_params / sh.routed_ranks * sh.grads_bytes)
        tail = sync_ms(st, "grad_sync", *last_unit_grads(st, where))
        units = zero2_units(where)
        out.append((full,) if units <= 1 or full <= tail else ((full - tail) / (units - 1),) * (units - 1) + (tail,))
    return tuple(out)


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
    rank = [min(r) if r else -1 for r in held]  # a copy's time on its first rank, as derived_step.once_per_rank puts it
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
        tied = tied_embedding_ms(scenario, st, nemo_optimizer.FP32_GRAD_BYTES if fp32 else st.sharding.grads_bytes)
        rest = tuple(tied.get(s, 0.0) for s in range(S))
    return tuple(a + b for a, b in zip(tp_grad_all_reduce_ms(scenario, st), rest))


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
    tied = tied_embedding_ms(scenario, st, nemo_optimizer.FP32_GRAD_BYTES if fp32 else sh.grads_bytes)
    buckets = step_memo.per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))
    dense, routed = [], []
    for where, stage in zip(st.stages, derived.stages):
        d = nemo_optimizer.apex_stage(scenario, st, where, stage).dense_params / sh.tensor * sh.grads_bytes
        dense.append(d + (nemo_optimizer.fp32_embedding_extra_bytes(st, where) if step.fp32_embedding_grads else 0.0))
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
                    moved += nemo_optimizer.fp32_embedding_extra_bytes(st, where) if step.fp32_embedding_grads else 0.0
                moved = min(moved, dense[s])
                dense[s] -= moved
                held_dense[first] += moved
            if step.fp32_embedding_grads and (where.embedding or (where.head and cfg.tie_word_embeddings)):
                fp32_tensors.append(cfg.vocab_size * cfg.hidden_size // sh.tensor)
                if where.embedding and cfg.max_positions:  # the learned positions, whole on every tensor rank
                    fp32_tensors.append(cfg.max_positions * cfg.hidden_size)
            if scenario.model.fp8_params:  # the stage's apex elements less its FP8 weights and fp32 embeddings
                sixteen += nemo_optimizer.apex_stage(scenario, st, where, derived.stages[s]).dense_params / sh.tensor
                sixteen -= fp8_step_casts.fp8_param_elements(st, where)[0]
                if step.fp32_embedding_grads:
                    # the same embeddings, as counted
                    sixteen -= nemo_optimizer.fp32_optimizer_params(cfg, where, sh.tensor) / sh.tensor
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
    return sync_ms(st, "grad_sync", parts.held_dense[s], parts.held_routed[s], buckets=max(1, parts.held_buckets[s]))


def grad_sync_parts(scenario, derived=None, memo: dict | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stage copy, (the reduction overlapped as step.grad_sync describes it, the tail run after the rank's pipeline
    and every other sync of the rank: StepCosts.grad_sync_tail), in ms (nemo_sync's parts timed)."""
    return step_memo.per_call(memo, "parts", lambda: _grad_sync_parts(scenario, derived, memo))


def _grad_sync_parts(scenario, derived, memo: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    derived = scenario.derived() if derived is None else derived
    st = derived.setup
    p = nemo_sync(scenario, derived, memo)
    overlapped, tail = [], []
    for s in range(len(p.dense)):
        o = sync_ms(st, "grad_sync", p.dense[s], p.routed[s], buckets=p.buckets[s], group=one_group(scenario, st, s)) \
            if p.dense[s] or p.routed[s] else 0.0
        overlapped.append(o + (0.0 if p.in_tail[s] else p.tied_ms[s]))
        tail.append(held_ms(st, p, s) + p.fp32_ms[s] + (p.tied_ms[s] if p.in_tail[s] else 0.0))
    return tuple(overlapped), tuple(tail)


def fp32_optimizer_all_reduce_ms(st, where) -> float:
    """NeMo 1.x's all-reduce (AVG) of a stage copy's fp32 embedding gradients over the data-parallel group
    (_fp32_optim_grad_sync: one coalesced group, the rank's fp32 tensors at 4 bytes), on the group's link (ms)."""
    nbytes = nemo_optimizer.fp32_optimizer_elements(st, where) * nemo_optimizer.FP32_GRAD_BYTES
    return sync_ms(st, "grad_sync", nbytes, 0.0, op="all_reduce") if nbytes else 0.0


def bucket_groups(scenario, st, where, stage, buckets: int,
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
    linear = fp8_step_casts.fp8_param_elements(st, where)[0] if fp8 else 0.0
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
    group's share is its reduce-scatter as sync_ms times it (its buckets' ring latencies, its gradient bytes);
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
    buckets = step_memo.per_call(memo, "buckets", lambda: ddp_buckets.per_stage(scenario, derived))
    out = []
    for s, (where, stage) in enumerate(zip(st.stages, derived.stages)):
        if buckets[s] <= 1 or not where.layers:
            out.append(())
            continue
        groups = bucket_groups(scenario, st, where, stage, buckets[s], s)[1]
        times = [sync_ms(st, "grad_sync", (w + n) * st.sharding.grads_bytes, 0.0, buckets=b, group=True)
                 for _, w, n, b in groups]
        out.append(tuple(t / sum(times) for t in reversed(times)) if len(times) > 1 and sum(times) > 0 else ())
    return tuple(out) if any(out) else ()
