"""The scenario sections ``[model]``, ``[parallel]`` and ``[hardware]`` (pydantic, as scenario.py's).

``[model]`` takes either ``config = "path/to/config.json"`` (HF format; a
relative path is read from the scenario file's folder) or the same fields
inline, or both (inline fields then override the file's).  Field names are the
HF ones; see config.INLINE_FIELDS.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .hardware import PRESETS, unknown_preset_rule
from ..errors import shown


def plain_number(v):
    """``v`` unless text or a boolean: pydantic's lax mode reads "1.0" (text) and true as numbers; a scenario must say
    what it means (scenario.py's times, [hardware]'s figures)."""
    if isinstance(v, (str, bool)):
        raise ValueError("must be a number, not " + ("text in quotes" if isinstance(v, str) else "true/false"))
    return v


DTYPES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
Dtype = Literal["fp32", "bf16", "fp16", "fp8"]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(plain_number)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(plain_number)]


def strict_bool(v):
    """A TOML boolean only: "yes" or 1 must not pass for true (every section's switches use it)."""
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _whole(v):
    # A count is an integer, as scenario.py's pipeline counts: TOML 8.0 must not silently become 8 (README, "Counts
    # must be integers"); "8" (a string) is not a number.
    if isinstance(v, (bool, str, float)):
        raise ValueError("must be a whole number")
    return v


def _known_overlaps(names, known):
    """``names`` (a list, or a dict's keys) when each is one of Transformer Engine's overlaps in ``known``."""
    for name in names:
        if name not in known:
            raise ValueError(f"unknown overlap {shown(name)}: one of {', '.join(known)}")
    return once(names)


def once(names):
    """``names`` (a list) when none is in it twice: a name given twice is a slip, not a second setting."""
    twice = sorted({shown(n) for n in names if names.count(n) > 1}) if isinstance(names, list) else []
    if twice:
        raise ValueError(f"must name each once: {', '.join(twice)} twice")
    return names


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ModelSection(BaseModel):
    """``[model]``: the architecture (file or inline HF fields), batch shape and dtypes."""

    model_config = ConfigDict(extra="allow", strict=False)  # inline HF fields, checked by config.py

    config: str | None = None
    seq_length: Annotated[int, Field(ge=1, le=10_000_000)] = 4096
    micro_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    params_dtype: Dtype = "bf16"  # the weights the forward pass reads
    grads_dtype: Dtype = "fp32"  # accumulated gradients (Megatron's main_grad)
    optimizer_dtype: Dtype = "fp32"  # Adam's two moments
    master_weights: bool = True  # an fp32 copy of the weights in the optimizer
    activations_dtype: Dtype = "bf16"
    fp8: bool | None = None  # FP8 linears and FP8 activation caching; None = as the config says
    # whose memory-bound kernels a layer runs: Megatron-core with Transformer Engine (bias and gradient
    # accumulation fused into the GEMMs) or Megatron-LM of 2021 (each apart; docs/model.md)
    runtime: Literal["megatron-core", "megatron-lm-2021"] = "megatron-core"
    # whose training loop runs the micro-batches under Megatron's schedules: "megatron-lm-2021" (Megatron-LM 2021/2022:
    # get_batch on every stage, the loss averaged over data parallelism, the timers' syncs: model/megatron_lm.py),
    # "megatron-core" (nothing of that costed), "nemo-1" (Megatron-core's schedules under NeMo 1's MegatronGPTModel: its
    # loss on the last stage each micro-batch, model/nemo_loss.py), "nemo-2" (NeMo 2 to v2.3), "nemo-25.04" (NeMo
    # 25.04-alpha.rc2: no host read), "nemo-2.4" (NeMo 2 from
    # v2.4), "megatron-pretrain-gpt" (Megatron-LM's pretrain_gpt.py of 2025), "pai-megatron-patch" (its template
    # loss_func): each that loop's loss on the last stage (model/nemo_loss.py); or "derived" (model.runtime's)
    training_loop: Literal["derived", "megatron-core", "megatron-lm-2021", "nemo-1", "nemo-2", "nemo-25.04",
                           "nemo-2.4", "megatron-pretrain-gpt", "pai-megatron-patch"] = "derived"
    # the attention core: "eager" (s x s scores in memory, Megatron's fused softmax) or "flash" (fused attention);
    # None: flash under runtime "megatron-core" (TE's DotProductAttention), else the family's (GPT-2: eager)
    attention: Literal["eager", "flash"] | None = None
    # how the local experts' GEMMs are launched: "multi-stream" (Transformer Engine's GroupedLinear, one cuBLAS
    # GEMM per expert on 4 streams: Megatron-core's --moe-grouped-gemm), "grouped" (one grouped kernel, as
    # DeepGEMM's or the grouped_gemm package's) or "sequential" (Megatron-core's SequentialMLP, without
    # --moe-grouped-gemm: a Python loop, one expert's GEMMs and activation after another)
    expert_gemm: Literal["multi-stream", "grouped", "sequential"] = "multi-stream"
    # whose FP8 GEMM kernels time the FP8 linears on Hopper: "cublas" (cuBLASLt, as Transformer Engine runs
    # them) or "deepgemm" (DeepGEMM's fine-grained-scaling kernels, DeepSeek's runtime); docs/model.md
    fp8_gemm: Literal["cublas", "deepgemm"] = "cublas"
    # the router's load-balancing aux loss (Megatron --moe-router-load-balancing-type aux_loss with a
    # --moe-aux-loss-coeff above 0; its default 0.0 is off): its kernels and count all-reduce
    moe_aux_loss: bool = False
    # Megatron-core's --moe-router-force-load-balancing (a benchmark mode): the router's logits replaced by random
    # ones in every MoE forward (moe/router.py apply_random_logits, moe_utils.py RandomSTE): two kernels over them
    moe_force_load_balancing: bool = False
    # whose vocabulary cross-entropy: "megatron" (Megatron-core's op-by-op vocab_parallel_cross_entropy, its default),
    # "megatron-fused" (--cross-entropy-loss-fusion, --cross-entropy-fusion-impl native) or "te" (impl te:
    # Transformer Engine's Triton parallel_cross_entropy); docs/model.md, "Kernel rates"
    cross_entropy: Literal["megatron", "megatron-fused", "te"] = "megatron"
    # FP8 with per-tensor (delayed) scaling, as Transformer Engine runs it: the amaxes all-reduced once per model
    # chunk and micro-batch, forward and backward, over "data" (tensor x data x context ranks: Megatron's amax
    # reduction group, TE's default) or "tensor" ranks (TE 0.8-1.x NVTE_DP_AMAX_REDUCE_INTERVAL=0), blocking;
    # "hidden": not waited for (NVTE_ASYNC_AMAX_REDUCTION=1). DeepGEMM's fine-grained scaling has none
    fp8_amax_reduction: Literal["data", "tensor", "hidden"] = "data"
    # delayed scaling's amax history length (TE DelayedScaling amax_history_len, whose default is 1,024; Megatron
    # --fp8-amax-history-len; NeMo fp8_amax_history_len, default 1): the per-chunk update kernel rolls it, reading
    # and writing every entry of every amax (docs/model.md, "FP8 amax reduction")
    fp8_amax_history: Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_whole)] = 1024
    # Transformer Engine's FP8 scaling recipe: "delayed" (DelayedScaling: scales from the amax history, reduced per
    # chunk as fp8_amax_reduction says) or "current" (Float8CurrentScaling, Megatron --fp8-recipe tensorwise: every
    # cast reads its input for the amax first, no history, no per-chunk reduction); docs/model.md, "FP8 current scaling"
    fp8_recipe: Literal["delayed", "current"] = "delayed"
    # whose flash attention kernels: "cudnn" (Transformer Engine's FusedAttention, which TE 1.2+ selects on Hopper)
    # or "flash-attn-2" (Dao's library, which TE before 1.2 ran first when installed) or "flash-attn-1" (its 1.x,
    # which TE release_v0.8 ran: MLPerf v3.0); docs/model.md, "Kernel rates"
    attention_kernel: Literal["cudnn", "flash-attn-2", "flash-attn-1"] = "cudnn"
    # Megatron-core's apply_rope_fusion: true (one fused RoPE kernel a tensor, as Megatron-LM's --no-rope-fusion default
    # and NeMo 2's Llama configs run) or false (apply_rotary_pos_emb_bshd's eager ops and their autograd backward,
    # NeMo 1's default: model/rope.py); docs/model.md, "Unfused RoPE"
    rope_fusion: bool = True
    # host time per PyTorch call that launches a kernel (us), which the MoE forward's syncs expose (model/host.py);
    # default: torch.nn.Linear's forward on a DGX H100 host (NVIDIA/TransformerEngine#2053); 0: not costed
    host_overhead_us: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] = 13.5
    # Megatron-core's MoE token dispatcher: where its forward makes the host wait (docs/model.md, "Host syncs in
    # the MoE layer"): "alltoall" (--moe-token-dispatcher-type alltoall, one sync) or "deepep" (flex + DeepEP)
    moe_dispatcher: Literal["alltoall", "deepep"] = "alltoall"
    # ALiBi attention biases (BLOOM) as Megatron-DeepSpeed adds them to eager attention's scores: torch.baddbmm
    # with beta = 1 on a broadcast slice of the biases, which PyTorch copies into the s x s output first
    alibi: bool = False
    # Megatron-DeepSpeed's --embed-layernorm (BLOOM's word_embeddings_layernorm): a LayerNorm on the embedding's output
    embed_layernorm: bool = False
    # FP8 parameters (Megatron --fp8-param-gather, NeMo FP8_PARAMS): the linears' weights kept in FP8, gathered
    # by the distributed optimizer at 1 byte each (model/param_gather.py); needs model.fp8
    fp8_params: bool = False
    # whether Transformer Engine makes the FP8 transposes its wgrad / dgrad GEMMs read: "kept" (Hopper, and TE 1.x on
    # any GPU: FP8 GEMMs in the TN layout only), "none" (TE 2.x on Blackwell: nvte_is_non_tn_fp8_gemm_supported, the
    # GEMMs read the row-wise data), "derived" (none on a B200, else kept); docs/model.md, "FP8 transposes"
    fp8_transpose: Literal["derived", "kept", "none"] = "derived"
    # which Transformer Engine kernel the FP8 casts that write their transpose ran: "nvrtc" (TE v1.7 on: #258's
    # runtime-compiled kernel, at the achievable HBM row) or "v0.7-v1.6" (TE v0.7 to v1.6 and MLPerf v3.1's 09ba842:
    # #101's tiled kernel at its measured H100 rate; H100 / H800, delayed scaling); docs/model.md, "Achievable HBM"
    te_cast_transpose: Literal["nvrtc", "v0.7-v1.6"] = "nvrtc"
    # NVFP4 linears (Megatron-core --fp4-format e2m1 --fp4-recipe nvfp4; NeMo FP4=True, FP4_RECIPE=nvfp4): Transformer
    # Engine's NVFP4BlockScaling runs every linear's fprop, dgrad and wgrad GEMM in NVFP4 and casts their operands to it
    # (per-tensor amax each cast, the column-wise copy written beside); Blackwell presets only; docs/model.md, "NVFP4
    # GEMMs and casts". "none": FP8 or BF16 as model.fp8 says
    fp4: Literal["none", "nvfp4"] = "none"
    # Megatron-core's defer_embedding_wgrad_compute with wgrad_deferral_limit N (NeMo DEFER_EMBEDDING_WGRAD_COMPUTE,
    # WGRAD_DEFERRAL_LIMIT): the first N micro-batches' output-layer wgrad GEMMs (and re-gathers) on the last stage run
    # after its last backward instead (model/deferred_wgrad.py). 0: off; Megatron's limit 0 (every micro-batch) is
    # given as the micro-batch count; docs/model.md, "The output layer's deferred weight gradients (s18n)"
    defer_embedding_wgrad: Annotated[int, Field(ge=0)] = 0

    @field_validator("moe_aux_loss", "moe_force_load_balancing", "alibi", "embed_layernorm", "fp8_params", "rope_fusion",
                     "master_weights", "fp8", mode="before")
    @classmethod
    def _bool(cls, v):
        return v if v is None else strict_bool(v)  # fp8's None: as the config says

    @field_validator("host_overhead_us", mode="before")
    @classmethod
    def _number(cls, v):
        if isinstance(v, (bool, str)):  # "13.5" or true must not pass for a number of microseconds
            raise ValueError("must be a number of microseconds (0 or more)")
        return v

    @field_validator("seq_length", "micro_batch_size", "defer_embedding_wgrad", mode="before")
    @classmethod
    def _w(cls, v):
        return _whole(v)

    def inline(self) -> dict:
        """The inline HF fields (everything that is not a scenario key)."""
        return dict(self.model_extra or {})


class ParallelSection(_Section):
    """``[parallel]``: degrees besides the pipeline's, ZeRO stage and the stage layout."""

    tensor: Annotated[int, Field(ge=1, le=1024)] = 1
    expert: Annotated[int, Field(ge=1, le=65536)] = 1
    # expert tensor parallelism (Megatron-core's --expert-tensor-parallel-size): each expert's fc1 / fc2 split over
    # this many ranks (docs/model.md "Expert tensor parallelism"); 1, each expert whole, as every MoE run here set it
    expert_tensor: Annotated[int, Field(ge=1, le=1024)] = 1
    data: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    context: Annotated[int, Field(ge=1, le=1024)] = 1  # sequence split across ranks (ring attention)
    zero: Annotated[int, Field(ge=0, le=3)] = 0
    layout: Union[str, list[int], None] = None
    tp_comm_overlap: bool = True  # tensor-parallel collectives pipelined under their GEMMs (Megatron --tp-comm-overlap)
    sequence_parallel: bool = True  # norms and dropout split along the sequence; all-gather / reduce-scatter
    # without sequence parallelism, send 1/tensor of a boundary activation per rank and all-gather it over NVLink
    # at the receiver (Megatron-LM 2021-2022 --scatter-gather-tensors-in-pipeline, DeepSpeed's PartitionedTensor)
    pipeline_scatter_gather: bool = False
    # SMs the communication kernel of each Transformer Engine userbuffers overlap takes, by TE's name (a run's
    # ub_tp_comm_overlap_cfg yaml, num_sm); the ones not named take TE's default, 16 (kernels.UB_SM_OVERLAPS)
    tp_overlap_sms: dict[str, Annotated[int, Field(ge=0, le=64)]] = {}
    # the FP8 forward reduce-scatter overlaps ("proj_fprop", "fc2_fprop") whose GEMM runs as one atomic GEMM that
    # the reduce-scatter follows (TE's NVTE_UB_ATOMIC_GEMM_RS=1, or a cfg's atomic_gemm: 1); else 4 split GEMMs
    tp_overlap_atomic: list[str] = []
    # the forward reduce-scatter overlaps ("proj_fprop", "fc2_fprop") a run's yaml gives method: ring_exchange: t GEMM
    # pieces, t - 1 sends and a reduce kernel (Transformer Engine's split_overlap_rs), not the 4-split pipeline
    tp_overlap_ring_rs: list[str] = []
    # the SM-using overlaps launched with set_sm_margin 0: their GEMM is not told of the communication kernel's SMs
    # and runs on the whole GPU's tiles beside it (TE's default since v2.0 tells them all: default none)
    tp_overlap_not_told: list[str] = []
    # Megatron-DeepSpeed's --sync-tp-duplicated-parameters: every forward all-reduces each norm's and row-parallel
    # bias's parameters over the tensor-parallel group (BLOOM); Megatron-core has no such step
    sync_tp_duplicated_parameters: bool = False
    # the tensor-parallel group's NCCL config.max_ctas (Megatron-core's MEGATRON_CORE_TP_MAX_CTAS, or the tp entry of
    # an NCCL_CFG_PATH yaml): NCCL keeps at most that many channels, so an NCCL collective beside GEMMs holds at most
    # that many SMs (kernels.tp_nccl_ctas); 0: no cap, NCCL's own channels
    tp_max_ctas: Annotated[int, Field(ge=0, le=64)] = 0
    # the order ranks are numbered in, innermost first (model/placement.py): Megatron-core's default, or NeMo's
    # use_tp_pp_dp_mapping; it places the pipeline neighbours, so which stage boundaries stay on NVLink
    rank_order: Literal["tp-cp-ep-dp-pp", "tp-cp-ep-pp-dp"] = "tp-cp-ep-dp-pp"

    @field_validator("tp_comm_overlap", "sequence_parallel", "pipeline_scatter_gather",
                     "sync_tp_duplicated_parameters", mode="before")
    @classmethod
    def _bool(cls, v):
        return strict_bool(v)

    @field_validator("tp_overlap_sms", mode="before")
    @classmethod
    def _ub_names(cls, v):
        from .kernels import UB_SM_OVERLAPS

        if isinstance(v, dict):
            _known_overlaps(v, UB_SM_OVERLAPS)
            for sms in v.values():
                _whole(sms)
        return v

    @field_validator("tp_overlap_not_told", mode="before")
    @classmethod
    def _not_told_names(cls, v):
        from .kernels import UB_SM_OVERLAPS

        return _known_overlaps(v, UB_SM_OVERLAPS) if isinstance(v, list) else v

    @field_validator("tp_overlap_ring_rs", mode="before")
    @classmethod
    def _ring_rs_names(cls, v):
        from .kernels import UB_RS_OVERLAPS

        return _known_overlaps(v, UB_RS_OVERLAPS) if isinstance(v, list) else v

    @field_validator("tp_overlap_atomic", mode="before")
    @classmethod
    def _atomic_names(cls, v):
        from .kernels import UB_ATOMIC_OVERLAPS

        return _known_overlaps(v, UB_ATOMIC_OVERLAPS) if isinstance(v, list) else v

    @field_validator("tensor", "expert", "expert_tensor", "data", "context", "zero", "tp_max_ctas", mode="before")
    @classmethod
    def _w(cls, v):
        return _whole(v)

    @field_validator("layout", mode="before")
    @classmethod
    def _layer_counts(cls, v):
        # pydantic's list[int] would read [12.0, 12.0] as [12, 12]; a layer count is a whole number
        if isinstance(v, list):
            for i, n in enumerate(v):
                if isinstance(n, (bool, str, float)):
                    raise ValueError(f"item {i} must be a whole number of layers")
        return v


class HardwareSection(_Section):
    """``[hardware]``: a GPU preset and/or its figures; times derived in milliseconds."""

    preset: str | None = None
    bf16_tflops: Positive | None = None
    fp8_tflops: Positive | None = None
    hbm: Positive | None = None  # bytes
    p2p_bandwidth: Positive | None = None  # GB/s
    a2a_bandwidth: Positive | None = None  # GB/s per GPU across nodes
    a2a_intra_bandwidth: Positive | None = None  # GB/s per GPU inside a node
    gpus_per_node: Annotated[int, Field(ge=1, le=1024), BeforeValidator(_whole)] | None = None
    # GPUs one NVLink domain joins (a GB200 NVL72 rack: 72); None: the preset's, or gpus_per_node
    nvlink_domain: Annotated[int, Field(ge=1, le=1024), BeforeValidator(_whole)] | None = None
    # achieved / peak FLOP/s of every compute component; None: kernel-level times from the preset's rates
    efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), BeforeValidator(plain_number)] | None = None
    a2a_overhead: NonNeg = 0.0  # ms per all-to-all phase beyond its bytes / bandwidth
    # the NCCL release the run linked ("2.25.1"): selects NCCL's tuning rules (collectives.py); None: v2.18.5's
    nccl_version: str | None = None
    # opt-in: a measured GPU-to-GPU spread (gpu_spread.SPREADS); every kernel then takes as long as on the slowest
    # of the run's GPUs is expected to (gpu_spread.py); None: every GPU at the preset's rates
    gpu_variability: str | None = None

    @field_validator("gpu_variability")
    @classmethod
    def _spread(cls, v):
        from .gpu_spread import SPREADS

        if v is not None and v not in SPREADS:
            raise ValueError(f"unknown GPU spread (known: {', '.join(SPREADS)})")
        return v

    @field_validator("nccl_version")
    @classmethod
    def _release(cls, v):
        # NCCL 2's tuner is what collectives.py reads (NCCL 1 was single-node; there is no NCCL 3)
        if v is not None and not re.fullmatch(r"2\.\d+\.\d+", str(v), flags=re.ASCII):
            raise ValueError('must be an NCCL 2 release as 2.minor.patch, e.g. "2.25.1"')
        return v

    @property
    def nccl(self) -> tuple[int, int, int] | None:
        return None if self.nccl_version is None else tuple(int(x) for x in self.nccl_version.split("."))

    @field_validator("preset")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(unknown_preset_rule(v))
        return v
