"""Scenario files: TOML in, a validated Scenario out, with one-line errors.

pydantic does the type and range checks so that every error names its field
(``costs.forward: must be > 0``); the few cross-field rules are checked here.
Overrides (``a.b=value`` texts, the CLI's ``--set``) are applied to the raw
TOML before validation, so they get exactly the same checks.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import sys
import tomllib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator

from .. import limits
from . import variability
from .channels import OrderError
from .costs import DEEPSEEK_ORDER, Component, CostModel
from .costs import Chunk as ChunkCosts
from ..errors import ScenarioError, cut, shown
from ..model import ddp_buckets, deferred_wgrad
from ..model.activations import POLICIES
from ..model.recompute import MODULES as RECOMPUTE_MODULES
from ..model.config import INLINE_FIELDS, ModelError
from ..model.sections import HardwareSection, ModelSection, ParallelSection, once, plain_number, strict_bool
from ..schedules.rules import WORK, Channel
from .resolve import Inputs, resolve
from ..step_costs import StepCosts


def _num(**rules):
    """A finite float under ``rules`` (gt=0, ...) that is given as a number, not text."""
    return Annotated[float, Field(allow_inf_nan=False, **rules), BeforeValidator(plain_number)]


PositiveTime = _num(gt=0)
NonNegTime = _num(ge=0)
PerStage = Union[PositiveTime, list[PositiveTime]]
PerStageNonNeg = Union[NonNegTime, list[NonNegTime]]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Pipeline(_Section):
    schedule: str
    stages: Annotated[int, Field(ge=1, le=4096)]
    microbatches: Annotated[int, Field(ge=1, le=1_000_000)]
    chunks_per_rank: Annotated[int, Field(ge=1, le=64)] | None = None
    # Megatron-core's microbatch_group_size_per_vp_stage (interleaved schedules; its range is checked there)
    microbatch_group: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @field_validator("stages", "microbatches", "chunks_per_rank", "microbatch_group", mode="before")
    @classmethod
    def _whole(cls, v):
        # A count is an integer: TOML 8.0 or 8.5 is not one, nor is "8" (text).
        if isinstance(v, (bool, str, float)):
            raise ValueError("must be a whole number")
        return v


class Jitter(_Section):
    """Random per-op duration factors with mean 1 (variability.py)."""

    distribution: Literal[variability.DISTRIBUTIONS]
    cv: _num(ge=0)

    @field_validator("cv")
    @classmethod
    def _cv_fits(cls, v, info):
        problem = variability.cv_problem(info.data.get("distribution", "lognormal"), v)
        if problem:
            raise ValueError(problem)
        return v


class Costs(_Section):
    forward: PerStage | None = None  # required unless [chunk] is given
    backward: PerStage | None = None
    weight: PerStageNonNeg | None = None
    overlapped: PerStage | None = None
    jitter: Jitter | None = None


class Comm(_Section):
    p2p: NonNegTime = 0.0
    # "derived": "blocking" for Megatron's schedules with a [model] (Megatron-core's 1F1B waits for its batched
    # send/receive), except Megatron-core's interleaved one (overlap_p2p_comm); else "async"
    p2p_mode: Literal["async", "blocking", "derived"] = "derived"


class ChunkOrder(_Section):
    """[chunk.order]: per channel, the order of a pair's components in each layer pair
    (costs.Chunk.order); [] declares none (the channel serves by priority alone)."""

    compute: list[str] = [c.name for c in DEEPSEEK_ORDER[Channel.COMPUTE]]
    a2a: list[str] = [c.name for c in DEEPSEEK_ORDER[Channel.A2A]]

    @field_validator("compute", "a2a")
    @classmethod
    def _each_once(cls, v, info):
        channel = Channel.COMPUTE if info.field_name == "compute" else Channel.A2A
        names = [c.name for c in Component if c.channel == channel]
        if v and sorted(v) != sorted(names):
            raise ValueError(f"must list each {info.field_name} component once ({', '.join(names)}), or be [] for none")
        return v


class _ChunkShape(_Section):
    layers: Annotated[int, Field(ge=1, le=1000)]
    comm_compute_slowdown: _num(ge=1) = 1.0
    order: ChunkOrder = ChunkOrder()

    @field_validator("layers", mode="before")
    @classmethod
    def _whole(cls, v):
        return Pipeline._whole(v)


# Component model: one stage = ``layers`` MoE layers; one key per costs.Component, its
# time per layer (all-to-all and weight-gradient parts may be 0, the others must be > 0).
Chunk = create_model(
    "Chunk",
    __base__=_ChunkShape,
    **{c.name: (NonNegTime if c.may_be_zero else PositiveTime, ...) for c in Component},
)


class Memory(_Section):
    activation: PerStageNonNeg = 1.0
    parameters: PerStageNonNeg = 1.0
    recompute: Literal[POLICIES] = "none"  # activation recompute policy (with [model]; model/activations.py)
    # Megatron-core's --recompute-modules, with recompute = "selective" only (None: its default, ["core_attn"];
    # model/recompute.py)
    recompute_modules: list[Literal[RECOMPUTE_MODULES]] | None = None
    runtime: _num(ge=0) | None = None  # bytes per rank for CUDA context, NCCL, workspace; None: derived (model/memory.py)
    fp8_weight_cache: bool = True  # FP8 models: keep each linear's FP8 weight copy + transpose all step (TE)

    @field_validator("fp8_weight_cache", mode="before")
    @classmethod
    def _bool(cls, v):
        return strict_bool(v)

    @field_validator("recompute_modules")
    @classmethod
    def _modules_once(cls, v):
        return v if v is None else once(v)


class Limits(_Section):
    max_memory: _num(gt=0) = limits.DEFAULT_MAX_MEMORY  # bytes


class Ranks(_Section):
    # rank -> factor its compute takes longer by; TOML: slowdown = { 3 = 1.2 }
    slowdown: dict[Annotated[int, Field(ge=0)], _num(gt=0, le=1000)] = {}


class Step(_Section):
    """End of a training step (step.py, docs/step.md); all zero: the step is the pipeline."""

    # per stage copy: its data-parallel gradient reduction; "derived": from [model]/[parallel]/[hardware]
    grad_sync: Union[PerStageNonNeg, Literal["derived"]] = 0.0
    overlap_grad_sync: bool = False  # start a copy's sync at its last weight-gradient
    # per stage held on two ranks: summing the two copies; "derived" as grad_sync
    cross_copy_sync: Union[PerStageNonNeg, Literal["derived"]] = 0.0
    cross_copy_eager: bool = False  # sum as soon as both copies are done, not after the pipeline
    # per stage copy: its share of its rank's optimizer step; "derived": from [model]/[parallel]/[hardware];
    # None (unset): "derived" when grad_sync is and the GPU preset's kernel rates time it, else 0
    # (Scenario.optimizer_setting)
    optimizer: Union[PerStageNonNeg, Literal["derived"], None] = None
    # a copy's grad sync in n equal parts; "derived": Megatron-core's DDP buckets (model/ddp_buckets.py)
    grad_sync_buckets: Union[Annotated[int, Field(ge=1, le=1000)], Literal["derived"]] = "derived"
    # Megatron-core's --ddp-bucket-size (NeMo's ddp bucket_size): elements a bucket is filled to where its DDP
    # buckets (model/ddp_buckets.py fill_size); None: its default, max(40 M, 1 M x data).  Needs "derived" buckets
    ddp_bucket_size: Annotated[int, Field(ge=1, le=10**12)] | None = None
    # "derived": ZeRO 1/2's parameter all-gather hidden under the next step's forward; None: as overlap_grad_sync
    overlap_param_gather: bool | None = None
    # whose overlapped parameter all-gather the step's start waits for (model/param_gather.py): Megatron-core's
    # distributed optimizer (bucket by bucket in the forward pre-hooks) or apex's DistributedFusedAdam (all of them)
    param_gather: Literal["megatron-core", "apex"] = "megatron-core"
    # Megatron-core's --overlap-param-gather-with-optimizer-step: the first chunk's all-gather launched inside the
    # optimizer step, beside the other chunks' (model/param_gather.py, step_start_ms)
    overlap_param_gather_with_optimizer_step: bool = False
    # NeMo's with_fp32_embedding_grads on apex's DistributedFusedAdam: the word and position embeddings' gradients
    # reduced in fp32 whatever model.grads_dtype (model/nemo_optimizer.py, fp32_embedding_extra_bytes)
    fp32_embedding_grads: bool = False
    # NeMo 1.x's explicit fp32 AdamW for the word / position embeddings, outside apex's DistributedFusedAdam: their
    # gradients all-reduced in fp32 after apex's grad sync, the AdamW step on every data-parallel rank
    # (model/nemo_optimizer.py, fp32_optimizer_elements)
    fp32_embedding_optimizer: bool = False
    # with it, NeMo v1.17.0_pt_23.04's way of feeding that AdamW: the embedding's bf16 .grad added into its fp32 copy
    # once a step, and zeroed at the next (model/nemo_optimizer.py, fp32_grad_add_ms); later NeMo adds it per
    # micro-batch
    fp32_embedding_grad_add: bool = False
    # the parameters NeMo marks _disable_overlap_grad_sync on apex's DistributedFusedAdam: on a rank holding one, the
    # bucket group they join (its first model chunk's) is reduce-scattered only after the pipeline, in apex's
    # grad_sync() (model/grad_sync.py, grad_sync_parts)
    grad_sync_held: list[Literal["embedding", "sequence-parallel", "final-norm"]] = []
    # apex's bucket_cap_mb (its default 100): the held bucket group's extra fp32 and 16-bit buckets
    bucket_cap_mb: _num(gt=0, le=1e6) = 100.0
    # "derived": whose end of step (model/derived_step.py): Megatron's, or DeepSpeed's bf16 optimizer + pipe engine
    runtime: Literal["megatron", "deepspeed-bf16"] = "megatron"
    # when an overlapped sync starts: at the copy's last weight-gradient ("ready"), or rank r's r ops later (Megatron's
    # interleaved schedule); "derived": "pp-aligned" for interleaved-1f1b with 2+ chunks per rank, else "ready"
    grad_sync_launch: Literal["ready", "pp-aligned", "derived"] = "derived"
    grad_sync_shares_p2p: bool = False  # grad sync and pipeline P2P on one link (one NIC per GPU): P2P goes first
    # SMs (NCCL CTAs) a data-parallel collective takes from the compute it overlaps (model/comm_slowdown.py,
    # collectives.NCCL_DP_CTAS); 0: it takes none
    dp_comm_sms: Annotated[int, Field(ge=0, le=64)] = 16
    # Megatron-core's DDP average_in_collective: the gradient reduce-scatter averages in NCCL (ncclAvg), not a sum,
    # which keeps it off NCCL's PAT algorithm (model/collectives.py, bucketed)
    average_in_collective: bool = False

    @field_validator("grad_sync_buckets", mode="before")
    @classmethod
    def _whole(cls, v):
        if isinstance(v, str) and v != "derived":
            raise ValueError('must be a whole number of buckets (1-1000) or "derived"')
        return v if v == "derived" else Pipeline._whole(v)

    @field_validator("grad_sync_held")
    @classmethod
    def _held_once(cls, v):
        return once(v)

    @field_validator("dp_comm_sms", "ddp_bucket_size", mode="before")
    @classmethod
    def _whole_sms(cls, v):
        return Pipeline._whole(v)

    @field_validator("grad_sync", "cross_copy_sync", "optimizer", mode="before")
    @classmethod
    def _time_or_derived(cls, v):
        if isinstance(v, str) and v != "derived":
            raise ValueError('must be a time in ms, a per-stage list, or "derived"')
        return v

    @field_validator("overlap_grad_sync", "cross_copy_eager", "overlap_param_gather", "grad_sync_shares_p2p",
                     "overlap_param_gather_with_optimizer_step", "fp32_embedding_grads", "fp32_embedding_optimizer",
                     "fp32_embedding_grad_add",
                     "average_in_collective",
                     mode="before")
    @classmethod
    def _bool(cls, v):
        return None if v is None else strict_bool(v)

    def param_gather_overlapped(self) -> bool:
        """overlap_param_gather as given, else as overlap_grad_sync; None: the combination is refused
        (Megatron: --overlap-param-gather needs --overlap-grad-reduce; DeepSpeed overlaps neither)."""
        overlapped = self.overlap_grad_sync if self.overlap_param_gather is None else self.overlap_param_gather
        if overlapped and (not self.overlap_grad_sync or self.runtime == "deepspeed-bf16"):
            return None
        return overlapped


class Scenario(_Section):
    pipeline: Pipeline
    costs: Costs = Costs()
    chunk: Chunk | None = None
    comm: Comm = Comm()
    memory: Memory = Memory()
    limits: Limits = Limits()
    ranks: Ranks = Ranks()
    step: Step | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] = 0
    # Costs and memory from the model and the hardware (dualpipe_sim/model, docs/model.md).
    model: ModelSection | None = None
    parallel: ParallelSection | None = None
    hardware: HardwareSection | None = None

    @field_validator("seed", mode="before")
    @classmethod
    def _whole_seed(cls, v):
        return Pipeline._whole(v)

    def options(self) -> dict:
        """Schedule options taken from [pipeline] (each family uses the ones it declares)."""
        return {"chunks_per_rank": self.pipeline.chunks_per_rank, "microbatch_group": self.pipeline.microbatch_group}

    def recompute(self) -> str:
        """memory.recompute as given, else the schedule family's default (what its source runs:
        "full" for chimera-doubling, "none" for the others)."""
        if "recompute" in self.memory.model_fields_set:
            return self.memory.recompute
        from ..schedules import registry  # here: registry imports the schedule families

        family = registry.families().get(self.pipeline.schedule)
        return family.recompute if family is not None else self.memory.recompute

    def recompute_modules(self) -> tuple[str, ...] | None:
        """memory.recompute_modules, checked against the policy (None: Megatron-core's default list)."""
        given = self.memory.recompute_modules
        if given is None:
            return None
        if self.recompute() != "selective":
            raise ScenarioError(f'memory.recompute_modules: only with memory.recompute = "selective" (Megatron-core\'s '
                                f'--recompute-granularity selective), got "{self.recompute()}"')
        return tuple(dict.fromkeys(given))  # Megatron-core checks a set: a repeat changes nothing

    def derived(self, memo=None):
        """Per-stage figures derived from [model]/[parallel]/[hardware] (model/derive.py); None without [model].
        ``memo``: a derive.Memo kept across a caller's many derivations (the same figures, sooner)."""
        if self.model is None:
            if self.parallel is not None:
                raise ScenarioError("parallel: only applies with a [model] section")
            if self.hardware is not None and self.hardware.gpu_variability is not None:
                raise ScenarioError("hardware.gpu_variability: only applies with a [model] section (it slows the "
                                    "kernels derived from it)")
            return None
        from ..model import derive

        try:
            st = derive.setup(self)
            return derive.derive(st) if memo is None else derive.derive(st, memo)
        except ModelError as exc:
            raise ScenarioError(str(exc)) from None

    def device_memory(self) -> float | None:
        """Bytes of HBM per GPU from [hardware] (None when unknown)."""
        if self.hardware is None:
            return None
        from ..model import derive

        try:
            hbm = derive.hardware(self.hardware).hbm_bytes
        except ModelError:
            hbm = self.hardware.hbm
        return hbm or None

    def optimizer_setting(self):
        """step.optimizer as set, or its default: "derived" beside a derived grad_sync when the optimizer can
        be timed (a GPU preset's kernel rates: no hardware.efficiency), else no time."""
        st = self.step
        if st.optimizer is not None:
            return st.optimizer
        timed = self.hardware is not None and self.hardware.preset is not None and self.hardware.efficiency is None
        return "derived" if st.grad_sync == "derived" and self.model is not None and timed else 0.0

    def step_costs(self, derived=None) -> StepCosts | None:
        """The [step] figures per stage, or None without a [step] table.  ``derived``: as cost_model's."""
        if self.step is None:
            return None
        S, st = self.pipeline.stages, self.step
        if st.runtime == "deepspeed-bf16" and st.overlap_grad_sync:
            raise ScenarioError('step.overlap_grad_sync: must be false with step.runtime = "deepspeed-bf16" '
                                "(DeepSpeed's pipeline engine reduces the gradients after the pipeline)")
        if st.runtime == "deepspeed-bf16" and self.model is not None and "derived" in (st.grad_sync, self.optimizer_setting()):
            from ..model.derived_step import check_deepspeed  # its rules, named by step.runtime, not by a figure

            try:
                check_deepspeed((derived if derived is not None else self.derived()).setup)
            except ModelError as exc:
                raise ScenarioError(str(exc)) from None
        if st.param_gather_overlapped() is None:
            raise ScenarioError("step.overlap_param_gather: must be false unless step.overlap_grad_sync = true "
                                "(Megatron: --overlap-param-gather needs --overlap-grad-reduce)")
        if st.overlap_param_gather_with_optimizer_step:
            self._check_gather_with_optimizer()
        if st.ddp_bucket_size is not None and st.grad_sync_buckets != "derived":
            raise ScenarioError('step.ddp_bucket_size: is the size Megatron-core fills buckets to; it needs '
                                'step.grad_sync_buckets = "derived"')
        if st.fp32_embedding_grads and (st.param_gather != "apex" or st.grad_sync != "derived"):
            raise ScenarioError('step.fp32_embedding_grads: is NeMo\'s on apex\'s DistributedFusedAdam; it needs '
                                'step.param_gather = "apex" and step.grad_sync = "derived"')
        if (st.grad_sync_held or st.fp32_embedding_optimizer) and (st.param_gather != "apex" or st.grad_sync != "derived"):
            key = "step.grad_sync_held" if st.grad_sync_held else "step.fp32_embedding_optimizer"
            raise ScenarioError(f'{key}: is NeMo\'s on apex\'s DistributedFusedAdam; it needs '
                                'step.param_gather = "apex" and step.grad_sync = "derived"')
        if st.fp32_embedding_grad_add and not st.fp32_embedding_optimizer:
            raise ScenarioError("step.fp32_embedding_grad_add: is NeMo 1.17's add into the fp32 embedding optimizer's "
                                "gradients; it needs step.fp32_embedding_optimizer = true")
        if st.fp32_embedding_optimizer and st.fp32_embedding_grads:
            raise ScenarioError("step.fp32_embedding_optimizer: NeMo 1.x's separate fp32 AdamW and NeMo 2's fp32 "
                                "buckets (step.fp32_embedding_grads) are two versions' ways: set one of them")
        from ..model.derived_step import derived_sync
        from ..model.grad_sync import every_backward_fsdp, grad_sync_shares, grad_sync_shares_fsdp, grad_sync_tail
        from ..model.step_memo import per_call

        figures = {}
        memo: dict = {}  # what the figures below share of this scenario and derivation, worked out once
        settings = {"grad_sync": st.grad_sync, "cross_copy_sync": st.cross_copy_sync, "optimizer": self.optimizer_setting()}
        for key, setting in settings.items():
            if setting == "derived":
                try:
                    figures[key] = derived_sync(self, key, derived, memo)
                except ModelError as exc:
                    raise ScenarioError(f"step.{key}: {exc}") from None
        tail, shares, every = (), (), ()
        if st.grad_sync == "derived":  # what runs after the data-parallel sync (finalize_model_grads, NeMo's grad_sync)
            try:
                tail = grad_sync_tail(self, derived, memo)
                shares = grad_sync_shares(self, derived, memo)  # Megatron-core's bucket groups, when unequal
                # or ZeRO 2/3's, as Megatron-FSDP's post-backward hooks release them
                shares = shares or grad_sync_shares_fsdp(self, derived, figures.get("grad_sync"))
                every = every_backward_fsdp(self, derived)  # ZeRO 2's reduce-scatters after the earlier backwards
            except ModelError as exc:
                raise ScenarioError(f"step.grad_sync: {exc}") from None
            tail = tail if any(tail) else ()
        return StepCosts(
            grad_sync=figures.get("grad_sync") or _per_stage(st.grad_sync, S, "step.grad_sync"),
            grad_sync_tail=tail,
            cross_copy_sync=figures.get("cross_copy_sync") or _per_stage(st.cross_copy_sync, S, "step.cross_copy_sync"),
            optimizer=figures.get("optimizer") or _per_stage(settings["optimizer"], S, "step.optimizer"),
            overlap_grad_sync=self.grad_sync_overlapped(),
            cross_copy_eager=st.cross_copy_eager,
            grad_sync_buckets=per_call(memo, "buckets", lambda: ddp_buckets.per_stage(self, derived)),
            grad_sync_shares=shares,
            grad_sync_launch=self.grad_sync_launch(),
            nic_shared=st.grad_sync_shares_p2p,
            dp_comm_slowdown=self._dp_comm_slowdown(derived, memo),
            drain=self._drain(derived),
            every_backward=every,
        )

    def _drain(self, derived) -> tuple[float, ...]:
        """Per stage, the deferred output-layer wgrad GEMMs its rank runs after its pipeline work; () : none."""
        deferral = self.deferral(derived if derived is not None or self.model is None else self.derived())
        if deferral is None:
            return ()
        return tuple(deferral.drain if s == deferral.stage else 0.0 for s in range(self.pipeline.stages))

    def _dp_comm_slowdown(self, derived, memo: dict | None = None) -> tuple[float, ...]:
        """Per stage, its compute's slowdown under a data-parallel collective (step.dp_comm_sms); () when the
        collectives take no SMs or the compute is not timed from kernels (no [model] or no preset's rates)."""
        if not self.step.dp_comm_sms or self.model is None or self.hardware is None:
            return ()
        from ..model.comm_slowdown import dp_comm_slowdown
        from ..model.step_memo import per_call

        try:
            return per_call(memo, "dp_comm_slowdown", lambda: dp_comm_slowdown(self, self.step.dp_comm_sms, derived))
        except ModelError as exc:
            raise ScenarioError(f"step.dp_comm_sms: {exc}") from None

    def p2p_mode(self) -> str:
        """comm.p2p_mode as given; "derived": "blocking" for 1F1B (and interleaved 1F1B under model.runtime =
        "megatron-lm-2021" or model.training_loop = "nemo-1") with a [model], else "async" (docs/model.md, "What the
        defaults describe").  NeMo 1 leaves overlap_p2p_comm and batch_p2p_comm to Megatron-core's ModelParallelConfig
        (False, True) and sets batch_p2p_sync (NeMo @ f8eeb79 megatron_base_model.py lines 1147, 1159-1168; core_r0.8.0
        model_parallel_config.py lines 218-228): batched sends, waited for, then torch.cuda.synchronize()."""
        if self.comm.p2p_mode != "derived":
            return self.comm.p2p_mode
        if self.model is None:
            return "async"
        batched = self.model.runtime == "megatron-lm-2021" or self.model.training_loop == "nemo-1"
        return "blocking" if self.pipeline.schedule == "1f1b" or (batched and self._megatron_interleaved()) else "async"

    def _check_gather_with_optimizer(self) -> None:
        """step.overlap_param_gather_with_optimizer_step as Megatron-core accepts it (training/arguments.py @
        core_r0.11.0: the distributed optimizer, --overlap-param-gather, the interleaved schedule)."""
        key, st = "step.overlap_param_gather_with_optimizer_step", self.step
        zero = self.parallel.zero if self.parallel is not None else 0
        if st.param_gather != "megatron-core":
            raise ScenarioError(f'{key}: is Megatron-core\'s; it needs step.param_gather = "megatron-core"')
        if zero not in (1, 2) or not st.param_gather_overlapped():
            raise ScenarioError(f"{key}: needs the distributed optimizer's overlapped all-gather "
                                "(parallel.zero = 1 or 2 and step.overlap_param_gather = true)")
        if not self._megatron_interleaved():
            raise ScenarioError(f'{key}: needs pipeline.schedule = "interleaved-1f1b" (or -overlap) with 2+ '
                                "chunks per rank (Megatron-core supports it only with interleaved pipeline parallelism)")
        if self.optimizer_setting() != "derived":
            raise ScenarioError(f'{key}: needs step.optimizer = "derived" (the overlap is read off the derived '
                                "optimizer step)")

    def _megatron_interleaved(self) -> bool:
        """Megatron's interleaved schedule (with or without the all-to-all overlap), 2+ chunks per rank."""
        from ..schedules.interleaved import DEFAULT_CHUNKS

        chunks = self.pipeline.chunks_per_rank or DEFAULT_CHUNKS
        return self.pipeline.schedule in ("interleaved-1f1b", "interleaved-1f1b-overlap") and chunks > 1

    def fsdp_grad_sync(self) -> bool:
        """Whether the grad sync is Megatron-FSDP's (parallel.zero 2 or 3, step.grad_sync = "derived"): each unit's
        reduce-scatter launched by its post-backward hook, the overlap forced on (megatron_fsdp.py @ d98e8a6 lines
        331-337, 757-783), start_grad_sync a no-op then (lines 1325-1340), so step.overlap_grad_sync and
        step.grad_sync_launch change nothing (docs/step.md, "ZeRO 2 and 3: Megatron-FSDP's reduce-scatters")."""
        return (self.step is not None and self.step.grad_sync == "derived" and self.parallel is not None
                and self.parallel.zero >= 2)

    def grad_sync_overlapped(self) -> bool:
        """step.overlap_grad_sync, or on where Megatron-FSDP forces it (fsdp_grad_sync)."""
        return self.step.overlap_grad_sync or self.fsdp_grad_sync()

    def grad_sync_launch(self) -> str:
        """step.grad_sync_launch as given; "derived": Megatron-core's (align_grad_reduce, on by default):
        "pp-aligned" in its interleaved schedule, "ready" otherwise (docs/step.md, "Launch"); "ready" whatever is
        given where Megatron-FSDP's hooks launch the reduce-scatters (fsdp_grad_sync)."""
        launch = self.step.grad_sync_launch
        if self.fsdp_grad_sync():
            return "ready"
        if launch != "derived":
            return launch
        megatron = self.step.runtime == "megatron"
        return "pp-aligned" if megatron and self._megatron_interleaved() else "ready"

    def cost_model(self, derived=None) -> CostModel:
        """``derived``: this scenario's derived figures when the caller has them already."""
        self.recompute_modules()  # its policy rule holds with or without [model]
        S = self.pipeline.stages
        c = self.costs
        derived = self.derived() if derived is None else derived
        if self.chunk is not None or (derived is not None and derived.moe_layer is not None):
            self.check_deferral_per_stage()
            return self._chunk_cost_model(derived) if self.chunk is not None else self._derived_chunk_cost_model(derived)
        have = derived is not None and derived.stages[0].forward is not None
        for name in ("forward", "backward"):
            if getattr(c, name) is None and not have:
                where = " (or [hardware] to derive it from [model])" if derived is not None else " (or give a [chunk] table)"
                raise ScenarioError(f"costs.{name}: required key is missing{where}")
        pick = lambda name: (  # noqa: E731 - a hand-typed [costs] key overrides the derived one
            tuple(getattr(s, name) for s in derived.stages) if getattr(c, name) is None
            else _per_stage(getattr(c, name), S, f"costs.{name}")
        )
        forward = pick("forward")
        backward = pick("backward")
        if c.weight is not None:
            weight = _per_stage(c.weight, S, "costs.weight")
        elif have and c.backward is None:
            weight = tuple(s.weight for s in derived.stages)
        else:
            weight = tuple(b / 2 for b in backward)
        if c.backward is not None and self.recompute() == "full":
            # A typed B is the plain backward; full recompute re-runs the stage's forward first
            # (a derived B already has it). The extra time is input-gradient work: W is unchanged.
            backward = tuple(b + f for b, f in zip(backward, forward))
        for s, (b, w) in enumerate(zip(backward, weight)):
            if w > b:
                raise ScenarioError(
                    f"costs.weight: must be <= costs.backward (B - W is the input-gradient part), "
                    f"got W={w} > B={b} at stage {s}"
                )
        deferral = self.deferral(derived)
        hosts = [s.host_apart for s in derived.stages] if have and c.backward is None and c.weight is None else []
        return CostModel(
            forward=forward,
            backward=backward,
            weight=weight,
            apart=tuple(h or (0.0, 0.0) for h in hosts) if any(hosts) else (),
            overlapped=None if c.overlapped is None else _per_stage(c.overlapped, S, "costs.overlapped"),
            deferred=None if deferral is None else deferral[:4],
            **self._shared_cost_fields(derived),
        )

    def check_deferral_per_stage(self) -> None:
        """model.defer_embedding_wgrad is costed on per-stage F, B and W: refused where [chunk] components cost the
        stages (the caller's judgement; plan's estimate asks the same before costing a candidate)."""
        if self.model is not None and self.model.defer_embedding_wgrad:
            raise ScenarioError("model.defer_embedding_wgrad: is costed on per-stage F, B and W (a dense model's); "
                                "not with [chunk] components (an MoE model with parallel.expert > 1 or a [chunk] "
                                "table): set it to 0")

    def deferral(self, derived):
        """model.defer_embedding_wgrad on the derived model (model/deferred_wgrad.Deferral), or None when 0.  Raises
        ScenarioError where Megatron-core or this model does not run it."""
        n = self.model.defer_embedding_wgrad if self.model is not None else 0
        if not n:
            return None
        key = "model.defer_embedding_wgrad"
        if derived is None or derived.setup.rates is None:
            raise ScenarioError(f"{key}: needs the kernel model ([hardware] with a preset, no hardware.efficiency)")
        if self.pipeline.stages < 2:  # core_r0.11.0 model_parallel_config.py lines 357-360
            raise ScenarioError(f"{key}: needs pipeline.stages >= 2 (Megatron-core refuses it without pipeline "
                                "parallelism)")
        if self.model.runtime == "megatron-lm-2021":  # core_r0.11.0 model_parallel_config.py, beside the check above
            raise ScenarioError(f'{key}: Megatron-core refuses it without gradient accumulation fusion, which model.runtime '
                                '= "megatron-lm-2021" runs without (its accumulation is a separate pass); set it to 0')
        if self.step is not None and self.step.runtime == "deepspeed-bf16":
            raise ScenarioError(f'{key}: is Megatron-core\'s schedules\' drain; DeepSpeed\'s pipeline engine (step.runtime '
                                '= "deepspeed-bf16") runs its own schedule, with none; set it to 0')
        typed = [name for name in ("backward", "weight", "overlapped") if getattr(self.costs, name) is not None]
        if typed:
            raise ScenarioError(f"{key}: is taken off the derived backward; leave costs.{typed[0]} out")
        if min(n, self.pipeline.microbatches) == 1:  # core_r0.11.0 utils.py drain_embedding_wgrad_compute: one input
            # buffered, its loop never runs and the last GEMM reads drain_idx unset (UnboundLocalError)
            raise ScenarioError(f"{key}: one deferred micro-batch is a run Megatron-core cannot make (its drain "
                                "fails with a single buffered input); give 0 or at least 2 (with as many micro-batches)")
        if self.step is None:  # the drain is StepCosts.drain: without [step] the lighter backwards would stand alone
            raise ScenarioError(f"{key}: its drain (the deferred wgrad GEMMs after the last stage's last backward) is "
                                "timed in the step; add a [step] table (without one the run's time is the pipeline's "
                                "alone, lighter by the deferred GEMMs and missing their drain)")
        return deferred_wgrad.figures(derived, n, self.pipeline.microbatches)

    def _shared_cost_fields(self, derived=None) -> dict:
        """Cost-model fields that do not depend on how compute is costed.  With [model], the
        P2P time and memory are derived unless [comm]/[memory] give them by hand."""
        S = self.pipeline.stages
        given = lambda section, key: derived is None or key in section.model_fields_set  # noqa: E731
        p2p = self.comm.p2p if given(self.comm, "p2p") or derived.p2p is None else derived.p2p
        links = {}
        if not given(self.comm, "p2p") and derived.p2p is not None and derived.p2p_nvlink is not None:
            par = self.parallel or ParallelSection()
            links = dict(p2p_nvlink=derived.p2p_nvlink, placement=(par.rank_order, par.tensor * par.context, par.data,
                                                                   derived.setup.hw.domain))  # fmt: skip
        return dict(
            p2p=p2p,
            **links,
            p2p_mode=self.p2p_mode(),
            variability=variability.from_scenario(self),
            activation_bytes=_per_stage(self.memory.activation, S, "memory.activation")
            if given(self.memory, "activation") else derived.activation_bytes,
            parameter_bytes=_per_stage(self.memory.parameters, S, "memory.parameters")
            if given(self.memory, "parameters") else derived.parameter_bytes,
        )  # fmt: skip

    def _derived_chunk_cost_model(self, derived) -> CostModel:
        # An MoE model with expert parallelism: components derived for one MoE layer.
        for name, value in self.costs:
            if value is not None and name != "jitter":
                raise ScenarioError(
                    f"costs.{name}: must be left out for an MoE model with parallel.expert > 1 "
                    "(the [chunk] components are derived; type a [chunk] table to override them)"
                )
        # each stage apart, as its layout holds it (model/derive.stage_chunk), at kernel rates or the efficiency
        slow = derived.comm_compute_slowdown
        # and an overlapped pair's host share in place of its halves' (model/host_pair.py)
        hosts = derived.stage_pair_host or ((0.0, 0.0, 0.0),) * len(derived.stage_chunks)
        # and a lone I's and W's host share worked per pass (derive.StageFigures.host_apart), spread over its layers
        apart = [tuple(x / n for x in fig.host_apart or (0.0, 0.0)) for (n, _), fig in zip(derived.stage_chunks,
                                                                                            derived.stages)]
        chunk = tuple(ChunkCosts(n, tuple(getattr(t, c.name) for c in Component), slow, pair_host=h, apart_host=a)
                      for (n, t), h, a in zip(derived.stage_chunks, hosts, apart))  # fmt: skip
        return CostModel.from_chunk(self.pipeline.stages, chunk, **self._shared_cost_fields(derived))

    def _chunk_cost_model(self, derived=None) -> CostModel:
        # With [chunk], F, B, W and F&B come from the components; stating them
        # again in [costs] could only contradict them, so it is an error.
        for name, value in self.costs:
            if value is not None and name != "jitter":  # jitter scales whatever the durations are
                raise ScenarioError(
                    f"costs.{name}: must be left out when [chunk] is given (it is derived from the components)"
                )
        ch = self.chunk
        order = ((Channel.COMPUTE, ch.order.compute), (Channel.A2A, ch.order.a2a))
        order = tuple((channel, tuple(Component[n] for n in names)) for channel, names in order)
        times = tuple(getattr(ch, c.name) for c in Component)
        chunk = ChunkCosts(ch.layers, times, ch.comm_compute_slowdown, order)
        if derived is not None and derived.setup.hw is not None and derived.setup.cfg.moe:
            # With an MoE [model] and [hardware], the typed components are one MoE layer's, and each
            # stage is costed as its layout holds it: its MoE layers as typed, its dense layers,
            # embedding, head and MTP modules derived (model/derive.stage_chunk).
            from ..model.derive import LayerTimes, stage_chunk

            typed = LayerTimes(**{c.name: times[c] for c in Component})
            per_layer: dict = {}
            chunk = tuple(
                ChunkCosts(n, tuple(getattr(t, c.name) for c in Component), ch.comm_compute_slowdown, order)
                for n, t in (stage_chunk(derived.setup, s, per_layer, typed) for s in derived.setup.stages)
            )
        try:
            return CostModel.from_chunk(self.pipeline.stages, chunk, **self._shared_cost_fields(derived))
        except OrderError as exc:
            raise ScenarioError(f"chunk.order: {exc}") from None


def activation_bytes_given(scenario: Scenario) -> bool:
    """Whether activation bytes mean anything: memory.activation typed, or a [model] deriving it.
    Otherwise the 1-byte default stands in and the byte figures count stage-activations, so
    what people read shows them as n/a (metrics.json keeps the numbers)."""
    return scenario.model is not None or "activation" in scenario.memory.model_fields_set


def oddities(scenario: Scenario) -> list[str]:
    """Legal input that is physically odd, one line each (the CLI prints them as
    warnings on stderr): the run goes ahead, but the figure is probably a slip."""
    found = []
    c = scenario.costs
    if scenario.chunk is None and c.overlapped is not None and c.forward is not None and c.backward is not None:
        S = scenario.pipeline.stages
        try:
            fb = _per_stage(c.overlapped, S, "costs.overlapped")
            f, b = _per_stage(c.forward, S, "costs.forward"), _per_stage(c.backward, S, "costs.backward")
        except ScenarioError:
            return found  # a length mismatch is an error, reported elsewhere
        for s, (pair, fs, bs) in enumerate(zip(fb, f, b)):
            if pair < max(fs, bs):
                found.append(
                    f"costs.overlapped: {pair:g} at stage {s} is less than the longer half alone, max(F, B) = "
                    f"{max(fs, bs):g}: an overlapped F+B pair would be faster than its {'backward' if bs >= fs else 'forward'} "
                    f"on its own (expected between max(F, B) and F + B = {fs + bs:g})"
                )
                break
            if pair > fs + bs:
                found.append(
                    f"costs.overlapped: {pair:g} at stage {s} is more than F + B = {fs + bs:g}, the two halves one "
                    f"after the other: overlapping them would slow the pair down (expected between max(F, B) = "
                    f"{max(fs, bs):g} and F + B)"
                )
                break
    return found


def _per_stage(value, stages: int, name: str) -> tuple[float, ...]:
    if isinstance(value, list):
        if len(value) != stages:
            raise ScenarioError(f"{name}: a per-stage list needs one value per stage ({stages}), got {len(value)}")
        return tuple(float(v) for v in value)
    return (float(value),) * stages


# -- loading ---------------------------------------------------------------------
def load_raw(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = limits.read_text(path)  # -sig: a byte-order mark (Windows editors) is not TOML; size-capped
    except limits.TooBig as exc:
        raise ScenarioError(f"scenario {exc}") from None
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer over Python's 4300-digit limit
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not a scenario: arrays or tables nested too deeply to read") from None
    return _resolve_model_path(data, path)


def _resolve_model_path(data: dict, path: Path) -> dict:
    """A relative ``model.config`` or ``chunk.file`` is read from the scenario file's folder
    (overrides given with --set are applied later and stay relative to the working directory)."""
    for section, key in (("model", "config"), ("chunk", "file")):
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key].strip() \
                and not Path(table[key]).is_absolute():
            table[key] = str(path.parent / table[key])
    return data


def include_chunk_file(data: dict) -> dict:
    """``chunk.file = "chunk.toml"``: the [chunk] table of that file (what ``calibrate --out``
    writes), under the keys the scenario's own [chunk] gives (those win).  Errors name the file."""
    chunk = data.get("chunk")
    if not isinstance(chunk, dict) or "file" not in chunk:
        return data
    name = chunk["file"]
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"chunk.file: must be the path of a TOML file with a [chunk] table, got {shown(name)}")
    path = Path(name)
    try:
        text = limits.read_text(path)
    except limits.TooBig as exc:
        raise ScenarioError(f"chunk.file: {exc}") from None
    except FileNotFoundError:
        raise ScenarioError(f"chunk.file: {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"chunk.file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        included = tomllib.loads(text)
    except ValueError as exc:
        raise ScenarioError(f"chunk.file: {path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"chunk.file: {path}: nested too deeply to read") from None
    table = included.get("chunk")
    if not isinstance(table, dict):
        raise ScenarioError(f"chunk.file: {path}: has no [chunk] table (the chunk.toml that calibrate writes has one)")
    if "file" in table:
        raise ScenarioError(f"chunk.file: {path}: includes another file (chunk.file); one level only")
    own = {k: v for k, v in chunk.items() if k != "file"}
    return {**data, "chunk": {**table, **own}}


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"override {shown(text)}: expected KEY=VALUE with a dotted key, e.g. pipeline.stages=8")
    try:
        value = _toml_value(raw.strip())
    except RecursionError:
        raise ScenarioError(f"{cut(key)}: value nested too deeply to read") from None
    # an array or a table is the caller's own to change; a scalar is shared, as it cannot change
    return key.split("."), (copy.deepcopy(value) if isinstance(value, (list, dict)) else value)


@functools.lru_cache(maxsize=4096)
def _toml_value(raw: str) -> object:
    """``raw`` read as a TOML value, else the string itself (bare words such as 1f1b or dualpipe).  Cached: plan
    applies the same few overrides to thousands of candidates (a TOML parse a value was 8% of its estimate's CPU)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except ValueError:  # TOMLDecodeError (or an integer too long to convert)
        return raw


def apply_overrides(raw: dict, overrides: list[str], unset: Iterable[str] = ()) -> dict:
    """``raw`` with the keys ``unset`` names removed (:func:`unset_keys`), then ``overrides`` set."""
    data = unset_keys(raw, unset)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"override {shown(text)}: {part} is a value, not a table")
            node = child
        node[path[-1]] = value
    return data


def unset_keys(raw: dict, keys: Iterable[str]) -> dict:
    """A copy of ``raw`` without the dotted ``keys`` (a section, or a key in one), each first held to
    the scenario's schema: an unknown key raises, naming it (with the closest known one), and a key
    ``raw`` does not set is already unset, so it stays so without complaint."""
    data = _deep_copy(raw)
    for text in [keys] if isinstance(keys, str) else keys:  # one key given bare, not as a list
        *tables, last = _known_path(text)
        node = data
        for part in tables:
            node = node.get(part)
            if not isinstance(node, dict):
                break
        else:
            node.pop(last, None)
    return data


def _known_path(text: str) -> list[str]:
    """``text``'s parts, once each is a key the scenario schema knows at its place."""
    parts = text.strip().split(".") if isinstance(text, str) else []
    if not parts or "=" in text or any(not part.strip() for part in parts):
        raise ScenarioError(f"unset {shown(text)}: expected a dotted key alone, e.g. pipeline.chunks_per_rank")
    for i in range(len(parts)):
        known = _known_keys(parts[:i]) + (["file"] if parts[:i] == ["chunk"] else [])  # chunk.file: read before the schema
        if parts[i] not in known:
            raise ScenarioError(field=cut(".".join(parts[: i + 1])), rule=_unknown_key(parts[: i + 1]))
    return parts


def _deep_copy(d):
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def from_dict(data: dict) -> Scenario:
    return resolved(data)[0]


def resolved(data: dict, memo=None) -> tuple[Scenario, Inputs]:
    """from_dict's scenario and its inputs (resolve.py): a run handed both derives nothing again.
    ``memo``: a derive.Memo for a caller that resolves many layouts of one model (Scenario.derived)."""
    data = include_chunk_file(data)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    inputs = resolve(scenario, memo)  # cross-field rules raise here, before anything runs
    p = scenario.pipeline
    too_big = limits.size_problem(p.stages, p.microbatches, scenario.limits.max_memory, trace_rows_per_op(inputs.costs))
    if too_big:  # refused before any schedule is built
        raise ScenarioError(too_big)
    return scenario, inputs


def trace_rows_per_op(costs) -> float:
    """Trace rows per op, for the size guard: 1, or with [chunk] the most parts (one row each)
    of a micro-batch's work on a stage (an F and a B, or an F, an I and a W) over its ops."""
    if costs.chunk is None:
        return 1.0
    chunks = set(costs.chunk) if isinstance(costs.chunk, tuple) else {costs.chunk}
    return max(sum(len(c.parts((k,))) for k in work) / len(work) for c in chunks for work in WORK)


def sections_only(data: dict) -> Scenario:
    """Validate the sections without the cost cross-checks (the ``model`` verb needs no costs)."""
    data = include_chunk_file(data)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def read(source: str | Path | Mapping, overrides: Iterable[str] = (), unset: Iterable[str] = ()) -> Scenario:
    """A validated scenario from a TOML file or from a dict with the same keys as the
    TOML, ``overrides`` (``"key=value"`` texts, as the CLI's --set takes) applied first,
    after the dotted keys ``unset`` names are removed (as the CLI's --unset; unset_keys).
    This is the public API's ``dualpipe_sim.scenario(...)``."""
    return read_resolved(source, overrides, unset)[0]


def read_resolved(source: str | Path | Mapping, overrides: Iterable[str] = (),
                  unset: Iterable[str] = ()) -> tuple[Scenario, Inputs]:
    """read's scenario and its inputs (see resolved)."""
    raw = load_raw(source) if isinstance(source, (str, Path)) else dict(source)  # apply_overrides copies it
    return resolved(apply_overrides(raw, list(overrides), unset))


def load(path: str | Path, overrides: list[str] | None = None, unset: Iterable[str] = ()) -> Scenario:
    return from_dict(apply_overrides(load_raw(path), overrides or [], unset))


def load_resolved(path: str | Path, overrides: list[str] | None = None,
                  unset: Iterable[str] = ()) -> tuple[Scenario, Inputs]:
    """load's scenario and its inputs (see resolved)."""
    return resolved(apply_overrides(load_raw(path), overrides or [], unset))


def _is_union_label(part) -> bool:
    return isinstance(part, str) and ("[" in part or "constrained" in part or part in ("float", "int", "list"))


def _known_keys(section: list[str]) -> list[str]:
    """The keys the scenario schema allows in the table at ``section`` (e.g. ["costs"])."""
    model = Scenario
    for part in section:
        field = model.model_fields.get(part)
        inner = getattr(field, "annotation", None)
        for arg in getattr(inner, "__args__", ()) or (inner,):  # Chunk | None -> Chunk
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return []
    # [model] also takes the HF fields a family reads (its extra keys): --unset model.head_dim is a known key
    return list(model.model_fields) + (sorted(INLINE_FIELDS) if model is ModelSection else [])


def _first_error(exc: ValidationError) -> ScenarioError:
    # For "number or per-stage list" fields pydantic reports both branches; the
    # deepest location is the branch that matched the input's shape.
    errors = exc.errors()
    # max keeps the first among equals; at equal depth an unknown key goes first: a typo
    # (microbatch) also makes its key "missing", and the typo is what to point at.
    err = max(errors, key=lambda e: (len(e["loc"]), e["type"] == "extra_forbidden"))
    # Drop pydantic's union-branch labels ("float", "list[...]") from the path.
    loc = [str(p) for p in err["loc"] if not _is_union_label(p)]
    field = cut(".".join(loc)) or "scenario"  # a key is the user's text too
    return ScenarioError(field=field, rule=_broken_rule(err, loc))


def _broken_rule(err: dict, loc: list[str]) -> str:
    """What one pydantic error says the key at ``loc`` breaks, as the error line words it."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing"
    if kind in ("finite_number",):
        return f"must be a finite number, got {shown(err.get('input'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):  # not pydantic's "instance of Pipeline"
        return f"must be a table of keys ([{'.'.join(loc)}] in TOML), got {shown(err.get('input'))}"
    value = err.get("input")
    if isinstance(value, float) and math.isnan(value):
        return "must be a number, got NaN"
    msg = msg.removeprefix("Value error, ")
    return f"{msg[0].lower() + msg[1:]}, got {shown(value)}"


def _unknown_key(loc: list[str]) -> str:
    """The rule an unknown key ``loc`` breaks, with the closest known key at its place if one is close."""
    known = _known_keys(loc[:-1]) if loc else []
    close = [k for k in known if k.startswith(loc[-1])][:1] or difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    return "unknown key" + (f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else "")


class _CallableModule(types.ModuleType):
    """The public API calls this module: ``dualpipe_sim.scenario("file.toml")`` is
    :func:`read`, while ``dualpipe_sim.scenario.load`` and the rest stay reachable
    (a function of that name in the package would hide the module)."""

    def __call__(self, source: str | Path | Mapping, overrides: Iterable[str] = (), unset: Iterable[str] = ()) -> Scenario:
        return read(source, overrides, unset)


sys.modules[__name__].__class__ = _CallableModule
