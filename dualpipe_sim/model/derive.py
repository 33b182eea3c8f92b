"""From ``[model]``, ``[parallel]``, ``[hardware]`` and ``memory.recompute`` to per-stage figures.

Per stage: parameters (dense and routed-expert parts), static memory per rank
holding it, activation bytes per micro-batch, and, given hardware, the F, B, W
times (ms) and P2P time; for an MoE model with expert parallelism, the
``[chunk]`` components of one MoE layer and of each stage as its layout holds it.  With a GPU preset and no
``hardware.efficiency``, every time is the sum of the kernels the step runs
(kernels.py, timed from measured kernel rates); with ``hardware.efficiency``
(or a custom GPU without a preset) it is FLOPs / (peak FLOP/s x efficiency) or
overhead + bytes / bandwidth, as before.  docs/model.md gives the derivations.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType

from . import activations, collectives, config, deepspeed_pipe, flops, fsdp, gpu_spread, kernels, layout, megatron_lm, memory, params
from . import deepep_buffer, nemo_loss, placement, recompute, unused_keys
from .config import ModelConfig, ModelError
from .hardware import PRESETS, Hardware, preset
from .rates import TE_STATIC_CAST_TRANSPOSE_GPUS, TE_STATIC_CAST_TRANSPOSE_SHARE, KernelRates
from .sections import DTYPES, ModelSection, ParallelSection
from ..errors import cut

# Flash attention skips the masked half of a causal s x s square; its backward
# runs 5 matmuls of that size (recomputing the scores) against the forward's 2.
FLASH_CAUSAL, FLASH_BACKWARD, EAGER_BACKWARD = 0.5, 2.5, 2.0
A2A_SMS = 20  # SMs an expert-parallel all-to-all kernel occupies (DeepSeek-V3 report, Sec. 3.2.2)
FP8_SCALE_OVERHEAD = 4 / 128  # one fp32 scale per 128 FP8 values (DeepSeek-V3's tile quantisation)


@dataclass(frozen=True)
class Setup:
    """Everything the derivation reads, resolved and checked."""

    cfg: ModelConfig
    seq: int
    mb: int
    policy: str
    act_bytes: float
    sharding: memory.Sharding
    stages: tuple[layout.Stage, ...]
    hw: Hardware | None
    efficiency: float = 0.4  # used when rates is None
    a2a_overhead: float = 0.0
    rates: KernelRates | None = None  # measured kernel rates: times from kernels.py
    context: int = 1
    tp_overlap: bool = True
    sequence_parallel: bool = True
    scatter_gather: bool = False  # parallel.pipeline_scatter_gather
    legacy: bool = False  # model.runtime = "megatron-lm-2021"
    grad_accumulation: float = 0.0  # bytes per parameter and micro-batch of a separate accumulation pass
    expert_streams: int = kernels.TE_COMPUTE_STREAMS  # model.expert_gemm (0: one grouped kernel)
    aux_loss: bool = False  # model.moe_aux_loss
    amax_group: int = 0  # ranks the FP8 amaxes are reduced over per model chunk (0: no per-tensor scaling)
    amax_blocking: bool = True  # model.fp8_amax_reduction is not "hidden"
    ub_sms: tuple[tuple[str, int], ...] = ()  # parallel.tp_overlap_sms
    ub_atomic: tuple[str, ...] = ()  # parallel.tp_overlap_atomic
    host_op: float = 0.0  # model.host_overhead_us, seconds (kernel-level times only)
    dispatcher: str = "alltoall"  # model.moe_dispatcher
    sync_tp_duplicated: bool = False  # parallel.sync_tp_duplicated_parameters
    alibi: bool = False  # model.alibi
    deepseek_kernels: bool = False  # DeepSeek's runtime: its MoE layers' kernel list (deepseek_kernels.py)
    cross_entropy: str = "megatron"  # model.cross_entropy
    fp8_current: bool = False  # model.fp8_recipe = "current"
    fp8_transpose: bool = True  # model.fp8_transpose resolved: Transformer Engine makes FP8 transposes
    ub_not_told: tuple[str, ...] = ()  # parallel.tp_overlap_not_told
    qkv_prepare: bool = False  # TE's flash-attn path copies q, k, v out of the interleaved QKV output (qkv_prepare)
    evaluation: bool = False  # the forward with autograd off, as an evaluation runs it (kernels.Layout.evaluation)
    grads_averaged: bool = False  # step.average_in_collective: the gradient reduce-scatter is an ncclAvg
    ub_ring_rs: tuple[str, ...] = ()  # parallel.tp_overlap_ring_rs
    modules: tuple[str, ...] | None = None  # memory.recompute_modules (None: Megatron-core's default; recompute.py)
    force_balance: bool = False  # model.moe_force_load_balancing
    grad_copy: float = 0.0  # the per-micro-batch .grad add into the gradient buffer, bytes an element (grad_copy_bytes)
    grad_hook: str = ""  # whose hook does it: "apex", "ddp" (Megatron-core's DDP) or "" (grad_hook)
    embedding_grad: float = 0.0  # the embedding's per-micro-batch .grad hand-off, bytes an element (embedding_grad_bytes)
    embed_layernorm: bool = False  # model.embed_layernorm
    deepspeed_pipe: bool = False  # step.runtime = "deepspeed-bf16": DeepSpeed's pipeline engine (deepspeed_pipe.py)
    megatron_lm_loop: bool = False  # model.training_loop resolved "megatron-lm-2021" (megatron_lm.py)
    nemo_loss: str = ""  # model.training_loop whose loss the last stage runs after the head (nemo_loss.py), or ""
    interleaved: bool = False  # Megatron's interleaved schedule: one P2P call a forward-backward pair (megatron_lm.py)
    # hardware.gpu_variability on: (spread, GPUs of the run, factor every kernel takes); None: off (gpu_spread.py)
    gpu_spread: tuple[str, int, float] | None = None
    tp_max_ctas: int = 0  # parallel.tp_max_ctas
    dp_channels: int = collectives.NCCL_DP_CTAS  # the data-parallel communicator's NCCL channels (dp_channels)
    dp_held_sms: int = 0  # SMs a data-parallel collective holds from the compute beside it: step.dp_comm_sms, 0 without [step]
    dp_grouped: bool = False  # the data-parallel buckets go to NCCL as one group: apex's (step.param_gather = "apex")
    rope_fusion: bool = True  # model.rope_fusion (false: rope.py's eager kernels)
    fp4: bool = False  # model.fp4 = "nvfp4": the linears' GEMMs and casts in NVFP4 (kernels.Layout.fp4)
    rank_order: str = placement.DEFAULT_ORDER  # parallel.rank_order
    pipeline: int = 1  # pipeline ranks (pipeline_ranks)
    amax_history: int = kernels.AMAX_HISTORY  # model.fp8_amax_history
    cast_transpose_share: float = 1.0  # model.te_cast_transpose: that kernel's rate over the HBM row's (cast_transpose)

    def group(self, kind: str) -> placement.Group:
        """Where the run's groups of ``kind`` sit in its NVLink domains (placement.group; needs the kernel rates)."""
        sh = self.sharding
        return placement.group(kind, self.rank_order, self.rates.nvlink_domain, sh.tensor, self.context,
                               sh.data // self.context, self.pipeline, sh.expert, sh.expert_tensor)

    @property
    def ring_serial(self) -> bool:
        """The CP ring's send and receive run one after the other: CP 2 on a GPU in UNBATCHED_CP2_P2P."""
        return self.context == 2 and self.hw is not None and self.hw.name in UNBATCHED_CP2_P2P

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one rank of a context-parallel group."""
        return self.seq * self.mb // self.context

    @cached_property  # a pure function of the frozen fields, read per layer, module and stage
    def layout(self) -> kernels.Layout:
        return kernels.Layout(self.seq, self.mb, self.sharding.tensor, self.context, self.sharding.expert,
                              self.cfg.fp8, self.policy, self.tp_overlap, self.act_bytes,
                              self.sequence_parallel, self.legacy, self.grad_accumulation,
                              self.expert_streams, self.aux_loss, self.amax_group, self.amax_blocking,
                              self.ub_sms, self.ub_atomic, self.host_op, self.dispatcher,
                              self.sync_tp_duplicated, self.alibi, self.deepseek_kernels,
                              not (self.sharding.fp8_weight_cache or self.sharding.fp8_params),
                              grad_bytes=self.sharding.grads_bytes,
                              cross_entropy=self.cross_entropy, fp8_current=self.fp8_current,
                              fp8_transpose=self.fp8_transpose, ub_not_told=self.ub_not_told,
                              ring_serial=self.ring_serial, qkv_prepare=self.qkv_prepare,
                              evaluation=self.evaluation, ub_ring_rs=self.ub_ring_rs,
                              modules=self.modules, force_balance=self.force_balance,
                              grad_copy=self.grad_copy, embedding_grad=self.embedding_grad,
                              grad_hook=self.grad_hook, embed_layernorm=self.embed_layernorm, fp4=self.fp4,
                              rope_fusion=self.rope_fusion, amax_history=self.amax_history,
                              cast_transpose_share=self.cast_transpose_share,
                              deepspeed_pipe=self.deepspeed_pipe, tp_max_ctas=self.tp_max_ctas,
                              expert_tensor=self.sharding.expert_tensor, places=self.kernel_places())  # fmt: skip

    def kernel_places(self) -> tuple[tuple[str, placement.Group], ...]:
        """The groups the kernels read (kernels.Layout.places): the tensor, context, expert and expert-tensor groups,
        the amax group, and the loss's data-parallel groups where a training loop's loss rows are costed."""
        if self.rates is None:
            return ()
        kinds = ["tp", "cp", "tp-cp", "ep"] + (["dp", "dp-cp"] if self.megatron_lm_loop or self.nemo_loss else [])
        kinds += ["etp"] if self.sharding.expert_tensor > 1 else []  # ETP 1: no ETP collectives to place
        places = [(kind, self.group(kind)) for kind in kinds]
        inner = self.sharding.tensor * self.context
        if self.amax_group > self.sharding.tensor:  # tensor x data x context, as many as amax_group counts
            places.append(("tp-dp-cp", placement.group("tp-dp-cp", self.rank_order, self.rates.nvlink_domain,
                                                       self.sharding.tensor, self.context, self.amax_group // inner,
                                                       self.pipeline)))  # fmt: skip
        return tuple(places)


@dataclass(frozen=True)
class LayerTimes:
    """One layer's times (ms) per micro-batch, by component (the [chunk] names)."""

    attn_forward: float
    mlp_forward: float
    attn_backward_input: float
    attn_backward_weight: float
    mlp_backward_input: float
    mlp_backward_weight: float
    dispatch_forward: float = 0.0
    combine_forward: float = 0.0
    dispatch_backward: float = 0.0
    combine_backward: float = 0.0

    @property
    def forward(self) -> float:
        return self.attn_forward + self.mlp_forward

    @property
    def weight(self) -> float:
        return self.attn_backward_weight + self.mlp_backward_weight

    @property
    def backward(self) -> float:
        return self.attn_backward_input + self.mlp_backward_input + self.weight


LAYER_PARTS = tuple(LayerTimes.__dataclass_fields__)  # its components, in the [chunk] names


@dataclass
class StageFigures:
    # whole-model counts this stage holds (before any sharding), which one rank holds 1 / tensor of the dense part;
    # so what every tensor rank holds whole counts tensor times: a learned position table (params.embedding_over_tensor),
    # norms, row-parallel biases and routers (params.whole_on_tensor; stage_dense_params)
    dense_params: int
    routed_params: int
    activation_bytes: float  # per micro-batch on the rank running it
    static: memory.Static  # per rank holding it
    forward: float | None = None  # ms
    backward: float | None = None
    weight: float | None = None
    sharding_buffers: float = 0.0  # ZeRO 2/3: unsharded buffers of its largest FSDP unit (memory.sharding_buffers)
    deepep_buffers: float = 0.0  # DeepEP's persistent buffer, on a rank holding an MoE layer (stage_deepep_bytes)
    fsdp_exposed: tuple[float, float] | None = None  # ZeRO 3: ms its forward / backward wait for collectives
    fsdp_tail: float | None = None  # ZeRO 3: ms the last backward leaves on the data-parallel channel (fsdp.backward_tail)
    # ZeRO 3 with step.dp_comm_sms: ms its forward / backward compute runs longer beside its own collectives (fsdp_slowed)
    fsdp_slowed: tuple[float, float] | None = None
    # its MoE layers' backward host share where a schedule runs W apart (stage_apart_host), ms: what a lone I carries
    # less than backward - weight, what a lone W carries more than weight; None: no host share costed
    host_apart: tuple[float, float] | None = None


@dataclass
class Derived:
    setup: Setup
    stages: list[StageFigures]
    p2p: float | None = None  # ms, across the NIC
    p2p_nvlink: float | None = None  # ms, a hand-off inside one NVLink domain (model/placement.py)
    moe_layer: LayerTimes | None = None  # the [chunk] components, MoE with expert parallelism
    chunk_layers: int = 0
    comm_compute_slowdown: float = 1.0  # compute beside an all-to-all runs on the SMs the all-to-all leaves
    # MoE with expert parallelism: each stage's [chunk] as (layers, LayerTimes): its layers, embedding, head
    # and MTP spread evenly over its MoE layers (dense-only stages: over their layers, no all-to-all)
    stage_chunks: tuple[tuple[int, LayerTimes], ...] = ()
    # per stage, per MoE layer as stage_chunks spreads it, ms: the forward's and the backward's host rows a lone op
    # carries and the host's share of a layer in an overlapped pair instead (stage_pair_host); () = none
    stage_pair_host: tuple[tuple[float, float, float], ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def parameter_bytes(self) -> tuple[float, ...]:
        return tuple(s.static.parameters for s in self.stages)

    @property
    def activation_bytes(self) -> tuple[float, ...]:
        return tuple(s.activation_bytes for s in self.stages)


class Memo:
    """Figures that many derivations compute alike, kept for one caller that derives many layouts
    (plan/estimate.py's FigureCache: thousands of them, most sharing their layers' kernels).

    A table is one function's values for one context (the part of its arguments a derivation's
    many lookups share, hashed once per table fetched); context and key together are everything the
    function reads (``times_key`` and the comments at each use), so a hit returns what the call
    would.  The values are immutable.  Its owner decides how long it lives: nothing here is global.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple, dict] = {}

    def table(self, name: str, *context) -> dict:
        return self._tables.setdefault((name, context), {})


def _table(memo: Memo | None, name: str, *context) -> dict | None:
    return None if memo is None else memo.table(name, *context)


def _get(table: dict | None, key, compute, *args):
    """``compute(*args)``, kept in ``table`` under ``key`` (computed every time without a table)."""
    if table is None:
        return compute(*args)
    if key not in table:
        table[key] = compute(*args)
    return table[key]


def times_key(st: Setup) -> tuple:
    """What a layer's, a module's or a chunk's kernels read of a Setup: with kernel rates the model,
    the rates and the kernels' Layout (kernels.layer and friends take nothing else); without them
    (FLOPs / efficiency) the whole Setup but its stages, which no per-layer figure reads."""
    return (st.cfg, st.rates, st.layout) if st.rates is not None else (replace(st, stages=()),)


# -- resolving the sections --------------------------------------------------------
def _closest_model_key(key: str) -> str:
    """"; did you mean model.X?" for a slip in a [model] key (an HF field any family reads, or a scenario key), as
    scenario.py suggests for the other sections; "" when nothing is close (a stricter cutoff than scenario.py's 0.6:
    among ~100 HF fields activation_fusion would get activations_dtype)."""
    import difflib

    known = sorted(config.INLINE_FIELDS | set(ModelSection.model_fields))
    close = [k for k in known if k.startswith(key)][:1] or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    return f"; did you mean model.{close[0]}?" if close else ""


def model_config(section, base_dir: Path | None = None) -> ModelConfig:
    """The ModelConfig of a ``[model]`` section: its file, then inline fields over it."""
    inline = section.inline()
    for key in inline:
        if key not in config.INLINE_FIELDS:
            raise ModelError(f"{cut('model.' + key)}: unknown key{_closest_model_key(key)}")
    raw: dict = {}
    where = "model."
    if section.config is not None:
        path = Path(section.config)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        where = f"model.config {section.config}: "
        try:
            raw = dict(config.read_raw(path))
        except ModelError as exc:
            raise ModelError(f"model.config: {exc}") from None
        if inline:
            where = "model."
    elif not inline:
        raise ModelError("model.config: required key is missing (or give the architecture's fields inline)")
    config.check_inline(inline, config.model_type_of({**raw, **inline}, where))  # a field its reader ignores is refused
    if isinstance(raw.get("text_config"), dict) and isinstance(inline.get("text_config"), dict):
        inline = {**inline, "text_config": {**raw["text_config"], **inline["text_config"]}}  # field by field
    raw.update(inline)
    cfg = config.from_hf(raw, where)
    from dataclasses import replace

    if section.fp4 != "none" and section.fp8 is False:
        raise ModelError('model.fp8: must be left out (or true) with model.fp4 = "nvfp4": NVFP4 runs the linears '
                         "through Transformer Engine's low-precision path that model.fp8 turns on, got false")
    if section.fp8 is not None and section.fp8 != cfg.fp8:
        cfg = replace(cfg, fp8=section.fp8)
    if section.fp4 != "none":  # the linears' casts and GEMMs as the FP8 path lists them, in NVFP4 (kernels.Layout.fp4)
        cfg = replace(cfg, fp8=True)
    if section.attention is not None:  # what the runtime ran: scores materialised or flash attention
        cfg = replace(cfg, eager_attention=section.attention == "eager")
    elif section.runtime == "megatron-core":  # TE's DotProductAttention, whatever the family (docs/model.md)
        cfg = replace(cfg, eager_attention=False)
    return cfg


def setup(scenario, stages: int | None = None) -> Setup:
    """Resolve a Scenario's model sections (``scenario.model`` must be set)."""
    m, par = scenario.model, scenario.parallel or ParallelSection()
    cfg = model_config(m)
    S = scenario.pipeline.stages if stages is None else stages
    stage_list = tuple(layout.parse(par.layout, cfg.num_layers, S, cfg.mtp_layers))
    if cfg.moe:
        if not any(cfg.is_moe_layer(i) for i in range(cfg.num_layers)):  # the costs are taken from an MoE layer
            raise ModelError(f"model.{cfg.moe_layers_key or 'num_experts'}: leaves all {cfg.num_layers} layers dense; "
                             f"a model with routed experts ({cfg.num_experts}) needs at least one MoE layer among "
                             "num_hidden_layers")  # fmt: skip
        if cfg.num_experts % par.expert:
            raise ModelError(
                f"parallel.expert: must divide the number of routed experts ({cfg.num_experts}), got {par.expert}"
            )
        if (par.tensor * par.context * par.data) % par.expert:  # ETP 1; expert_tensor() checks ETP x EP
            raise ModelError(
                f"parallel.expert: must divide parallel.tensor x parallel.context x parallel.data "
                f"({par.tensor * par.context * par.data}): Megatron-core's expert grid (expert-tensor x expert x "
                f"expert-data) fills those ranks (MoE parallel folding), got {par.expert}"
            )
    elif par.expert > 1:
        raise ModelError(f"parallel.expert: the model has no experts, so it must be 1, got {par.expert}")
    if cfg.num_heads % par.tensor:
        raise ModelError(f"parallel.tensor: must divide the attention heads ({cfg.num_heads}), got {par.tensor}")
    if cfg.num_kv_heads % par.tensor:  # Megatron-core splits the query groups over the tensor ranks too (model.md)
        raise ModelError(f"parallel.tensor: must divide the key-value heads ({cfg.num_kv_heads}, "
                         f"num_key_value_heads), got {par.tensor}")  # fmt: skip
    if cfg.sliding_layers and par.context > 1:  # TE's p2p ring (the CP modelled here) refuses a window
        raise ModelError(f"parallel.context: must be 1 for a model with sliding-window layers ({cfg.model_type}): "
                         f"Transformer Engine's p2p context parallelism takes no window, got {par.context}")
    if (m.seq_length * m.micro_batch_size) % (2 * par.context) and par.context > 1:
        raise ModelError(f"parallel.context: must divide seq_length x micro_batch_size in 2 x context chunks "
                         f"({m.seq_length * m.micro_batch_size} tokens), got {par.context}")  # fmt: skip
    if any(cfg.chunked(i) for i in range(cfg.num_layers)) and m.seq_length > cfg.attention_chunk:
        # Llama 4's chunked attention is costed as flash attention chunk by chunk on one rank's whole sequence
        if par.context > 1:
            raise ModelError(f"parallel.context: context parallelism with chunked attention (attention_chunk_size "
                             f"{cfg.attention_chunk} < seq_length {m.seq_length}) is not modelled; use 1")  # fmt: skip
        if cfg.eager_attention:
            raise ModelError(f'model.attention: "eager" with chunked attention (attention_chunk_size '
                             f'{cfg.attention_chunk} < seq_length {m.seq_length}) is not modelled; use "flash"')  # fmt: skip
    optimizer = (4.0 if m.master_weights else 0.0) + 2 * DTYPES[m.optimizer_dtype]
    # Megatron shards the optimizer (and reduces gradients) over data x context ranks.
    sharding = memory.Sharding(
        par.tensor, par.expert, par.data * par.context, par.zero, DTYPES[m.params_dtype], DTYPES[m.grads_dtype],
        optimizer, cfg.fp8, scenario.memory.fp8_weight_cache, m.fp8_params,
    )
    hw, eff, overhead, rates, spread = None, 0.4, 0.0, None, None
    section = scenario.hardware
    if section is not None:
        hw, overhead = hardware(section), section.a2a_overhead
        if par.tensor > hw.domain:  # every tensor-parallel collective is costed on NVLink
            raise ModelError(f"parallel.tensor: must be at most the GPUs of one NVLink domain ({hw.domain} on the "
                             f"{hw.name}, hardware.nvlink_domain or gpus_per_node): tensor-parallel collectives are "
                             f"costed on NVLink, got {par.tensor}")  # fmt: skip
        if m.fp4 != "none" and hw.fp4_tflops is None:
            nvfp4(scenario, hw, None)
        if cfg.fp8 and hw.fp8_tflops is None:  # the kernels, casts and FP8 weight copies would be costed
            raise ModelError(f"model.fp8: the {hw.name} has no FP8 tensor cores; set model.fp8 = false "
                             "(a BF16 run) or pick a GPU with FP8 (H100, H800, H200, B200, GB200, GB300, B300)")
        if section.efficiency is not None or section.preset is None:
            if section.gpu_variability is not None:  # it scales the measured kernel rates
                raise ModelError("hardware.gpu_variability: needs the kernel-level costs (a hardware.preset and no "
                                 "hardware.efficiency)")
            if section.nccl_version is not None:  # only the kernel-level costs time collectives as NCCL's tuner does
                raise ModelError("hardware.nccl_version: needs the kernel-level costs (a hardware.preset and no "
                                 "hardware.efficiency)")
            eff = 0.4 if section.efficiency is None else section.efficiency
        else:
            rates = replace(kernel_rates(section, hw), nccl=section.nccl, nvlink_domain=hw.domain)
            if section.gpu_variability is not None:  # kernels at the expected slowest GPU's pace; links as they are
                gpus = run_gpus(scenario, S)
                slow = gpu_spread.factor(section.gpu_variability, gpus)
                rates = rates.scaled(compute=1 / slow, memory=1 / slow)
                spread = (section.gpu_variability, gpus, slow)
            try:
                rates = rates.with_fp8_gemm(m.fp8_gemm)
            except ValueError as exc:
                raise ModelError(f"model.fp8_gemm: {exc}") from None
            try:
                rates = rates.with_attention_kernel(m.attention_kernel)
            except ValueError as exc:
                raise ModelError(f"model.attention_kernel: {exc}") from None
    legacy = m.runtime == "megatron-lm-2021"
    if legacy and m.cross_entropy != "megatron":  # Megatron-LM of 2021 had only its op-by-op function
        raise ModelError('model.cross_entropy: must be "megatron" with model.runtime = "megatron-lm-2021"')
    if not m.rope_fusion and cfg.mla:  # rope.py reads the bshd path of q and k; MLA applies RoPE its own way
        raise ModelError("model.rope_fusion: false is costed for Megatron-core's apply_rotary_pos_emb_bshd on q and k, "
                         "not for MLA's split rotary heads")
    if m.fp8_recipe == "current" and m.fp8_gemm != "cublas":  # DeepGEMM's runtime scales per tile, its own way
        raise ModelError('model.fp8_recipe: "current" is Transformer Engine\'s recipe; it needs model.fp8_gemm = "cublas"')
    unused_keys.refuse(m, par, scenario.memory.fp8_weight_cache, cfg.fp8)
    if m.fp8_params and m.fp8_recipe == "current" and scenario.step is not None and scenario.step.param_gather == "apex":
        raise ModelError('model.fp8_recipe: FP8 parameters under step.param_gather = "apex" (NeMo\'s cast on apex\'s '
                         'DistributedFusedAdam) use delayed scaling only; "current" is not costed there')
    for key in ("fp8_amax_reduction", "fp8_amax_history"):
        if m.fp8_recipe == "current" and key in m.model_fields_set:
            raise ModelError(f'model.{key}: delayed scaling only; with model.fp8_recipe = "current" there is no '
                             "amax history or per-chunk amax reduction (leave the key out)")  # fmt: skip
    both = sorted(set(par.tp_overlap_ring_rs) & set(par.tp_overlap_atomic))
    if both:
        raise ModelError(f"parallel.tp_overlap_ring_rs: {', '.join(both)} also in parallel.tp_overlap_atomic; the atomic "
                         "GEMM is the pipelined reduce-scatter's (name each overlap in one of the two)")  # fmt: skip
    nvfp4(scenario, hw, rates)
    share = cast_transpose(m, hw, rates)
    transpose = fp8_transpose(m, hw) or m.fp4 != "none"  # NVFP4's GEMMs read K-major operands only
    sharding = replace(sharding, fp8_transpose=transpose, expert_tensor=expert_tensor(scenario, cfg, hw, rates),
                       fp4=m.fp4 != "none")
    amax_group = 0  # Transformer Engine's per-tensor FP8 scaling; DeepGEMM's fine-grained scales need no reduction
    if cfg.fp8 and m.fp8_gemm == "cublas":
        amax_group = par.tensor if m.fp8_amax_reduction == "tensor" else par.tensor * par.data * par.context
    accumulation = grad_accumulation_bytes(m, scenario.pipeline.microbatches) if legacy else 0.0
    if scenario.step is not None and scenario.step.runtime == "deepspeed-bf16":
        accumulation = DEEPSPEED_BF16_ACCUMULATION_BYTES
    return Setup(cfg, m.seq_length, m.micro_batch_size, scenario.recompute(), DTYPES[m.activations_dtype],
                 sharding, stage_list, hw, eff, overhead, rates, par.context, par.tp_comm_overlap,
                 par.sequence_parallel, par.pipeline_scatter_gather, legacy,
                 accumulation,
                 {"multi-stream": kernels.TE_COMPUTE_STREAMS, "sequential": 1, "grouped": 0}[m.expert_gemm],
                 m.moe_aux_loss, amax_group, m.fp8_amax_reduction != "hidden",
                 tuple(sorted(par.tp_overlap_sms.items())), tuple(sorted(set(par.tp_overlap_atomic))),
                 m.host_overhead_us * 1e-6 if rates is not None else 0.0, m.moe_dispatcher,
                 par.sync_tp_duplicated_parameters, m.alibi,
                 deepseek_runtime(scenario, cfg),
                 m.cross_entropy, m.fp8_recipe == "current" or m.fp4 != "none", transpose,
                 tuple(sorted(set(par.tp_overlap_not_told))),
                 grads_averaged=scenario.step is not None and scenario.step.average_in_collective,
                 qkv_prepare=qkv_prepare(cfg, m, m.seq_length * m.micro_batch_size // par.context),
                 ub_ring_rs=tuple(sorted(set(par.tp_overlap_ring_rs))),
                 modules=recompute_modules(scenario, cfg, m), force_balance=force_balance(cfg, m),
                 grad_copy=grad_copy_bytes(scenario), embedding_grad=embedding_grad_bytes(scenario),
                 grad_hook=grad_hook(scenario), embed_layernorm=m.embed_layernorm,
                 deepspeed_pipe=scenario.step is not None and scenario.step.runtime == "deepspeed-bf16",
                 megatron_lm_loop=training_loop(scenario), interleaved=scenario._megatron_interleaved(),
                 nemo_loss=scenario.model.training_loop if scenario.model.training_loop in nemo_loss.LOOPS else "",
                 gpu_spread=spread, tp_max_ctas=par.tp_max_ctas, dp_channels=dp_channels(scenario),
                 dp_held_sms=scenario.step.dp_comm_sms if scenario.step is not None else 0,
                 dp_grouped=scenario.step is not None and scenario.step.param_gather == "apex",
                 rope_fusion=m.rope_fusion, fp4=m.fp4 != "none", amax_history=m.fp8_amax_history,
                 cast_transpose_share=share,
                 rank_order=par.rank_order, pipeline=pipeline_ranks(scenario) if S == scenario.pipeline.stages
                 else run_gpus(scenario, S) // (par.tensor * par.data * par.context))  # fmt: skip


def pipeline_ranks(scenario) -> int:
    """The pipeline ranks of the scenario's schedule (the stages' when it cannot be built)."""
    held = stage_ranks(scenario)
    return len(set().union(*held)) if held else scenario.pipeline.stages


def stage_ranks(scenario) -> list[set[int]] | None:
    """The pipeline ranks holding each stage (two for DualPipe's and Chimera's two directions), read
    off the scenario's own schedule; None when it cannot be built (the run refuses it in its own words)."""
    p = scenario.pipeline
    options = tuple(sorted(scenario.options().items()))
    # Which rank holds a stage does not depend on the micro-batch count (tests/test_step_sync_terms.py
    # checks every family): build the fewest micro-batches a family accepts (128 x 256 took ~40 ms).
    for m in dict.fromkeys((1, 2, p.stages, 2 * p.stages, p.microbatches)):
        held = _ranks_holding(p.schedule, p.stages, m, options)
        if held is not None:
            return [set(ranks) for ranks in held]
    return None


@lru_cache(maxsize=256)
def _ranks_holding(name: str, stages: int, microbatches: int, options: tuple) -> tuple[frozenset[int], ...] | None:
    """Per stage, the ranks of ``name`` built at ``microbatches`` with ``options`` (sorted (name, value)
    pairs) that hold it; None when the family refuses that count.  Cached on all it reads: a plan asks
    for the same few shapes thousands of times (each step figure of each candidate)."""
    from ..schedules import registry
    from ..schedules.ir import ScheduleError

    try:
        schedule = registry.build(name, stages, microbatches, **dict(options))
    except ScheduleError:
        return None
    held = [set() for _ in range(stages)]
    for rank, on_rank in enumerate(schedule.stages_on_rank()):
        for s in on_rank:
            held[s].add(rank)
    return tuple(frozenset(ranks) for ranks in held)


def deepseek_runtime(scenario, cfg: ModelConfig) -> bool:
    """DeepSeek's own runtime (Setup.deepseek_kernels): an FP8 model on DeepGEMM with DeepSeek's recompute."""
    return cfg.fp8 and scenario.model.fp8_gemm == "deepgemm" and scenario.recompute() == "deepseek"


def expert_tensor(scenario, cfg: ModelConfig, hw, rates) -> int:
    """parallel.expert_tensor checked as Megatron-core checks it (NVIDIA/Megatron-LM @ 1e05700): TEGroupedLinear
    divides fc1's output and fc2's input by it (megatron/core/extensions/transformer_engine.py lines 934-938,
    ``divide``, which asserts), and the expert grid ETP x EP x EDP fills a stage's tensor x data x context ranks
    (megatron/core/parallel_state.py lines 721-728).  Costed by the kernel model's Megatron-core MoE layer only."""
    par = scenario.parallel or ParallelSection()
    etp = par.expert_tensor
    if etp == 1:
        return 1
    if not cfg.moe:
        raise ModelError(f"parallel.expert_tensor: the model has no experts, so it must be 1, got {etp}")
    if cfg.moe_intermediate_size % etp:
        raise ModelError(f"parallel.expert_tensor: must divide the experts' FFN hidden size (moe_intermediate_size "
                         f"{cfg.moe_intermediate_size}): Megatron-core splits fc1's output and fc2's input over the "
                         f"expert-tensor ranks, got {etp}")  # fmt: skip
    ranks = par.tensor * par.data * par.context
    if ranks % (par.expert * etp):
        raise ModelError(f"parallel.expert_tensor: expert x expert_tensor ({par.expert} x {etp}) must divide "
                         f"tensor x data x context ({ranks}): Megatron-core's expert grid (ETP x EP x expert-data) "
                         f"fills those ranks, got {etp}")  # fmt: skip
    if hw is not None and rates is None:
        raise ModelError(f"parallel.expert_tensor: more than 1 is costed by the kernel model only (a hardware.preset "
                         f"and no hardware.efficiency), got {etp}")  # fmt: skip
    if deepseek_runtime(scenario, cfg):
        raise ModelError(f"parallel.expert_tensor: DeepSeek's runtime (model.fp8_gemm = \"deepgemm\", recompute "
                         f"\"deepseek\") keeps each expert whole; must be 1, got {etp}")  # fmt: skip
    if par.zero >= 3:
        raise ModelError(f"parallel.expert_tensor: more than 1 with parallel.zero = 3 (FSDP) is not modelled; use 1, "
                         f"got {etp}")  # fmt: skip
    return etp


def dp_channels(scenario) -> int:
    """NCCL channels of the data-parallel communicator: the CTAs step.dp_comm_sms gives it (one CTA a channel),
    else (no [step], or 0: SMs not costed) collectives.NCCL_DP_CTAS."""
    sms = scenario.step.dp_comm_sms if scenario.step is not None else 0
    return sms or collectives.NCCL_DP_CTAS


def training_loop(scenario) -> bool:
    """model.training_loop resolved: does Megatron-LM 2021/2022's loop run the micro-batches (megatron_lm.py)?
    "derived": model.runtime's; never under DeepSpeed's pipeline engine, which runs its own (deepspeed_pipe.py)."""
    m = scenario.model
    deepspeed = scenario.step is not None and scenario.step.runtime == "deepspeed-bf16"
    if m.training_loop in ("megatron-lm-2021", *nemo_loss.LOOPS) and deepspeed:
        raise ModelError(f'model.training_loop: not "{m.training_loop}" with step.runtime = "deepspeed-bf16" (DeepSpeed\'s '
                         "pipeline engine runs the micro-batches)")
    loop = m.runtime if m.training_loop == "derived" else m.training_loop
    return loop == "megatron-lm-2021" and not deepspeed


def force_balance(cfg: ModelConfig, m) -> bool:
    """model.moe_force_load_balancing: Megatron-core's router option, so an MoE model's only."""
    if m.moe_force_load_balancing and not cfg.moe:
        raise ModelError("model.moe_force_load_balancing: needs an MoE model (Megatron-core's router option); "
                         f"{cfg.model_type} has no experts")
    return m.moe_force_load_balancing


def recompute_modules(scenario, cfg: ModelConfig, m) -> tuple[str, ...] | None:
    """memory.recompute_modules, checked as Megatron-core checks it (transformer_config.py @ 1e05700 lines 762-795)."""
    mods = scenario.recompute_modules()
    if mods is not None and m.runtime == "megatron-lm-2021":  # its arguments.py has no --recompute-modules
        raise ModelError('memory.recompute_modules: not with model.runtime = "megatron-lm-2021" (Megatron-LM of 2021 '
                         "(6985e58 arguments.py) had --checkpoint-activations only, no --recompute-modules)")
    if "mla_up_proj" in (mods or ()) and not cfg.mla:
        raise ModelError('memory.recompute_modules: "mla_up_proj" needs multi-latent attention (Megatron-core: "only '
                         'supported with multi_latent_attention"); the model has none')
    if cfg.fp8 and {"layernorm", "moe_act"} & set(mods or ()):
        raise ModelError('memory.recompute_modules: "layernorm" and "moe_act" cannot run with FP8 (Megatron-core '
                         "refuses them: \"moe_act and layernorm recompute cannot work with fp8\")")
    if "moe_act" in (mods or ()) and m.expert_gemm == "sequential":
        raise ModelError('memory.recompute_modules: "moe_act" needs grouped expert GEMMs (Megatron-core: "only supported '
                         'with moe_grouped_gemm"); model.expert_gemm is "sequential"')
    return mods


def qkv_prepare(cfg: ModelConfig, m, tokens: int) -> bool:
    """Whether Transformer Engine copies q, k and v out of the QKV GEMM's interleaved output before Dao's flash-attn
    (``_PrepareQKVForFA``, kernels._qkv_prepare): TE release_v0.8 (transformer.py) and 09ba842 (attention.py) take
    that path when flash-attn runs, the head dim is 128, s x b >= 512 and q, k, v are still the interleaved views
    of one tensor (``_check_if_interleaved``, ``qkv_layout == "sbh3d"``): as many key as query heads and no rotary
    embedding, which would write new tensors.  Other layouts go through a transpose that is a view at micro-batch
    1 or the cuDNN path, which reads the strided views: nothing is copied."""
    return (m.attention_kernel in ("flash-attn-1", "flash-attn-2") and not cfg.eager_attention and not cfg.mla
            and cfg.num_kv_heads == cfg.num_heads and cfg.qk_head_dim == 128 and bool(cfg.max_positions)
            and tokens >= 512)  # fmt: skip


# GPUs whose FP8 GEMMs take every operand layout (Transformer Engine's nvte_is_non_tn_fp8_gemm_supported: sm_100 up to
# sm_120, sm_130 on); of the presets the B200 and the GB200 (its GPU). The others' FP8 GEMMs take the TN layout only
# (A100: no FP8 at all).
NON_TN_FP8 = ("B200", "GB200", "GB300", "B300")  # GB300, B300: sm_103


# GPUs on which Transformer Engine sends and receives the context-parallel ring's K/V one after the other at CP 2: TE
# release_v2.8 (context_parallel.py) batches the send and the receive into one group only where NVTE_BATCH_MHA_P2P_COMM
# is set or the compute capability is below 10.0 at CP 2; otherwise it calls single isend / irecv, which PyTorch runs on
# the one communicator and stream of the rank pair (ProcessGroupNCCL::pointToPoint, "For single P2P, preserve the old
# two-rank behavior"): at CP 2 the send and the receive go to the same peer, so on one stream, one after the other.
# Of the presets the B200 and the GB200 (compute capability 10.0). At CP > 2 they go to two peers, two streams, and
# overlap.
UNBATCHED_CP2_P2P = ("B200", "GB200", "GB300", "B300")  # GB300, B300: compute capability 10.3


def precision(section: ModelSection, cfg: ModelConfig) -> str:
    """The linears' precision a [model] runs: "nvfp4" (model.fp4), "fp8 <model.fp8_recipe>" (FP8 as model.fp8 or the
    config says) or model.params_dtype ("bf16" unless set): `model --json`'s ``precision`` and plan.md's line."""
    if section.fp4 != "none":
        return section.fp4
    return f"fp8 {section.fp8_recipe}" if cfg.fp8 else section.params_dtype


def nvfp4(scenario, hw: Hardware | None, rates: KernelRates | None) -> None:
    """Refuse what model.fp4 = "nvfp4" cannot be costed with: a GPU without FP4 tensor cores, the efficiency model
    (kernel-level costs only), and the FP8-only keys whose FP8 meaning NVFP4 replaces (docs/model.md, "NVFP4 GEMMs and
    casts"): its scaling is its own (a per-tensor amax each cast, 16-value block scales), it runs through
    cuBLASLt, it keeps 16-bit parameters (the MLPerf v5.1 runs: FP8_PARAM_GATHER=False) and it writes its column-wise
    copy (the FP4 GEMMs read K-major operands only)."""
    m = scenario.model
    if m.fp4 == "none":
        return
    if hw is not None and hw.fp4_tflops is None:  # before model.fp8's refusal, which an A100 would meet first
        raise ModelError(f'model.fp4: the {hw.name} has no FP4 tensor cores; "nvfp4" needs a Blackwell GPU '
                         f"({', '.join(n for n, p in PRESETS.items() if p.fp4_tflops)}), or leave the key out")
    if rates is None:
        raise ModelError('model.fp4: "nvfp4" needs the kernel-level costs (a Blackwell hardware.preset and no '
                         "hardware.efficiency)")
    given = m.model_fields_set
    for key, rule in (("fp8_recipe", "NVFP4 scales each tensor by its own amax at every cast"),
                      ("fp8_amax_reduction", "NVFP4 keeps no amax history to reduce per chunk"),
                      ("fp8_amax_history", "NVFP4 keeps no amax history"),
                      ("fp8_transpose", "NVFP4 GEMMs read K-major operands, so the column-wise copy is always written"),
                      ("fp8_gemm", "NVFP4 GEMMs run in cuBLASLt"),
                      ("te_cast_transpose", "NVFP4's casts are Transformer Engine 2.x's kernels")):  # fmt: skip
        if key in given:
            raise ModelError(f'model.{key}: must be left out with model.fp4 = "nvfp4" ({rule})')
    if m.fp8_params:
        raise ModelError('model.fp8_params: must be false with model.fp4 = "nvfp4" (NVFP4 parameters are not '
                         "modelled; the MLPerf v5.1 NVFP4 runs keep 16-bit parameters, FP8_PARAM_GATHER=False)")


def cast_transpose(m, hw: Hardware | None, rates) -> float:
    """model.te_cast_transpose resolved: the rate of Transformer Engine's FP8 cast that writes its transpose, as a share
    of the achievable HBM row (1: the row; rates.TE_STATIC_CAST_TRANSPOSE_SHARE for TE v0.7-v1.6's kernel, whose one
    timing is on an H100 SXM: NVIDIA/TransformerEngine#101)."""
    if m.te_cast_transpose == "nvrtc":
        return 1.0
    if m.fp8_recipe == "current":
        raise ModelError('model.te_cast_transpose: "v0.7-v1.6" predates current scaling (TE 2.2 on, whose casts run '
                         'the NVRTC kernel); leave it out with model.fp8_recipe = "current"')  # fmt: skip
    gpus = " or ".join(TE_STATIC_CAST_TRANSPOSE_GPUS)
    if rates is None or hw is None or hw.name not in TE_STATIC_CAST_TRANSPOSE_GPUS:
        where = f"the {hw.name}" if hw is not None and rates is not None else "a run without a GPU preset's kernel rates"
        raise ModelError(f'model.te_cast_transpose: "v0.7-v1.6" is timed on an H100 SXM only (NVIDIA/TransformerEngine'
                         f"#101), not on {where}; it needs hardware.preset {gpus} and no hardware.efficiency")  # fmt: skip
    return TE_STATIC_CAST_TRANSPOSE_SHARE


def fp8_transpose(m, hw: Hardware | None) -> bool:
    """model.fp8_transpose resolved: whether Transformer Engine makes the FP8 transposes its backward GEMMs read.
    "derived": not on a GPU in NON_TN_FP8 (TE from v2.4 skips them there, v2.0 in its casts), else kept; "kept"
    describes TE 1.x anywhere (the rule is in no tag before v2.0).  DeepGEMM's runtime (Hopper only) keeps its own."""
    if m.fp8_transpose == "none" and hw is not None and hw.name != "custom" and hw.name not in NON_TN_FP8:
        raise ModelError(f'model.fp8_transpose: "none" needs FP8 GEMMs that take non-TN layouts '
                         f"({', '.join(NON_TN_FP8)}); the {hw.name}'s take the TN layout only, so Transformer "
                         'Engine transposes (use "kept" or leave the key out)')  # fmt: skip
    if m.fp8_transpose == "kept" or m.fp8_gemm != "cublas":
        return True
    return m.fp8_transpose == "derived" and (hw is None or hw.name not in NON_TN_FP8)


# DeepSpeed's bf16 optimizer adds every micro-batch's bf16 weight gradient into its fp32 one through a
# cast temporary (runtime/bf16_optimizer.py update_hp_grads, v0.6.5: hp_grad.add_(lp.grad.to(fp32))):
# the cast reads 2 and writes 4 bytes, the add reads 4 + 4 and writes 4
DEEPSPEED_BF16_ACCUMULATION_BYTES = (2 + 4) + (4 + 4 + 4)


def grad_hook(scenario) -> str:
    """Whose post-backward hook adds a parameter's autograd ``.grad`` into the gradient buffer every micro-batch, for
    the parameters no wgrad GEMM writes into ``main_grad`` (norms, biases, routers, the embedding):

    * "apex" (step.param_gather = "apex"): DistributedFusedAdam's ``_grad_copy``, ``grad_out.add_(grad_in)`` then
      ``param.grad = None`` (NVIDIA/apex distributed_fused_adam.py, 23.05 lines 1131-1138, 24.04 lines 1564-1571), every
      micro-batch because NeMo's O2 runs the pipeline under ``no_sync(greedy_grad_copy=True)`` (NVIDIA/NeMo
      v1.17.0_pt_23.04 megatron_gpt_model.py lines 386-389);
    * "ddp" (model.runtime = "megatron-core", with or without a [step]: Megatron-core wraps the model in its DDP
      whatever the step's figures; not under step.param_gather = "apex" or step.runtime = "deepspeed-bf16"):
      Megatron-core DDP's hook on each parameter's
      AccumulateGrad, ``param.main_grad.add_(param.grad.data)`` unless ``grad_added_to_main_grad``, then
      ``param.grad = None`` (NVIDIA/Megatron-LM distributed_data_parallel.py, 25.09-alpha.rc1 d339190 lines 462-466,
      registered lines 365-370; 1e05700 lines 504-508, registered 405-411), every micro-batch;
    * "" otherwise (Megatron-LM 2021's and DeepSpeed's accumulation are model.runtime's / step.runtime's)."""
    step, m = scenario.step, scenario.model
    if step is not None and step.param_gather == "apex":
        return "apex"
    megatron_step = step is None or step.runtime == "megatron"
    return "ddp" if m.runtime == "megatron-core" and megatron_step else ""


def grad_copy_bytes(scenario) -> float:
    """Bytes an element of that hook's add (grad_hook): the 16-bit ``.grad`` read, the buffer of model.grads_dtype
    read and written (apex's bucket; Megatron-core's ``main_grad``, fp32 with grad_reduce_in_fp32, else the
    parameter's dtype: distributed_data_parallel.py d339190 line 172, 1e05700 line 234).  0 without a hook."""
    if not grad_hook(scenario):
        return 0.0
    m = scenario.model
    return DTYPES[m.activations_dtype] + 2 * DTYPES[m.grads_dtype]


def embedding_grad_bytes(scenario) -> float:
    """Bytes an element the embedding stage's word and position embeddings spend each micro-batch on their autograd
    ``.grad`` (none of them goes through a wgrad GEMM into main_grad: Megatron's VocabParallelEmbedding looks up with
    ``F.embedding``, its weight's gradient comes from autograd, NVIDIA/Megatron-LM d339190 tensor_parallel/layers.py
    lines 277-281, 1e05700 lines 261-265):

    * NeMo v1.17.0_pt_23.04 (step.fp32_embedding_grad_add): the 16-bit ``.grad`` is kept all step (zero_grad zeroes it,
      nemo/core/optim/distributed_adam.py lines 198-199; no hook takes it), so autograd's AccumulateGrad adds each
      micro-batch's gradient into it in place (read 2 + 2, write 2);
    * NeMo bd0b818 (step.fp32_embedding_optimizer alone): its post-backward hook ``param.main_grad += param.grad`` into
      the fp32 copy, then ``param.grad = None`` (lines 122-140; read 2 + 4, write 4);
    * otherwise on apex (NeMo 2): apex's ``_grad_copy`` into its bucket, fp32 with step.fp32_embedding_grads;
    * Megatron-core's DDP: its hook's ``main_grad.add_`` like any other such parameter (grad_copy_bytes).
    0 without a hook."""
    step, m = scenario.step, scenario.model
    hook = grad_hook(scenario)
    if hook != "apex":
        return grad_copy_bytes(scenario) if hook else 0.0
    g16 = DTYPES[m.activations_dtype]
    if step.fp32_embedding_optimizer:
        return 3 * g16 if step.fp32_embedding_grad_add else g16 + 2 * FP32
    return g16 + 2 * (FP32 if step.fp32_embedding_grads else DTYPES[m.grads_dtype])


FP32 = 4  # bytes of an fp32 gradient element


def grad_accumulation_bytes(m, microbatches: int) -> float:
    """Bytes per parameter and micro-batch that Megatron-LM of 2021 spends adding a weight gradient
    into the accumulated one (Megatron-core fuses it into the wgrad GEMM, --gradient-accumulation-fusion).
    16-bit gradients: autograd's ``param.grad += grad`` (read both, write one) from the second
    micro-batch on, spread over all; fp32 main gradients: the DDP hook's ``main_grad.add_(grad)``
    (read 2 + 4, write 4) every micro-batch (megatron/model/distributed.py @ 6985e58)."""
    if DTYPES[m.grads_dtype] == 4:
        return DTYPES[m.activations_dtype] + 4 + 4
    return 3 * DTYPES[m.grads_dtype] * (microbatches - 1) / microbatches


def stage_head_params(cfg, stage: layout.Stage, tensor: int = 1) -> int:
    """The head's parameters on its stage: a tied head on the embedding's own stage shares its weight
    (Megatron keeps a second copy only when the two sit on different stages); with ``tensor``, as a
    stage's dense count takes them (params.head_over_tensor)."""
    if not stage.head:
        return 0
    return params.head_over_tensor(cfg, tensor, unique=stage.embedding)


def stage_dense_params(cfg, stage: layout.Stage, tensor: int = 1) -> int:
    """A stage's dense parameters as StageFigures.dense_params counts them: what one rank holds ``1 / tensor``
    of, so the parts every tensor rank holds whole (positions, norms, row-parallel biases, routers) count
    ``tensor`` times; ``tensor`` 1: the model's own count."""
    dense = sum(params.layer(cfg, i).dense_over_tensor(tensor) for i in stage.layers)
    dense += params.embedding_over_tensor(cfg, tensor) if stage.embedding else 0
    return dense + stage_head_params(cfg, stage, tensor) + stage.mtp * params.mtp_module(cfg).dense_over_tensor(tensor)


def p2p_ms(st: Setup, link: str = "nic") -> float:
    """One boundary activation (or its gradient) sent to the next stage over ``link`` ("nic", or "nvlink"
    between neighbours in one NVLink domain: model/placement.py says which boundaries), ms.

    With sequence parallelism each tensor-parallel rank holds 1/t of it and sends that.  Without,
    each rank holds the whole tensor: Megatron-core sends it whole; with ``scatter_gather`` (Megatron-LM
    2021-2022, megatron/p2p_communication.py; DeepSpeed's pipeline engine) each rank sends 1/t and
    the receivers all-gather it over NVLink before using it.
    """
    whole = st.act_bytes * st.tokens * st.cfg.hidden_size
    t = st.sharding.tensor
    sent = whole / t if st.sequence_parallel or st.scatter_gather else whole
    if st.rates is None:
        return sent / ((st.hw.p2p_gbps if link == "nic" else st.hw.a2a_intra_gbps) * 1e9) * 1e3
    gather = 0.0
    if st.scatter_gather and not st.sequence_parallel:
        gather = collectives.time("all_gather", whole, t, st.rates, "nvlink")
    return (collectives.p2p(sent, st.rates, link) + gather) * 1e3


def run_gpus(scenario, stages: int) -> int:
    """The GPUs a step synchronises: pipeline ranks (the schedule's, for ``stages`` stages) x tensor x data x
    context (expert-parallel ranks are carved out of tensor x context x data)."""
    from ..schedules import registry

    p, par = scenario.pipeline, scenario.parallel or ParallelSection()
    ranks = registry.build(p.schedule, stages, p.microbatches, max_memory=scenario.limits.max_memory,
                           **scenario.options()).num_ranks
    return ranks * par.tensor * par.data * par.context


def kernel_rates(section, hw: Hardware) -> KernelRates:
    """The preset's measured kernel rates, scaled where the section overrides a peak or bandwidth."""
    from .rates import PRESETS as RATES

    base, ref = RATES[section.preset], PRESETS[section.preset]
    return base.scaled(compute=hw.bf16_tflops / ref.bf16_tflops, nvlink=hw.a2a_intra_gbps / ref.a2a_intra_gbps,
                       nic=hw.a2a_gbps / ref.a2a_gbps)  # fmt: skip


def hardware(section) -> Hardware:
    figures = dict(
        bf16_tflops=section.bf16_tflops,
        fp8_tflops=section.fp8_tflops,
        hbm_bytes=section.hbm,
        p2p_gbps=section.p2p_bandwidth,
        a2a_gbps=section.a2a_bandwidth,
        a2a_intra_gbps=section.a2a_intra_bandwidth,
        gpus_per_node=section.gpus_per_node,
        nvlink_domain=section.nvlink_domain,
    )
    if section.preset is not None:
        hw = preset(section.preset, **figures)
    else:
        for key, name in (("bf16_tflops", "bf16_tflops"), ("p2p_gbps", "p2p_bandwidth")):
            if figures[key] is None:
                raise ModelError(f"hardware.{name}: required key is missing (or give hardware.preset: {', '.join(PRESETS)})")
        a2a = figures["a2a_gbps"] or figures["p2p_gbps"]
        hw = Hardware("custom", figures["bf16_tflops"], figures["fp8_tflops"], figures["hbm_bytes"] or 0.0,
                      figures["p2p_gbps"], a2a, figures["a2a_intra_gbps"] or a2a, figures["gpus_per_node"] or 8,
                      figures["nvlink_domain"])  # fmt: skip
    if hw.domain % hw.gpus_per_node:  # a domain joins whole hosts (a GB200 NVL72: 18 trays of 4)
        raise ModelError(f"hardware.nvlink_domain: must be a multiple of hardware.gpus_per_node ({hw.gpus_per_node} "
                         f"on the {hw.name}), got {hw.domain}")  # fmt: skip
    return hw


# -- per-layer figures -------------------------------------------------------------
def _ms(flops_: float, peak: float, eff: float) -> float:
    return flops_ / (peak * eff) * 1e3


def layer_kernels(st: Setup, i: int) -> list[kernels.Kernel]:
    return kernels.layer(st.cfg, i, st.rates, st.layout)


def layer_times(st: Setup, i: int) -> LayerTimes:
    """Times of layer ``i`` for one micro-batch on one rank (ms); needs hardware."""
    if st.rates is not None:
        return LayerTimes(**kernels.by_component(layer_kernels(st, i)))
    cfg, hw, eff, tp = st.cfg, st.hw, st.efficiency, st.sharding.tensor
    f = flops.layer(cfg, i, st.seq)
    n = st.tokens / tp
    lin, bf16 = hw.peak(cfg.fp8), hw.peak(False)  # attention core runs in BF16 (as DeepSeek-V3's does)
    eager = cfg.eager_attention
    lin_attn = _ms(n * f.attn_linear, lin, eff)
    core = _ms(n * f.attn_core * (1.0 if eager else FLASH_CAUSAL), bf16, eff)
    if cfg.window(i):  # flash: each query's band of keys (flops.causal_keys); eager scores fill the square, masked
        keys = st.seq if eager else flops.causal_keys(cfg, i, st.seq)
        core = _ms(n * 2 * keys * cfg.num_heads * (cfg.qk_head_dim + cfg.v_head_dim), bf16, eff)
    mlp = _ms(n * f.mlp, lin, eff)
    core_back = (EAGER_BACKWARD if eager else FLASH_BACKWARD) * core
    mods = recompute.selected(st.policy, st.modules)
    up = _ms(n * f.up_projection, lin, eff)  # MLA's up-projections (deepseek, mla_up_proj)
    redo_attn = {"full": lin_attn + core, "deepseek": up,
                 "selective": core * recompute.core_attn_reruns(mods, eager, st.legacy)
                 + up * ("mla_up_proj" in mods)}.get(st.policy, 0.0)  # fmt: skip
    moe = cfg.is_moe_layer(i)
    rerun_moe = st.policy == "full" or (moe and "moe" in mods)  # the MoE layer's forward, all-to-alls included
    redo_mlp = mlp if rerun_moe or ("mlp" in mods and not moe) else 0.0
    t = dict(
        attn_forward=lin_attn + core,
        mlp_forward=mlp,
        attn_backward_input=lin_attn + core_back + redo_attn,
        attn_backward_weight=lin_attn,
        mlp_backward_input=mlp + redo_mlp,
        mlp_backward_weight=mlp,
    )
    if moe and st.sharding.expert > 1:
        t.update(a2a_times(st))
        if rerun_moe:  # the rerun dispatch and combine, each in the backward's phase (kernels._all_to_all)
            t["dispatch_backward"] += t["dispatch_forward"]
            t["combine_backward"] += t["combine_forward"]
    return LayerTimes(**t)


def a2a_bytes(st: Setup) -> dict[str, float]:
    """Bytes one rank sends per MoE layer and micro-batch over the link that limits each phase."""
    cfg, ep = st.cfg, st.sharding.expert
    k, h, n = cfg.experts_per_token, cfg.hidden_size, st.tokens
    fp8 = 1.0 + FP8_SCALE_OVERHEAD if cfg.fp8 else st.act_bytes
    per_node = st.hw.domain
    nodes = math.ceil(ep / per_node)
    if nodes > 1:  # the NIC limits; as kernels._all_to_all counts the copies that cross it:
        distinct = nodes * (1 - (1 - 1 / nodes) ** k)  # nodes a token's k experts fall on
        if cfg.route_group_limit and cfg.route_groups == nodes:  # node-limited routing (DeepSeek-V3)
            distinct = min(distinct, cfg.route_group_limit)
        # DeepEP (and DeepSeek's runtime) sends a token once per remote node; Megatron's NCCL
        # all-to-all one row per (token, expert), so every copy bound for another node
        deepep = st.dispatcher == "deepep" or st.deepseek_kernels
        copies = (distinct if deepep else k) * (nodes - 1) / nodes
    else:  # NVLink: every copy to another GPU of the node
        copies = k * (ep - 1) / ep
    elems = n * copies * h
    # Forward dispatch and the gradient sent back through combine's backward carry FP8 in an FP8
    # model (DeepSeek-V3 Sec. 3.3.2); both combines' payloads stay BF16.
    return {"dispatch_forward": elems * fp8, "combine_forward": elems * st.act_bytes,
            "dispatch_backward": elems * st.act_bytes, "combine_backward": elems * fp8}  # fmt: skip


def a2a_times(st: Setup) -> dict[str, float]:
    hw = st.hw
    nodes = math.ceil(st.sharding.expert / hw.domain)
    gbps = hw.a2a_gbps if nodes > 1 else hw.a2a_intra_gbps
    return {k: st.a2a_overhead + b / (gbps * 1e9) * 1e3 for k, b in a2a_bytes(st).items()}


def extra_kernels(st: Setup, stage: layout.Stage) -> list[kernels.Kernel]:
    """The kernels of a stage's embedding, head and MTP modules (kernel model)."""
    rows = []
    if stage.embedding:
        rows += kernels.embedding(st.cfg, st.rates, st.layout) + _embedding_accumulation(st, stage)
    if stage.head:
        rows += kernels.head(st.cfg, st.rates, st.layout)
    for _ in range(stage.mtp):
        rows += kernels.mtp_module(st.cfg, st.rates, st.layout)
    if st.deepspeed_pipe and st.rates is not None:  # the engine's own work each micro-batch (deepspeed_pipe.py)
        rows += deepspeed_pipe.rows(kernels.Table(st.rates, st.layout, st.cfg), stage.embedding, stage.head)
    elif st.megatron_lm_loop and st.rates is not None:  # Megatron-LM 2021/2022's schedules, each micro-batch (megatron_lm.py)
        rows += megatron_lm.rows(kernels.Table(st.rates, st.layout, st.cfg), stage.embedding, stage.head,
                                 st.sharding.data, st.interleaved)  # fmt: skip
    if stage.head and st.nemo_loss and st.rates is not None:  # the loop's loss after the head (nemo_loss.py)
        rows += nemo_loss.rows(kernels.Table(st.rates, st.layout, st.cfg), st.sharding.data, st.evaluation,
                               st.nemo_loss)  # fmt: skip
    return rows


def _embedding_accumulation(st: Setup, stage: layout.Stage) -> list[kernels.Kernel]:
    """The embedding's weight gradients (word and learned positions, / tensor as every stage's
    parameters are counted) added into the accumulated ones each micro-batch, where the runtime does
    it apart (``grad_accumulation``).  A tied head on the same stage shares the word embedding: its
    gradient is summed before one accumulation, counted with the head's kernels."""
    cfg, lay = st.cfg, st.layout
    if lay.grad_accumulation <= 0:
        return []
    shared = cfg.vocab_size * cfg.hidden_size if stage.head and cfg.tie_word_embeddings else 0
    tb = kernels.Table(st.rates, lay, cfg)
    tb.memory("embedding gradient accumulation", "mlp_backward_weight",
              (params.embedding_over_tensor(cfg, lay.tensor) - shared) / lay.tensor * lay.grad_accumulation)  # fmt: skip
    return tb.rows


def chunk_kernels(st: Setup, stage: layout.Stage) -> list[kernels.Kernel]:
    """What a model chunk (a stage) runs once per micro-batch besides its modules: the FP8 amax reduction."""
    if st.rates is None:
        return []
    return kernels.amax_reduction(st.cfg, st.rates, st.layout, tuple(stage.layers) + (st.cfg.num_layers,) * stage.mtp)


def extra_times(st: Setup, stage: layout.Stage) -> tuple[float, float, float]:
    """(forward, input-gradient, weight-gradient) ms of a stage's embedding, head and MTP modules."""
    if st.rates is not None:
        return tuple(ms for _, ms in kernels.passes(extra_kernels(st, stage)))
    cfg, sh = st.cfg, st.sharding
    head = _head_ms(st) * (int(stage.head) + stage.mtp)
    mtp = [layer_times(st, cfg.num_layers) for _ in range(stage.mtp)]
    proj = stage.mtp * _ms(st.tokens / sh.tensor * 2.0 * 2 * cfg.hidden_size**2, st.hw.peak(cfg.fp8), st.efficiency)
    extra = head + proj
    redo = extra if st.policy == "full" else 0.0
    f = extra + sum(t.forward + t.dispatch_forward + t.combine_forward for t in mtp)
    w = extra + sum(t.weight for t in mtp)
    i = extra + redo + sum(t.backward - t.weight + t.dispatch_backward + t.combine_backward for t in mtp)
    return f, i, w


def stage_chunk(st: Setup, stage: layout.Stage, per_layer: dict | None = None,
                moe_times: LayerTimes | None = None, memo: Memo | None = None) -> tuple[int, LayerTimes]:  # fmt: skip
    """A stage's [chunk]: the component sums of its layers, embedding, head and MTP modules, spread
    evenly over its MoE layers (the all-to-all is per MoE layer, so it stays exact; the extra compute
    is shared out between them).  A stage without MoE layers: its layers (at least 1), no all-to-all.
    ``moe_times``: a hand-typed MoE layer (a [chunk] table) instead of the derived one."""
    cfg = st.cfg
    tkey = times_key(st) if memo is not None else None
    layer_tab, module_tab = _table(memo, "layer_times", tkey), _table(memo, "module_components", tkey)
    per_layer = {} if per_layer is None else per_layer  # layer kind -> LayerTimes, shared across stages
    # every component, 0 until added: a stage of no layers (parallel.layout's head-only "L") has no attention
    totals: dict[str, float] = dict.fromkeys(LAYER_PARTS, 0.0)

    def add(parts) -> None:
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v

    for i in stage.layers + (cfg.num_layers,) * stage.mtp:  # an MTP module runs one more layer
        key = cfg.layer_kind(i)  # layers of one kind (MoE, NoPE, window) cost alike
        if moe_times is not None and cfg.is_moe_layer(i):
            add(vars(moe_times))
            continue
        if key not in per_layer:
            per_layer[key] = _get(layer_tab, i, layer_times, st, i)
        add(vars(per_layer[key]))
    # module_components reads the stage's embedding, head and MTP modules only (the head's loss rows also the
    # data-parallel group and the loop); chunk_kernels its layers
    loss = (st.sharding.data, st.nemo_loss, st.megatron_lm_loop) if stage.head else ()
    mkey = (stage.embedding, stage.head, stage.mtp) + loss
    add(_get(module_tab, mkey, lambda: MappingProxyType(module_components(st, stage))))
    if st.rates is not None:
        add(_get(_table(memo, "chunk_components", tkey), (stage.layers, stage.mtp),
                 lambda: MappingProxyType(kernels.by_component(chunk_kernels(st, stage)))))  # fmt: skip
    moe = sum(cfg.is_moe_layer(i) for i in stage.layers) + stage.mtp
    layers = moe or max(1, len(stage.layers))
    return layers, LayerTimes(**{k: v / layers for k, v in totals.items()})


def stage_apart_host(st: Setup, stage: layout.Stage, table: dict | None = None) -> tuple[float, float] | None:
    """kernels.apart_host summed over a stage's MoE layers (an MTP module's included), or None where it has none."""
    cfg, table = st.cfg, {} if table is None else table  # layers of one kind cost alike
    moe = [i for i in stage.layers + (cfg.num_layers,) * stage.mtp if cfg.is_moe_layer(i)]
    if not moe:
        return None
    each = [_get(table, cfg.layer_kind(i), lambda i: kernels.apart_host(cfg, i, st.rates, st.layout), i) for i in moe]
    return sum(e[0] for e in each), sum(e[1] for e in each)


def stage_pair_host(st: Setup, stage: layout.Stage, layers: int, table: dict | None = None) -> tuple[float, float, float]:
    """kernels.pair_host summed over a stage's MoE layers (an MTP module's included) and spread over its ``layers``
    as stage_chunk spreads the components."""
    cfg, table = st.cfg, {} if table is None else table  # layers of one kind cost alike
    moe = [i for i in stage.layers + (cfg.num_layers,) * stage.mtp if cfg.is_moe_layer(i)]
    each = [_get(table, cfg.layer_kind(i), lambda i: kernels.pair_host(cfg, i, st.rates, st.layout), i) for i in moe]
    return tuple(sum(e[n] for e in each) / layers for n in range(3))


def module_components(st: Setup, stage: layout.Stage) -> dict[str, float]:
    """ms per [chunk] component of a stage's embedding, head and MTP modules, their layers left out."""
    if st.rates is not None:
        rows = extra_kernels(st, layout.Stage((), stage.embedding, stage.head))
        for _ in range(stage.mtp):
            rows += kernels.mtp_projection(st.cfg, st.rates, st.layout) + kernels.head(st.cfg, st.rates, st.layout)
        return kernels.by_component(rows)
    cfg, sh = st.cfg, st.sharding
    head = _head_ms(st) * (int(stage.head) + stage.mtp)
    proj = stage.mtp * _ms(st.tokens / sh.tensor * 2.0 * 2 * cfg.hidden_size**2, st.hw.peak(cfg.fp8), st.efficiency)
    extra = head + proj  # as extra_times: its input gradient and weight gradient each as long again
    redo = extra if st.policy == "full" else 0.0
    return {"mlp_forward": extra, "mlp_backward_input": extra + redo, "mlp_backward_weight": extra}


def _head_ms(st: Setup) -> float:
    # The output head stays in BF16 (DeepSeek-V3 keeps it out of FP8).
    return _ms(st.tokens / st.sharding.tensor * flops.head(st.cfg), st.hw.peak(False), st.efficiency)


# -- per stage -----------------------------------------------------------------------
def stage_memory(st: Setup, stage: layout.Stage, memo: Memo | None = None) -> tuple[memory.Static, float]:
    """A stage's static bytes per rank (FP8 copies included) and its ZeRO 2/3 sharding buffers."""
    cfg, sh = st.cfg, st.sharding
    if memo is not None:  # it reads the model, the sharding and the stage, nothing else of the Setup
        return _get(memo.table("stage_memory", cfg, sh), stage, stage_memory, st, stage)
    units = [(params.layer(cfg, i), params.linear_weights(cfg, i)) for i in stage.layers]
    if stage.mtp:
        mtp = params.mtp_module(cfg)
        units += [(mtp, params.mtp_linear_weights(cfg))] * stage.mtp
    dense = sum(p.dense_over_tensor(sh.tensor) for p, _ in units)
    dense += (params.embedding_over_tensor(cfg, sh.tensor) if stage.embedding else 0) + stage_head_params(cfg, stage, sh.tensor)
    routed = sum(p.routed for p, _ in units)
    fp8_dense, fp8_routed = sum(f[0] for _, f in units), sum(f[1] for _, f in units)
    # FSDP units: each layer (or MTP module), the embedding and the head (kept out of FP8)
    sizes = [(p.dense_over_tensor(sh.tensor), p.routed, f[0] / sh.tensor + f[1] / sh.routed_ranks) for p, f in units]
    sizes += [(n, 0, 0.0) for n, here in ((params.embedding_over_tensor(cfg, sh.tensor), stage.embedding),
                                          (params.head_over_tensor(cfg, sh.tensor), stage.head)) if here]  # fmt: skip
    biggest = max(sizes, key=lambda u: u[0] / sh.tensor + u[1] / sh.routed_ranks, default=(0, 0, 0.0))
    fp8_unit = max((u[2] for u in sizes), default=0.0)
    return (memory.stage_static(dense, routed, sh, fp8_dense, fp8_routed, fp8_unit),
            memory.sharding_buffers(*biggest, sh))  # fmt: skip


def stage_deepep_bytes(st: Setup, stage: layout.Stage) -> float:
    """The bytes of DeepEP's buffer (model/deepep_buffer.py) on a rank running this stage: under DeepEP (or DeepSeek's
    runtime) where the stage has an MoE layer (or an MTP module, an MoE block), as the buffer is made at a first
    dispatch; one per process, so a rank holds the largest of its stages'."""
    cfg, sh = st.cfg, st.sharding
    moe = any(cfg.is_moe_layer(i) for i in stage.layers) or (stage.mtp > 0 and params.mtp_module(cfg).routed > 0)
    if not moe or not (st.dispatcher == "deepep" or st.deepseek_kernels):
        return 0.0
    return deepep_buffer.persistent_bytes(cfg.hidden_size, sh.expert * sh.expert_tensor)


FSDP_GROUPS = ("dp-cp", "edp")  # the groups an FSDP unit's dense and routed parameters are gathered and reduced over


def _fsdp_units(st: Setup, stage: layout.Stage, times: list[LayerTimes], tables: tuple = (None, None, None)) -> list[fsdp.Unit]:
    """A stage's FSDP units in forward order with their compute (``times``: its layers'; the
    embedding, head and MTP modules as extra_times costs them) and their all-gather /
    reduce-scatter times over the data-parallel group (collectives.py with a preset's kernel
    rates, else a ring over the NIC bandwidth).  ``tables``: derive's Memo tables of the
    collectives, extra_times and the layers' parameters (or None each)."""
    cfg, sh, hw = st.cfg, st.sharding, st.hw

    def collective(op: str, nbytes: float, ranks: float, kind: str) -> float:
        if st.rates is None:
            return fsdp.ring_ms(nbytes, ranks, hw.a2a_gbps)
        return collectives.time(op, nbytes, int(ranks), st.rates, st.group(kind).link) * 1e3

    def unit(forward: float, backward: float, dense: float, routed: float) -> fsdp.Unit:
        def ms(op: str, per_param: float) -> float:
            dense_kind, routed_kind = FSDP_GROUPS
            return (collective(op, per_param * dense / sh.tensor, sh.data, dense_kind)
                    + collective(op, per_param * routed / sh.routed_ranks, sh.expert_data, routed_kind))  # fmt: skip

        gather, reduce = _get(sync_tab, (dense, routed),
                              lambda: (ms("all_gather", sh.params_bytes), ms("reduce_scatter", sh.grads_bytes)))
        return fsdp.Unit(forward, backward, gather, reduce)

    def extra(**part) -> tuple[float, float]:
        where = layout.Stage((), **part)
        f, i, w = _get(extra_tab, (where.embedding, where.head, where.mtp), extra_times, st, where)
        return f, i + w

    sync_tab, extra_tab, params_tab = tables
    units = [unit(*extra(embedding=True), params.embedding_over_tensor(cfg, sh.tensor), 0)] if stage.embedding else []
    for i, t in zip(stage.layers, times):
        p = _get(params_tab, i, params.layer, cfg, i)
        units.append(unit(t.forward, t.backward, p.dense_over_tensor(sh.tensor), p.routed))
    mtp = params.mtp_module(cfg)
    units += [unit(*extra(mtp=1), mtp.dense_over_tensor(sh.tensor), mtp.routed) for _ in range(stage.mtp)]
    if stage.head:
        units.append(unit(*extra(head=True), params.head_over_tensor(cfg, sh.tensor), 0))
    return units


def _fsdp_links(st: Setup) -> tuple[str, ...]:
    """The links _fsdp_units' collectives take (its ``kind``s), () without kernel rates (a ring over the NIC)."""
    return () if st.rates is None else tuple(st.group(kind).link for kind in FSDP_GROUPS)


def _stage_times(st: Setup, stage: layout.Stage, per_layer: dict, tables: tuple) -> tuple[float, float, float, list]:
    """A stage's forward, backward (W included) and weight (ms) per micro-batch, and its layers' LayerTimes:
    its layers (all-to-all included), its embedding, head and MTP modules and its per-chunk kernels.  ``per_layer``:
    the derivation's LayerTimes by layer kind; ``tables``: derive's Memo tables of the layers' times, extra_times and
    the chunk passes (or None each), keyed by times_key(st)."""
    layer_tab, extra_tab, passes_tab = tables
    times = []
    for i in stage.layers:
        key = st.cfg.layer_kind(i)  # layers of one kind (MoE, NoPE, window) cost alike
        if key not in per_layer:  # layer_times reads times_key(st) and the layer
            per_layer[key] = _get(layer_tab, i, layer_times, st, i)
        times.append(per_layer[key])
    # a2a phases run in sequence with compute in a lone op; F, B carry them
    forward = sum(t.forward + t.dispatch_forward + t.combine_forward for t in times)
    weight = sum(t.weight for t in times)
    backward = sum(t.backward + t.dispatch_backward + t.combine_backward for t in times)
    # extra_times reads the stage's embedding, head and MTP modules; chunk_kernels its layers
    f, i_, w = _get(extra_tab, (stage.embedding, stage.head, stage.mtp), extra_times, st, stage)
    if st.rates is not None:  # once per model chunk and micro-batch
        cf, ci, cw = _get(passes_tab, (stage.layers, stage.mtp),
                          lambda: tuple(ms for _, ms in kernels.passes(chunk_kernels(st, stage))))
        f, i_, w = f + cf, i_ + ci, w + cw
    return forward + f, backward + i_ + w, weight + w, times


def _held(st: Setup, memo: Memo | None) -> tuple[Setup, dict, tuple] | None:
    """ZeRO 3 with step.dp_comm_sms: the Setup on the rates its kernels get while a data-parallel collective holds
    those SMs (KernelRates.held, as comm_slowdown times the step's end), with its own per-layer times and Memo
    tables for _stage_times; None without held SMs or kernel rates (nothing slowed).  Each FSDP unit then computes
    at its pace on these while one of its action's collectives runs (fsdp.slowed: the units walked with it;
    docs/step.md, "ZeRO 2 and 3")."""
    if not st.dp_held_sms or st.rates is None:
        return None
    held = replace(st, rates=st.rates.held(st.dp_held_sms))
    key = times_key(held) if memo is not None else None
    return held, {}, tuple(_table(memo, name, key) for name in ("layer_times", "extra_times", "chunk_passes"))


def evaluation_forwards(st: Setup) -> list[float]:
    """Each stage's forward (ms per micro-batch) as an evaluation runs it: the same kernels with autograd off
    (kernels.Layout.evaluation; the logs' forward-only steps in docs/validation.md)."""
    return [s.forward for s in derive(replace(st, evaluation=True)).stages]


def derive(st: Setup, memo: Memo | None = None) -> Derived:
    """Per-stage figures of a resolved Setup.  ``memo``: figures kept from the caller's other
    derivations (Memo); the result is the same with or without it."""
    cfg, sh = st.cfg, st.sharding
    if sh.zero >= 3 and cfg.moe and sh.expert > 1:
        raise ModelError("parallel.zero: 3 (FSDP) with parallel.expert > 1 is not modelled yet "
                         "(the all-to-all component model has no data-parallel channel); use 0, 1 or 2")  # fmt: skip
    seq = st.seq // st.context  # each context-parallel rank keeps its share of the sequence
    args = (seq, st.mb, st.policy, st.act_bytes, sh.tensor)
    figures = []
    per_layer = {}
    tkey = times_key(st) if memo is not None else None
    # a layer's parameters read the model; its activations the model, ``args``, sequence parallelism and the modules
    saved = dict(sp=st.sequence_parallel, modules=st.modules, legacy=st.legacy, etp=sh.expert_tensor, fp4=st.fp4)
    params_tab, act_tab = _table(memo, "layer_params", cfg), _table(memo, "layer_activations", cfg, args, *saved.values())
    layer_tab, extra_tab, passes_tab = (_table(memo, name, tkey) for name in ("layer_times", "extra_times", "chunk_passes"))
    memory_tab = _table(memo, "stage_memory", cfg, sh)  # stage_memory reads the model, the sharding and the stage
    # the FSDP units' collectives read the sharding, the rates (else the hardware's NIC), the unit's sizes and, with
    # rates, their groups' links, which the rank order, context and pipeline ranks set besides the sharding (s21e)
    fsdp_tabs = (_table(memo, "fsdp_collectives", sh, st.rates, st.hw, *_fsdp_links(st)) if sh.zero >= 3 else None,
                 extra_tab, params_tab)
    time_tabs = (layer_tab, extra_tab, passes_tab)
    held = _held(st, memo) if sh.zero >= 3 else None
    apart_tab = _table(memo, "apart_host", tkey) if memo is not None else {}  # one derivation: each layer kind once
    for stage in st.stages:
        lp = [_get(params_tab, i, params.layer, cfg, i) for i in stage.layers]
        dense = sum(p.dense_over_tensor(sh.tensor) for p in lp)
        routed = sum(p.routed for p in lp)
        act = sum(_get(act_tab, i, lambda i: activations.layer_total(cfg, i, *args, **saved), i)
                  for i in stage.layers)  # fmt: skip
        if stage.embedding:
            dense += params.embedding_over_tensor(cfg, sh.tensor)
            act += activations.embedding(cfg, seq, st.mb, sh.tensor, sp=st.sequence_parallel)
        if stage.head:
            dense += stage_head_params(cfg, stage, sh.tensor)
            act += activations.head(cfg, seq, st.mb, st.act_bytes, sh.tensor, sp=st.sequence_parallel)
        if stage.mtp:
            mtp = params.mtp_module(cfg)
            dense += stage.mtp * mtp.dense_over_tensor(sh.tensor)
            routed += stage.mtp * mtp.routed
            act += stage.mtp * activations.mtp_module(cfg, *args, **saved)
        static, sharding_buffers = _get(memory_tab, stage, stage_memory, st, stage)
        fig = StageFigures(dense, routed, act, static, sharding_buffers=sharding_buffers,
                           deepep_buffers=stage_deepep_bytes(st, stage))  # fmt: skip
        if st.hw is not None:
            fig.forward, fig.backward, fig.weight, times = _stage_times(st, stage, per_layer, time_tabs)
            if sh.zero >= 3:  # FSDP: what its actions wait for of the per-layer collectives (model/fsdp.py)
                units = _fsdp_units(st, stage, times, fsdp_tabs)
                fig.fsdp_exposed = fsdp.stage_exposure(units)
                slowed = None
                if held is not None:  # its units' compute beside their own collectives, on the SMs they leave
                    held_times = _stage_times(held[0], stage, held[1], held[2])[3]
                    on_held = _fsdp_units(held[0], stage, held_times, (None, held[2][1], params_tab))
                    units = [replace(u, forward_held=h.forward, backward_held=h.backward) for u, h in zip(units, on_held)]
                    slowed = fsdp.slowed(units)
                fig.fsdp_tail, fig.fsdp_slowed = fsdp.backward_tail(units), slowed
                fig.forward += fig.fsdp_exposed[0] + (slowed[0] if slowed else 0.0)
                fig.backward += fig.fsdp_exposed[1] + (slowed[1] if slowed else 0.0)
            if st.rates is not None and st.host_op > 0 and cfg.moe:  # the MoE backward's host share, W apart
                fig.host_apart = stage_apart_host(st, stage, apart_tab)
        figures.append(fig)
    out = Derived(st, figures)
    if st.hw is not None:
        out.p2p, out.p2p_nvlink = p2p_ms(st), p2p_ms(st, "nvlink")
        if cfg.moe and sh.expert > 1:
            moe_i = next(i for i in range(cfg.num_layers) if cfg.is_moe_layer(i))
            out.moe_layer = _get(layer_tab, moe_i, layer_times, st, moe_i)
            if st.rates is not None:  # DeepSeek-V3 report Sec. 3.2.2: its all-to-all kernels take 20 of 132 SMs
                out.comm_compute_slowdown = st.rates.sms / (st.rates.sms - A2A_SMS)
            # each stage as its layout holds it, with kernel rates or at hardware.efficiency alike
            out.stage_chunks = tuple(stage_chunk(st, stage, per_layer, memo=memo) for stage in st.stages)
            if st.rates is not None and st.host_op > 0:
                pair_tab = _table(memo, "pair_host", tkey)
                out.stage_pair_host = tuple(stage_pair_host(st, stage, n, pair_tab)
                                            for stage, (n, _) in zip(st.stages, out.stage_chunks))  # fmt: skip
            counts = Counter(sum(cfg.is_moe_layer(i) for i in s.layers) for s in st.stages)
            out.chunk_layers = max(1, counts.most_common(1)[0][0])
    return out
