"""The kernels one layer (or the embedding, the head, an MTP module) runs, each timed from its shape.

A Megatron-core / Transformer-Engine training step runs, per layer and micro-batch,
a forward pass, an input-gradient pass (I) and a weight-gradient pass (W).  Each
:class:`Kernel` here is one launch (or one collective) of one of them, with its
shape after the tensor (t), context (c) and expert (e) splits, its FLOPs and
bytes, its time and what bounds it.  Each belongs to a ``[chunk]`` component
(``attn_forward`` ... ``combine_backward``, costs.Component), so summing a
table by component gives the component model's figures.

Kinds and how each is timed (the rates are per GPU, model/rates.py):

* ``gemm``: gemm.time (tile/wave quantisation, short-K overhead, floor);
  expert GEMMs as the runtime launches them (``Layout.expert_streams``): Transformer
  Engine's GroupedLinear, one GEMM per local expert on 4 streams, one at a time
  (SequentialMLP), or one grouped kernel;
* ``attention``: flash attention at the measured forward / backward rate for the
  sequence length (causal: half the s x s square); with context parallelism one
  kernel per step of Transformer Engine's ring (``ring_attention``), a step that sends
  on the SMs its P2P kernel leaves while the transfer lasts (``RING_P2P_CTAS``);
* ``memory``: bytes / achievable HBM bandwidth + the kernel floor (norms,
  activations, RoPE, residual adds, router, permute, FP8 casts, cross-entropy);
* ``comm``: collectives (model/collectives.py) on NVLink or the NIC; ``exposed``
  is the part that stays on the critical path under Megatron's overlap rules.

docs/model.md ("Kernel-level costs") lists every kernel and its source.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from . import collectives, deepseek_kernels, flops, gemm, host, host_backward, host_pair, nccl_nvls, params, placement, recompute, rope
from .config import ModelConfig
from .flops import causal_keys
from .rates import KernelRates

F, I, W = "forward", "backward_input", "backward_weight"
# Transformer Engine's GroupedLinear (Megatron-core's TEGroupedMLP, --moe-grouped-gemm) issues one cuBLAS GEMM per
# local expert, round-robin on this many compute streams (transformer_engine/common/gemm/cublaslt_gemm.cu,
# nvte_multi_stream_cublas_gemm; num_streams = 4 in include/transformer_engine/gemm.h)
TE_COMPUTE_STREAMS = 4
# Transformer Engine's per-tensor ("delayed") FP8 scaling keeps this many past amaxes of every FP8 tensor: the
# model.fp8_amax_history's default: TE's DelayedScaling default (amax_history_len) and the MLPerf GPT-3 runs'
# FP8_AMAX_HISTORY (config_fp8.sh); the MLPerf v5.0 Llama 3.1 405B runs leave it unset: NeMo's 1
AMAX_HISTORY = 1024
# Transformer Engine's Float8CurrentScalingQuantizer (TE release_v2.8 @ 40c69e7, pytorch/csrc/quantizer.cpp quantize_impl;
# common/recipe/current_scaling.cu): a quantize of a 16-bit tensor launches zero_amax_kernel (one thread), amax_kernel
# (reads the tensor once), compute_scale_from_amax_kernel (one thread), then the same cast as delayed scaling. Where a
# norm or an activation computes the amax in its own pass (quantize_with_amax: FUSED_NORM_AMAX_FP8 in
# csrc/extensions/normalization.cpp, FUSED_ACTIVATION_AMAX_FP8 in activation.cpp) it writes its output in 16 bits and
# the cast is a kernel of its own, after amax.zero_() and the scale kernel
CURRENT_SCALING_KERNELS = 3  # zero, amax, scale (quantize); zero, scale, cast (quantize_with_amax)
# amaxes one FP8 GEMM module records: input, weight and output forward; output and input gradients backward
# (TE's FP8FwdTensors / FP8BwdTensors)
AMAXES = {"forward": 3, "backward": 2}
# LayerNormMLP's backward sums fc1's gradient whether fc1 has a bias or not, and returns the sum only with one
# (TE release_v2.8 40c69e7 module/layernorm_mlp.py lines 1025-1036 and 1347; release_v2.2 c55e425 lines 810-811
# and 1057): the row's shape text says so on a model without biases
NO_BIAS_SUM = "no bias: TE sums it anyway, then drops it"
# Bytes an NVFP4 element takes (model.fp4 = "nvfp4"): a 4-bit E2M1 value and its share of the FP8 E4M3 scale of each
# block of 16 (TE release_v2.8 NVFP4BlockScaling; the per-tensor FP32 scale is one value a tensor, not counted)
NVFP4_BYTES = 0.5 + 1 / 16
# Megatron's vocabulary cross-entropy, op by op on fp32 logits (kernels.head): bytes per logit beyond the 16-bit
# logits read or written, and the kernels each pass launches
CE_FORWARD_FP32_BYTES = 4 + 4 + (4 + 4) + (4 + 4) + 4 + (4 + 4)  # cast's write, max, subtract, exp, sum, divide
CE_BACKWARD_FP32_BYTES = (4 + 4) + 4  # scale by the loss gradient, the cast back's read
CE_FORWARD_KERNELS = 6
CE_BACKWARD_KERNELS = 2
# model.cross_entropy's fused implementations: per logit, (fp32 bytes, passes over the 16-bit logits or gradient,
# kernels), forward and backward (docs/model.md, "Kernel rates"; "megatron" is the op-by-op function above).
# "megatron-fused": Megatron-core's fused_vocab_parallel_cross_entropy, three torch.compile graphs forward: cast + max
# (read 16-bit, write 4), exp of the shifted logits into a fresh buffer with its sum (4 + 4) that Inductor copies back
# into the in-place input (4 + 4; Megatron's own note on it in fusions/fused_cross_entropy.py @ 0cb4a9c), div_ (4 + 4);
# one graph backward: the copy for the target scatter (4 + 4), then scale and cast (4 + 4 + the 16-bit write).
# "te": Transformer Engine's Triton parallel_cross_entropy on the 16-bit logits: an online-softmax pass (read), a pass
# that reads them again and writes the gradient in place (read + write); backward one kernel scaling it in place by
# the per-token loss gradient (read + write), which Megatron's per-token loss (reduce_loss=False) never skips
CE_FUSED = {
    "megatron-fused": ((4 + (4 + 4) + (4 + 4) + (4 + 4), 1, 4), ((4 + 4) + (4 + 4), 1, 3)),
    "te": ((0, 3, 2), (0, 2, 1)),
}
# the collectives over the tensor group each cross-entropy's forward waits for, on the per-token fp32 values (tokens x
# 4 B each): the op-by-op function all-reduces the max, the predicted logits and the exp sum (Megatron-core
# tensor_parallel/cross_entropy.py @ df72712 lines 21, 52, 60; Megatron-LM 2021 mpu/cross_entropy.py @ 6985e58 lines
# 32, 63, 71); the fused one the max, then the predicted logits and the sum in one tensor (fusions/fused_cross_entropy.py
# @ dd18205 lines 88, 108); TE's Triton one all-gathers each rank's (max, sum, target logit) per token
# (pytorch/triton/cross_entropy.py @ v2.5 lines 310-314). The backward runs none. (op, values a token per call)
CE_TP_COLLECTIVES = {"megatron": ("all_reduce", (1, 1, 1)), "megatron-fused": ("all_reduce", (1, 2)),
                     "te": ("all_gather", (3,))}
# Transformer Engine's userbuffers overlaps that run a communication kernel on SMs, by TE's name, and the SMs each
# takes by default (initialize_ub's num_sm = 16; the ring exchanges run on the copy engines). A scenario's
# parallel.tp_overlap_sms gives a run's own (its ub_tp_comm_overlap_cfg yaml).
UB_SM_OVERLAPS = ("qkv_dgrad", "qkv_wgrad", "fc1_dgrad", "fc1_wgrad", "proj_fprop", "fc2_fprop")
UB_DEFAULT_SMS = 16
UB_ATOMIC_OVERLAPS = ("proj_fprop", "fc2_fprop")  # the "pipeline" reduce-scatters, which can run an atomic GEMM
UB_PIPELINE_SPLITS = 4  # initialize_ub's num_splits for the "pipeline" reduce-scatters
UB_RS_OVERLAPS = ("proj_fprop", "fc2_fprop")  # the forward reduce-scatters a yaml may run as ring exchanges instead
# CTAs (one per channel, each holding an SM: NVIDIA/nccl#689) of an NCCL ring collective of the tensor group inside
# one NVSwitch node, by GPU preset (docs/model.md, "Tensor-parallel NCCL collectives beside GEMMs"): the ring search's
# channels (ncclTopoCompute: the fastest speed of the GPU's intra-node speed array whose channels take the most of its
# NVLink width), doubled once in ncclTopoDupChannels, again in ncclTopoPostset; a message above channels x 512
# threads x 64 B keeps them all.  A100 (v2.12.12-1, and v2.18.5-1 alike): 12 x 22 GB/s at 44 a channel: 6, 12, 24.
# H800 (v2.18.5-1 .. v2.28.3-1): 8 x 20.6 GB/s: 4 at 40, 8, 16; NVLS, where it runs (more than 2 GPUs, multicast),
# has NVLS_NCHANNELS_SM90 = 16 CTAs too, so 16 whichever NCCL picks.  B200 (v2.28.3-1): 18 x 40.1 GB/s: 8 at 90,
# 16, 32 (every B200 row that reaches it runs NCCL_NVLS_ENABLE=0 and NCCL_MIN/MAX_CTAS 16 / 32); GB200: B200's
# (carried over: the same 18 NVLink 5 links a GPU, to the rack's NVSwitch trays; the search on MNNVL was not read).
TP_NCCL_CTAS = {"A100": 24, "H800": 16, "B200": 32, "GB200": 32}
TP_NCCL_CTAS["GB300"] = TP_NCCL_CTAS["GB200"]  # carried over: the same NVLink 5 links and NCCL settings (s17b)
TP_NCCL_CTAS["B300"] = TP_NCCL_CTAS["B200"]  # carried over: the HGX board's 18 NVLink 5 links a GPU (s18m)
# Hopper with 18 NVLinks (18 x 20.6 GB/s: 6 at 60, 12, 24): the ring's 24, or NVLS_NCHANNELS_SM90 = 16 where NCCL's
# tuner runs the collective with NVLS (nccl_nvls.picks_nvls: a group of 3-8, by operation, bytes and release).
TP_NCCL_RING_CTAS = {"H100": 24, "H200": 24}
TP_NCCL_NVLS_CTAS = 16


def tp_nccl_ctas(rates: KernelRates, group: int, op: str, nbytes: float) -> int:
    """SMs an NCCL collective ``op`` of ``nbytes`` over a tensor group of ``group`` ranks inside a node holds
    (TP_NCCL_CTAS; on H100 / H200 the ring's TP_NCCL_RING_CTAS or, where NCCL's tuner picks NVLS, TP_NCCL_NVLS_CTAS;
    0: none)."""
    if group <= 1 or placement.group("tp", placement.DEFAULT_ORDER, rates.nvlink_domain, group).link != "nvlink":
        return 0
    if rates.name in TP_NCCL_CTAS:
        return TP_NCCL_CTAS[rates.name]
    if nccl_nvls.runs_nvls(rates, op, nbytes, group):
        return TP_NCCL_NVLS_CTAS
    return TP_NCCL_RING_CTAS.get(rates.name, 0)


@dataclass(frozen=True)
class Kernel:
    name: str
    component: str  # the [chunk] component it is part of (attn_forward, ..., combine_backward)
    kind: str  # gemm, attention, memory, comm or host (host.py: the host's share of an MoE forward)
    shape: str
    flops: float
    bytes: float
    seconds: float  # on the critical path of its component (comm: the exposed part)
    bound: str  # compute, memory, latency or communication

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


@dataclass(frozen=True)
class Layout:
    """What the kernels' shapes depend on besides the model."""

    seq: int  # whole sequence (attention context)
    micro_batch: int
    tensor: int = 1
    context: int = 1
    expert: int = 1
    fp8: bool = False
    policy: str = "none"  # memory.recompute
    tp_overlap: bool = True  # parallel.tp_comm_overlap
    act_bytes: float = 2.0
    sequence_parallel: bool = True  # parallel.sequence_parallel
    legacy: bool = False  # model.runtime = "megatron-lm-2021": bias, accumulation, cross-entropy apart
    grad_accumulation: float = 0.0  # bytes per parameter and micro-batch of the accumulation pass
    # model.expert_gemm: GEMMs of different local experts that run at once (0: all, one grouped kernel)
    expert_streams: int = TE_COMPUTE_STREAMS
    aux_loss: bool = False  # model.moe_aux_loss: the router's load-balancing loss is computed
    # model.fp8_amax_reduction: ranks the FP8 amaxes are reduced over once per model chunk and micro-batch
    # (0: no per-tensor scaling bookkeeping), and whether the compute stream waits for that all-reduce
    amax_group: int = 0
    amax_blocking: bool = True
    # parallel.tp_overlap_sms: SMs each userbuffers overlap's communication kernel takes, ((TE name, SMs), ...);
    # parallel.tp_overlap_atomic: the FP8 forward reduce-scatter overlaps whose GEMM is one atomic GEMM
    ub_sms: tuple[tuple[str, int], ...] = ()
    ub_atomic: tuple[str, ...] = ()

    def ub_sm(self, name: str) -> int:
        """SMs the communication kernel of Transformer Engine's userbuffers overlap ``name`` takes."""
        return dict(self.ub_sms).get(name, UB_DEFAULT_SMS)
    host_op: float = 0.0  # model.host_overhead_us in seconds: host time per PyTorch call (0: not costed)
    dispatcher: str = "alltoall"  # model.moe_dispatcher: where the MoE forward makes the host wait (host.py)
    sync_tp_duplicated: bool = False  # parallel.sync_tp_duplicated_parameters (Megatron-DeepSpeed)
    alibi: bool = False  # model.alibi: Megatron-DeepSpeed's ALiBi through baddbmm (eager attention)
    # DeepSeek's runtime (FP8 by DeepGEMM, recompute "deepseek"): its MLA + MoE layers' kernels as its
    # profile lists them (deepseek_kernels.py)
    deepseek: bool = False
    # memory.fp8_weight_cache = false: Transformer Engine casts each FP8 weight in every forward (no copy kept);
    # not with model.fp8_params, whose FP8 weight is the GEMM's operand and keeps its transpose all step
    fp8_weight_each_use: bool = False
    grad_bytes: float = 4.0  # model.grads_dtype: the main_grad buffer the wgrad GEMMs accumulate into
    cross_entropy: str = "megatron"  # model.cross_entropy: whose vocabulary cross-entropy (CE_FUSED)
    fp8_current: bool = False  # model.fp8_recipe = "current": Transformer Engine's Float8CurrentScaling
    # model.fp8_transpose resolved: Transformer Engine writes the FP8 transposes its backward GEMMs read (false: TE 2.x
    # on Blackwell, whose FP8 GEMMs read the row-wise data in any layout)
    fp8_transpose: bool = True
    # parallel.tp_overlap_not_told: the overlaps launched with set_sm_margin 0 (their GEMM not told of the SMs taken)
    ub_not_told: tuple[str, ...] = ()
    # the context-parallel ring's send and receive run one after the other, not at once (derive.UNBATCHED_CP2_P2P)
    ring_serial: bool = False
    # Transformer Engine's flash-attn path copies the interleaved q, k, v into three contiguous tensors first
    # (fa_prepare_fwd, and fa_prepare_bwd back): derive.qkv_prepare says when
    qkv_prepare: bool = False
    # the forward with autograd off, as an evaluation runs it (Lightning's validation loop under no_grad /
    # inference_mode): TE gathers a column-parallel input with NCCL, not its userbuffers ring, casts write no
    # transposes and delayed scaling neither reduces nor updates its amaxes; only the forward rows mean anything
    evaluation: bool = False
    # parallel.tp_overlap_ring_rs: the forward reduce-scatter overlaps a yaml runs as ring exchanges (method:
    # ring_exchange, TE CommOverlapP2PBase::split_overlap_rs), not as the pipelined num_splits reduce-scatter
    ub_ring_rs: tuple[str, ...] = ()
    # memory.recompute_modules with policy "selective" (None: Megatron-core's default, recompute.DEFAULT)
    modules: tuple[str, ...] | None = None
    # model.moe_force_load_balancing: the router's logits replaced by random ones in each MoE forward (RANDOM_LOGITS)
    force_balance: bool = False
    # bytes an element of the post-backward hook adding a parameter's autograd .grad into the gradient buffer, every
    # micro-batch, for the parameters whose gradient no wgrad GEMM writes into main_grad (norms, biases, routers); 0:
    # no such hook (derive.grad_copy_bytes)
    grad_copy: float = 0.0
    # bytes an element of the embedding stage's word (V x h / tensor) and position embeddings (whole) each
    # micro-batch spends on their autograd .grad (derive.embedding_grad_bytes); 0: not costed
    embedding_grad: float = 0.0
    # Megatron-DeepSpeed's --embed-layernorm (model.embed_layernorm): a LayerNorm on the embedding's output (BLOOM)
    embed_layernorm: bool = False
    # DeepSpeed v0.6.5's pipeline engine with Megatron-DeepSpeed's GPTModelPipe (step.runtime = "deepspeed-bf16"):
    # its per-micro-batch loads, clones, partitions, sends and host syncs (deepspeed_pipe.py)
    deepspeed_pipe: bool = False
    # parallel.tp_max_ctas: the tensor-parallel group's NCCL config.max_ctas (0: no cap), which bounds tp_nccl_ctas
    tp_max_ctas: int = 0
    # model.rope_fusion: false runs Megatron-core's unfused RoPE, its eager kernels and autograd backward (rope.py)
    rope_fusion: bool = True
    # whose hook that is: "apex" (DistributedFusedAdam) or "ddp" (Megatron-core's DDP) (derive.grad_hook)
    grad_hook: str = ""
    # parallel.expert_tensor: each expert's fc1 / fc2 split over this many ranks, the received rows all-gathered over
    # them (moe_mlp_block, _expert_tensor_collectives)
    expert_tensor: int = 1
    # model.fp4 = "nvfp4": the FP8 linears' GEMMs and casts in NVFP4 (TE's NVFP4BlockScaling; derive sets fp8, current
    # scaling and the transposes with it): KernelRates.gemm_fp4, NVFP4_BYTES an element
    fp4: bool = False

    @property
    def low_bytes(self) -> float:
        """Bytes an element of a low-precision linear's operand takes: FP8's 1, NVFP4's NVFP4_BYTES."""
        return NVFP4_BYTES if self.fp4 else 1.0

    # where the groups the kernels read sit, ((kind, placement.Group), ...), as the run's rank order places them
    # (derive.Setup.layout); the groups alone, not the run's degrees, so that layouts placing them alike share a key
    places: tuple[tuple[str, placement.Group], ...] = ()
    # model.fp8_amax_history: the entries of each amax's history the per-chunk update kernel rolls
    amax_history: int = AMAX_HISTORY
    # model.te_cast_transpose: the rate of TE's FP8 cast that writes its transpose, over the achievable HBM row's
    cast_transpose_share: float = 1.0

    def group(self, kind: str, domain: int) -> placement.Group:
        """Where this layout's groups of ``kind`` sit: as ``places`` has it, else (a layout built without a run) in
        the default order with one pipeline rank and as few data-parallel ranks as the amax and expert groups need."""
        for name, where in self.places:
            if name == kind:
                return where
        inner = self.tensor * self.context
        data = math.lcm(inner * max(1, self.amax_group // inner), self.expert * self.expert_tensor) // inner
        return placement.group(kind, placement.DEFAULT_ORDER, domain, self.tensor, self.context, data, 1, self.expert,
                               self.expert_tensor)  # fmt: skip

    def recomputes(self, module: str) -> bool:
        """Whether Megatron-core's selective recompute reruns ``module`` (recompute.MODULES)."""
        return module in recompute.selected(self.policy, self.modules)

    def reruns_core(self, eager: bool) -> bool:
        """Whether the checkpointed attention core reruns, as the runtime checkpoints it (recompute.core_attn_reruns)."""
        return recompute.core_attn_reruns(recompute.selected(self.policy, self.modules), eager, self.legacy)

    @property
    def wgrad_out(self) -> float:
        """Bytes per output value a wgrad GEMM moves.  Megatron-core's --gradient-accumulation-fusion (on by
        default, arguments.py @ 1e05700) has each wgrad GEMM accumulate (beta = 1) into the parameter's
        main_grad (TE v2.4 grouped_linear.py / linear.py: accumulate_wgrad_into_param_main_grad; Megatron's
        wgrad_gemm_accum_fp32): every value read and written in ``model.grads_dtype`` (fp32 by default, 16 bits
        with apex's bf16 buffer).  A runtime that adds the gradients in a pass of its own (``grad_accumulation``)
        writes 16 bits."""
        return self.act_bytes if self.legacy or self.grad_accumulation > 0 else 2 * self.grad_bytes

    @property
    def te_fp8(self) -> bool:
        """FP8 linears through Transformer Engine's per-tensor scaling (cuBLASLt; amaxes to reduce), whose
        casts and transposes are listed as TE's modules run them; DeepGEMM's runtime quantises its own way."""
        return self.fp8 and self.amax_group > 0

    @property
    def current_scaling(self) -> bool:
        """Transformer Engine's FP8 linears with current (per-tensor) scaling: each cast computes its scale from
        its own input's amax first (CURRENT_SCALING_KERNELS), and no amax history or per-chunk reduction."""
        return self.te_fp8 and self.fp8_current

    @property
    def norm_tokens(self) -> float:
        """Tokens a norm, residual add or dropout runs on: split by t with sequence parallelism."""
        return self.tokens / self.tensor if self.sequence_parallel else self.tokens

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one context-parallel rank (before the tensor split)."""
        return self.seq * self.micro_batch // self.context

    @property
    def deepep(self) -> bool:
        """DeepEP's kernels carry the expert all-to-all: Megatron-core's flex dispatcher, or DeepSeek's runtime."""
        return self.dispatcher == "deepep" or self.deepseek


def linear_pass(name: str) -> str:
    """The pass of a linear a GEMM row named ``name`` is: "dgrad" or "wgrad" for the backward's "<linear> dgrad" /
    "<linear> wgrad" (a note in brackets after it), else "fprop". By name, not by component: a forward rerun inside
    the input gradient (recompute) keeps its forward's name, and eager attention's "... (batched)" GEMMs are no
    linear's."""
    last = name.split(" (")[0].rsplit(" ", 1)[-1]
    return last if last in ("dgrad", "wgrad") and not name.endswith("(batched)") else "fprop"


class Table:
    """Builds one block's kernels on one GPU (a list, with helpers for each kind)."""

    def __init__(self, rates: KernelRates, lay: Layout, cfg: ModelConfig):
        self.r, self.lay, self.cfg = rates, lay, cfg
        self.rows: list[Kernel] = []
        # context parallelism: per ring attention (ring_attention), its component, pass and each step's compute
        # that the step's transfer overlaps; context_exchange reads them
        self.cp_steps: list[tuple[str, bool, list[float]]] = []
        # (SMs held, seconds left) of the NCCL collective the GEMMs now launched run beside (nccl_beside)
        self._beside: tuple[int, float] | None = None
        # rows of a block's forward run again in its input gradient under its forward's names (full recompute, a
        # checkpointed MoE layer): not the backward's own kernels (own_rows)
        self.reruns: list[range] = []
        # the forward now built is a checkpoint's first, run under torch.no_grad (forward_passes)
        self.checkpointed = False

    @property
    def grad_off(self) -> bool:
        """Whether the forward now built runs with autograd off, as Transformer Engine's modules see it: an
        evaluation's (Layout.evaluation) or a checkpoint's first forward (forward_passes)."""
        return self.lay.evaluation or self.checkpointed

    def forward_passes(self, comps: tuple[str, ...]) -> Iterator[str]:
        """A block's forward components in turn: its forward and, checkpointed (two components), its rerun in the
        input gradient.  The checkpoint runs its first forward under ``torch.no_grad()`` (Megatron-core
        CheckpointFunction.forward, random.py @ 1e05700 lines 414-422; TE's te_checkpoint, distributed.py
        ``_CheckpointFunction.forward`` at release_v1.6 / v1.14 / v2.8), so it is built with autograd off
        (grad_off); the rerun under ``torch.enable_grad()`` as the forward without recomputation."""
        for comp in comps:
            self.checkpointed = len(comps) > 1 and comp == comps[0]
            yield comp  # the last component is never a first forward: the flag ends False

    def rerun_since(self, start: int) -> None:
        """The rows from ``start`` on are a block's forward rerun inside its input gradient."""
        self.reruns.append(range(start, len(self.rows)))

    def own_rows(self) -> list[Kernel]:
        """The rows less the forwards rerun in an input gradient (rerun_since)."""
        rerun = {i for r in self.reruns for i in r}
        return [k for i, k in enumerate(self.rows) if i not in rerun]

    def group(self, kind: str) -> placement.Group:
        """Where the layout's groups of ``kind`` sit in the rates' NVLink domains (placement.group)."""
        return self.lay.group(kind, self.r.nvlink_domain)

    # -- one kernel of each kind -----------------------------------------------------------------
    def gemm(self, name: str, comp: str, m: int, n: int, k: int, fp8: bool | None = None, groups: int = 1,
             splits: int = 1, sm_margin: int = 0, out_bytes: float = 2.0) -> float:  # fmt: skip
        """One GEMM; ``splits``: run as that many GEMMs of m / splits rows (a pipelined overlap);
        ``sm_margin``: SMs left to a communication kernel running beside it; ``out_bytes``: per output
        value moved (8: an fp32 gradient accumulated in place, read and written)."""
        low = self.lay.fp8 if fp8 is None else fp8
        grad = linear_pass(name)
        t = self._gemm_time(self.r, m, n, k, low, groups, splits, sm_margin, out_bytes, grad)
        sms = self.r.sms - sm_margin
        shape = (f"{groups} x " if groups > 1 else "") + f"{m} x {n} x {k}" + (
            (" fp4" if self.lay.fp4 else " fp8") if low else " bf16")
        if splits > 1 or sm_margin:
            shape += f" ({splits} splits, {sms} SMs)" if splits > 1 else f" ({sms} SMs)"
        secs = t.seconds * splits
        if self._beside is not None and self._beside[1] > 0:  # an NCCL collective's CTAs hold SMs meanwhile
            ctas, left = self._beside
            held = self._gemm_time(self.r.held(ctas), m, n, k, low, groups, splits, sm_margin, out_bytes, grad).seconds
            secs = beside_transfer(secs, held * splits, left)
            self._beside = (ctas, max(0.0, left - secs))
            shape += f" (beside NCCL, {ctas} SMs held for {left * 1e6:.0f} us)"
        self.rows.append(Kernel(name, comp, "gemm", shape, t.flops * splits, t.bytes * splits, secs, t.bound))
        return secs

    def _gemm_time(self, r: KernelRates, m: int, n: int, k: int, low: bool, groups: int, splits: int, sm_margin: int,
                   out_bytes: float, grad: str) -> gemm.GemmTime:  # fmt: skip
        """One GEMM (of ``splits``) on rates ``r``: told ``sm_margin``, not told ``r.held_sms`` (rates.held); ``grad``
        the linear's pass (linear_pass)."""
        rates = r.gemm_fp8 if low and r.gemm_fp8 is not None else r.gemm_bf16
        if low and self.lay.fp4:  # derive refuses model.fp4 on a GPU without gemm_fp4
            rates = r.gemm_fp4
        sms = r.sms - sm_margin
        rates = replace(rates, peak=rates.peak * sms / r.sms)
        return gemm.time(-(-m // splits), n, k, rates, sms, r.hbm, self.lay.low_bytes if low else 2.0, groups, out_bytes,
                         r.held_sms, r.gemm_schedule, grad)  # fmt: skip

    @contextmanager
    def nccl_beside(self, name: str, comp: str, op: str, nbytes: float) -> Iterator[None]:
        """A tensor-parallel NCCL collective launched (async_op) before the GEMMs of the ``with`` block and waited
        for after them, no userbuffers: while it runs those GEMMs, tiled for the whole GPU, run on the SMs its CTAs
        leave (KernelRates.held(tp_nccl_ctas), as beside a data-parallel collective), then on all (beside_transfer);
        the collective is exposed only for what it takes beyond them."""
        t = self.lay.tensor
        ctas = tp_nccl_ctas(self.r, t, op, nbytes)
        if self.lay.tp_max_ctas:  # NCCL clamps the communicator's channels, NVLS's too, to config.maxCTAs
            ctas = min(ctas, self.lay.tp_max_ctas)
        full = collectives.time(op, nbytes, t, self.r, "nvlink") if t > 1 and nbytes > 0 else 0.0
        start, outer = len(self.rows), self._beside
        self._beside = (ctas, full) if ctas and full > 0 else None
        try:
            yield
        finally:
            self._beside = outer
        under = sum(row.seconds for row in self.rows[start:] if row.kind == "gemm")
        self.comm(name, comp, op, nbytes, t, "nvlink", under)

    def experts(self, name: str, comp: str, m: int, n: int, k: int, groups: int, out_bytes: float = 2.0) -> float:
        """One GEMM of every local expert.  With ``expert_streams`` s, the runtime launches them one by
        one on s streams: ceil(groups / s) rounds, each round's s GEMMs sharing the SMs as one kernel of
        their tiles would (its own waves, its own floor); s = 1 is Megatron's SequentialMLP, a Python loop
        over the experts.  With 0, one grouped kernel of all groups."""
        s = self.lay.expert_streams
        if s <= 0 or groups <= s:
            return self.gemm(name, comp, m, n, k, groups=groups, out_bytes=out_bytes)
        full, rest = divmod(groups, s)
        rows = len(self.rows)
        secs = full * self.gemm(name, comp, m, n, k, groups=s, out_bytes=out_bytes)
        if rest:
            secs += self.gemm(name, comp, m, n, k, groups=rest, out_bytes=out_bytes)
        parts = self.rows[rows:]
        del self.rows[rows:]
        how = f"{s} streams: {-(-groups // s)} rounds" if s > 1 else f"one at a time: {groups} GEMMs"
        shape = f"{groups} x {m} x {n} x {k} {parts[0].shape.split()[-1]} ({how})"
        self.rows.append(Kernel(name, comp, "gemm", shape, 2.0 * m * n * k * groups,
                                full * parts[0].bytes + (parts[1].bytes if rest else 0.0), secs, parts[0].bound))  # fmt: skip
        return secs

    def tp_linear(self, name: str, comp: str, m: int, n: int, k: int, op: str, nbytes: float, method: str,
                  fp8: bool | None = None, ub: str = "", out_bytes: float = 2.0, overlap: bool = True) -> float:  # fmt: skip
        """A sequence-parallel linear and its all-gather (before) or reduce-scatter (after).

        Without tp_comm_overlap the collective runs alone, before or after its GEMM.  With it,
        Transformer Engine's userbuffers (its defaults, transformer_engine/pytorch/module/base.py)
        split the GEMM: ``ring`` (all-gathers; proj/fc2 dgrad) in t chunks, exchanged by the copy
        engines, the first chunk's transfer exposed; ``pipeline`` (forward reduce-scatters) in 4
        chunks on 132 - 16 SMs, the last chunk's transfer exposed; ``bulk`` (the backward's re-gather
        and reduce-scatter) beside the whole GEMM on 16 fewer SMs.  ``ub``: the overlap's name in
        Transformer Engine, whose SMs a scenario may give (``Layout.ub_sm``); an FP8 pipeline overlap
        named in ``ub_atomic`` runs its GEMM as one atomic GEMM whose finished chunks the reduce-scatter
        follows (TE comm_gemm_overlap.h ``atomic_gemm_overlap_rs``): one kernel, the last chunk exposed.
        ``overlap`` False: a linear no userbuffers serve (Megatron's own ColumnParallelLinear).  With autograd
        off (``grad_off``: an evaluation, a checkpoint's first forward) TE turns its all-gather overlap off:
        ``ub_split_ag = False`` when not ``is_grad_enabled`` (layernorm_linear.py / layernorm_mlp.py at
        release_v0.8, 09ba842, v1.6rc1, 08a85d3; ``ub_overlap_ag_fprop and is_grad_enabled`` at release_v2.8); its
        reduce-scatter overlaps stay."""
        t = self.lay.tensor
        if t <= 1 or (not self.lay.sequence_parallel and op == "all_gather"):
            return self.gemm(name, comp, m, n, k, fp8, out_bytes=out_bytes)  # without SP the input is whole
        if not self.lay.sequence_parallel:  # the output's partial sums are all-reduced, after the GEMM
            secs = self.gemm(name, comp, m, n, k, fp8, out_bytes=out_bytes)
            self.comm("tp all-reduce", comp, "all_reduce", nbytes, t, "nvlink")
            return secs
        full = collectives.time(op, nbytes, t, self.r, "nvlink")
        if not (self.lay.tp_overlap and overlap) or (self.grad_off and op == "all_gather"):
            secs = self.gemm(name, comp, m, n, k, fp8, out_bytes=out_bytes)
            self.comm(f"tp {op.replace('_', '-')}", comp, op, nbytes, t, "nvlink")
            return secs
        if method == "pipeline" and ub in self.lay.ub_ring_rs:
            return self._ring_reduce_scatter(name, comp, m, n, k, nbytes, fp8, ub, out_bytes)
        splits = {"ring": t, "pipeline": UB_PIPELINE_SPLITS, "bulk": 1}[method]
        margin = 0 if method == "ring" else self.lay.ub_sm(ub)
        low = self.lay.fp8 if fp8 is None else fp8
        atomic = method == "pipeline" and low and ub in self.lay.ub_atomic
        first = 0.0 if method == "bulk" else full / splits  # the chunk no GEMM runs beside
        if margin and ub in self.lay.ub_not_told:
            secs = self._gemm_not_told(name, comp, m, n, k, fp8, 1 if atomic else splits, margin, full - first, out_bytes)
        else:
            secs = self.gemm(name, comp, m, n, k, fp8, splits=1 if atomic else splits, sm_margin=margin,
                             out_bytes=out_bytes)
        exposed = first + max(0.0, full - first - secs)
        self.comm(f"tp {op.replace('_', '-')} ({method} overlap)", comp, op, nbytes, t, "nvlink", full - exposed)
        return secs

    def _ring_reduce_scatter(self, name: str, comp: str, m: int, n: int, k: int, nbytes: float, fp8: bool | None,
                             ub: str, out_bytes: float) -> float:  # fmt: skip
        """A forward reduce-scatter run as a ring exchange (TE release_v1.14 3b2a7b0 comm_gemm_overlap.cpp
        ``CommOverlapP2PBase::split_overlap_rs``): t GEMMs of m / t rows, each rank's partial sums of one destination's
        chunk; after piece i the previous piece's chunk is sent (t - 1 sends, none before the first piece ends, the
        last beside the last piece, which is the rank's own chunk); then on the main stream ``reduce_bf16``
        (userbuffers.cu) sums the t chunks it holds: per output value t 16-bit reads and one 16-bit write."""
        t = self.lay.tensor
        margin = self.lay.ub_sm(ub)  # the yaml's num_sm when its set_sm_margin tells the GEMM
        full = collectives.time("reduce_scatter", nbytes, t, self.r, "nvlink")  # the t - 1 sends of nbytes / t
        told = ub not in self.lay.ub_not_told  # the yaml's set_sm_margin: 1
        if margin and not told:
            secs = self._gemm_not_told(name, comp, m, n, k, fp8, t, margin, full, out_bytes)
        else:
            secs = self.gemm(name, comp, m, n, k, fp8, splits=t, sm_margin=margin, out_bytes=out_bytes)
        beside = secs * (t - 1) / t  # the pieces after the first, which the sends run beside
        exposed = max(0.0, full - beside)
        self.comm("tp reduce-scatter (ring-exchange overlap)", comp, "reduce_scatter", nbytes, t, "nvlink",
                  full - exposed)
        chunk = -(-m // t) * n  # output values of one rank's chunk (the rs_output)
        self.memory(f"{name} ring reduce (reduce_bf16)", comp, (t + 1) * chunk * 2.0)
        return secs

    def _gemm_not_told(self, name: str, comp: str, m: int, n: int, k: int, fp8: bool | None, splits: int, held: int,
                       beside: float, out_bytes: float) -> float:  # fmt: skip
        """A userbuffers GEMM launched with set_sm_margin 0: tiled for the whole GPU while its communication kernel
        holds ``held`` SMs for ``beside`` seconds.  On held rates (KernelRates.held) only while that kernel runs:
        a persistent grid's blocks that found no SM start when it ends, so at most ``beside`` + the time alone."""
        rows = len(self.rows)
        alone = self.gemm(name, comp, m, n, k, fp8, splits=splits, out_bytes=out_bytes)
        rates, self.r = self.r, self.r.held(held)
        try:
            on_held = self.gemm(name, comp, m, n, k, fp8, splits=splits, out_bytes=out_bytes)
        finally:
            self.r = rates
        row = self.rows[-1]
        del self.rows[rows:]
        secs = min(on_held, beside + alone)
        shape = f"{row.shape} (beside ub, {held} SM{'s' if held != 1 else ''} held, not told)"
        self.rows.append(Kernel(name, comp, "gemm", shape, row.flops, row.bytes, secs, row.bound))
        return secs

    def attention(self, name: str, comp: str, flops: float, backward: bool, chunk: int = 0, layer: int = -1) -> float:
        """A flash attention pass; ``chunk``: each query sees the keys of its own chunk of that many tokens only,
        timed at the rate measured for a sequence of the chunk's length (docs/model.md "Llama 4"); ``layer``: the
        layer whose attention it is, for its sliding window (-1: none)."""
        if self.lay.context > 1:  # Transformer Engine's ring, step by step
            return ring_attention(self, name, comp, flops, backward)
        keys = chunk or self.lay.seq // self.lay.context
        window = self.cfg.window(layer) if layer >= 0 else 0
        if window:  # the causal call whose queries average as many keys (docs/model.md, "gpt-oss")
            keys = 2 * causal_keys(self.cfg, layer, keys)
        rate = self.r.attention_rate(keys, backward)
        body = flops / rate
        bound = "latency" if self.r.floor > body else "compute"
        secs = self.r.floor + body
        kv = f"{chunk} kv chunks" if chunk else f"{self.lay.seq} kv" + (f" (window {window})" if window else "")
        shape = f"{self.lay.tokens // self.lay.micro_batch} q x {kv} x {self.cfg.num_heads // self.lay.tensor} heads"
        self.rows.append(Kernel(name, comp, "attention", shape, flops, 0.0, secs, bound))
        return secs

    def memory(self, name: str, comp: str, nbytes: float, launches: int = 1, note: str = "",
               share: float = 1.0) -> float:  # fmt: skip
        """A memory-bound kernel (``launches`` > 1: the same bytes split over that many kernels; ``note``: why it
        runs, added to the shape text; ``share``: its rate over the achievable HBM row's, for a kernel measured apart)."""
        body = nbytes / (self.r.hbm * share)
        secs = launches * self.r.floor + body
        shape = f"{nbytes / 1e6:.3g} MB" + (f" ({launches} kernels)" if launches > 1 else "")
        shape += f"; {note}" if note else ""
        self.rows.append(Kernel(name, comp, "memory", shape, 0.0, nbytes, secs,
                                "latency" if launches * self.r.floor > body else "memory"))  # fmt: skip
        return secs

    def comm(self, name: str, comp: str, op: str, nbytes: float, group: int, link: str, hidden_under: float = 0.0) -> float:
        """A collective of ``nbytes`` (the whole gathered / reduced tensor) over ``group`` ranks;
        the part longer than ``hidden_under`` seconds of compute it overlaps is exposed."""
        if group <= 1 or nbytes <= 0:
            return 0.0
        full = collectives.time(op, nbytes, group, self.r, link)
        exposed = max(0.0, full - hidden_under)
        self.rows.append(Kernel(name, comp, "comm", f"{op} {nbytes / 1e6:.3g} MB over {group} ({link})", 0.0,
                                nbytes, exposed, "communication"))  # fmt: skip
        return exposed

    def host_share(self, name: str, comp: str, segments: list[list[host.Step]]) -> None:
        """The host's share of a pass: stretches from a sync to the next long kernel (host.segments), beyond their
        own GPU time; nothing without a per-call host time (``host_op``)."""
        if self.lay.host_op <= 0 or not segments:
            return
        secs, calls, syncs = host.segments(segments, self.lay.host_op)
        self.rows.append(Kernel(name, comp, "host", f"{calls} calls x {self.lay.host_op * 1e6:.3g} us, {syncs} syncs",
                                0.0, 0.0, secs, "host"))  # fmt: skip

    def cast(self, name: str, comp: str, elems: float, groups: int = 1) -> None:
        """FP8 cast + transpose of one bf16 tensor in one kernel (Transformer Engine's cast_transpose: read 2 B,
        write 1 B twice; without transposes, write once; NVFP4: NVFP4_BYTES a copy); with current scaling its amax
        pass first (``groups``: tensors quantized one by one, as GroupedLinear's experts)."""
        if self.lay.fp8:
            self.memory(name, comp, (2.0 + self.fp8_writes) * elems, share=self.cast_transpose_share)
            self.amax(name.removesuffix(" cast"), comp, elems, groups)

    @property
    def cast_transpose_share(self) -> float:
        """An FP8 cast's rate over the HBM row's: model.te_cast_transpose's where it writes the transpose (TE's
        cast_transpose kernel), else 1 (a cast alone streams)."""
        return self.lay.cast_transpose_share if self.fp8_copies == 2.0 else 1.0

    @property
    def fp8_copies(self) -> float:
        """Copies an FP8 cast writes: the row-wise data and, where TE makes transposes, the column-wise (transposed)
        copy in the same kernel; with autograd off none (09ba842 ``cast_to_fp8`` where training calls
        ``fp8_cast_transpose_fused``; release_v2.8 ``columnwise_usage = is_grad_enabled and ...``)."""
        return 2.0 if self.lay.fp8_transpose and not self.grad_off else 1.0

    @property
    def fp8_writes(self) -> float:
        """Bytes an FP8 cast writes per element: its copies at 1 byte (NVFP4: NVFP4_BYTES, Layout.low_bytes)."""
        return self.fp8_copies * self.lay.low_bytes

    def amax(self, name: str, comp: str, elems: float, groups: int = 1, reduce: bool = False) -> None:
        """Current scaling's amax of a 16-bit tensor before its cast: zero the amax, read the tensor once,
        compute the scale (CURRENT_SCALING_KERNELS per tensor); ``reduce``: the amax is all-reduced over the
        tensor-parallel group first (tp_amax_all_reduce)."""
        if not self.lay.current_scaling:
            return
        self.memory(f"{name} amax", comp, elems * self.lay.act_bytes,
                    CURRENT_SCALING_KERNELS * groups)  # fmt: skip
        if reduce:
            self.tp_amax_all_reduce(comp)

    def cast_after_amax(self, name: str, comp: str, elems: float, reduce: bool = False,
                        transposed: bool = False) -> None:  # fmt: skip
        """Current scaling where a norm or activation computed the amax as it wrote its 16-bit output: zero
        the amax (before it), the scale kernel and the cast (read 2 B, write 1 B) as kernels of their own;
        ``transposed``: the quantizer asks for column-wise data too, which the same cast kernel writes
        (cast_transpose; nothing more without transposes)."""
        if not self.lay.current_scaling:
            return
        writes = self.fp8_writes if transposed else self.lay.low_bytes
        self.memory(name, comp, elems * (self.lay.act_bytes + writes), CURRENT_SCALING_KERNELS)
        if reduce:
            self.tp_amax_all_reduce(comp)

    def tp_amax_all_reduce(self, comp: str) -> None:
        """With sequence parallelism a column-parallel linear's input and a row-parallel linear's output gradient
        are cast before their all-gather, so their amax is all-reduced (max) over the tensor-parallel group first
        and waited for (TE release_v2.8 ``_customize_quantizers_float8_current_scaling``: ``with_amax_reduction``,
        ``amax_reduction_group = tp_group``; quantizer.cpp: ``allreduce(...)->wait()``): 4 bytes, all latency."""
        t = self.lay.tensor
        if t <= 1 or not self.lay.sequence_parallel:
            return
        tp = self.group("tp")
        self.rows.append(Kernel("fp8 amax all-reduce (tp)", comp, "comm", f"all_reduce 4 B over {t} ({tp.link})", 0.0,
                                4.0, collectives.small_all_reduce(t, tp.per_node, self.r.nccl), "latency"))  # fmt: skip

    def grad_bias_sum(self, name: str, comp: str, elems: float, note: str = "") -> None:
        """Current scaling has no fused bias-gradient + cast kernel (TE release_v2.8 csrc/extensions/bias.cpp
        ``bgrad_quantize``: fused only for delayed scaling and MXFP8), so the bias gradient is a sum of its own
        over the 16-bit gradient (read once) before the cast."""
        if self.lay.current_scaling:
            self.memory(f"{name} bias sum (unfused)", comp, elems * self.lay.act_bytes, note=note)

    def transpose(self, name: str, comp: str, elems: float) -> None:
        """Transformer Engine's ``fp8_transpose`` of an FP8 tensor a wgrad GEMM needs: read 1 B, write 1 B
        (NVFP4: NVFP4_BYTES each; none where TE makes no transposes)."""
        if self.lay.te_fp8 and self.lay.fp8_transpose:
            self.memory(name, comp, 2.0 * self.lay.low_bytes * elems)

    def norm_output_fused_transpose(self) -> bool:
        """Whether a LayerNormLinear / LayerNormMLP input cast writes the wgrad's transpose itself: with current
        scaling and no sequence-parallel gather of it, TE release_v2.8 asks the quantizer for row- and column-wise
        data (``set_usage(rowwise=True, columnwise=backward_needs_input)``) and quantize_with_amax's cast writes
        both; gathered, it is cast row-wise, re-gathered in the backward and transposed there (``update_usage``).
        Delayed scaling's norm writes FP8 itself and transposes apart (ln_api.cpp ``nvte_transpose``)."""
        lay = self.lay
        return lay.current_scaling and not (lay.sequence_parallel and lay.tensor > 1) and not self.grad_off

    def output_grad_cast(self, prefix: str, comp: str, wcomp: str, bias: bool | None = None) -> None:
        """The output gradient of a row-parallel linear (out_proj, fc2) made FP8 for its dgrad and wgrad
        GEMMs.  Transformer Engine (``grad_output_preprocess`` in module/base.py, release_v0.8 to v1.6): with
        sequence parallelism the gradient is all-gathered in FP8, so the bias gradient is a separate sum
        over this rank's rows, the cast is of those rows, and the gathered tensor is transposed apart for
        the wgrad GEMM; otherwise one fused cast + transpose + bias-gradient kernel of the whole tensor.
        ``bias``: whether the linear has a bias (default: the model's biases, ModelConfig.bias)."""
        lay, h, ab = self.lay, self.cfg.hidden_size, self.lay.act_bytes
        bias = self.cfg.bias if bias is None else bias
        if not (lay.te_fp8 and lay.sequence_parallel and lay.tensor > 1):
            if bias:
                self.grad_bias_sum(f"{prefix}grad", comp, lay.tokens * h)
            self.cast(f"{prefix}grad cast", comp, lay.tokens * h)
            return
        if bias:
            self.memory(f"{prefix}bias gradient", comp, lay.norm_tokens * h * ab)
        self.amax(f"{prefix}grad", comp, lay.norm_tokens * h, reduce=True)
        self.memory(f"{prefix}grad cast", comp, lay.norm_tokens * h * (ab + lay.low_bytes))
        self.transpose(f"{prefix}grad transpose (wgrad)", wcomp, lay.tokens * h)


# -- the blocks -------------------------------------------------------------------------------------
def _attention_shapes(cfg: ModelConfig, t: int) -> list[tuple[str, int, int, bool]]:
    """(name, out features per rank, in features, split by t) of the attention input projections."""
    h, a, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim
    if cfg.mla:
        nope = d - cfg.qk_rope_head_dim
        rows = []
        if cfg.q_lora_rank:
            rows += [("q_down", cfg.q_lora_rank, h, False), ("q_up", a * d // t, cfg.q_lora_rank, True)]
        else:
            rows += [("q_proj", a * d // t, h, True)]
        rows += [("kv_down", cfg.kv_lora_rank + cfg.qk_rope_head_dim, h, False),
                 ("kv_up", a * (nope + cfg.v_head_dim) // t, cfg.kv_lora_rank, True)]  # fmt: skip
        return rows
    return [("qkv", (a * d + 2 * kv * d) // t, h, True)]


def _qk_heads(cfg: ModelConfig, t: int) -> int:
    """Query plus key heads on one tensor-parallel rank (a key head shared by several ranks is on each)."""
    return cfg.num_heads // t + max(1, cfg.num_kv_heads // t)


def attention_block(tb: Table, recompute: bool, i: int) -> None:
    """Layer ``i``'s attention (``i`` picks its kind: Llama 4's chunked or full attention, rope and q / k L2 norms
    or the NoPE layers' temperature scaling; gpt-oss's sliding window or full attention)."""
    cfg, lay = tb.cfg, tb.lay
    h, t, n, ab = cfg.hidden_size, lay.tensor, lay.tokens, lay.act_bytes
    a_t = cfg.num_heads // t
    low = lay.low_bytes if lay.fp8 else ab
    projections = _attention_shapes(cfg, t)
    eager = cfg.eager_attention  # scores materialised (Megatron's fused softmax), as activations.py counts
    keys = flops.attention_keys(cfg, i, lay.seq)
    # a sequence longer than Llama 4's chunk: chunk by chunk
    chunk = cfg.attention_chunk if cfg.chunked(i) and keys < lay.seq else 0
    if cfg.window(i):  # gpt-oss's causal band: each query's window of keys (flops.causal_keys)
        core = 2.0 * n * causal_keys(cfg, i, lay.seq) * a_t * (cfg.qk_head_dim + cfg.v_head_dim)
    else:
        core = 2.0 * n * keys * a_t * (cfg.qk_head_dim + cfg.v_head_dim) * 0.5  # causal: half the square
    nope = i in cfg.nope_layers
    qk_norm = cfg.qk_norm or (cfg.qk_l2_norm and not nope)  # Qwen3's RMSNorms, Llama 4's L2 norms (no weights)
    rope = not cfg.max_positions and not nope  # learned positions (GPT-2) or a NoPE layer: no rotary embedding
    temperature = cfg.attn_temperature and nope  # q x a per-position factor: one elementwise pass over q
    comps = ("attn_forward",) + (("attn_backward_input",) if recompute else ())
    # current scaling: TE's norm writes 16 bits with the amax (FUSED_NORM_AMAX_FP8), then a cast of its own
    norm_out = ab if lay.current_scaling else low
    up_rows: list[Kernel] = []  # MLA's qkv_up_proj_and_rope_apply as the forward ran it (mla_up_proj reruns it)
    for comp in tb.forward_passes(comps):  # forward, and again inside the input gradient when recomputed
        start = len(tb.rows)
        tb.memory("input norm", comp, lay.norm_tokens * h * (ab + norm_out))
        name, out, inp, _ = projections[0]
        tb.cast_after_amax(f"{name} input cast", comp, lay.norm_tokens * h, reduce=True,
                           transposed=tb.norm_output_fused_transpose())  # fmt: skip
        mark = len(tb.rows)
        tb.tp_linear(name, comp, n, out, inp, "all_gather", n * h * low, "ring")
        if cfg.mla and name == "q_proj" and comp == comps[0]:  # without a q latent, q_proj is in the function
            up_rows += tb.rows[mark:]
        for name, out, inp, _ in projections[1:]:
            if cfg.mla and name.endswith("_up"):
                tb.memory(f"{name[:-3]} latent norm", comp, n * inp * 2 * ab)
            tb.gemm(name, comp, n, out, inp)
            if name.endswith("_up") and comp == comps[0]:
                up_rows.append(tb.rows[-1])
        if qk_norm:  # Qwen3 (--qk-layernorm): a TE RMSNorm over each head's q and one over k, read + write
            tb.memory("q / k norms", comp, n * _qk_heads(cfg, t) * cfg.qk_head_dim * 2 * ab, launches=2)
        if rope and not lay.rope_fusion:
            _unfused_rope(tb, comp, backward=False)
        elif rope:
            tb.memory("rope", comp, n * a_t * cfg.qk_rope_head_dim * 2 * ab * 2 if cfg.mla
                      else n * (a_t + max(1, cfg.num_kv_heads // t)) * cfg.qk_head_dim * 2 * ab)  # fmt: skip
            if cfg.mla and comp == comps[0]:
                up_rows.append(tb.rows[-1])
        if temperature:
            tb.memory("attention temperature (q scale)", comp, n * a_t * cfg.qk_head_dim * 2 * ab)
        if eager:
            _eager_attention(tb, comp, backward=False)
        else:
            _qkv_prepare(tb, comp, "qkv prepare for flash-attn (fa_prepare_fwd)")
            tb.attention("flash attention", comp, core, backward=False, chunk=chunk, layer=i)
        tb.cast("out_proj input cast", comp, n * a_t * cfg.v_head_dim)  # an amax pass first with current scaling
        tb.tp_linear("out_proj", comp, n, h, a_t * cfg.v_head_dim, "reduce_scatter", n * h * ab, "pipeline",
                     ub="proj_fprop")
        tb.memory("residual add", comp, 3 * lay.norm_tokens * h * ab)
    if recompute:
        tb.rerun_since(start)
    comp, wcomp = "attn_backward_input", "attn_backward_weight"
    tb.output_grad_cast("", comp, wcomp, bias=bool(params.out_bias(cfg)))
    tb.tp_linear("out_proj dgrad", comp, n, a_t * cfg.v_head_dim, h, "all_gather", n * h * ab, "ring")
    if lay.recomputes("mla_up_proj") and cfg.mla:  # its hook on the core attention's output gradient
        _rerun(tb, up_rows, comp)
        # copy_ of query, key and value back into their freed storage: read + write each
        tb.memory("q, k, v (recompute copy)", comp, 2 * n * a_t * (2 * cfg.qk_head_dim + cfg.v_head_dim) * ab)
    if lay.reruns_core(eager):
        start = len(tb.rows)
        if eager:  # Korthikanti et al.: the attention core is recomputed
            _eager_attention(tb, comp, backward=False)
        else:  # Megatron-core's checkpointed core attention: the flash forward again (recompute.py)
            _qkv_prepare(tb, comp, "qkv prepare for flash-attn (fa_prepare_fwd) (recompute)")
            tb.attention("flash attention (recompute)", comp, core, backward=False, chunk=chunk, layer=i)
        tb.rerun_since(start)  # a forward rerun, not the backward's own rows (a context-parallel ring's steps too)
    if eager:
        _eager_attention(tb, comp, backward=True)
    else:
        tb.attention("flash attention backward", comp, 2.5 * core, backward=True, chunk=chunk, layer=i)
        _qkv_prepare(tb, comp, "dqkv interleave (fa_prepare_bwd)")
    if temperature:  # the gradient of q scaled by the same factor
        tb.memory("attention temperature backward", comp, n * a_t * cfg.qk_head_dim * 2 * ab)
    if rope and not lay.rope_fusion:
        _unfused_rope(tb, comp, backward=True)
    elif rope:  # Megatron-core applies RoPE to q and to k apart, so each has a backward (docs/model.md host table)
        tb.memory("rope backward", comp, n * a_t * cfg.qk_head_dim * 2 * ab if cfg.mla
                  else n * (a_t + max(1, cfg.num_kv_heads // t)) * cfg.qk_head_dim * 2 * ab)  # fmt: skip
    if qk_norm:  # the norms' backward reads their input and output gradient, writes the input gradient
        tb.memory("q / k norms backward", comp, n * _qk_heads(cfg, t) * cfg.qk_head_dim * 3 * ab, launches=2)
    for name, out, inp, _ in projections:
        if cfg.bias or cfg.qkv_bias:
            tb.grad_bias_sum(f"{name} grad", comp, n * out)
        tb.cast(f"{name} grad cast", comp, n * out)
    _input_projection_grads(tb, comp, wcomp, [(name, n, inp, out) for name, out, inp, _ in projections], "qkv")
    # TE's LayerNormLinear keeps the (gathered) FP8 norm output and transposes it for its wgrad GEMM, unless its
    # input cast wrote the transpose already
    if not tb.norm_output_fused_transpose():
        tb.transpose(f"{projections[0][0]} input transpose (wgrad)", wcomp, n * h)
    tb.memory("input norm backward", comp, 4 * lay.norm_tokens * h * ab)
    tb.gemm("out_proj wgrad", wcomp, a_t * cfg.v_head_dim, h, n, out_bytes=lay.wgrad_out)


def _unfused_rope(tb: Table, comp: str, backward: bool) -> None:
    """Megatron-core's apply_rotary_pos_emb_bshd on q, then on k, without the fused kernel (model.rope_fusion =
    false): its eager kernels, or their autograd backward (rope.py); cos and sin of the fp32 freqs each forward."""
    cfg, lay = tb.cfg, tb.lay
    d, s = cfg.qk_head_dim, lay.seq // lay.context
    rot = int(d * cfg.rotary_fraction)  # RotaryEmbedding's dim: kv_channels x rotary_percent
    for name, heads in (("q", cfg.num_heads // lay.tensor), ("k", max(1, cfg.num_kv_heads // lay.tensor))):
        elems = lay.tokens * heads * d
        run = (rope.backward if backward else rope.forward)(elems, lay.tokens * heads * rot, s * rot, lay.act_bytes)
        label = "rope backward (unfused, autograd)" if backward else "rope (unfused: mul, neg, cat, mul, add, cat)"
        tb.memory(f"{label} {name}", comp, run.nbytes, launches=run.launches)
        if run.freq_launches:
            tb.memory(f"rope cos / sin of the freqs {name}", comp, run.freq_bytes, launches=run.freq_launches)


def _qkv_prepare(tb: Table, comp: str, name: str) -> None:
    """Transformer Engine's copy between the QKV GEMM's interleaved output [s, b, heads, 3 x d] and the three
    contiguous [b, s, heads, d] tensors Dao's flash-attn takes (``_PrepareQKVForFA``: ``tex.fa_prepare_fwd``
    forward, ``fa_prepare_bwd`` backward; TE release_v0.8 transformer.py, 09ba842 attention.py): q, k and v each
    read and written once in 16 bits."""
    if tb.lay.qkv_prepare:
        cfg, lay = tb.cfg, tb.lay
        tb.memory(name, comp, 2 * 3 * lay.tokens * (cfg.num_heads // lay.tensor) * cfg.qk_head_dim * lay.act_bytes)


def _eager_attention(tb: Table, comp: str, backward: bool) -> None:
    """Attention with the s x s scores in memory (the whole square, as Megatron's masked softmax
    computes it): batched GEMMs for QK^T and attention over V, memory-bound scale-mask-softmax
    and dropout (2-byte elements, 1-byte mask).  The backward runs two GEMMs for each."""
    cfg, lay = tb.cfg, tb.lay
    s, d, ab = lay.seq // lay.context, cfg.qk_head_dim, lay.act_bytes
    heads = lay.micro_batch * cfg.num_heads // lay.tensor
    square = heads * s * s
    if not backward:
        if lay.alibi:  # Megatron-DeepSpeed: baddbmm(alibi, q, k^T, beta=1): the biases copied into the output
            tb.memory("alibi bias into the scores (baddbmm input)", comp, square * 2 * ab)  # and read by the GEMM
        tb.gemm("attention scores QK^T (batched)", comp, s, s, d, fp8=False, groups=heads)
        tb.memory("scale + mask + softmax", comp, square * 2 * ab)
        if cfg.dropout:
            tb.memory("attention dropout", comp, square * (2 * ab + 1))
        tb.gemm("attention over V (batched)", comp, s, d, s, fp8=False, groups=heads)
        return
    tb.gemm("attention over V dgrad (batched)", comp, s, s, d, fp8=False, groups=heads)
    tb.gemm("attention over V wgrad: dV (batched)", comp, s, d, s, fp8=False, groups=heads)
    if cfg.dropout:
        tb.memory("attention dropout backward", comp, square * (2 * ab + 1))
    tb.memory("softmax backward", comp, square * 3 * ab)
    tb.gemm("scores dgrad: dQ (batched)", comp, s, d, s, fp8=False, groups=heads)
    tb.gemm("scores dgrad: dK (batched)", comp, s, d, s, fp8=False, groups=heads)


def _input_projection_grads(tb: Table, comp: str, wcomp: str, shapes: list[tuple[str, int, int, int]],
                            ub: str) -> None:  # fmt: skip
    """dgrad and wgrad of a block's input projections (name, tokens, in, out).  With tp_comm_overlap
    the re-gather of the block's input (for the wgrad GEMMs) runs beside the dgrad GEMMs and the
    input gradient's reduce-scatter beside the wgrad GEMMs, as Transformer Engine's "bulk" overlaps on
    16 SMs do; without, NCCL runs them beside the same GEMMs (Table.nccl_beside).  Without sequence parallelism:
    tp_grad_all_reduce."""
    lay, h = tb.lay, tb.cfg.hidden_size
    n = lay.tokens
    low = lay.low_bytes if lay.fp8 else lay.act_bytes
    (name, m, inp, out), rest = shapes[0], shapes[1:]

    def wgrads() -> None:
        for x, m2, i2, o2 in shapes:
            tb.gemm(f"{x} wgrad", wcomp, i2, o2, m2, out_bytes=lay.wgrad_out)

    if not lay.sequence_parallel:  # the input gradient's all-reduce (tp_grad_all_reduce)
        for x, m2, i2, o2 in shapes:
            tb.gemm(f"{x} dgrad", comp, m2, i2, o2)
        tp_grad_all_reduce(tb, comp, wcomp, n * h * lay.act_bytes, wgrads)
        return
    if lay.tensor > 1 and lay.tp_overlap:
        tb.tp_linear(f"{name} dgrad", comp, m, inp, out, "all_gather", n * h * low, "bulk", ub=f"{ub}_dgrad")
        for name2, m2, inp2, out2 in rest:
            tb.gemm(f"{name2} dgrad", comp, m2, inp2, out2)
        tb.tp_linear(f"{name} wgrad", wcomp, inp, out, m, "reduce_scatter", n * h * lay.act_bytes, "bulk",
                     ub=f"{ub}_wgrad", out_bytes=lay.wgrad_out)
        for name2, m2, inp2, out2 in rest:
            tb.gemm(f"{name2} wgrad", wcomp, inp2, out2, m2, out_bytes=lay.wgrad_out)
        return
    # No userbuffers (Megatron 80389ef LinearWithGradAccumulationAndAsyncCommunication.backward, Megatron-core's, TE's
    # Linear / LayerNormLinear): the input's re-gather launched before the dgrad GEMMs and waited for after them, the
    # input gradient's reduce-scatter launched before the wgrad GEMMs and waited for after them (nccl_beside)
    with tb.nccl_beside("tp all-gather (wgrad input)", comp, "all_gather", n * h * low):
        for x, m2, i2, o2 in shapes:
            tb.gemm(f"{x} dgrad", comp, m2, i2, o2)
    with tb.nccl_beside("tp reduce-scatter (grad)", wcomp, "reduce_scatter", n * h * lay.act_bytes):
        wgrads()


def tp_grad_all_reduce(tb: Table, comp: str, wcomp: str, nbytes: float, wgrads) -> None:
    """A column-parallel linear's input gradient without sequence parallelism: all-reduced over the tensor group
    (the backward of copy_to_tensor_model_parallel_region); ``wgrads()`` times the linear's wgrad GEMMs.  Megatron-LM
    of 2021 (``model.runtime`` "megatron-lm-2021"; Megatron-DeepSpeed the same) runs it synchronously after the
    linear's whole backward (dgrad and wgrad in F.linear's autograd node): all exposed.  From Sep 2021 (the k22 rows'
    code, Megatron-core) Megatron launches it (async_op) after the dgrad GEMM and waits for it after the wgrad GEMM
    (LinearWithGradAccumulationAndAsyncCommunication, on unless --no-async-tensor-model-parallel-allreduce), as
    Transformer Engine's Linear / LayerNormLinear do: exposed only beyond the wgrad GEMMs, which run on the SMs its
    CTAs leave while it lasts (Table.nccl_beside)."""
    if tb.lay.legacy:
        wgrads()
        tb.comm("tp all-reduce (grad, after the backward)", comp, "all_reduce", nbytes, tb.lay.tensor, "nvlink")
    else:
        with tb.nccl_beside("tp all-reduce (grad)", wcomp, "all_reduce", nbytes):
            wgrads()


def dense_mlp_block(tb: Table, recompute: bool, width: int | None = None, prefix: str = "") -> None:
    cfg, lay = tb.cfg, tb.lay
    h, t, n, ab = cfg.hidden_size, lay.tensor, lay.tokens, lay.act_bytes
    f = (width or cfg.intermediate_size) // t
    up = 2 * f if cfg.ffn == "swiglu" else f
    low = lay.low_bytes if lay.fp8 else ab
    te = lay.te_fp8 and not prefix  # Transformer Engine's LayerNormMLP (shared experts are plain TE linears)
    # current scaling: LayerNormMLP's norm and activation write 16 bits with the amax, then a cast of their own
    fused_out = ab if te and lay.current_scaling else low
    comps = ("mlp_forward",) + (("mlp_backward_input",) if recompute else ())
    for comp in tb.forward_passes(comps):
        start = len(tb.rows)
        if not prefix:
            tb.memory("pre-mlp norm", comp, lay.norm_tokens * h * (ab + fused_out))
            tb.cast_after_amax("fc1 input cast", comp, lay.norm_tokens * h, reduce=True,
                               transposed=tb.norm_output_fused_transpose())  # fmt: skip
        else:  # a plain TE linear casts the (sequence-parallel) norm output itself
            tb.amax(f"{prefix}fc1 input", comp, lay.norm_tokens * h, reduce=True)
        tb.tp_linear(f"{prefix}fc1", comp, n, up, h, "all_gather", n * h * low, "ring")
        # one fused kernel: Megatron-core's squared_relu is @jit_fuser as its GeLU is (docs/model.md "Nemotron")
        tb.memory(f"{prefix}{cfg.ffn}", comp, n * (up * ab + f * fused_out))
        if te:
            tb.cast_after_amax("fc2 input cast", comp, n * f)
        else:  # Megatron's activation, then the TE linear's own cast
            tb.amax(f"{prefix}fc2 input", comp, n * f)
        tb.tp_linear(f"{prefix}fc2", comp, n, h, f, "reduce_scatter", n * h * ab, "pipeline", ub="fc2_fprop")
        if not prefix and (comp == "mlp_forward" or lay.policy == "full"):  # the add is outside a checkpointed MLP
            tb.memory("residual add", comp, 3 * lay.norm_tokens * h * ab)
    if recompute:
        tb.rerun_since(start)
    comp, wcomp = "mlp_backward_input", "mlp_backward_weight"
    if prefix:
        tb.cast(f"{prefix}grad cast", comp, n * h)
    else:
        tb.output_grad_cast(prefix, comp, wcomp)
    tb.tp_linear(f"{prefix}fc2 dgrad", comp, n, f, h, "all_gather", n * h * ab, "ring")
    if te:  # LayerNormMLP transposes its FP8 activation output for the fc2 wgrad GEMM
        tb.transpose("fc2 input transpose (wgrad)", wcomp, n * f)
    if te and cfg.ffn == "gelu" and not lay.current_scaling:
        # LayerNormMLP's GeLU backward is one kernel (fp8_cast_transpose_bgrad_dgelu_fused): reads the fc2
        # dgrad and the saved fc1 output (16-bit), writes the FP8 gradient and its transpose (no transpose where
        # TE makes none)
        tb.memory("dgelu + grad cast (fused)", comp, n * up * (2 * ab + tb.fp8_writes))
    else:
        tb.memory(f"{prefix}activation backward", comp, n * (2 * up + f) * ab)
        if te:  # LayerNormMLP (release_v2.2 and v2.8) sums fc1's gradient, bias or not (docs/model.md)
            tb.grad_bias_sum("fc1 grad", comp, n * up, "" if cfg.bias else NO_BIAS_SUM)
        tb.cast(f"{prefix}fc1 grad cast", comp, n * up)
    _input_projection_grads(tb, comp, wcomp, [(f"{prefix}fc1", n, h, up)], "fc1")
    if te and not tb.norm_output_fused_transpose():  # the (gathered) FP8 norm output transposed for the fc1 wgrad
        tb.transpose("fc1 input transpose (wgrad)", wcomp, n * h)
    if not prefix:
        tb.memory("pre-mlp norm backward", comp, 4 * lay.norm_tokens * h * ab)
    tb.gemm(f"{prefix}fc2 wgrad", wcomp, f, h, n, out_bytes=lay.wgrad_out)


# Transformer Engine's make_row_id_map (pytorch/triton/permutation.py @ v2.2 and v2.4), bytes per (token, expert):
# pass 1 reads the bool routing map (1) and writes an int64 block count (8); pass 2 reads and rewrites it (8 + 8)
ROW_ID_MAP_BYTES = 1 + 8 + 8 + 8
# --moe-router-force-load-balancing (Megatron-core moe/router.py lines 449-451 @ 1e05700, 444-446 @ 6a6cd478):
# apply_random_logits -> RandomSTE.forward, ``logits.clone().normal_(generator=...)`` (moe_utils.py lines 807 / 842):
# the clone reads and writes each logit, normal_ writes it again; the backward returns grad_output as it is (no
# kernel).  Logits at 4 bytes, as the router rows here count them (--moe-router-dtype fp32 on the ModelZoo rows; the
# Pai rows' bf16 logits would be half: under a microsecond a layer at these sizes)
RANDOM_LOGITS_BYTES = (4 + 4) + 4


# gpt-oss's experts as Megatron-core runs them (NVIDIA/Megatron-LM @ d98e8a6, megatron/core/transformer/moe/experts.py,
# TEGroupedMLP; docs/model.md "gpt-oss"). fc2's per-expert bias is added after the GEMM by _apply_bias (lines 345-379;
# its eager path, as moe_single_grouped_bias defaults to False, transformer_config.py line 870): per local expert
# ``t + b * p``, the bias times each row's routing probability (written) and added to the rows (read both, write), then
# torch.cat of the experts' rows (read, write): 6 passes of 16 bits a value, 2 kernels an expert and the cat. Its
# backward: b's gradient as the rows' gradient times p (read, write) summed over the rows (read), p's as the gradient
# times b (read, write) summed over the hidden size (read): 6 passes, 4 kernels an expert.
# (16-bit passes a value, kernels a local expert, kernels once), forward then backward
GPT_OSS_FC2_BIAS = ((6, 2, 1), (6, 4, 0))
# swiglu_limit: weighted_bias_quick_geglu_impl (megatron/core/fusions/fused_bias_geglu.py lines 424-432) clamps the
# gate half and the linear half (two kernels, each reading and writing its half) and torch.cat joins them (reads and
# writes the whole): 4 x 16-bit a value of fc1's output, 3 kernels; autograd keeps each clamp's input for its
# backward (activations.py)


def moe_mlp_block(tb: Table, recompute: bool, whole_moe: bool = False) -> None:
    """Megatron-core's MoE layer with the all-to-all token dispatcher:
    the sequence-parallel tokens of this rank are routed, sent to their experts' ranks and back.
    With expert tensor parallelism ETP > 1 the received rows are all-gathered over the ETP group, so each
    expert GEMM runs ETP times the rows on 1/ETP of the expert's FFN columns (docs/model.md "Expert tensor
    parallelism"; the collectives are _all_to_all's).
    With several local experts the received rows are regrouped by expert after the dispatch and
    back before the combine (Megatron-core token_dispatcher.py: ``sort_chunks_by_idxs``, "Permutation
    2"), forward and backward.  The flex dispatcher (DeepEP) permutes after the dispatch instead, straight to
    the local experts, and regroups nothing (docs/model.md, "The MoE layer under DeepEP, call by call").
    ``recompute``: the layer's forward rerun in the input gradient (full); ``whole_moe``: the MoE layer's alone
    (--recompute-modules moe: moe_layer.py checkpoints router, dispatch, experts, combine and shared experts; the
    pre-MLP norm and the residual add are the transformer layer's, outside it)."""
    cfg, lay = tb.cfg, tb.lay
    h, t, ab = cfg.hidden_size, lay.tensor, lay.act_bytes
    n = lay.tokens // t  # this rank's tokens after the sequence split
    E, k, fe, e = cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size, lay.expert
    etp = lay.expert_tensor
    # fc1 column-parallel, fc2 row-parallel over the ETP ranks (TEGroupedLinear divides output / input size by ETP,
    # Megatron-core transformer_engine.py @ 1e05700 lines 934-938); their rows: the n x k received, gathered ETP-fold
    fl, rows = fe // etp, n * k * etp
    local = max(1, E // e)
    m = max(1, round(n * k * e * etp / E))  # tokens per local expert, balanced routing
    # where the permute runs: before the all-to-all on the rank's n tokens over all E experts, or, with the flex
    # dispatcher (DeepEP), after it on the distinct tokens received over the local experts (_DeepepManager,
    # token_dispatcher.py @ 1e05700 lines 885-916): n x k rows out either way (x ETP with DeepEP), and no
    # regrouping by local expert, as the permute's routing map is already the local experts'
    flex = lay.deepep  # DeepEP delivers the distinct tokens received, whichever runtime calls it
    src, dst, mapped = (n * etp * ranks_reached(E, e, k), rows, local) if flex else (n, n * k, E)
    low = lay.low_bytes if lay.fp8 else ab
    # SequentialMLP (model.expert_gemm = "sequential") runs each expert's activation apart too
    launches = local if lay.expert_streams == 1 else 1
    comps = ("mlp_forward",) + (("mlp_backward_input",) if recompute or whole_moe else ())
    for comp in tb.forward_passes(comps):
        start = len(tb.rows)
        layer_part = comp == "mlp_forward" or recompute  # the norm and the add around the MoE layer
        if layer_part:
            tb.memory("pre-mlp norm", comp, n * h * (ab + low))
        tb.gemm("router", comp, n, E, h, fp8=False)
        if lay.force_balance:  # logits.clone() (read, write) then .normal_() (write) over the n x E logits
            tb.memory("router random logits", comp, n * E * RANDOM_LOGITS_BYTES, launches=2)
        tb.memory("router softmax + top-k", comp, n * E * 4 * 3)
        if lay.aux_loss and not tb.grad_off:  # router.py: only with autograd on (the recompute, if any)
            _aux_loss(tb, comp, n)
        # the fused permute first builds its row-id map: two Triton kernels over the routing map (n x E, or DeepEP's
        # received rows x local experts), each at the kernel floor here (the unpermute and both backwards reuse it)
        tb.memory("permute row-id map", comp, src * mapped * ROW_ID_MAP_BYTES, launches=2)
        tb.memory("permute", comp, src * h * ab + dst * h * low)
        if local > 1 and not flex:  # the received rows regrouped by local expert (read and write each)
            tb.memory("sort by local expert", comp, 2 * rows * h * ab)
        tb.amax("experts fc1 input", comp, rows * h, local)  # GroupedLinear quantizes each expert's rows apart
        tb.experts("experts fc1 (grouped)", comp, m, 2 * fl, h, local)
        if cfg.swiglu_limit:  # gpt-oss: the gate and up halves clamped, then joined (the swiglu_limit note above)
            tb.memory("experts swiglu clamp (clamp, clamp, cat)", comp, rows * 2 * fl * 4 * ab, 3)
        tb.memory("experts swiglu", comp, rows * (2 * fl * ab + fl * low), launches)
        tb.amax("experts fc2 input", comp, rows * fl, local)
        tb.experts("experts fc2 (grouped)", comp, m, h, fl, local)
        if cfg.expert_bias:  # fc1's bias rides in the fused activation; fc2's is added apart (GPT_OSS_FC2_BIAS)
            passes, each, once = GPT_OSS_FC2_BIAS[0]
            tb.memory("experts fc2 bias x probs + add, cat", comp, rows * h * passes * ab, each * local + once)
        if local > 1 and not flex:
            tb.memory("unsort by local expert", comp, 2 * rows * h * ab)
        _etp_casts(tb, comp, n * k, forward=True)
        tb.memory("unpermute + weighted sum", comp, dst * h * ab + src * h * ab)
        if layer_part:
            tb.memory("residual add", comp, 3 * n * h * ab)
    if len(comps) > 1:
        tb.rerun_since(start)
    comp, wcomp = "mlp_backward_input", "mlp_backward_weight"
    tb.memory("unpermute backward", comp, src * h * ab + dst * h * ab)
    _etp_casts(tb, comp, n * k, forward=False)
    if local > 1 and not flex:
        tb.memory("unsort by local expert backward", comp, 2 * rows * h * ab)
    if cfg.expert_bias:
        passes, each, once = GPT_OSS_FC2_BIAS[1]
        tb.memory("experts fc2 bias add backward", comp, rows * h * passes * ab, each * local + once)
    tb.cast("experts grad cast", comp, rows * h, local)
    tb.experts("experts fc2 dgrad (grouped)", comp, m, fl, h, local)
    tb.memory("experts swiglu backward", comp, rows * 5 * fl * ab, launches)
    if cfg.expert_bias:  # the fc1 bias gradient: each expert's rows of fc1's output gradient summed (read once)
        tb.memory("experts fc1 bias grad", comp, rows * 2 * fl * ab, local)
    if cfg.swiglu_limit:  # each clamp's backward: its saved input and the gradient read, the gradient written
        tb.memory("experts swiglu clamp backward", comp, rows * 2 * fl * 3 * ab, 2)
    tb.cast("experts fc1 grad cast", comp, rows * 2 * fl, local)
    tb.experts("experts fc1 dgrad (grouped)", comp, m, h, 2 * fl, local)
    if local > 1 and not flex:
        tb.memory("sort by local expert backward", comp, 2 * rows * h * ab)
    tb.memory("permute backward", comp, dst * h * ab + src * h * ab)
    if lay.aux_loss:  # the aux loss's gradient into the scores, then through their softmax
        tb.memory("aux loss backward", comp, n * E * 4 * 2)
    tb.memory("router backward", comp, n * E * 4 * 3)
    if cfg.router_learned_bias:  # gpt-oss: the router bias's gradient, the fp32 logits' gradient summed over tokens
        tb.memory("router bias grad", comp, n * E * 4)
    tb.gemm("router dgrad", comp, n, h, E, fp8=False)
    tb.memory("pre-mlp norm backward", comp, 4 * n * h * ab)
    tb.experts("experts fc1 wgrad (grouped)", wcomp, h, 2 * fl, m, local, out_bytes=lay.wgrad_out)
    tb.experts("experts fc2 wgrad (grouped)", wcomp, fl, h, m, local, out_bytes=lay.wgrad_out)
    tb.gemm("router wgrad", wcomp, h, E, n, fp8=False)
    if cfg.shared_intermediate_size:
        dense_mlp_block(tb, recompute or whole_moe, cfg.shared_intermediate_size, prefix="shared expert ")
    _all_to_all(tb, n, rerun=recompute or whole_moe)


def ranks_reached(experts: int, ranks: int, k: int) -> float:
    """How many of ``ranks`` ranks, each holding an equal share of ``experts``, a token's ``k`` distinct experts
    fall on (balanced routing): a rank holds none of them with probability C(E - E/ranks, k) / C(E, k)."""
    return ranks * (1 - math.comb(experts - experts // ranks, k) / math.comb(experts, k))


def _aux_loss(tb: Table, comp: str, n: int) -> None:
    """The load-balancing aux loss (Megatron-core moe/router.py ``aux_loss_load_balancing``, moe_utils.py
    ``switch_load_balancing_loss_func``): the scores recomputed from the fp32 logits, the loss from their
    sums over the tokens and the tokens per expert; with the sequence split over t x c ranks the E counts
    (int64) are all-reduced over them first.  Skipped where grad is off (a checkpointed first forward)."""
    lay, E = tb.lay, tb.cfg.num_experts
    tb.memory("aux-loss scores", comp, n * E * 4 * 2)
    tb.memory("aux loss", comp, n * E * (4 + 1))
    tb.comm("aux-loss token counts all-reduce", comp, "all_reduce", E * 8.0, lay.tensor * lay.context,
            tb.group("tp-cp").link)  # fmt: skip


def _all_to_all(tb: Table, n: int, rerun: bool = False) -> None:
    """Dispatch and combine, forward and backward: each rank sends its tokens' copies to the
    ranks of their experts (expert parallelism e); FP8 payloads where the model is FP8.  With expert tensor
    parallelism ETP > 1 the received rows are all-gathered over the ETP group after the dispatch and the experts'
    partial sums reduce-scattered before the combine (_expert_tensor_collectives); DeepEP instead sends each token
    once to every ETP rank of each EP rank its experts are on, over the ETP x EP group.  ``rerun``: the
    forward's dispatch and combine run again where the MoE layer's forward is rerun (full recompute, or
    --recompute-modules moe), each in the backward's all-to-all of the same phase, as the rerun compute
    goes into the input gradient of its block."""
    lay, cfg, r = tb.lay, tb.cfg, tb.r
    e, etp = lay.expert, lay.expert_tensor
    if e * etp <= 1:
        return
    first = len(tb.rows)
    k, h = cfg.experts_per_token, cfg.hidden_size
    fp8 = 1.0 + 4 / 128 if lay.fp8 else lay.act_bytes  # one fp32 scale per 128 values
    ep = tb.group("ep")  # its ranks ETP apart (placement.group)
    link = ep.link
    # DeepEP's group is tp_ep (ETP x EP ranks; MoEFlexTokenDispatcher, topk and num_experts times ETP,
    # token_dispatcher.py @ 1e05700 lines 950-956), and it sends a token once to each rank it reaches
    # (is_token_in_rank, DeepEP's intranode dispatch), not once per expert
    group = e * etp if lay.deepep else e
    copies = k * (group - 1) / group  # copies of a token that leave the rank (balanced routing)
    if lay.deepep:
        copies = etp * ranks_reached(cfg.num_experts, e, k) * (group - 1) / group
    deepep = False
    if link == "nic":
        nodes = ep.domains
        distinct = nodes * (1 - (1 - 1 / nodes) ** k)  # nodes a token's k experts fall on
        if cfg.route_group_limit and cfg.route_groups == nodes:  # node-limited routing
            distinct = min(distinct, cfg.route_group_limit)
        # Megatron's alltoall dispatcher (NCCL): one row per (token, expert), so every copy bound for another
        # node crosses the NIC; DeepEP sends a token once per destination node and forwards it on NVLink there
        copies = (distinct if lay.deepep else k) * (nodes - 1) / nodes
        deepep = lay.deepep and bool(r.deepep_dispatch)
        if deepep:  # DeepEP's measured bandwidth counts a token once per node, its own included
            copies = distinct
    elems = n * copies * h
    # before the dispatch, the ranks exchange how many tokens each sends to each expert (Megatron-core
    # token_dispatcher.py, MoEAlltoAllTokenDispatcher.preprocess: an all-gather of E int64 counts over the
    # tensor x expert group tp_ep, ETP x EP ranks; DeepEP's notify step): a latency-bound collective every forward
    tb.comm("token counts all-gather", "dispatch_forward", "all_gather", cfg.num_experts * 8.0 * e * etp, e * etp, link)
    for comp, per in (("dispatch_forward", fp8), ("combine_forward", lay.act_bytes),
                      ("dispatch_backward", lay.act_bytes), ("combine_backward", fp8)):  # fmt: skip
        if e > 1 or lay.deepep:
            if deepep:  # the combine kernel in combine_forward and in the dispatch's backward, as DeepEP runs them
                secs = collectives.deepep(elems * per, group, r, combine=comp in ("combine_forward", "dispatch_backward"))
                shape = f"{elems * per / 1e6:.3g} MB to {distinct:.3g} nodes (DeepEP, EP {e}" + (
                    f" x ETP {etp})" if etp > 1 else ")")
            else:
                secs, shape = collectives.all_to_all(elems * per, r, link), f"{elems * per / 1e6:.3g} MB sent ({link})"
            tb.rows.append(Kernel("all-to-all", comp, "comm", shape, 0.0, elems * per, secs, "communication"))
            if comp.startswith("dispatch") and not lay.deepep and e > 1:
                _probs_all_to_all(tb, comp, n * copies, link)
        if not lay.deepep:
            _expert_tensor_collectives(tb, comp, n * k, per)
    if rerun:
        for phase in ("dispatch", "combine"):
            _rerun(tb, [k for k in tb.rows[first:] if k.component == f"{phase}_forward"], f"{phase}_backward")


def _expert_tensor_collectives(tb: Table, comp: str, rows: float, per: float) -> None:
    """The alltoall dispatcher at ETP > 1 (token_dispatcher.py @ 1e05700): after the dispatch's all-to-all the
    ``rows`` received (n x k) and their probabilities are all-gathered over the ETP group (lines 525-535,
    gather_from_sequence_parallel_region), at the all-to-all's payload ``per`` and PROB_BYTES; before the combine's
    all-to-all fc2's partial sums are reduce-scattered over it in the probabilities' dtype (lines 622-632,
    ``hidden_states.to(self.probs.dtype)``); autograd runs each one's mirror in the backward.  The ETP group is ETP
    consecutive ranks (placement.group's "etp")."""
    etp, h = tb.lay.expert_tensor, tb.cfg.hidden_size
    if etp <= 1:
        return
    link = tb.group("etp").link
    whole = rows * etp  # the gathered rows, the reduce-scattered rows
    if comp in ("dispatch_forward", "combine_backward"):  # the tokens' gather, or the combine's reduce-scatter's mirror
        nbytes = whole * h * (per if comp == "dispatch_forward" else PROB_BYTES)
        tb.comm("etp all-gather", comp, "all_gather", nbytes, etp, link)
        if comp == "dispatch_forward":
            tb.comm("etp probs all-gather", comp, "all_gather", whole * PROB_BYTES, etp, link)
    else:  # the combine's reduce-scatter, or the dispatch's gather's mirror (tokens' and probabilities' gradients)
        nbytes = whole * h * (PROB_BYTES if comp == "combine_forward" else per)
        tb.comm("etp reduce-scatter", comp, "reduce_scatter", nbytes, etp, link)
        if comp == "dispatch_backward":
            tb.comm("etp probs reduce-scatter", comp, "reduce_scatter", whole * PROB_BYTES, etp, link)


def _etp_casts(tb: Table, comp: str, rows: float, forward: bool) -> None:
    """At ETP > 1 the combine's reduce-scatter runs in the probabilities' dtype (PROB_BYTES): fc2's ``rows`` x ETP
    partial sums cast to it before, the ``rows`` reduced cast back after (token_dispatcher.py @ 1e05700 lines
    628-632, ``.to(self.probs.dtype)`` ... ``.to(hidden_states.dtype)``); the backward casts the gradient the other
    way round.  Each reads one dtype and writes the other."""
    etp, h, ab = tb.lay.expert_tensor, tb.cfg.hidden_size, tb.lay.act_bytes
    if etp <= 1 or tb.lay.deepep or PROB_BYTES == ab:  # DeepEP's combine sums the ETP ranks' rows itself
        return
    suffix = "" if forward else " backward"
    tb.memory(f"etp reduce-scatter cast to fp32{suffix}", comp, rows * etp * h * (ab + PROB_BYTES))
    tb.memory(f"etp reduce-scatter cast back{suffix}", comp, rows * h * (ab + PROB_BYTES))


# Bytes of one routing probability sent with its row: fp32, the router dtype of the ModelZoo's configs
# (--moe-router-dtype fp32); bf16 without it (Pai-Megatron-Patch), which is under 0.1 us less at these sizes
PROB_BYTES = 4


def _probs_all_to_all(tb: Table, comp: str, rows: float, link: str) -> None:
    """Megatron-core's alltoall dispatcher sends the routing probabilities of the permuted rows in an
    all-to-all of their own after the tokens' (token_dispatcher.py ``MoEAlltoAllTokenDispatcher.token_dispatch``,
    since 2659630, Apr 2025; the probs are applied in the experts' weighted SwiGLU), and autograd runs its
    backward in the dispatch's backward: one probability per row sent, a latency-bound NCCL call each way.
    DeepEP's dispatch carries them in its own call."""
    nbytes = rows * PROB_BYTES
    secs = collectives.all_to_all(nbytes, tb.r, link)
    tb.rows.append(Kernel("probs all-to-all", comp, "comm", f"{nbytes / 1e6:.3g} MB sent ({link})", 0.0, nbytes,
                          secs, "communication"))  # fmt: skip


# Context parallelism as Transformer Engine runs it with cp_comm_type "p2p" (Megatron-core's default when
# context_parallel_size > 1): AttnFuncWithCPAndKVP2P in transformer_engine/pytorch/attention/dot_product_attention/
# context_parallel.py @ release_v2.8 (docs/model.md, "Context parallelism step by step"). Causal, load-balanced: CP
# rank r holds sequence chunks r and 2c-1-r of 2c, so every step of its ring is half an L x L square (L = s / c)
# and does 1/c of the rank's causal attention; sbhd layout, so no step copies its halves. BF16 attention
# (fp8_dot_product_attention off): each step's output and softmax-lse stay in the step's dtypes (16-bit, fp32).
LSE_BYTES = 4  # the softmax log-sum-exp per query row and head, fp32
# SMs the ring's send + receive to one peer hold while in flight: NCCL's P2P kernel runs one CTA per channel, each on
# an SM of its own, spinning until its part is sent or received. For a 2-rank communicator NCCL gives one peer half
# its p2p channels (scheduleP2pTasksToPlan's nChannelsMin), 32 of them on an NVSwitch node (NCCL's own logs: "32 p2p
# channels, 32 p2p channels per peer"), so 16; across nodes 2 channels per network peer (ncclTopoGetNchannels, one NIC
# per GPU), so 2. Sources and the runs' settings: docs/model.md, "The ring's P2P kernels beside the attention"
RING_P2P_CTAS = {"nvlink": 16, "nic": 2}


def _ring_sections(c: int, rank: int, backward: bool) -> list[str]:
    """Which part of the causal square each of the c steps of ``rank`` computes: the diagonal (its own K/V,
    causal), the lower triangle (all its queries, the first half of an earlier rank's keys) or the upper
    (the second half of its queries, all of a later rank's keys).  The backward runs the steps in reverse."""
    if backward:
        return ["diagonal" if i == c - 1 else "lower" if i >= c - rank - 1 else "upper" for i in range(c)]
    return ["diagonal" if i == 0 else "lower" if i <= rank else "upper" for i in range(c)]


def _ring_rank(tb: Table, name: str, comp: str, step_flops: float, backward: bool, rank: int
               ) -> tuple[list[Kernel], list[float]]:  # fmt: skip
    """One CP rank's kernels of one ring attention pass, and per step the compute its transfer overlaps."""
    lay, cfg = tb.lay, tb.cfg
    c, b, ab = lay.context, lay.micro_batch, lay.act_bytes
    L = lay.seq // c
    a_t = cfg.num_heads // lay.tensor
    kv_elems = b * L * _cp_kv_heads(tb) * (cfg.qk_head_dim + cfg.v_head_dim)  # K and V of this rank
    lse = b * a_t * L  # softmax-lse values of this rank's queries
    sub = Table(tb.r, lay, cfg)
    link = _ring_link(tb)
    ctas = RING_P2P_CTAS[link]
    held = tb.r.held(ctas)  # the rates beside the step's P2P kernel
    windows: list[float] = []
    kind = "backward" if backward else "forward"
    sub.memory(f"cp K/V into the ring buffer ({kind})", comp, 2 * kv_elems * ab)  # torch.cat / copy_: read, write
    sections = _ring_sections(c, rank, backward)
    if backward and rank < c - 1:  # the second half of the lse, made contiguous for the upper-triangle steps
        sub.memory("cp second-half lse copy", comp, 2 * LSE_BYTES * lse / 2)
    q_elems, out_elems = b * L * a_t * cfg.qk_head_dim, b * L * a_t * cfg.v_head_dim
    for i, section in enumerate(sections):
        # flash attention parallelises over query tiles forward, key tiles backward (FlashAttention-2, Sec. 3),
        # each looping over the other side: a full block looping over n keys (queries) does per tile what a
        # causal kernel of 2n does on average, so it takes the measured causal rate at 2n
        q_len, kv_len = (L // 2 if section == "upper" else L), (L // 2 if section == "lower" else L)
        rate_len = L if section == "diagonal" else 2 * (q_len if backward else kv_len)
        rate = sub.r.attention_rate(rate_len, backward)
        body = step_flops / rate
        shape = f"{q_len} q x {kv_len} kv{' causal' if section == 'diagonal' else ''} x {a_t} heads" + \
            (f" x {b} seqs" if b > 1 else "") + f" (at the {rate_len} rate)"
        # the step's transfer is posted before its attention, whose first part so runs beside the P2P kernel
        sent = _ring_transfer(tb, backward, i)
        transfer = ring_transfer_seconds(tb, sent[1], link) if sent else 0.0
        secs = beside_transfer(sub.r.floor + body, held.floor + step_flops / held.attention_rate(rate_len, backward),
                               transfer)  # fmt: skip
        if transfer > 0 and ctas > 0:
            shape += f", beside P2P, {ctas} SMs held for {transfer * 1e6:.3g} us"
        sub.rows.append(Kernel(f"{name} step {i} ({section})", comp, "attention", shape, step_flops, 0.0,
                               secs, "latency" if sub.r.floor > body else "compute"))  # fmt: skip
        window = sub.rows[-1].seconds
        if not backward:
            if i >= 1:  # the previous step's lse merged into the running one, beside this step's attention
                prev = sections[i - 1]
                nbytes = 2 * LSE_BYTES * lse if i == 1 else 3 * LSE_BYTES * lse / (2 if prev == "upper" else 1)
                window += sub.memory(f"cp softmax-lse {'clone' if i == 1 else 'correction'} (step {i - 1})",
                                     comp, nbytes)  # fmt: skip
            windows.append(window)
            continue
        # dq of this step into the rank's dq (16-bit, eager copy_ / add_), before the wait for the transfer
        first = c - rank - 1
        if section != "upper":
            nbytes, launches = ((3 * q_elems, 1) if i > first else (2 * q_elems, 1) if rank == c - 1
                                else (2.5 * q_elems, 2))  # fmt: skip
        else:
            nbytes, launches = (1.5 * q_elems if i > 0 else q_elems), 1
        window += sub.memory(f"cp dq accumulation (step {i})", comp, nbytes * ab, launches)
        windows.append(window)
        # dk, dv of this step into the ones received from the next rank, after the wait (eager, per tensor)
        if section == "diagonal":
            nbytes, launches = (2.5 * kv_elems, 4) if rank == 0 else (3 * kv_elems, 2)
        elif section == "lower":
            nbytes = kv_elems if (i == 0 and rank == c - 1) else 1.5 * kv_elems
            launches = 2
        else:
            nbytes, launches = (3 * kv_elems if i > 0 else 2 * kv_elems), 2
        sub.memory(f"cp dk / dv accumulation (step {i})", comp, nbytes * ab, launches)
    if not backward:  # the output merged step by step once the ring is done, into the 16-bit output
        for i, section in enumerate(sections):
            full = (2 if i == 0 else 3) * out_elems * ab + 2 * LSE_BYTES * lse
            sub.memory(f"cp output correction (step {i})", comp, full / (2 if section == "upper" else 1))
    return sub.rows, windows


def beside_transfer(alone: float, held: float, transfer: float) -> float:
    """Seconds a kernel takes that starts with a transfer in flight: ``held`` (its time beside the transfer's
    kernel) for the part the transfer lasts, ``alone`` for the rest; the work done is what counts.  A transfer
    longer than the kernel on held rates slows it all."""
    if transfer <= 0 or held <= alone:
        return alone
    if transfer >= held:
        return held
    return transfer + alone * (1.0 - transfer / held)


def ring_transfer_seconds(tb: Table, nbytes: float, link: str) -> float:
    """Seconds one ring step's exchange holds its P2P kernels: the send and the receive at once (a batched group:
    one transfer's time), or, where Transformer Engine issues them singly to the one peer of a CP 2 pair
    (``Layout.ring_serial``), the send then the receive on the pair's one stream: two transfers' time."""
    one = collectives.p2p(nbytes, tb.r, link)
    return 2.0 * one if tb.lay.ring_serial else one


def _ring_link(tb: Table) -> str:
    """The context-parallel group's link (placement.group: its ranks tensor apart)."""
    return tb.group("cp").link


def _ring_transfer(tb: Table, backward: bool, i: int) -> tuple[str, float] | None:
    """What step ``i`` of the ring sends on and its bytes: forward, K and V for the next step (none at the
    last); backward, K and V at step 0, with the dK, dV accumulated so far at steps 1 .. c-2, dK, dV at c-1."""
    lay, cfg, c = tb.lay, tb.cfg, tb.lay.context
    kv = lay.tokens * _cp_kv_heads(tb) * (cfg.qk_head_dim + cfg.v_head_dim) * lay.act_bytes
    if not backward:
        return ("K/V", kv) if i < c - 1 else None
    return ("K/V", kv) if i == 0 else ("dK/dV", kv) if i == c - 1 else ("K/V + dK/dV", 2 * kv)


def _cp_kv_heads(tb: Table) -> int:
    """K / V heads on one tensor-parallel rank (MLA: one per query head)."""
    kv_heads = tb.cfg.num_heads if tb.cfg.mla else tb.cfg.num_kv_heads
    return max(1, kv_heads // tb.lay.tensor)


def ring_attention(tb: Table, name: str, comp: str, flops: float, backward: bool) -> float:
    """A causal attention pass split over c context-parallel ranks: c steps of flops / c each, with the
    softmax-lse and output corrections (forward) or the dq / dk / dv accumulations (backward) between them.
    The ring runs at its slowest rank's pace, so that rank's kernels are listed (ranks differ in which steps
    are lower or upper triangles)."""
    c = tb.lay.context
    ranks = [_ring_rank(tb, name, comp, flops / c, backward, rank) for rank in range(c)]
    rows, windows = max(ranks, key=lambda rw: sum(k.seconds for k in rw[0]))
    tb.rows += rows
    tb.cp_steps.append((comp, backward, windows))
    return sum(k.seconds for k in rows)


def context_exchange(tb: Table) -> None:
    """The ring's transfers across c context-parallel ranks (Transformer Engine ``p2p``, ring_attention):
    forward, steps 0 .. c-2 each send this rank's K and V on to the next rank while the step's attention
    runs; backward, step 0 sends K and V, steps 1 .. c-2 K, V and the dK, dV accumulated so far, step c-1
    dK, dV only, each beside its step's attention backward and dq accumulation.  What a transfer takes
    beyond the compute it overlaps (that attention already slowed by the transfer's SMs, _ring_rank) is exposed."""
    lay, cfg, r = tb.lay, tb.cfg, tb.r
    c = lay.context
    if c <= 1:
        return
    link = _ring_link(tb)
    if not tb.cp_steps:  # the eager attention (no ring of Transformer Engine's): the exchange whole
        kv = 2.0 * lay.tokens * _cp_kv_heads(tb) * cfg.qk_head_dim * lay.act_bytes
        for comp, nbytes in (("attn_forward", kv), ("attn_backward_input", 2 * kv)):
            exposed = (c - 1) * collectives.p2p(nbytes, r, link)
            tb.rows.append(Kernel("context-parallel KV exchange", comp, "comm",
                                  f"{c - 1} x {nbytes / 1e6:.3g} MB ({link})", 0.0, (c - 1) * nbytes, exposed,
                                  "communication"))  # fmt: skip
        return
    for comp, backward, windows in tb.cp_steps:
        start = len(tb.rows)
        for i, window in enumerate(windows):
            sent = _ring_transfer(tb, backward, i)
            if sent is None:
                break  # the last forward step has nothing left to send
            what, nbytes = sent
            exposed = max(0.0, ring_transfer_seconds(tb, nbytes, link) - window)
            tb.rows.append(Kernel(f"context-parallel {what} exchange (step {i})", comp, "comm",
                                  f"{nbytes / 1e6:.3g} MB ({link})", 0.0, nbytes, exposed, "communication"))
        if not backward and comp != "attn_forward":  # a rerun forward's ring (full, or the core attention's)
            tb.rerun_since(start)


def layer(cfg: ModelConfig, i: int, rates: KernelRates, lay: Layout) -> list[Kernel]:
    """Every kernel of layer ``i`` for one micro-batch on one rank."""
    return _layer_table(cfg, i, rates, lay).rows


def pair_host(cfg: ModelConfig, i: int, rates: KernelRates, lay: Layout) -> tuple[float, float, float]:
    """Layer ``i``'s host share in an overlapped pair (host_pair.py), ms: (the forward's host row and the backward's,
    which a lone op carries, and what the pair's layer takes instead); all 0 where no host row is costed."""
    tb = _layer_table(cfg, i, rates, lay)
    forward = sum(k.ms for k in tb.rows if k.name == "host launches and syncs" and k.component == "mlp_forward")
    backward = sum(k.ms for k in tb.rows if k.name == "host launches (backward)")
    if not any(k.kind == "host" for k in tb.rows):
        return 0.0, 0.0, 0.0
    local = max(1, cfg.num_experts // lay.expert)
    pair = host_pair.pair_excess(tb.own_rows(), lay.host_op, lay.tensor, lay.expert_streams, local, lay.dispatcher)
    return forward, backward, pair * 1e3


def apart_host(cfg: ModelConfig, i: int, rates: KernelRates, lay: Layout) -> tuple[float, float]:
    """Layer ``i``'s backward host share where a schedule runs weight gradients apart (host_backward.apart_excess),
    ms: (what the input-gradient pass alone carries less than its host row, the share worked over I and W together;
    what the weight-gradient pass alone carries more); 0 each where no host row is costed."""
    tb = _layer_table(cfg, i, rates, lay)
    joint = sum(k.ms for k in tb.rows if k.name == "host launches (backward)")
    if not any(k.kind == "host" for k in tb.rows):
        return 0.0, 0.0
    local = max(1, cfg.num_experts // lay.expert)
    alone = host_backward.apart_excess(tb.own_rows(), lay.host_op, lay.tensor, lay.expert_streams, local, lay.dispatcher)
    return joint - alone[0] * 1e3, alone[1] * 1e3


def _layer_table(cfg: ModelConfig, i: int, rates: KernelRates, lay: Layout) -> Table:
    tb = Table(rates, lay, cfg)
    if lay.deepseek and cfg.mla and cfg.q_lora_rank and cfg.is_moe_layer(i) and lay.tensor == lay.context == 1:
        deepseek_kernels.moe_layer(tb)
        _all_to_all(tb, lay.tokens)
        return tb
    full = lay.policy == "full"
    attention_block(tb, full, i)
    context_exchange(tb)
    if cfg.is_moe_layer(i):
        whole_moe = lay.recomputes("moe")  # --recompute-modules moe: the MoE layer checkpointed (moe_layer.py)
        moe_mlp_block(tb, full, whole_moe)
        if lay.host_op > 0:  # the rerun dispatcher syncs as its forward did
            host_share(tb, full or whole_moe)
    else:  # --recompute-modules mlp: the dense MLP checkpointed (transformer_layer.py _forward_mlp)
        dense_mlp_block(tb, full or lay.recomputes("mlp"))
    fp8_meta_recompute(tb, i, full)
    if lay.legacy:
        _legacy_layer_kernels(tb, i, full)
    if lay.grad_accumulation > 0:  # a runtime that adds each weight gradient into the accumulated one apart
        p = params.layer(cfg, i)
        tb.memory("gradient accumulation", "mlp_backward_weight",
                  (p.dense_over_tensor(lay.tensor) / lay.tensor + p.routed / lay.expert) * lay.grad_accumulation)  # fmt: skip
    if lay.sync_tp_duplicated:
        _tp_duplicated_syncs(tb, i, full)
    if lay.grad_copy > 0:
        _grad_hook_adds(tb, i)
    if lay.te_fp8 and lay.fp8_weight_each_use:
        fp8_weight_casts(tb, i)
    if lay.policy == "deepseek":  # MLA up-projections and the norms rerun in the input gradient
        _rerun(tb, [k for k in tb.rows if k.component == "attn_forward" and (k.name.endswith("_up") or "norm" in k.name)],
               "attn_backward_input")  # fmt: skip
    _rerun_discarded_outputs(tb, i)
    if cfg.is_moe_layer(i) and lay.host_op > 0:  # after every backward row: the host's calls span them all
        host_backward_share(tb)
    return tb


# Transformer Engine's checkpoint under delayed scaling keeps the rerun's FP8 scaling as the first forward's: each
# FP8 module's prepare_forward (module/base.py) clones its forward amax history, scale and scale_inv in the first
# forward (fp8.py copy_forward_fp8_meta_tensors_for_recompute, release_v0.8 to release_v1.14; release_v2.8 clones
# the first two) and, in the rerun, copies them in and the updated state back after
# (get_old_fp8_meta_tensors_for_recompute, restore_fp8_meta_tensors: three copy_ each at release_v1.14, two clones
# and two copy_ each at release_v2.8; release_v0.8 and release_v1.6 swap references, no kernel).  Kernels a module in
# (the first forward, the rerun), as release_v1.14 runs them
FP8_META_RECOMPUTE_KERNELS = (3, 6)


def fp8_meta_recompute(tb: Table, i: int, full: bool) -> None:
    """The FP8 scaling state of layer ``i``'s checkpointed modules (te_checkpoint: full recomputation, or
    --recompute-modules moe / mlp under FP8) stashed in the first forward and swapped around the rerun
    (FP8_META_RECOMPUTE_KERNELS): small fp32 tensors, each copy a kernel at the floor.  Delayed scaling only
    (``recipe.delayed()`` at release_v2.8; current scaling keeps no history)."""
    cfg, lay = tb.cfg, tb.lay
    if not lay.te_fp8 or lay.current_scaling:
        return
    attn = len(_attention_shapes(cfg, lay.tensor)) + 1  # TE modules = FP8 GEMMs in attention
    mlp_gemms = fp8_linears(cfg, i, lay) - attn
    if cfg.is_moe_layer(i):  # TEGroupedLinear: one module of all local experts; SequentialMLP: one an expert
        checkpointed = full or lay.recomputes("moe")
        mlp = mlp_gemms if lay.expert_streams == 1 else mlp_gemms - 2 * max(1, cfg.num_experts // lay.expert) + 2
    else:
        checkpointed, mlp = full or lay.recomputes("mlp"), mlp_gemms
    first, rerun = FP8_META_RECOMPUTE_KERNELS
    for block, modules, gemms in (("attn", attn, attn),) * full + (("mlp", mlp, mlp_gemms),) * checkpointed:
        state = gemms * AMAXES["forward"] * (lay.amax_history + 2) * 4.0  # amax history, scale, scale_inv: fp32
        tb.memory("fp8 scaling state stash (checkpoint)", f"{block}_forward", 2 * state, first * modules)
        tb.memory("fp8 scaling state swap (recompute)", f"{block}_backward_input", 4 * state, rerun * modules)


def _rerun(tb: Table, rows: list[Kernel], comp: str) -> None:
    """Forward kernels ``rows`` again, as they ran, in the input-gradient component ``comp``."""
    tb.rows += [replace(k, name=k.name + " (recompute)", component=comp) for k in rows]


def _rerun_discarded_outputs(tb: Table, i: int) -> None:
    """Megatron-core's output-discarding recompute (--recompute-modules layernorm / moe_act, recompute.py).
    ``CheckpointWithoutOutput._recompute`` (tensor_parallel/random.py @ 1e05700 lines 550-612) runs as a grad hook
    on the consumer's output, so at the start of the consumer's input gradient: the module's forward again, then
    ``untyped_storage().copy_`` of its output into the storage ``discard_output_and_register_recompute`` freed
    (resize_(0): no kernel), one more read and write of the output.  "layernorm" reruns the norms that are modules
    of their own (transformer_layer.py lines 396-401: not IdentityOp; Transformer Engine's layer spec fuses the
    others into the next linear, gpt_layer_specs.py lines 106-166): an MoE layer's pre-MLP norm, MLA's input norm;
    "moe_act" the routed experts' activation (moe/experts.py TEGroupedMLP lines 814-820).  Both 16-bit only:
    Megatron-core refuses them with FP8 (transformer_config.py lines 793-795)."""
    cfg, lay = tb.cfg, tb.lay
    ab, h = lay.act_bytes, cfg.hidden_size
    moe = cfg.is_moe_layer(i)
    picks = []  # (forward row, forward component, input-gradient component, output bytes)
    if lay.recomputes("layernorm"):
        if moe:
            picks.append(("pre-mlp norm", "mlp_forward", "mlp_backward_input", lay.tokens // lay.tensor * h * ab))
        if cfg.mla:
            picks.append(("input norm", "attn_forward", "attn_backward_input", lay.norm_tokens * h * ab))
    if lay.recomputes("moe_act") and moe:
        rows = lay.tokens // lay.tensor * cfg.experts_per_token
        picks.append(("experts swiglu", "mlp_forward", "mlp_backward_input", rows * cfg.moe_intermediate_size * ab))
    for name, fcomp, comp, out in picks:
        _rerun(tb, [k for k in tb.rows if k.component == fcomp and k.name == name], comp)
        tb.memory(f"{name} (recompute copy)", comp, 2 * out)  # read the rerun output, write the kept storage


def host_share(tb: Table, recompute: bool) -> None:
    """What the host adds to an MoE layer's forward (host.py): launches from Python between the
    dispatcher's syncs; again in the input gradient when the forward is rerun there, replayed on the rerun's own
    MLP rows: the checkpoint's first forward runs under ``no_grad`` and skips the aux loss, its rerun does not
    (docs/model.md, "What a checkpointed forward skips")."""
    lay, cfg = tb.lay, tb.cfg
    local = max(1, cfg.num_experts // lay.expert)

    def row(comp: str, rows: list[Kernel]) -> None:
        secs, ops, syncs = host.forward_excess(rows, lay.host_op, lay.tensor, lay.expert_streams, local,
                                               lay.dispatcher)  # fmt: skip
        _host_row(tb, "host launches and syncs", comp, secs, ops, syncs)

    row("mlp_forward", tb.rows)
    if recompute:  # the rerun's rows as its forward's, in place of the first forward's (attention's too when full)
        blocks = ("attn", "mlp") if lay.policy == "full" else ("mlp",)
        rerun = [replace(tb.rows[i], component=tb.rows[i].component.replace("_backward_input", "_forward"))
                 for r in tb.reruns for i in r if tb.rows[i].component in [f"{b}_backward_input" for b in blocks]]
        row("mlp_backward_input", [k for k in tb.rows if k.component not in [f"{b}_forward" for b in blocks]] + rerun)


def host_backward_share(tb: Table) -> None:
    """What the host adds to an MoE layer's backward (host_backward.py): autograd's calls against the GPU's
    time, from one sync to the next (DeepEP's multihot backward) or over the layer (no sync)."""
    lay = tb.lay
    local = max(1, tb.cfg.num_experts // lay.expert)
    secs, ops, syncs = host_backward.backward_excess(tb.own_rows(), lay.host_op, lay.tensor, lay.expert_streams, local,
                                                     lay.dispatcher)  # fmt: skip
    _host_row(tb, "host launches (backward)", "mlp_backward_input", secs, ops, syncs)


def _host_row(tb: Table, name: str, comp: str, secs: float, ops: int, syncs: int) -> None:
    shape = f"{ops} calls x {tb.lay.host_op * 1e6:.3g} us, {syncs} syncs ({tb.lay.dispatcher})"
    tb.rows.append(Kernel(name, comp, "host", shape, 0.0, 0.0, secs, "host"))


def _legacy_layer_kernels(tb: Table, i: int, recompute: bool) -> None:
    """What Megatron-LM of 2021 runs apart that Megatron-core / Transformer Engine fuses into the GEMMs
    (megatron/mpu/layers.py, megatron/model/distributed.py @ 6985e58): the QKV bias added after its
    GEMM (``F.linear`` on a 3-D input: matmul, then ``+= bias``; the other biases are fused into
    bias-GeLU and bias-dropout-add) and every bias's gradient (a sum over the tokens of its output
    gradient); adding the weight gradients into the accumulated ones is ``layer``'s
    ``grad_accumulation`` pass."""
    cfg, lay = tb.cfg, tb.lay
    n, ab, h, t = lay.tokens, lay.act_bytes, cfg.hidden_size, lay.tensor
    qkv = _attention_shapes(cfg, t)[0][1]  # this rank's QKV outputs
    if cfg.bias or cfg.qkv_bias:
        for comp in ("attn_forward",) + (("attn_backward_input",) if recompute else ()):
            tb.memory("qkv bias add", comp, 2 * n * qkv * ab)
        tb.memory("qkv bias gradient", "attn_backward_weight", n * qkv * ab)
    if cfg.bias:
        tb.memory("out_proj bias gradient", "attn_backward_weight", lay.norm_tokens * h * ab)
        if not cfg.is_moe_layer(i):
            tb.memory("fc1 bias gradient", "mlp_backward_weight", n * cfg.intermediate_size // t * ab)
            tb.memory("fc2 bias gradient", "mlp_backward_weight", lay.norm_tokens * h * ab)


NORM_TENSORS = ("norm weight", "norm bias")  # a LayerNorm's; an RMSNorm has the first


def norm_tensors(cfg: ModelConfig) -> int:
    """Tensors of one norm: a LayerNorm's weight and bias, an RMSNorm's weight."""
    return 2 if cfg.norm == "layernorm" else 1


GRAD_HOOK_NAMES = {"apex": "apex grad copy", "ddp": "DDP main_grad add"}


def autograd_grad_tensors(cfg: ModelConfig, i: int, t: int) -> dict[str, list[int]]:
    """Elements a tensor rank holds of each of layer ``i``'s parameters whose gradient autograd hands over as ``.grad``
    (no wgrad GEMM writes it into ``main_grad``), by the backward component they come from: the norms (a LayerNorm's
    weight and bias as one entry), the linears' biases (column-parallel / t, row-parallel whole), Qwen3's q / k norms
    or MLA's latent norms, an MoE layer's router (E x h, and its bias), a shared expert's gate and biases.  They sum
    to params.whole_on_tensor plus the column-parallel biases / t."""
    h = cfg.hidden_size
    norm = params._norm(cfg, h)
    if cfg.mla:
        inner = ([cfg.q_lora_rank] if cfg.q_lora_rank else []) + [cfg.kv_lora_rank]
    else:
        inner = [cfg.qk_head_dim] * 2 if cfg.qk_norm else []
    qkv_bias = [_attention_shapes(cfg, t)[0][1]] if cfg.bias or cfg.qkv_bias else []
    attn = [norm] + qkv_bias + ([h] if params.out_bias(cfg) else []) + inner
    gelu_bias = cfg.bias and cfg.ffn == "gelu"
    if not cfg.is_moe_layer(i):
        f = cfg.intermediate_size // t * (2 if cfg.ffn == "swiglu" else 1)
        return {"attn_backward_weight": attn, "mlp_backward_weight": [norm] + ([f, h] if cfg.bias else [])}
    mlp = [norm, cfg.num_experts * h] + ([cfg.num_experts] if params.router_bias(cfg) else [])
    mlp += [h] if cfg.shared_expert_gate else []
    mlp += [cfg.shared_intermediate_size // t, h] if gelu_bias and cfg.shared_intermediate_size else []
    return {"attn_backward_weight": attn, "mlp_backward_weight": mlp}


def _grad_hook_adds(tb: Table, i: int) -> None:
    """The post-backward hook's add of each autograd ``.grad`` of a layer into the gradient buffer (derive.grad_hook:
    apex's ``_grad_copy`` into its bucket, or Megatron-core DDP's ``main_grad.add_``), then ``param.grad = None``, run
    in the backward on its stream each micro-batch; the linears' weights and the experts go straight into ``main_grad``
    (gradient accumulation fusion).  One kernel a tensor (a LayerNorm's two)."""
    cfg, lay = tb.cfg, tb.lay
    extra = norm_tensors(cfg) - 1  # a LayerNorm's bias: a second tensor in its entry
    label = GRAD_HOOK_NAMES[lay.grad_hook]
    what = "norms, biases, router" if cfg.is_moe_layer(i) else "norms, biases"
    for comp, sizes in autograd_grad_tensors(cfg, i, lay.tensor).items():
        tb.memory(f"{label} ({what})", comp, sum(sizes) * lay.grad_copy, extra + len(sizes))


def _tp_duplicated_syncs(tb: Table, i: int, recompute: bool) -> None:
    """Megatron-DeepSpeed's ``--sync-tp-duplicated-parameters`` (bigscience-workshop/Megatron-DeepSpeed
    ``megatron/model/fused_layer_norm.py``, ``megatron/mpu/layers.py``): each forward of a LayerNorm
    all-reduces (averages) its weight and its bias over the tensor-parallel group, and each
    row-parallel linear its bias: h elements each (the run's 16-bit dtype, ``act_bytes``),
    latency-bound.  The attention block's norm and out_proj bias, the MLP's norm and (dense) fc2
    bias; again in a recomputed forward."""
    cfg, lay = tb.cfg, tb.lay
    h, t = cfg.hidden_size, lay.tensor
    norm = NORM_TENSORS[:norm_tensors(cfg)]
    row_biases = {"attn": ("out_proj bias",) if cfg.bias else (),
                  "mlp": ("fc2 bias",) if cfg.bias and not cfg.is_moe_layer(i) else ()}  # fmt: skip
    for block, biases in row_biases.items():
        for comp in (f"{block}_forward",) + ((f"{block}_backward_input",) if recompute else ()):
            for tensor in norm + biases:  # one row per tensor, named by it
                tb.comm(f"tp-duplicated parameter sync ({tensor})", comp, "all_reduce", h * lay.act_bytes, t, "nvlink")


def embedding(cfg: ModelConfig, rates: KernelRates, lay: Layout) -> list[Kernel]:
    """Vocabulary-parallel embedding: a lookup of this rank's vocabulary shard for every token,
    reduced across the tensor-parallel ranks; its backward adds the gradient rows into the embedding's
    gradient.  The kernels and collectives each runtime runs around it: docs/model.md, "The embedding's
    collective" and "The embedding's own kernels"."""
    tb, r = Table(rates, lay, cfg), rates
    n, h, ab, t = lay.tokens, cfg.hidden_size, lay.act_bytes, lay.tensor
    outside = (t - 1) / t  # the share of tokens outside a rank's shard: each token is in exactly one
    if t > 1:  # the int64 ids' mask (<, >=, |), clone, shift and masked zero: 9 + 9 + 3 + 16 + 16 + 1 B a token
        tb.memory("vocab mask and shifted ids", "mlp_forward", 54 * n + 8 * n * outside, 6)
    # F.embedding is weight.index_select(0, ids): indexSelectLargeIndex, one element a thread a step, slower than HBM where
    # a rate was measured (rates.index_select, elements a second; docs/model.md, "The embedding's lookup and masked
    # zeroing at their measured rates (s20q)")
    lookup, elements = n * h * ab + n * 8, n * h
    share = min(1.0, r.index_select * lookup / (elements * r.hbm)) if r.index_select else 1.0
    tb.memory("embedding lookup", "mlp_forward", lookup, share=share,
              note=f"indexSelectLargeIndex at {r.index_select / 1e9:.3g} G elements/s" if share < 1.0 else "")
    if t > 1 and lay.legacy:  # output_parallel[input_mask, :] = 0.0 as an index_put_ (PyTorch before 1.10):
        tb.memory("embedding masked rows zeroed", "mlp_forward", n + n * h * ab * outside)  # the masked rows written
    elif t > 1:  # the same as masked_fill_ (PyTorch 1.10 on, pytorch/pytorch#61612): the whole output read and written
        fill = r.masked_fill_broadcast
        tb.memory("embedding masked rows zeroed", "mlp_forward", n + 2 * n * h * ab,
                  share=min(1.0, fill / r.hbm) if fill else 1.0, note="masked_fill_, the mask broadcast")
    if lay.embed_layernorm:  # VocabParallelEmbedding's self.norm (MixedFusedLayerNorm) on the reduced output, whole
        tb.memory("embedding norm", "mlp_forward", 2 * n * h * ab)  # as the final norm: read and write
        tb.memory("embedding norm backward", "mlp_backward_input", 4 * n * h * ab)
        if lay.sync_tp_duplicated:  # its weight and bias all-reduced in every forward (_tp_duplicated_syncs)
            for tensor in NORM_TENSORS:
                tb.comm(f"tp-duplicated parameter sync (embedding {tensor})", "mlp_forward", "all_reduce", h * ab, t, "nvlink")
    if lay.micro_batch > 1:  # [b s h] -> [s b h] transpose().contiguous(): a copy, none at b = 1 (already contiguous)
        tb.memory("embedding transpose [b s h] -> [s b h]", "mlp_forward", 2 * n * h * ab)
    if lay.sequence_parallel and not cfg.max_positions:
        # Megatron-core since cbf8144 without learned positions: reduce-scattered along the sequence, its backward
        # all-gathers the gradient; then clone_scatter_output_in_embedding (default True) copies the rank's part
        tb.comm("tp reduce-scatter", "mlp_forward", "reduce_scatter", n * h * ab, t, "nvlink")
        tb.comm("tp all-gather (grad)", "mlp_backward_weight", "all_gather", n * h * ab, t, "nvlink")
        if t > 1:
            tb.memory("embedding scatter output clone", "mlp_forward", 2 * n // t * h * ab)
    else:  # reduce_from_tensor_model_parallel_region: a blocking all-reduce, whose backward is the identity
        # (Megatron-LM 6985e58 / 80389ef, Megatron-DeepSpeed 8387ae1, Megatron-core 1e05700; docs/model.md)
        tb.comm("tp all-reduce", "mlp_forward", "all_reduce", n * h * ab, t, "nvlink")
        if lay.sequence_parallel:  # learned positions added, then scatter_to_sequence_parallel_region: a slice
            # whose backward all-gathers the gradient, blocking (80389ef mappings.py 200-213; docs/model.md)
            tb.comm("tp all-gather (grad)", "mlp_backward_weight", "all_gather", n * h * ab, t, "nvlink")
    # PyTorch's dense embedding backward (sparse=False) returns a whole V / t x h gradient: at::zeros of the weight's
    # shape in the gradient's dtype (one fill kernel), then the token rows added in (pytorch/pytorch
    # aten/src/ATen/native/cuda/EmbeddingBackwardKernel.cu embedding_backward_cuda_kernel; Embedding.cu's path for
    # <= 3072 tokens the same), every micro-batch on every runtime; learned positions (nn.Embedding) the same, whole
    positions = 0 if lay.alibi else cfg.max_positions  # ALiBi (Megatron-DeepSpeed) builds no position table
    elements, tensors = cfg.vocab_size * h / t + positions * h, 2 if positions else 1
    tb.memory("embedding gradient zero-fill", "mlp_backward_weight", elements * ab, tensors)
    tb.memory("embedding gradient", "mlp_backward_weight", n * h * (ab + 2 * 4))
    if lay.embedding_grad > 0:  # the embedding's .grad handed on each micro-batch (derive.embedding_grad_bytes)
        tb.memory("embedding .grad hand-off", "mlp_backward_weight", elements * lay.embedding_grad, tensors)
    return tb.rows


def ce_tensor_collectives(tb: Table, tokens: int) -> None:
    """The vocabulary cross-entropy's collectives over the tensor group, forward (CE_TP_COLLECTIVES), in one row: a few
    KB each, waited for on the compute stream, so all latency: NCCL's LL model (collectives.small_all_reduce); TE's
    all-gather at the collective model's cost."""
    t, r = tb.lay.tensor, tb.r
    if t <= 1:
        return
    op, calls = CE_TP_COLLECTIVES[tb.lay.cross_entropy]
    nbytes = [tokens * values * 4.0 for values in calls]
    if op == "all_reduce":
        secs = len(calls) * collectives.small_all_reduce(t, tb.group("tp").per_node, r.nccl)
    else:
        secs = sum(collectives.time(op, b * t, t, r, "nvlink") for b in nbytes)
    tb.rows.append(Kernel("cross-entropy tp collectives", "mlp_forward", "comm",
                          f"{len(calls)} x {op} of {sum(nbytes) / len(calls) / 1e3:.3g} KB over {t}", 0.0, sum(nbytes),
                          secs, "latency"))  # fmt: skip


def head(cfg: ModelConfig, rates: KernelRates, lay: Layout) -> list[Kernel]:
    """Final norm, output layer (BF16) and the vocabulary-parallel softmax cross-entropy."""
    tb = Table(rates, lay, cfg)
    n, h, ab, t, V = lay.tokens, cfg.hidden_size, lay.act_bytes, lay.tensor, cfg.vocab_size
    v = -(-V // t)
    tb.memory("final norm", "mlp_forward", 2 * n / t * h * ab)
    # BF16 even in an FP8 model: Megatron-core's output layer is a plain ColumnParallelLinear, not a TE one, so no
    # userbuffers either: with sequence parallelism its forward all-gathers the input and waits for it, then one
    # matmul (LinearWithGradAccumulationAndAsyncCommunication.forward, Megatron-LM df72712, core_r0.9.0,
    # core_r0.11.0, d339190 tensor_parallel/layers.py; NeMo bd0b818 parallel_lm_logits calls the same)
    tb.tp_linear("output layer", "mlp_forward", n, v, h, "all_gather", n * h * ab, "ring", fp8=False, overlap=False)
    # Megatron's vocab_parallel_cross_entropy, op by op on fp32 logits (Megatron-LM 2021 mpu/cross_entropy.py
    # @ 6985e58; Megatron-core tensor_parallel/cross_entropy.py @ df72712, 0014f13, 1e05700, its default with
    # --cross-entropy-loss-fusion off): cast (ab + 4), max (4), subtract (4 + 4), exp (4 + 4), sum (4),
    # divide (4 + 4), six kernels; backward: scale the saved softmax by the loss gradient (4 + 4) and cast
    # back (4 + ab), two kernels. Liger-Kernel's H100 timings of that function: docs/model.md, "Kernel rates"
    if lay.cross_entropy == "megatron":
        tb.memory("cross-entropy (unfused)", "mlp_forward", n * v * (ab + CE_FORWARD_FP32_BYTES), CE_FORWARD_KERNELS)
        tb.memory("cross-entropy backward (unfused)", "mlp_backward_input", n * v * (CE_BACKWARD_FP32_BYTES + ab),
                  CE_BACKWARD_KERNELS)
    else:  # a fused implementation (model.cross_entropy, CE_FUSED)
        (f32, fpass, fkern), (b32, bpass, bkern) = CE_FUSED[lay.cross_entropy]
        tag = {"megatron-fused": "fused", "te": "te"}[lay.cross_entropy]
        tb.memory(f"cross-entropy ({tag})", "mlp_forward", n * v * (f32 + fpass * ab), fkern)
        tb.memory(f"cross-entropy backward ({tag})", "mlp_backward_input", n * v * (b32 + bpass * ab), bkern)
    ce_tensor_collectives(tb, n)
    if lay.grad_copy > 0:  # the post-backward hook on the final norm (_grad_hook_adds)
        tb.memory(f"{GRAD_HOOK_NAMES[lay.grad_hook]} (final norm)", "mlp_backward_weight",
                  params._norm(cfg, h) * lay.grad_copy, norm_tensors(cfg))
    if lay.grad_accumulation > 0:
        tb.memory("output layer gradient accumulation", "mlp_backward_weight", v * h * lay.grad_accumulation)
    # The backward as LinearWithGradAccumulationAndAsyncCommunication.backward runs it (Megatron-LM df72712
    # tensor_parallel/layers.py lines 250-325; core_r0.9.0, core_r0.11.0, d339190, 1e05700 the same): with sequence
    # parallelism the input's re-gather is launched (async_op) before the dgrad GEMM and waited for after it, the
    # input gradient's reduce-scatter launched before the wgrad GEMM and waited for after it; each exposed only for
    # what it takes beyond its GEMM, which runs on the SMs the collective's CTAs leave while it lasts (nccl_beside).
    # Without sequence parallelism the input gradient is all-reduced instead (tp_grad_all_reduce).
    output_layer_backward(tb, cfg, lay)
    tb.memory("final norm backward", "mlp_backward_input", 4 * n / t * h * ab)  # after the wait: it reads the result
    return tb.rows


def output_layer_backward(tb: Table, cfg: ModelConfig, lay: Layout, deferred: bool = False) -> None:
    """The output layer's backward, as head() costs it; ``deferred``: a micro-batch whose wgrad Megatron-core defers
    to the drain (model.defer_embedding_wgrad, model/deferred_wgrad.py): no re-gather, no wgrad GEMM, so the input
    gradient's reduce-scatter (or all-reduce) is waited for with nothing beside it."""
    n, h, ab, v = lay.tokens, cfg.hidden_size, lay.act_bytes, -(-cfg.vocab_size // lay.tensor)
    wgrad = lambda: None if deferred else tb.gemm("output layer wgrad", "mlp_backward_weight", h, v, n, fp8=False,  # noqa: E731
                                                  out_bytes=lay.wgrad_out)
    if lay.sequence_parallel:
        with tb.nccl_beside("tp all-gather (wgrad input)", "mlp_backward_input", "all_gather", 0.0 if deferred else n * h * ab):
            tb.gemm("output layer dgrad", "mlp_backward_input", n, h, v, fp8=False)
        with tb.nccl_beside("tp reduce-scatter (grad)", "mlp_backward_weight", "reduce_scatter", n * h * ab):
            wgrad()
    else:
        tb.gemm("output layer dgrad", "mlp_backward_input", n, h, v, fp8=False)
        tp_grad_all_reduce(tb, "mlp_backward_input", "mlp_backward_weight", n * h * ab, wgrad)


def mtp_projection(cfg: ModelConfig, rates: KernelRates, lay: Layout) -> list[Kernel]:
    """An MTP module's own kernels: its two norms and the 2h -> h projection."""
    tb = Table(rates, lay, cfg)
    n, h, ab, t = lay.tokens, cfg.hidden_size, lay.act_bytes, lay.tensor
    tb.memory("mtp norms", "attn_forward", 2 * 2 * n / t * h * ab)
    tb.gemm("mtp projection", "attn_forward", n, h // t, 2 * h)
    tb.gemm("mtp projection dgrad", "attn_backward_input", n, 2 * h, h // t)
    tb.gemm("mtp projection wgrad", "attn_backward_weight", 2 * h, h // t, n, out_bytes=lay.wgrad_out)
    return tb.rows


def mtp_module(cfg: ModelConfig, rates: KernelRates, lay: Layout) -> list[Kernel]:
    """One DeepSeek-V3 MTP module: two norms, the 2h -> h projection, one layer and the shared head."""
    return mtp_projection(cfg, rates, lay) + layer(cfg, cfg.num_layers, rates, lay) + head(cfg, rates, lay)


# Transformer Engine's weight refresh (cast_transpose into weight_fp8 and weight_t_fp8: read 2, write 1 + 1
# bytes a weight element), in every forward when nothing is cached (is_first_microbatch None: linear.py,
# layernorm_linear.py, layernorm_mlp.py at release_v0.8 / 09ba842 / v1.6); with the cache, once a step
# (model/fp8_step_casts.py fp8_weight_cast_ms)
FP8_WEIGHT_CAST_BYTES = 2 + 1 + 1


def fp8_weight_cast_bytes(fp8_params: bool, transpose: bool, fp4: bool = False) -> float:
    """Bytes per weight element of Transformer Engine's FP8 weight refresh.  A 16-bit weight: read 2, write the FP8
    copy (1) and, where TE makes transposes, its transpose (1) in the same kernel (FP8_WEIGHT_CAST_BYTES).  FP8
    parameters (``model.fp8_params``: Float8Tensor weights under fp8_model_init, cast from the master weights by the
    optimizer): only the transpose is made from the FP8 weight (read 1, write 1: ``Float8Tensor.transpose_2d`` in
    TE 1.x, ``update_usage(columnwise_usage=True)`` -> ``fp8_transpose`` in 2.x), and nothing without transposes."""
    if fp8_params:
        return 2.0 if transpose else 0.0
    written = FP8_WEIGHT_CAST_BYTES - 2 - (0 if transpose else 1)  # the copies written, 1 byte a value in FP8
    # NVFP4 (``fp4``): the same one kernel (nvfp4_transpose.cuh: one 16-bit read, the row-wise and column-wise
    # copies written) at NVFP4_BYTES a value; derive keeps the transposes with NVFP4
    return 2 + written * (NVFP4_BYTES if fp4 else 1.0)


def fp8_weight_casts(tb: Table, i: int) -> None:
    """Layer ``i``'s FP8 weights cast and transposed in its forward, one kernel per linear (uncached)."""
    cfg, lay = tb.cfg, tb.lay
    dense, routed = params.linear_weights(cfg, i)
    shapes = _attention_shapes(cfg, lay.tensor)
    attn = sum(o * k for _, o, k, _ in shapes) + cfg.num_heads // lay.tensor * cfg.v_head_dim * cfg.hidden_size
    mlp = max(0.0, dense / lay.tensor + routed / lay.expert - attn)  # the rest of the rank's linears
    n = fp8_linears(cfg, i, lay)
    n_attn = len(shapes) + 1
    per = fp8_weight_cast_bytes(False, lay.fp8_transpose, lay.fp4)  # a cast per use: 16-bit weights
    share = tb.cast_transpose_share  # a 16-bit weight's cast with its transpose: TE's cast_transpose kernel
    tb.memory("attention weights fp8 cast (uncached)", "attn_forward", attn * per, n_attn, share=share)
    tb.memory("mlp weights fp8 cast (uncached)", "mlp_forward", mlp * per, n - n_attn, share=share)
    tb.amax("attention weights (uncached)", "attn_forward", attn, n_attn)
    tb.amax("mlp weights (uncached)", "mlp_forward", mlp, n - n_attn)


def fp8_linears(cfg: ModelConfig, i: int, lay: Layout) -> int:
    """Transformer Engine FP8 GEMM modules of layer ``i`` on one rank (each keeps its own amaxes)."""
    n = len(_attention_shapes(cfg, lay.tensor)) + 1
    if cfg.is_moe_layer(i):
        return n + 2 * max(1, cfg.num_experts // lay.expert) + (2 if cfg.shared_intermediate_size else 0)
    return n + 2


def amax_reduction(cfg: ModelConfig, rates: KernelRates, lay: Layout, layers: tuple[int, ...]) -> list[Kernel]:
    """Transformer Engine's per-tensor ("delayed") FP8 scaling, once per model chunk and micro-batch.

    Megatron wraps a model chunk's forward in one ``fp8_autocast``; at its exit Transformer Engine
    concatenates the amaxes its FP8 modules recorded, all-reduces them (max) over the amax group and
    updates every amax history and scale in one kernel; the first module's backward does the same for the
    gradients' amaxes (TE v1.6 ``fp8.py`` ``reduce_and_update_fp8_tensors``, ``all_reduce(async_op=False)``;
    v0.8 ``global_amax_reduction``).  A few bytes over up to thousands of ranks: NCCL's latency model
    (collectives.small_all_reduce).  Not blocking (TE 0.8-1.x's ``NVTE_ASYNC_AMAX_REDUCTION=1``), it runs
    beside the compute and only the update kernel is costed."""
    if lay.amax_group <= 0 or lay.current_scaling:  # current scaling keeps no history and reduces per cast
        return []
    if lay.evaluation:  # only with autograd on (fp8_autocast_exit: torch.is_grad_enabled(), v1.6rc1 to release_v2.8;
        return []       # prepare_forward: self.training, release_v0.8 and 09ba842)
    tb = Table(rates, lay, cfg)
    per_kind: dict[bool, int] = {}  # fp8_linears reads a layer only as MoE or dense
    linears = 0
    for i in layers:
        moe = cfg.is_moe_layer(i)
        if moe not in per_kind:
            per_kind[moe] = fp8_linears(cfg, i, lay)
        linears += per_kind[moe]
    group = lay.amax_group  # model.fp8_amax_reduction: the tensor group, or tensor x data x context
    where = tb.group("tp" if group == lay.tensor else "tp-dp-cp")
    for comp, direction in (("mlp_forward", "forward"), ("attn_backward_input", "backward")):
        amaxes = linears * AMAXES[direction]
        if group > 1:
            secs = collectives.small_all_reduce(group, where.per_node, rates.nccl) if lay.amax_blocking else 0.0
            link = where.link
            tb.rows.append(Kernel(f"fp8 amax all-reduce ({direction})", comp, "comm",
                                  f"all_reduce {amaxes * 4} B over {group} ({link})", 0.0, amaxes * 4.0, secs,
                                  "latency"))  # fmt: skip
        tb.memory(f"fp8 amax + scale update ({direction})", comp, amax_update_bytes(amaxes, lay.amax_history))
    return tb.rows


def amax_update_bytes(amaxes: int, history: int) -> float:
    """Bytes Transformer Engine's bulk amax and scale update moves for ``amaxes`` FP8 tensors with a ``history``-long
    amax history (TE release_v1.14 ``common/recipe/delayed_scaling.cu`` ``kernel_bulk``, lines 173-266): per amax
    it reads the reduced amax (4 B), reads the history's other ``history - 1`` entries and writes all ``history`` of
    them rolled, and writes the scale and its inverse (4 B each); fp32 throughout.  From TE 2.0 the kernel writes
    no inverse (4 B an amax less, not told apart here)."""
    return 4.0 * amaxes * (1 + (history - 1) + history + 2)


def by_component(rows: list[Kernel]) -> dict[str, float]:
    """Milliseconds per [chunk] component."""
    out: dict[str, float] = {}
    for k in rows:
        out[k.component] = out.get(k.component, 0.0) + k.ms
    return out


def passes(rows: list[Kernel]) -> Iterator[tuple[str, float]]:
    """(forward | backward_input | backward_weight, ms) of a block, all-to-all included."""
    for name in (F, I, W):
        yield name, sum(k.ms for k in rows if k.component.endswith(name) or
                        (name == I and k.component.endswith("_backward") and k.kind == "comm"))  # fmt: skip
