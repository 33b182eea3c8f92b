"""The candidates ``plan`` considers: every layout of a model on exactly N GPUs.

A candidate fixes the tensor, context, pipeline, expert (with its expert-tensor) and data degrees, the
micro-batch size, the schedule (with its virtual stages), the recompute policy
and the ZeRO stage.  Enumeration walks those choices in that order and drops a
branch the moment a divisibility rule fails: the dropped row stands for every
candidate under it (its later columns are left empty) and carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator

from ..schedules import registry
from .shapes import ScheduleShape

TENSOR = (1, 2, 4, 8)  # within a node: tensor-parallel collectives need NVLink
CONTEXT = (1, 2, 4, 8)
MICRO_BATCH_SIZES = (1, 2, 4)
VIRTUAL = (2, 3, 4, 5, 6, 8)  # virtual stages per rank tried for interleaved schedules
RECOMPUTE = ("none", "selective", "full")
ZERO = (0, 1, 2, 3)  # 2: gradients sharded too; 3 (FSDP): parameters too, gathered per layer (model/fsdp.py)
# Context parallelism below this many tokens per rank is not tried: each ring step's attention
# chunk gets too short to hide the K/V exchange behind (an assumption, docs/plan.md).
MIN_CONTEXT_TOKENS = 2048


@dataclass(frozen=True)
class ModelShape:
    """What enumeration needs to know of the model (and of its [step])."""

    heads: int
    layers: int
    experts: int  # routed experts; 0 for a dense model
    flash_attention: bool = True  # scores never materialised: selective recompute frees only the log-sum-exp
    kv_heads: int = 0  # key-value heads (query groups), which tensor must divide too; 0: as many as heads
    expert_ffn: int = 0  # the experts' FFN hidden size (moe_intermediate_size), which expert_tensor must divide
    whole_experts: str = ""  # why this base costs expert_tensor 1 only ('' when more is costed): only 1 is tried


@dataclass(frozen=True)
class Request:
    """The cluster and the batch: ``gpus`` GPUs, ``global_batch`` sequences of ``seq`` tokens per step."""

    gpus: int
    global_batch: int
    seq: int
    gpus_per_node: int = 8


@dataclass(frozen=True)
class Choices:
    """The values tried for each degree (a --set pins one to a single value)."""

    tensor: tuple[int, ...] = TENSOR
    context: tuple[int, ...] = CONTEXT
    pipeline: tuple[int, ...] | None = None  # None: every divisor of the GPUs left
    expert: tuple[int, ...] | None = None  # None: every power of two dividing the experts
    micro_batch_size: tuple[int, ...] = MICRO_BATCH_SIZES
    virtual: tuple[int, ...] = VIRTUAL
    recompute: tuple[str, ...] = RECOMPUTE
    zero: tuple[int, ...] = ZERO
    expert_tensor: tuple[int, ...] | None = None  # a pin; None: 1, or with search_expert_tensor 1 and the tensor degree
    # plan --search-expert-tensor: an MoE candidate also tries ETP = tensor (about twice the simulations; off by default)
    search_expert_tensor: bool = False
    min_context_tokens: int = MIN_CONTEXT_TOKENS  # 1 when parallel.context is pinned


@dataclass(frozen=True)
class Candidate:
    """One row of plan.csv: a layout (``None`` = not chosen yet: the row was pruned above it)."""

    tensor: int
    context: int | None = None
    pipeline: int | None = None
    data: int | None = None
    expert: int | None = None
    micro_batch_size: int | None = None
    microbatches: int | None = None
    schedule: str | None = None
    virtual: int | None = None
    stages: int | None = None
    recompute: str | None = None
    zero: int | None = None
    pruned: str = ""  # the rule it breaks; empty for a complete candidate
    # ETP, searched after the expert degree; None on a row pruned above it while several values were to be tried
    expert_tensor: int | None = 1

    def complete(self) -> bool:
        return not self.pruned

    def overrides(self) -> list[str]:
        """The scenario keys this candidate sets, as --set texts."""
        keys = [
            f'pipeline.schedule="{self.schedule}"', f"pipeline.stages={self.stages}",
            f"pipeline.microbatches={self.microbatches}", f"model.micro_batch_size={self.micro_batch_size}",
            f"parallel.tensor={self.tensor}", f"parallel.context={self.context}",
            f"parallel.expert={self.expert}", f"parallel.data={self.data}", f"parallel.zero={self.zero}",
            f'memory.recompute="{self.recompute}"',
        ]  # fmt: skip
        if self.virtual is not None:
            keys.append(f"pipeline.chunks_per_rank={self.virtual}")
        if self.expert_tensor not in (None, 1):  # ETP 1 is the key's default: a candidate at 1 sets nothing
            keys.append(f"parallel.expert_tensor={self.expert_tensor}")
        return keys

    def label(self) -> str:
        v = f" v{self.virtual}" if self.virtual else ""
        etp = f" ETP{self.expert_tensor}" if self.expert_tensor not in (None, 1) else ""
        return (f"{self.schedule}{v} TP{self.tensor} PP{self.pipeline} CP{self.context} EP{self.expert}{etp} "
                f"DP{self.data} mbs{self.micro_batch_size} {self.recompute} zero{self.zero}")  # fmt: skip


COLUMNS = tuple(f.name for f in fields(Candidate))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_candidates(model: ModelShape, req: Request, shapes: list[ScheduleShape],
                         choices: Choices = Choices()) -> Iterator[Candidate]:
    """Every candidate, complete or pruned by a divisibility or schedule rule, in a fixed order."""
    for t in choices.tensor:
        etps = expert_tensors(model, choices, t)
        top = row = Candidate(tensor=t, expert_tensor=etps[0] if len(etps) == 1 else None)
        if t > req.gpus_per_node:
            yield replace(row, pruned=f"parallel.tensor: must be at most the {req.gpus_per_node} GPUs of an NVLink domain")
            continue
        if model.heads % t:
            yield replace(row, pruned=f"parallel.tensor: must divide the model's {model.heads} attention heads")
            continue
        if model.kv_heads % t:  # as model/derive.py refuses it (Megatron-core splits the query groups)
            yield replace(row, pruned=f"parallel.tensor: must divide the model's {model.kv_heads} key-value heads")
            continue
        for c in choices.context:
            row = replace(top, context=c)
            if req.gpus % (t * c):
                yield replace(row, pruned="GPUs: must be a multiple of parallel.tensor x parallel.context")
                continue
            if c > 1 and req.seq % (2 * c):
                yield replace(row, pruned="parallel.context: must divide the sequence in 2 x parallel.context chunks")
                continue
            if c > 1 and req.seq // c < choices.min_context_tokens:
                yield replace(row, pruned=f"parallel.context: must leave at least {choices.min_context_tokens} tokens of the "
                                          f"sequence per context rank")  # fmt: skip
                continue
            yield from _pipelines(model, req, shapes, choices, row)


def _pipelines(model, req, shapes, choices, row) -> Iterator[Candidate]:
    rest = req.gpus // (row.tensor * row.context)
    for p in choices.pipeline or divisors(rest):
        row_p = replace(row, pipeline=p, data=rest // p if rest % p == 0 else None)
        if rest % p:
            yield replace(row_p, pruned="GPUs: must be a multiple of parallel.tensor x parallel.context x the pipeline "
                                        "ranks")  # fmt: skip
            continue
        if p > model.layers:
            yield replace(row_p, pruned=f"pipeline.stages: the pipeline ranks must be at most the model's {model.layers} layers")
            continue
        for e in _experts(model, choices):
            row_e = replace(row_p, expert=e)
            if not model.experts and e > 1:
                yield replace(row_e, pruned="parallel.expert: must be 1: the model has no experts")
                continue
            if model.experts and model.experts % e:
                yield replace(row_e, pruned=f"parallel.expert: must divide the model's {model.experts} experts")
                continue
            if (row.tensor * row.context * row_p.data) % e:
                yield replace(row_e, pruned="parallel.expert: must divide parallel.tensor x parallel.context x "
                                            "parallel.data")  # fmt: skip
                continue
            for etp in expert_tensors(model, choices, row.tensor):
                yield from _expert_tensor(model, req, shapes, choices, replace(row_e, expert_tensor=etp))


def expert_tensors(model: ModelShape, choices: Choices, tensor: int) -> tuple[int, ...]:
    """The ETP values tried at this tensor degree: the pin; else 1 (experts whole, as every MoE validation run);
    with search_expert_tensor, for an MoE model 1 and the tensor degree (Megatron-core's default when
    --expert-tensor-parallel-size is unset), 1 only where the base costs no more (model.whole_experts)."""
    if choices.expert_tensor is not None:
        return choices.expert_tensor
    if not choices.search_expert_tensor or not model.experts or model.whole_experts:
        return (1,)
    return tuple(dict.fromkeys((1, tensor)))


def _expert_tensor(model, req, shapes, choices, row) -> Iterator[Candidate]:
    """model/derive.py's ETP rules, by name, before any derivation; then the micro-batch sizes."""
    etp = row.expert_tensor
    if etp > 1 and not model.experts:
        yield replace(row, pruned="parallel.expert_tensor: must be 1: the model has no experts")
        return
    if etp > 1 and model.whole_experts:
        yield replace(row, pruned=f"parallel.expert_tensor: {model.whole_experts}")
        return
    if etp > 1 and model.expert_ffn % etp:
        yield replace(row, pruned=f"parallel.expert_tensor: must divide the experts' FFN hidden size {model.expert_ffn}")
        return
    if model.experts and (row.data * row.tensor * row.context) % (row.expert * etp):
        yield replace(row, pruned="parallel.expert: parallel.expert x parallel.expert_tensor must divide "
                                  "parallel.tensor x parallel.data x parallel.context")  # fmt: skip
        return
    for mbs in choices.micro_batch_size:
        row_m = replace(row, micro_batch_size=mbs)
        if req.global_batch % (row.data * mbs):
            yield replace(row_m, pruned="global batch: must be a multiple of parallel.data x model.micro_batch_size")  # fmt: skip
            continue
        row_m = replace(row_m, microbatches=req.global_batch // (row.data * mbs))
        yield from _schedules(model, shapes, choices, row_m)


def _experts(model: ModelShape, choices: Choices) -> tuple[int, ...]:
    if choices.expert is not None:
        return choices.expert
    if not model.experts:
        return (1,)
    return tuple(2**i for i in range(model.experts.bit_length()) if 2**i <= model.experts)


def _schedules(model, shapes, choices, row) -> Iterator[Candidate]:
    for shape in shapes:
        for v in (choices.virtual if shape.virtual else (None,)):
            stages = row.pipeline * (v or shape.stages_per_rank)
            cand = replace(row, schedule=shape.name, virtual=v, stages=stages)
            if v and row.pipeline == 1:
                yield replace(cand, pruned="pipeline.chunks_per_rank: needs 2 or more pipeline ranks (one rank has "
                                           "nothing to interleave)")  # fmt: skip
                continue
            if stages > model.layers:
                yield replace(cand, pruned=f"pipeline.stages: must be at most the model's {model.layers} layers")
                continue
            problem = shape.check(stages, row.microbatches, v)
            if problem:
                yield replace(cand, pruned=f"pipeline.schedule = \"{shape.name}\": {problem}")
                continue
            for rc in choices.recompute:
                for z in choices.zero:
                    cand_z = replace(cand, recompute=rc, zero=z)
                    yield replace(cand_z, pruned=_dominated(model, choices, cand_z) or _unmodelled(model, cand_z))


def _dominated(model: ModelShape, choices: Choices, cand: Candidate) -> str:
    """Why another candidate tried beside this one is never worse ('' if none is)."""
    if cand.recompute == "selective" and model.flash_attention and "none" in choices.recompute:
        return ('memory.recompute: "selective" under flash attention reruns the flash forward to free only its '
                "log-sum-exp")
    if cand.zero >= 2 and shards_nothing(model, cand) and 1 in choices.zero:
        return "parallel.zero: 2 and 3 equal 1 with one data-parallel rank (nothing to shard)"
    # ZeRO 0 is kept beside ZeRO 1 wherever ZeRO shards something: it can be the faster (s20l, docs/plan.md)
    if cand.zero == 0 and shards_nothing(model, cand) and 1 in choices.zero:
        return "parallel.zero: 0 equals 1 with one data-parallel rank (nothing to shard)"
    return ""


def shards_nothing(model: ModelShape, cand: Candidate) -> bool:
    """ZeRO shards over data x context ranks (experts over data x context x tensor / (expert x expert_tensor)): over one
    rank a shard is the whole, every collective is empty, and ZeRO 0, 1, 2 and 3 are equal to the byte."""
    return cand.data * cand.context == 1 and (not model.experts or cand.tensor == cand.expert * cand.expert_tensor)


def _unmodelled(model: ModelShape, cand: Candidate) -> str:
    """A rule of the model, judged here so it costs no derivation: FSDP with expert (tensor) parallelism, and with a
    schedule family that runs weight gradients apart (Family.splits_weight; simulation.check_fsdp refuses it)."""
    if cand.zero == 3 and model.experts and cand.expert > 1:
        return "parallel.zero: 3 (FSDP) with parallel.expert > 1 is not modelled (model/derive.py refuses it)"
    if cand.zero == 3 and cand.expert_tensor > 1:
        return "parallel.zero: 3 (FSDP) with parallel.expert_tensor > 1 is not modelled (model/derive.py refuses it)"
    if cand.zero == 3 and registry.get(cand.schedule).splits_weight:
        return (f'parallel.zero: 3 (FSDP) with pipeline.schedule = "{cand.schedule}", which runs weight gradients '
                "apart (W ops), is not modelled (the run refuses it)")
    return ""
