"""``step.grad_sync_buckets = "derived"``: how many buckets Megatron-core's DDP reduces each stage in.

Megatron-core (NVIDIA/Megatron-LM @ d98e8a6, the same @ 1e05700; docs/model.md, "What the defaults
describe"): with --overlap-grad-reduce a bucket holds at least ``max(40e6, 1e6 x data)`` elements
(``distributed_data_parallel.py``; ``data`` without context ranks; --ddp-bucket-size: step.ddp_bucket_size),
filled by walking the parameters in reverse registration order and closed at the first parameter that takes
it to that size (``param_and_grad_buffer.py``).  Which model chunks are bucketed (fill_size): DDP itself sets
``bucket_size = None`` on every pipeline rank but the first (``distributed_data_parallel.py`` @ 5d745a7
lines 65-66, core_r0.11.0 lines 75-76, 1e05700 lines 186-187, d339190 lines 124-125, d98e8a6 line 170),
and ``get_model`` passes ``disable_bucketing=(model_chunk_idx > 0)`` (5d745a7 on), ``or
overlap_param_gather_with_optimizer_step`` from the commit that added that flag (4e38405, Aug 2024:
core_r0.9.0 on; ``training.py`` @ 1e05700 lines 1138-1139, d339190 lines 995-996; NeMo v2.2.0
``megatron_parallel.py`` lines 648-652): so only stage 0 (pipeline rank 0's first chunk) is filled by
size, and not even it with that flag.  An unbucketed chunk is one bucket a buffer (with FP8 parameters
the uint8 and the 16-bit buffers: two).  With the distributed optimizer a tied word embedding shared
between the first and the last stage is a bucket of its own on both (``_does_param_require_new_bucket``;
``shared_embedding`` marks the first stage's embedding and the last stage's copy, the output weight): see
``alone``.  ``fill`` is the one fill rule every count and cut here goes through.  Routed experts sit in a
buffer of their own, reduced over the expert-data ranks: not counted here (the dense buffer's buckets are
the ones ``grad_sync`` times as NCCL rings).

Parameters at the granularity of Megatron's Transformer-Engine modules, in the order a layer registers them
(``Attention`` makes ``linear_proj`` before ``SelfAttention`` makes ``linear_qkv``): the output projection,
the input norm, the attention's input projections as one tensor (MLA's several as one), the MLP's norm, then
the dense MLP's fc1 and fc2 (an MoE layer: its router and shared expert's fc1 and fc2).  Linear weights are
split over the tensor ranks; norms (the attention's q / k or latent norms a tensor after its input
projections), positions, the router (with a shared expert's gate) are not.
"""

from __future__ import annotations

from itertools import accumulate

from . import params

MIN_BUCKET = 40_000_000  # elements: Megatron-core's floor
PER_DATA_RANK = 1_000_000  # elements per data-parallel rank above it


def bucket_size(data: int) -> int:
    """Megatron-core's default bucket size (elements) for ``data`` data-parallel ranks."""
    return max(MIN_BUCKET, PER_DATA_RANK * data)


def _layer_tensors(cfg, i: int, t: int) -> list[int]:
    """Dense-buffer parameters of layer ``i`` on one tensor rank, in registration order."""
    h = cfg.hidden_size
    out = cfg.num_heads * cfg.v_head_dim * h
    attn = params.attention(cfg)
    norm = params._norm(cfg, h)
    whole = params.attention_norms(cfg)  # q / k or latent norms: whole on every tensor rank
    bias = params.out_bias(cfg)  # the output projection's bias: whole, beside its weight
    tensors = [out // t + bias, norm, (attn - out - bias - whole) // t]
    tensors += [whole, norm] if whole else [norm]
    if not cfg.is_moe_layer(i):
        width = cfg.intermediate_size
        fc1 = (cfg.ffn_matrices - 1) * h * width  # SwiGLU's fc1 holds gate and up
        return tensors + [(fc1 + (width if cfg.bias else 0)) // t, h * width // t + (h if cfg.bias else 0)]
    gate = h if cfg.shared_expert_gate else 0  # a shared expert's gate: whole, counted with the router
    tensors.append(h * cfg.num_experts + params.router_bias(cfg) + gate)
    if cfg.shared_intermediate_size:
        width = cfg.shared_intermediate_size
        tensors += [2 * h * width // t, h * width // t]
    return tensors


def _layer_linears(cfg, i: int) -> list[bool]:
    """Which of ``_layer_tensors(cfg, i, t)`` are Transformer Engine linear weights (FP8 parameters)."""
    flags = [True, False, True] + ([False, False] if params.attention_norms(cfg) else [False])
    if not cfg.is_moe_layer(i):
        return flags + [True, True]
    return flags + [False] + ([True, True] if cfg.shared_intermediate_size else [])


def _output_weight(cfg, stage) -> bool:
    """The head's stage holds an output weight of its own: untied, or tied to an embedding on another stage (Megatron
    keeps a copy there, ``LanguageModule.setup_embeddings_and_output_layer``); on the embedding's stage a tied head
    reuses the embedding's parameter."""
    return not cfg.tie_word_embeddings or not stage.embedding


def stage_zero_linears(cfg, stage) -> list[bool]:
    """Per tensor of ``stage_zero_tensors``: a Transformer Engine linear weight, which Megatron-core keeps as an
    FP8 parameter under --fp8-param-gather (the embedding, the norms, the router and the output layer, a
    Megatron ``ColumnParallelLinear``, stay 16-bit)."""
    flags = [False] if stage.embedding else []
    if stage.embedding and cfg.max_positions:
        flags.append(False)
    for i in stage.layers:
        flags += _layer_linears(cfg, i)
    if stage.head:
        flags += [False, False] if _output_weight(cfg, stage) else [False]
    return flags


def stage_zero_decays(cfg, stage) -> list[bool]:
    """Per tensor of ``stage_zero_tensors``: in Megatron-core's weight-decay parameter group (optimizer/__init__.py
    ``_get_param_groups`` @ d339190: no decay for a bias or a 1-D parameter): all but the norms."""
    flags = [True] if stage.embedding else []
    if stage.embedding and cfg.max_positions:
        flags.append(True)
    for i in stage.layers:
        flags += [True, False, True, False] + [True] * (len(_layer_linears(cfg, i)) - 4)
    if stage.head:
        flags += [False, True] if _output_weight(cfg, stage) else [False]
    return flags


def stage_zero_tensors(cfg, stage, t: int) -> list[int]:
    """A stage copy's dense parameters on one tensor rank, in registration order (the embedding first, the head's
    norm and output weight last); named for stage 0, the copy Megatron fills by size."""
    h = cfg.hidden_size
    tensors = [cfg.vocab_size * h // t] if stage.embedding else []
    if stage.embedding and cfg.max_positions:
        tensors.append(cfg.max_positions * h)
    for i in stage.layers:
        tensors += _layer_tensors(cfg, i, t)
    if stage.head:
        tensors.append(params._norm(cfg, h))
        if _output_weight(cfg, stage):
            tensors.append(cfg.vocab_size * h // t)
    return tensors


def fill_size(step, s: int, data: int) -> int | None:
    """The size (elements) Megatron-core's DDP fills stage copy ``s``'s buffers into buckets by (step.ddp_bucket_size,
    else its default), or None where it makes each buffer one bucket: every copy but stage 0 (pipeline rank > 0 or
    model chunk > 0), and stage 0 too with step.overlap_param_gather_with_optimizer_step (``disable_bucketing``)."""
    if s != 0 or step.overlap_param_gather_with_optimizer_step:
        return None
    return step.ddp_bucket_size or bucket_size(data)


def alone(cfg, where, sh) -> frozenset[int]:
    """Which of ``stage_zero_tensors(cfg, where, ...)`` take a bucket of their own: under the distributed optimizer
    (``_does_param_require_new_bucket``, param_and_grad_buffer.py @ core_r0.9.0 lines 438-476, core_r0.11.0
    525-563, d339190 623-656, 1e05700 569-603) every parameter Megatron marks ``shared_embedding``, which with
    tied embeddings and 2+ pipeline stages is the first stage's word embedding (registered first) and the last
    stage's copy of it, the output weight (registered last, so reduced first, alone, before its final norm;
    language_module.py ``setup_embeddings_and_output_layer`` @ core_r0.9.0 lines 71-80, 1e05700 lines 135-151)."""
    if not cfg.tie_word_embeddings or sh.zero < 1 or where.embedding == where.head:
        return frozenset()
    return frozenset({0} if where.embedding else {len(stage_zero_tensors(cfg, where, sh.tensor)) - 1})


def per_stage(scenario, derived=None) -> tuple[int, ...]:
    """``step.grad_sync_buckets`` per stage: as given, or "derived" by Megatron-core's rule (1 per stage
    without [model], without the overlap or with DeepSpeed's end of step): its buffers' buckets as
    gather_groups cuts them at fill_size."""
    step, stages = scenario.step, scenario.pipeline.stages
    if step is None:
        return (1,) * stages
    if step.grad_sync_buckets != "derived":
        return (int(step.grad_sync_buckets),) * stages
    if scenario.model is None or not step.overlap_grad_sync or step.runtime != "megatron":
        return (1,) * stages
    st = (scenario.derived() if derived is None else derived).setup
    sh, fp8 = st.sharding, scenario.model.fp8_params
    out = []
    for s, where in enumerate(st.stages):
        size, own = fill_size(step, s, sh.data), alone(st.cfg, where, sh)
        if size is None and not fp8 and not own:  # one buffer, one bucket
            out.append(1)
            continue
        groups = gather_groups(stage_zero_tensors(st.cfg, where, sh.tensor), stage_zero_linears(st.cfg, where),
                               None, size, fp8, own)  # fmt: skip
        out.append(max(1, sum(g[3] for g in groups)))
    return tuple(out)


def _equal(tensors: list[int], members: list[int], n: int) -> list[tuple[int, int, int]]:
    """``members`` (indices into ``tensors``, forward order) cut into ``n`` buckets of equal elements:
    (forward position of the bucket's first element, elements, 1) per bucket, forward order."""
    start = [0, *accumulate(tensors)]
    total = sum(tensors[i] for i in members)
    out, walked, k = [], 0, 0
    for i in members:
        # the buckets that begin inside this tensor
        while k < n and k * total // n < walked + tensors[i]:
            out.append((start[i] + k * total // n - walked, (k + 1) * total // n - k * total // n, 1))
            k += 1
        walked += tensors[i]
    return out


def fill(tensors: list[int], members: list[int], size: int | None,
         alone: frozenset[int] = frozenset()) -> list[tuple[int, int, int]]:
    """``members`` (indices into ``tensors``, forward order) bucketed by Megatron's fill rule: walked backwards, a
    bucket closed at the tensor that brings it to ``size`` (None: never, one bucket), a tensor in ``alone`` (a shared
    embedding) closing the bucket before it and itself; (forward position of the bucket's first tensor, elements, 1)
    per bucket, forward order."""
    start = [0, *accumulate(tensors)]
    out, filled, first = [], 0, None
    for i in reversed(members):
        if i in alone and filled:
            out.append((start[first], filled, 1))
            filled = 0
        filled, first = filled + tensors[i], i
        if (size is not None and filled >= size) or i in alone:
            out.append((start[first], filled, 1))
            filled = 0
    if filled:
        out.append((start[first], filled, 1))
    return out[::-1]


def gather_groups(tensors: list[int], linears: list[bool], buckets: int | None, size: int | None,
                  fp8_params: bool, alone: frozenset[int] = frozenset()) -> list[tuple[int, int, int, int]]:
    """Stage 0's parameter all-gather bucket groups in the order Megatron-core gathers them (the forward's):
    (forward position of the group's first parameter in elements, 16-bit elements, FP8 elements, buckets).

    ``buckets``: the given count, as that many equal buckets (of the FP8 parameters with ``fp8_params``);
    None: Megatron's fill rule at ``size`` elements (``fill``, ``alone`` its tensors in buckets of their own; ``size``
    None: one bucket a buffer, fill_size's unbucketed chunk).  Without FP8 parameters every bucket is a group of its
    own; with them the FP8 weights sit in a uint8 buffer of their own and every bucket of the 16-bit buffer
    joins the group holding the forward's first FP8 bucket (param_and_grad_buffer.py ``partition_buckets``,
    case 3), which is gathered first."""
    cut = (lambda members: _equal(tensors, members, buckets)) if buckets else (lambda members: fill(tensors, members, size, alone))
    if not fp8_params or not any(linears):
        return [(pos, n, 0, b) for pos, n, b in cut(list(range(len(tensors))))]
    fp8 = cut([i for i, lin in enumerate(linears) if lin])
    rest = [i for i, lin in enumerate(linears) if not lin]
    wide = fill(tensors, rest, size, alone) if not buckets and rest else ([(0, sum(tensors[i] for i in rest), 1)] if rest else [])
    first = min([fp8[0][0]] + [pos for pos, _, _ in wide])
    head = (first, sum(n for _, n, _ in wide), fp8[0][1], fp8[0][2] + sum(b for _, _, b in wide))
    return [head] + [(pos, 0, n, b) for pos, n, b in fp8[1:]]


# apex's DistributedFusedAdam (contrib/optimizers/distributed_fused_adam.py, tags 23.05-24.09): a bucket holds
# bucket_cap_mb MiB of grad_sync_dtype elements, cut into one shard per data-parallel rank, each shard rounded down
# to the alignment of 128 bytes; every parameter fragment starts at that alignment too
APEX_ALIGNMENT_BYTES = 128


def apex_bucket_elements(cap_mb: float, data: int, grad_bytes: int = 2) -> int:
    """Elements in one apex bucket: ``data`` shards of ``int(cap_mb MiB / grad_bytes / data)`` elements rounded down to
    the alignment (``default_shard_size``; at least one alignment)."""
    align = APEX_ALIGNMENT_BYTES // grad_bytes
    shard = int(1024 * 1024 * cap_mb / grad_bytes / data) // align * align
    return max(shard, align) * data


def apex_buckets(tensors: list[int], cap_mb: float, data: int, grad_bytes: int = 2) -> int:
    """Buckets apex fills from one ``init_params_bucket`` call over parameters of ``tensors`` elements: they are laid
    end to end, each at the next aligned offset, across buckets of apex_bucket_elements (a call never shares a bucket
    with an earlier one: it marks them all full)."""
    align = APEX_ALIGNMENT_BYTES // grad_bytes
    filled = 0
    for n in tensors:
        filled = -(-filled // align) * align + n
    return -(-filled // apex_bucket_elements(cap_mb, data, grad_bytes)) if filled else 0
