"""Static memory per rank: parameters, gradients and optimizer states, sharded as ZeRO says.

ZeRO (Rajbhandari et al. 2020) stage 1 shards the optimizer states over the
data-parallel ranks, stage 2 also the gradients, stage 3 also the parameters.
A stage's dense part (attention, norms, dense FFN, shared experts, router,
embedding, head) is split over ``tensor`` ranks and replicated over ``data``;
its routed experts are split over ``expert x expert_tensor`` ranks (expert
parallelism, then each expert's GEMMs over the expert-tensor ranks) and
replicated over the expert-data-parallel group of ``data x tensor /
(expert x expert_tensor)`` ranks (Megatron-core's expert grid).  Optimizer bytes per parameter:
an fp32 master copy (if kept) plus Adam's two moments.

Gradients are Megatron-core's gradient buffer (``main_grad``, ``grads_dtype``):
whole under DDP (ZeRO 0) and the distributed optimizer (ZeRO 1, which
reduce-scatters in place), sharded under ZeRO 2 and FSDP (ZeRO 3), which then
need unsharded per-layer buffers while a layer's gradients are reduce-scattered
(and, under ZeRO 3, while its parameters are all-gathered):
:func:`sharding_buffers`.  FP8 linears keep an FP8 copy of their weights and
its transpose (Transformer Engine's weight cache across micro-batches); with FP8 parameters
(``model.fp8_params``) the weight itself is the FP8 copy (1 byte, no 16-bit parameter), so only
the transpose is kept beside it, every linear's all step (cache or not); no transpose where
Transformer Engine makes none (Blackwell, ``model.fp8_transpose``).  NVFP4 linears (``model.fp4``) keep the same
two copies at ``kernels.NVFP4_BYTES`` a value (docs/model.md, "NVFP4 in memory").
:func:`runtime_allowance` is what the process holds besides tensors: CUDA
context, NCCL buffers per process group, the cuBLAS/TE workspace.
docs/model.md, "Memory per rank", gives the figures and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kernels import NVFP4_BYTES


@dataclass(frozen=True)
class Sharding:
    tensor: int = 1
    expert: int = 1
    data: int = 1
    zero: int = 0
    params_bytes: float = 2.0
    grads_bytes: float = 4.0
    optimizer_bytes: float = 12.0  # per parameter: master (4) + two moments (4 + 4)
    fp8: bool = False  # FP8 linears: an FP8 weight copy and its transpose per linear weight
    fp8_weight_cache: bool = True  # keep the FP8 copies across micro-batches (Transformer Engine); else cast per use
    fp8_params: bool = False  # model.fp8_params: the FP8 linears' weights are held in FP8 (1 byte), no 16-bit copy
    fp8_transpose: bool = True  # model.fp8_transpose resolved: Transformer Engine keeps each FP8 weight's transpose
    expert_tensor: int = 1  # parallel.expert_tensor: each expert's weights split over this many ranks (ETP)
    fp4: bool = False  # model.fp4 = "nvfp4": the low-precision weight copies are NVFP4 (NVFP4_BYTES a value), not FP8

    @property
    def routed_ranks(self) -> int:
        """Ranks the routed experts' parameters are split over: expert x expert-tensor parallelism."""
        return self.expert * self.expert_tensor

    @property
    def expert_data(self) -> float:
        """The expert-data-parallel group: Megatron-core's expert grid fills a stage's ranks as ETP x EP x EDP
        (parallel_state.py @ 1e05700 lines 721-724: ``decoder_world_size // (ETP x EP x PP)``)."""
        return self.data * self.tensor / self.routed_ranks


@dataclass(frozen=True)
class Static:
    parameters: float
    gradients: float
    optimizer: float
    fp8_weights: float = 0.0  # FP8 copy + transpose of the FP8 linears' weights

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.fp8_weights

    def __add__(self, other: "Static") -> "Static":
        return Static(self.parameters + other.parameters, self.gradients + other.gradients,
                      self.optimizer + other.optimizer, self.fp8_weights + other.fp8_weights)  # fmt: skip


# Transformer Engine keeps, per FP8 linear, the weight cast to FP8 and its transpose (Hopper's
# FP8 GEMMs take one layout, so the backward needs the other): 1 + 1 bytes per weight element.
FP8_WEIGHT_BYTES = 2.0


def fp8_copy_bytes(sh: Sharding) -> float:
    """Bytes per FP8-linear weight element kept beside the parameter: the FP8 copy (none with FP8
    parameters: the parameter is the copy, Transformer Engine's Float8Tensor weights under
    Megatron-core's ``--fp8-param-gather``) and its transpose (none where ``sh.fp8_transpose`` is off:
    TE 2.x on Blackwell, quantizer.cpp ``with_transpose = columnwise_usage && !nvte_is_non_tn_fp8_gemm_supported()``).
    An FP8 parameter's transpose is held all step with or without ``sh.fp8_weight_cache``: TE release_v2.8's
    ``get_weight_workspace`` hands a quantized weight back before its cache (module/base.py 1369-1376) after
    ``update_usage(columnwise_usage=True)``, which stores the transpose on the parameter (float8_tensor_base.py
    191-229, ``_create_transpose`` 183-189) and keeps it while later calls leave columnwise usage unset."""
    copies = FP8_WEIGHT_BYTES - (1.0 if sh.fp8_params else 0.0) - (0.0 if sh.fp8_transpose else 1.0)
    # NVFP4 (TE release_v2.8 NVFP4Quantizer.make_empty): each copy is 4-bit data plus a 1-byte E4M3 scale a block of 16
    return copies * (NVFP4_BYTES if sh.fp4 else 1.0)
UNITS_IN_FLIGHT = 2  # FSDP: the layer computing and the one prefetched (or being reduce-scattered)


def _per_rank(dense: float, routed: float, sh: Sharding) -> float:
    """Elements one rank holds of ``dense`` and ``routed`` whole-model parameters (before ZeRO)."""
    return dense / sh.tensor + routed / sh.routed_ranks


def _shard(dense: float, routed: float, sh: Sharding) -> float:
    return dense / sh.tensor / sh.data + routed / sh.routed_ranks / sh.expert_data


def stage_static(dense: int, routed: int, sh: Sharding, fp8_dense: int = 0, fp8_routed: int = 0,
                 fp8_unit: float = 0.0) -> Static:  # fmt: skip
    """Bytes one rank holds for one stage with ``dense`` and ``routed`` parameters (whole model counts),
    ``fp8_dense`` and ``fp8_routed`` of them the weights of FP8 linears (used when ``sh.fp8``), and
    ``fp8_unit`` the FP8-linear elements per rank of its largest layer."""

    def kept(per_param: float, sharded: bool) -> float:
        return per_param * (_shard(dense, routed, sh) if sharded else _per_rank(dense, routed, sh))

    fp8 = 0.0
    copy = fp8_copy_bytes(sh)
    if sh.fp8 and (sh.zero < 3 or sh.data == 1):  # under ZeRO 3 only gathered layers have copies (sharding_buffers)
        # cached: every linear's copy all step; cast per use: the layer computing's copy.  FP8 parameters keep
        # their transpose on the Float8Tensor itself whatever the cache (fp8_copy_bytes): every linear's, all step
        every = sh.fp8_weight_cache or sh.fp8_params
        fp8 = copy * (_per_rank(fp8_dense, fp8_routed, sh) if every else fp8_unit)
    parameters = kept(sh.params_bytes, sh.zero >= 3)
    if sh.fp8 and sh.fp8_params:  # those weights are 1-byte parameters, sharded as the others
        fp8_held = _shard(fp8_dense, fp8_routed, sh) if sh.zero >= 3 else _per_rank(fp8_dense, fp8_routed, sh)
        parameters -= (sh.params_bytes - 1.0) * fp8_held
    return Static(
        parameters=parameters,
        gradients=kept(sh.grads_bytes, sh.zero >= 2),
        optimizer=kept(sh.optimizer_bytes, sh.zero >= 1),
        fp8_weights=fp8,
    )


def sharding_buffers(unit_dense: float, unit_routed: float, unit_fp8: float, sh: Sharding) -> float:
    """Unsharded buffers ZeRO 2 and 3 hold besides their shards, for the largest FSDP unit (one
    layer, the embedding or the head: ``unit_*`` whole-model counts, ``unit_fp8`` already per rank):
    ZeRO >= 2 the unit's whole gradient while it is reduce-scattered, ZeRO 3 also its gathered
    parameters (and their FP8 copies); two units at a time (the one computing, the one in flight)."""
    if sh.zero < 2:
        return 0.0
    # a part sharded over one rank is whole already: nothing to gather or reduce-scatter
    dense, routed = (unit_dense if sh.data > 1 else 0), (unit_routed if sh.expert_data > 1 else 0)
    per_param = sh.grads_bytes + (sh.params_bytes if sh.zero >= 3 else 0.0)
    fp8 = 0.0
    if sh.fp8 and sh.zero >= 3 and sh.data > 1:
        fp8 = fp8_copy_bytes(sh) * unit_fp8
        if sh.fp8_params:  # the unit's FP8 weights are gathered at 1 byte, not params_bytes
            fp8 -= (sh.params_bytes - 1.0) * unit_fp8
    return UNITS_IN_FLIGHT * (per_param * _per_rank(dense, routed, sh) + fp8)


# What a training process holds besides its tensors (docs/model.md, "Runtime allowance").
CUDA_CONTEXT = 0.5e9  # assumption: CUDA 12 context with lazy module loading on a Hopper GPU
NCCL_PAIR_GROUP = 544 * 2**20  # one NCCL communicator of two ranks (NVIDIA/nccl#964, A100 NVLink)
NCCL_GROUP = 688 * 2**20  # one NCCL communicator of more than two ranks (same measurement)
WORKSPACE_HOPPER, WORKSPACE_OLDER = 32 * 2**20, 4 * 2**20  # cuBLAS workspace NVIDIA recommends


def runtime_allowance(group_sizes: list[int], hopper: bool = True) -> float:
    """CUDA context + one NCCL communicator per process group of more than one rank + the GEMM workspace."""
    nccl = sum(NCCL_PAIR_GROUP if n == 2 else NCCL_GROUP for n in group_sizes if n > 1)
    return CUDA_CONTEXT + nccl + (WORKSPACE_HOPPER if hopper else WORKSPACE_OLDER)


def per_rank(stage_static: list[Static], stages_on_rank: list[list[int]], activations_peak: list[float],
             buffers: list[dict] | None = None, stage_buffers: list[float] | None = None,
             runtime: float = 0.0, stage_deepep: list[float] | None = None) -> list[dict]:  # fmt: skip
    """metrics.json's ``per_rank[].memory``: bytes per rank; ``total`` is the rank's peak of
    everything together.  Static memory (parameters, gradients, optimizer, FP8 copies), the
    sharding buffers, DeepEP's buffer (``stage_deepep``: one per process, the largest of its stages') and the runtime
    allowance are held all along; activations, P2P and
    all-to-all buffers (and deferred output-layer wgrad ones) come and go, so the total adds their joint peak (``buffers[r]``:
    ``{"p2p", "a2a", "joint"}``, from model/buffers.py; without it the activation peak alone)."""
    out = []
    for r, (held, peak) in enumerate(zip(stages_on_rank, activations_peak)):
        st = sum((stage_static[s] for s in held), Static(0.0, 0.0, 0.0))
        dyn = buffers[r] if buffers else {"p2p": 0.0, "a2a": 0.0, "joint": peak}
        sharding = max((stage_buffers[s] for s in held), default=0.0) if stage_buffers else 0.0
        deepep = max((stage_deepep[s] for s in held), default=0.0) if stage_deepep else 0.0
        out.append({"parameters": st.parameters, "gradients": st.gradients, "optimizer": st.optimizer,
                    "activations_peak": peak, "total": st.total + sharding + deepep + dyn["joint"] + runtime,
                    "fp8_weights": st.fp8_weights, "sharding_buffers": sharding, "p2p_buffers": dyn["p2p"],
                    "a2a_buffers": dyn["a2a"], "dynamic_peak": dyn["joint"], "runtime": runtime,
                    "deepep_buffers": deepep})  # fmt: skip
    return out


def over_capacity(metrics) -> list:
    """The ranks whose total memory exceeds device_memory (empty when either is unknown)."""
    if not metrics.device_memory:
        return []
    return [r for r in metrics.per_rank if r.memory is not None and r.memory.total > metrics.device_memory]
