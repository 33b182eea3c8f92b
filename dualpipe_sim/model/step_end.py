"""The step's end item by item, for ``dualpipe-sim model --explain`` and ``--json``: what a step costs once.

`run` takes three per-stage figures from [step] (``Scenario.step_costs``: grad_sync, cross_copy_sync, optimizer)
and a compute slowdown per stage (step.dp_comm_sms).  Each derived figure is a sum of parts that
model/derived_step.py puts together (the data-parallel reduction, the tensor-parallel all-reduce after it, the tied
embedding's all-reduce, the Adam step, the FP8 parameters' cast, the parameter all-gather or the wait for it at the
next step's start, the FP8 weight refresh, the gather's slowdown of the forward it runs beside).  :func:`items`
lists those parts, each timed by the function derived_sync calls for it, with its bytes, group, link and what bounds
it; :func:`summary` adds the figures `run` uses, which the parts sum to (tests/test_step_end_report.py holds them
equal).  Nothing here is timed anew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ScenarioError
from . import collectives, ddp_buckets, derive, loop_step, step_launches
from . import comm_slowdown, derived_step, fp8_step_casts, grad_sync, nemo_optimizer, optimizer_step, param_gather
from .nemo_optimizer import (FP32_GRAD_BYTES, NEMO_FP32_OPTIM_BYTES, NEMO_GRAD_ADD_BYTES, NEMO_GRAD_ADD_KERNELS,
                             TORCH_ADAMW_BYTES)

FIGURES = ("grad_sync", "cross_copy_sync", "optimizer")


@dataclass(frozen=True)
class Item:
    """One part of the step's end: per stage copy its bytes and time (ms), in ``figure`` (one of FIGURES)."""

    name: str
    figure: str
    bytes: tuple[float, ...]
    ms: tuple[float, ...]
    group: str  # which ranks take part
    link: str  # nvlink, nic, hbm or - (none)
    bound: str  # bandwidth, latency, memory, launches, ...
    rule: str  # when it runs and what it overlaps


def _link(st) -> str:
    """The data-parallel group's link for the dense part, as grad_sync.sync_ms picks it."""
    if st.rates is None:
        return "nic"
    return st.group("dp-cp").link


def _bound(total: tuple[float, ...], latency: tuple[float, ...]) -> str:
    """latency where the collective's time at a 1-byte message is over half its time, else bandwidth."""
    worst = max(range(len(total)), key=lambda s: total[s])
    return "latency" if total[worst] > 0 and latency[worst] > total[worst] / 2 else "bandwidth"


def _buckets(buckets) -> str:
    """NCCL collectives per stage copy, as runs of stages."""
    if len(set(buckets)) == 1:
        return f"{buckets[0]} bucket(s) a stage"
    runs = [(s, b) for s, b in enumerate(buckets) if s == 0 or buckets[s - 1] != b]
    ends = [s - 1 for s, _ in runs[1:]] + [len(buckets) - 1]
    return "buckets by stage " + ", ".join(f"{a}{'' if a == e else f'-{e}'}: {b}" for (a, b), e in zip(runs, ends))


def _groups(sh, routed: bool) -> str:
    dense = f"data x context {sh.data}"
    return dense + (f" (dense), expert-data {sh.expert_data:g} (experts, NIC)" if routed else "")


def _settings(scenario) -> dict:
    """[step]'s three figures as set: a time, a per-stage list, or "derived" (the optimizer's default resolved)."""
    step = scenario.step
    return {"grad_sync": step.grad_sync, "cross_copy_sync": step.cross_copy_sync,
            "optimizer": scenario.optimizer_setting()}  # fmt: skip


def items(scenario, derived) -> list[Item]:
    """The parts of the derived [step] figures, in the order the step runs them (empty without a [step] or
    [hardware], or where no figure is "derived")."""
    step = scenario.step
    if step is None or scenario.hardware is None:
        return []
    settings = _settings(scenario)
    out = []
    if settings["grad_sync"] == "derived":
        out += _grad_sync(scenario, derived)
    if settings["cross_copy_sync"] == "derived":
        out += _cross_copy(scenario, derived)
    if settings["optimizer"] == "derived":
        out += _optimizer(scenario, derived)
    return out


def _grads(derived) -> list[tuple[float, float]]:
    """Per stage copy, (dense, routed) gradient bytes one rank holds (derived_sync's)."""
    sh = derived.setup.sharding
    return [(f.dense_params / sh.tensor * sh.grads_bytes, f.routed_params / sh.routed_ranks * sh.grads_bytes)
            for f in derived.stages]  # fmt: skip


def _grad_sync(scenario, derived) -> list[Item]:
    st, step = derived.setup, scenario.step
    sh = st.sharding
    deepspeed = step.runtime == "deepspeed-bf16"
    grads = _grads(derived)
    routed = any(r for _, r in grads)
    op = "all-reduce" if deepspeed or sh.zero == 0 else "reduce-scatter"
    fp32 = deepspeed or step.fp32_embedding_grads  # DeepSpeed's fp32 gradients; NeMo's fp32 embedding ones
    tied = grad_sync.tied_embedding_ms(scenario, st, FP32_GRAD_BYTES if fp32 else sh.grads_bytes)
    overlap = (f"overlapped with the backward, launch {scenario.grad_sync_launch()}"
               if scenario.grad_sync_overlapped() else "after the pipeline's last backward")
    if step.grad_sync_held or step.fp32_embedding_optimizer:  # NeMo's end of step on apex: its own parts
        return _nemo_grad_sync(scenario, derived, overlap)
    if deepspeed or sh.zero >= 2:  # their own rules inside derived_sync: the figure less the tied all-reduce
        whole = derived_step.derived_sync(scenario, "grad_sync", derived)
        ms = tuple(w - (tied.get(s, 0.0) if deepspeed else 0.0) for s, w in enumerate(whole))
        rule = ("DeepSpeed bf16: fp32 gradient cast to bf16, all-reduced, cast back (step.runtime)" if deepspeed else
                "ZeRO 3: what the last backward leaves on the channel, its last unit's reduce-scatter behind any "
                "earlier one still queued, launched at its end by Megatron-FSDP's post-backward hook" if sh.zero >= 3 else
                "ZeRO 2: the last backward's units' reduce-scatters (the stage's whole gradient), released unit by "
                "unit through it by Megatron-FSDP's post-backward hooks, queued on the rank's channel behind what "
                "the earlier backwards' left there (laid out from the trace)")
        if deepspeed:  # its dense gradient sent in bf16
            nbytes = tuple(f.dense_params / sh.tensor * grad_sync.BF16 for f in derived.stages)
            bound = _bound(ms, (grad_sync.sync_ms(st, "grad_sync", 1.0, 0.0, op="all_reduce"),) * len(ms))
        else:  # ZeRO 3: the last unit's reduce-scatter (and what is queued before it); ZeRO 2: the stage's whole
            # gradient
            units = [grad_sync.last_unit_grads(st, w) for w in st.stages] if sh.zero >= 3 else grads
            unit_ms = [grad_sync.sync_ms(st, "grad_sync", d, r) for d, r in units]
            backlog = [m > u * (1 + 1e-9) for m, u in zip(ms, unit_ms)]
            nbytes = tuple(sum(u) for u in units)
            latency = tuple(grad_sync.sync_ms(st, "grad_sync", 1.0, 1.0 if r else 0.0) for _, r in units)
            bound = "bandwidth (the backlog)" if any(backlog) else _bound(ms, latency)
        out = [Item(f"data-parallel gradient {op}", "grad_sync", nbytes, ms, _groups(sh, routed), _link(st),
                    bound, rule)]  # fmt: skip
    else:
        if step.fp32_embedding_grads:  # the embedding's gradients in fp32: more bytes in the same buckets
            grads = [(d + nemo_optimizer.fp32_embedding_extra_bytes(st, w), r) for (d, r), w in zip(grads, st.stages)]
        buckets = ddp_buckets.per_stage(scenario, derived)
        ms = tuple(grad_sync.sync_ms(st, "grad_sync", d, r, buckets=b) for (d, r), b in zip(grads, buckets))
        latency = tuple(grad_sync.sync_ms(st, "grad_sync", 1.0, 1.0 if r else 0.0, buckets=b)
                        for (_, r), b in zip(grads, buckets))  # fmt: skip
        given = "step.grad_sync_buckets" + (" derived" if step.grad_sync_buckets == "derived" else " given")
        rule = f"{_buckets(buckets)} ({given}); {overlap}" + (
            "; the embedding's gradients in fp32 (step.fp32_embedding_grads)" if step.fp32_embedding_grads else "")
        shares = grad_sync.grad_sync_shares(scenario, derived)
        if shares:  # Megatron-core's groups with FP8 parameters (partition_buckets case 3)
            last = ", ".join(f"stage {s}: {len(p)} groups, the last {p[-1]:.1%}" for s, p in enumerate(shares) if p)
            rule += ("; Megatron-core's bucket groups, the last holding the 16-bit buffer with the forward's first FP8 "
                     f"bucket and released at the backward's end (partition_buckets case 3): {last} of it")
        out = [Item(f"data-parallel gradient {op}", "grad_sync", tuple(d + r for d, r in grads), ms,
                    _groups(sh, routed), _link(st), _bound(ms, latency), rule)]  # fmt: skip
    out += [] if deepspeed else _tp_all_reduce(scenario, st, "finalize_model_grads' _allreduce_layernorm_grads")
    if tied:
        nbytes = st.cfg.vocab_size * st.cfg.hidden_size / sh.tensor * (FP32_GRAD_BYTES if fp32 else sh.grads_bytes)
        per = tuple(tied.get(s, 0.0) for s in range(len(st.stages)))
        # which link tied_embedding_ms took (the two pipeline ranks on one node or not): the one its time is
        on_node = st.rates is not None and math.isclose(
            next(iter(tied.values())), collectives.time("all_reduce", nbytes, 2, st.rates, "nvlink") * 1e3)
        link = "nvlink" if on_node else "nic"
        latency = collectives.time("all_reduce", 1.0, 2, st.rates, link) * 1e3 if st.rates is not None else 0.0
        out.append(Item("tied embedding gradient all-reduce", "grad_sync" if deepspeed else "grad_sync_tail",
                        tuple(nbytes if s in tied else 0.0 for s in range(len(st.stages))), per,
                        "2: the embedding's and the head's pipeline ranks", link, _bound(per, (latency,) * len(per)),
                        "before DeepSpeed's reduction (_exec_reduce_tied_grads)" if deepspeed else
                        "after the data-parallel reduction and the tensor-parallel all-reduce, before the optimizer "
                        "(finalize_model_grads' _allreduce_embedding_grads)"))  # fmt: skip
    return out


def _tp_all_reduce(scenario, st, what: str) -> list[Item]:
    """The tail's tensor-parallel all-reduce of the gradients every tensor rank holds whole
    (grad_sync.tp_grad_all_reduce_ms), as one item (none where it is zero)."""
    sh = st.sharding
    ms = grad_sync.tp_grad_all_reduce_ms(scenario, st)
    if not any(ms):
        return []
    nbytes = tuple(grad_sync.tp_reduced_elements(scenario, st, w) * sh.grads_bytes for w in st.stages)
    link = "nvlink" if st.rates is None else st.group("tp").link
    latency = collectives.time("all_reduce", 1.0, sh.tensor, st.rates, link) * 1e3 if st.rates is not None else 0.0
    return [Item("tensor-parallel all-reduce of the whole-on-rank gradients", "grad_sync_tail", nbytes, ms,
                 f"tensor {sh.tensor}", link, _bound(ms, (latency,) * len(ms)),
                 f"{what}: the sequence-parallel norms, biases, router, q / k norms; after the data-parallel "
                 "reduction, one coalesced tensor a rank")]  # fmt: skip


def _nemo_grad_sync(scenario, derived, overlap: str) -> list[Item]:
    """The reduction as NeMo runs it on apex (grad_sync.nemo_sync): the overlapped reduce-scatter, then in the tail
    (figure grad_sync_tail) the tied all-reduce, the held bucket group and NeMo 1.x's fp32 embedding all-reduce."""
    st, step = derived.setup, scenario.step
    sh = st.sharding
    p = grad_sync.nemo_sync(scenario, derived)
    n = len(p.dense)
    routed = any(p.routed) or any(p.held_routed)
    ms = tuple(grad_sync.sync_ms(st, "grad_sync", d, r, buckets=b) if d or r else 0.0
               for d, r, b in zip(p.dense, p.routed, p.buckets))  # fmt: skip
    latency = tuple(grad_sync.sync_ms(st, "grad_sync", 1.0, 1.0 if r else 0.0, buckets=b)
                    for r, b in zip(p.routed, p.buckets))  # fmt: skip
    out = [Item("data-parallel gradient reduce-scatter", "grad_sync", tuple(d + r for d, r in zip(p.dense, p.routed)),
                ms, _groups(sh, routed), _link(st), _bound(ms, latency),
                f"{_buckets(p.buckets)}; {overlap}; what NeMo does not hold back")]  # fmt: skip
    out += _tp_all_reduce(scenario, st, "NeMo's allreduce_sequence_parallel_gradients (counted first in the tail)")
    fp32 = step.fp32_embedding_grads or step.fp32_embedding_optimizer
    tied_bytes = st.cfg.vocab_size * st.cfg.hidden_size / sh.tensor * (FP32_GRAD_BYTES if fp32 else sh.grads_bytes)
    for figure, keep in (("grad_sync", False), ("grad_sync_tail", True)):
        per = tuple(t if inside == keep else 0.0 for t, inside in zip(p.tied_ms, p.in_tail))
        if any(per):
            out.append(Item("tied embedding gradient all-reduce", figure,
                            tuple(tied_bytes if t else 0.0 for t in per), per,
                            "2: the embedding's and the head's pipeline ranks", "nic", "bandwidth",
                            "after NeMo's _finish_bucket_grad_sync, before apex's grad_sync()" if keep else
                            "after the data-parallel reduction, before the optimizer"))  # fmt: skip
    held = tuple(grad_sync.held_ms(st, p, s) for s in range(n))
    if any(held):
        out.append(Item("held bucket group reduce-scatter (apex grad_sync)", "grad_sync_tail",
                        tuple(d + r for d, r in zip(p.held_dense, p.held_routed)), held, _groups(sh, routed), _link(st),
                        "bandwidth + ring latency",
                        f"the rank's first chunk's group, held by {', '.join(step.grad_sync_held)} parameters "
                        "(_disable_overlap_grad_sync): after the rank's pipeline and every other sync; "
                        "buckets " + ", ".join(f"stage {s}: {b}" for s, b in enumerate(p.held_buckets) if b)))
    if any(p.fp32_ms):
        nbytes = tuple(nemo_optimizer.fp32_optimizer_elements(st, w) * FP32_GRAD_BYTES for w in st.stages)
        out.append(Item("fp32 embedding gradient all-reduce (NeMo 1.x's AdamW)", "grad_sync_tail", nbytes, p.fp32_ms,
                        f"data x context {sh.data}", _link(st), "bandwidth",
                        "in grad_norm after apex's grad_sync, waited for (step.fp32_embedding_optimizer)"))
    return out


def _cross_copy(scenario, derived) -> list[Item]:
    st = derived.setup
    # derived for every stage, but `run` sums only the stages two ranks hold (engine/step.py)
    twice = [n == 2 for n in derived_step.stage_copies(scenario)]
    where = "" if all(twice) else "; no stage is held twice here: `run` adds none of it" if not any(twice) else \
        "; `run` adds it only for the stages two ranks hold"
    grads = _grads(derived)
    ms = tuple(grad_sync.sync_ms(st, "cross_copy_sync", d, r) for d, r in grads)
    latency = (grad_sync.sync_ms(st, "cross_copy_sync", 1.0, 0.0),) * len(ms)  # one send of 1 byte
    return [Item("cross-copy gradient sum", "cross_copy_sync", tuple(d + r for d, r in grads), ms,
                 "2: the ranks holding a stage's two copies", "nic", _bound(ms, latency),
                 f"a stage held twice (DualPipe, Chimera): the copies' gradients summed{where}")]  # fmt: skip


def _optimizer(scenario, derived) -> list[Item]:
    """The optimizer figure's parts, as derived_sync adds them per stage copy."""
    st, step, m = derived.setup, scenario.step, scenario.model
    sh, rates = st.sharding, st.rates
    n = len(st.stages)
    deepspeed = step.runtime == "deepspeed-bf16"
    fp8 = m.fp8_params
    fp8_elements = [fp8_step_casts.fp8_param_elements(st, w) if fp8 else (0.0, 0.0) for w in st.stages]
    # the stage copies as apex holds them (without NeMo 1.x's fp32 embeddings: step.fp32_embedding_optimizer)
    stages = [nemo_optimizer.apex_stage(scenario, st, w, f) for w, f in zip(st.stages, derived.stages)]
    overlapped = sh.zero in (1, 2) and step.param_gather_overlapped()
    # Adam over the rank's shard: bytes per parameter (optimizer_bytes_per_param) at the HBM rate, one launch floor
    per_param = optimizer_step.optimizer_bytes_per_param(m, sh.optimizer_bytes)
    streamed = []
    for f in derived.stages:
        shard = (1 / sh.data, 1 / sh.expert_data) if sh.zero >= 1 else (1.0, 1.0)
        updated = f.dense_params / sh.tensor * shard[0] + f.routed_params / sh.routed_ranks * shard[1]
        extra = (f.dense_params / sh.tensor - updated) * optimizer_step.GRAD_NORM_BYTES if deepspeed else 0.0
        streamed.append(updated * per_param + extra)
    adam = tuple((b / rates.hbm + rates.floor) * 1e3 for b in streamed)
    name, how = "optimizer step (Adam + clip norm + master copy)", f"{per_param:g} B per parameter updated"
    launches = "one launch"
    if step.param_gather == "apex" and not deepspeed:  # apex's fused kernel: no copy pass, no gradient cast
        once = derived_step.once_per_rank(scenario, n)
        parts = [nemo_optimizer.apex_adam_ms(scenario, st, w, f, once[s])
                 for s, (w, f) in enumerate(zip(st.stages, stages))]  # fmt: skip
        streamed, adam = [b for b, _ in parts], tuple(ms for _, ms in parts)
        wide, narrow = nemo_optimizer.apex_adam_bytes(m, sh)
        name = "optimizer step (apex's fused Adam + clip norm)"
        how = f"apex: {wide:g} B per 16-bit-synced element" + (f", {narrow:g} per FP8 one" if fp8 else "")
        launches = "its multi-tensor launches"
    out = [Item(name, "optimizer", tuple(streamed), adam,
                f"the rank's shard (ZeRO {sh.zero})" if sh.zero >= 1 else "the rank's whole stage copy (ZeRO 0)", "hbm",
                "memory", f"{how} at {rates.hbm / 1e12:.3g} TB/s + {launches}")]
    if fp8 and not deepspeed:
        cast = tuple(fp8_step_casts.fp8_master_cast_ms(scenario, st, derived))
        out.append(Item("FP8 parameters' cast + amax all-reduce", "optimizer", (0.0,) * n, cast,
                        f"amax over data x context {sh.data}" + (f", the experts' over expert-data {sh.expert_data:g}"
                                                                 if any(f.routed_params for f in derived.stages) else ""),
                        "hbm", "memory + launches",
                        "NeMo's cast_to_fp8 of each fp32 shard fragment after apex's Adam, before the all-gather"
                        if step.param_gather == "apex" else
                        "Transformer Engine's cast_master_weights_to_fp8 after Adam, before the all-gather"))
    if optimizer_step.megatron_core_optimizer(scenario):
        zero_bytes = tuple((f.dense_params / sh.tensor + f.routed_params / sh.routed_ranks) * sh.grads_bytes
                           for f in derived.stages)  # fmt: skip
        out.append(Item("gradient buffers zeroed at the step's start", "optimizer", zero_bytes,
                        tuple(optimizer_step.grad_zero_ms(st, f) for f in derived.stages), "the rank's stage copy",
                        "hbm",
                        "memory", "Megatron-core's zero_grad_buffer before the forward: the buffer written once"))
        ranks = optimizer_step.grad_norm_ranks(scenario, st)
        norm = optimizer_step.grad_norm_all_reduce_ms(scenario, st)
        out.append(Item("gradient norm all-reduce (clip)", "optimizer", (4.0,) + (0.0,) * (n - 1),
                        tuple(norm * w for w in derived_step.once_per_rank(scenario, n)), f"all {ranks} ranks"
                        if sh.zero >= 1 else f"model-parallel {ranks}",
                        optimizer_step.grad_norm_group(scenario, st).link,
                        "latency", "one fp32 all-reduced, read by .item() before Adam; on every rank once"))
    out += _loop_items(scenario, st)
    gather_bytes = tuple(f.dense_params / sh.tensor * sh.params_bytes - e[0] * (sh.params_bytes - 1.0)
                         + f.routed_params / sh.routed_ranks * sh.params_bytes - e[1] * (sh.params_bytes - 1.0)
                         for f, e in zip(stages, fp8_elements))  # fmt: skip
    whole = tuple(param_gather.param_gather_ms(st, f, e) for f, e in zip(stages, fp8_elements))
    routed = any(f.routed_params for f in derived.stages)
    if sh.zero in (1, 2) and not overlapped:
        latency = tuple(grad_sync.sync_ms(st, "grad_sync", 1.0, 1.0 if f.routed_params else 0.0, op="all_gather")
                        for f in derived.stages)  # a 1-byte message: what the gather takes besides its bytes
        out.append(Item("parameter all-gather (exposed)", "optimizer", gather_bytes, whole, _groups(sh, routed),
                        _link(st), _bound(whole, latency),
                        "after the optimizer, nothing beside it (overlap_param_gather off)"))
    start, share = 0.0, None
    if overlapped:
        start = param_gather.step_start_ms(scenario, derived)
        if step.param_gather == "megatron-core" and not scenario._megatron_interleaved():
            how = "Megatron-core's bucket-group chain before stage 0's first forward"
        elif step.param_gather == "megatron-core" and step.overlap_param_gather_with_optimizer_step:
            how = ("chunk 0's whole gather in one bucket, launched after its optimizer step: what of it outlasts "
                   "the other chunks' Adam step (step.overlap_param_gather_with_optimizer_step)")
        else:
            how = "stage 0's whole gather before its first forward" + (
                " (NeMo: its FP8 and 16-bit parameters in separate buckets)" if fp8 and step.param_gather == "apex"
                else "")
        share = derived_step.once_per_rank(scenario, n) if start > 0 else None
        extra = param_gather.apex_fp8_first_bucket(scenario, derived)[1] if fp8 and step.param_gather == "apex" else 0.0
        out.append(Item("parameter all-gather: wait at the next step's start", "optimizer",
                        (gather_bytes[0] + extra,) + (0.0,) * (n - 1), tuple(start * w for w in share or [0.0] * n),
                        _groups(sh, routed), _link(st), "bandwidth + ring latency",
                        f"{how} (step.param_gather = {step.param_gather}); on every rank once, "
                        "split over the stage copies it holds"))  # fmt: skip
    if step.fp32_embedding_optimizer:
        out.append(Item("fp32 AdamW of the embeddings (NeMo 1.x)", "optimizer",
                        tuple(nemo_optimizer.fp32_adamw_bytes(st, w) for w in st.stages),
                        tuple(nemo_optimizer.fp32_adamw_ms(st, w) for w in st.stages),
                        "every data-parallel rank, unsharded", "hbm",
                        "memory", f"torch's foreach AdamW, {TORCH_ADAMW_BYTES} B, and NeMo's scale, norm, copy and "
                        f"zeroing, {NEMO_FP32_OPTIM_BYTES} B, an fp32 element"))  # fmt: skip
    if step.fp32_embedding_optimizer and step.fp32_embedding_grad_add:
        out.append(Item("bf16 embedding gradient added into the fp32 copy (NeMo 1.17)", "optimizer",
                        tuple(nemo_optimizer.fp32_grad_add_elements(st, w) * NEMO_GRAD_ADD_BYTES for w in st.stages),
                        tuple(nemo_optimizer.fp32_grad_add_ms(st, w) for w in st.stages),
                        "the embedding stage, every data-parallel rank", "hbm", "memory",
                        f"main_param.grad += model_param.grad once a step and the .grad "
                        f"zeroed: {NEMO_GRAD_ADD_BYTES} B an element, {NEMO_GRAD_ADD_KERNELS} kernels a tensor"))
    refresh = tuple(fp8_step_casts.fp8_weight_cast_ms(st, w) for w in st.stages)
    if any(refresh):
        low = "NVFP4" if st.fp4 else "FP8"  # model.fp4: NVFP4 copies (docs/model.md, "NVFP4 in memory")
        out.append(Item(f"{low} weight refresh (first micro-batch)", "optimizer", (0.0,) * n, refresh, "the rank",
                        "hbm", "memory", f"the {low} copies (or FP8 parameters' transposes) made once a step"))
    slow = comm_slowdown.dp_comm_slowdown(scenario, step.dp_comm_sms, derived) \
        if overlapped and step.dp_comm_sms else ()
    if slow:
        held = derived_step.stage_copies(scenario)  # the copy's forwards in a step: M / copies of them
        forwards = [scenario.pipeline.microbatches / held[s] * (f.forward or 0.0) for s, f in enumerate(derived.stages)]
        waited = [param_gather.waited_before_forward(step, s, start) for s in range(n)]
        chain = param_gather.start_slowdown_ms(scenario, derived, slow[0])  # stage 0 on Megatron-core's chain
        beside = tuple(param_gather.forward_under_gather_ms(whole[s], waited[s], forwards[s], slow[s])
                       if s or chain is None else chain for s in range(n))  # fmt: skip
        out.append(Item("forward slowed beside the overlapped all-gather", "optimizer", (0.0,) * n, beside,
                        "the rank", "-", f"SMs ({step.dp_comm_sms} taken)",
                        "(slowdown - 1) x the forward the gather runs beside (step.dp_comm_sms)"))  # fmt: skip
    return out


def _loop_items(scenario, st) -> list[Item]:
    """The A100-era loops' once-a-step work (model/loop_step.py), as derived_sync adds it to the optimizer figure."""
    mcore = optimizer_step.megatron_core_optimizer(scenario)
    phase, once = loop_step.per_stage_ms(scenario, st, derive.stage_ranks(scenario), mcore)
    n = len(st.stages)
    out = []
    if any(phase):
        out.append(Item("Megatron-LM's warm-up and cool-down P2P calls' timers", "optimizer", (0.0,) * n, phase,
                        "the rank", "-", "host syncs", "the calls the schedule's warm-up and cool-down make beyond "
                        "the steady state's, two torch.cuda.synchronize() each; once a rank"))  # fmt: skip
    if any(once):
        megatron = st.megatron_lm_loop
        out.append(Item("Megatron-LM's step timers, host reads, loss average" if megatron else
                        "DeepSpeed's loss aggregation and Megatron-DeepSpeed's log", "optimizer", (0.0,) * n, once,
                        "the rank (found-inf, norm: the model-parallel group, where read here)" if megatron else
                        "the rank; the loss over data parallelism, broadcast over the pipeline", "-",
                        "host syncs + latency",
                        "train_step's and the optimizer's timers, the loss scale's .item(), the found-inf and norm "
                        "reads, the last rank's loss sums; once a rank" if megatron else
                        "_aggregate_total_loss's reads and broadcast, training_log at --log-interval 1; once a rank"))
    return out


def summary(scenario, derived) -> dict | None:
    """The ``step_end`` JSON: `run`'s [step] figures per stage copy (ms), the settings that shape them, the
    compute slowdown and the parts (:func:`items`); None without a [step] table; ``{"error": ...}`` when `run`
    would refuse the [step] table (the model verb still describes the model: its words say why)."""
    try:
        costs = scenario.step_costs(derived)
    except ScenarioError as exc:
        return {"error": str(exc)}
    if costs is None:
        return None
    step, settings = scenario.step, _settings(scenario)
    figures = {k: list(getattr(costs, k)) for k in FIGURES}
    derived_keys = [k for k in FIGURES if settings[k] == "derived"]
    if any(costs.grad_sync_tail):  # what runs after the rank's other syncs (grad_sync.grad_sync_tail)
        figures["grad_sync_tail"] = list(costs.grad_sync_tail)
        derived_keys.append("grad_sync_tail")
    return {
        "figures_ms": figures,
        "derived": derived_keys,
        "overlap_grad_sync": costs.overlap_grad_sync,
        "overlap_param_gather": bool(step.param_gather_overlapped()),
        "grad_sync_launch": costs.grad_sync_launch,
        "grad_sync_buckets": list(costs.grad_sync_buckets) if isinstance(costs.grad_sync_buckets, tuple)
        else costs.grad_sync_buckets,
        "dp_comm_sms": step.dp_comm_sms,
        "dp_comm_slowdown": list(costs.dp_comm_slowdown),
        "items": [{"name": i.name, "figure": i.figure, "bytes": list(i.bytes), "ms": list(i.ms), "group": i.group,
                   "link": i.link, "bound": i.bound, "rule": i.rule} for i in items(scenario, derived)],
        "host_launches": _host_launches(scenario, derived),
    }


def _host_launches(scenario, derived) -> dict | None:
    """The eager launches after the step's two host reads (model/step_launches.py): counted, not costed."""
    got = step_launches.count(scenario, derived)
    if got is None:
        return None
    return {"after_loss_read": got.after_loss, "after_norm_read": got.after_norm, "shard_pieces": got.pieces,
            "fp8_pieces": got.fp8_pieces, "adam_launches": got.adam, "norm_launches": got.norm, "costed": False}
