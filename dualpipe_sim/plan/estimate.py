"""A cheap estimate of one candidate: its step time and memory, without simulating it.

Only used to prune candidates that cannot fit and to order the rest; every
figure ``plan`` reports comes from a full simulation.

* static bytes per rank: the parameters, gradients and optimizer states of the
  stages it holds, sharded as ZeRO says (model/memory.py), and the runtime
  allowance; first from the stages' parameter counts alone (a lower bound: no
  FP8 weight copies), then as derived (with them and ZeRO's buffers);
* memory floor: the fullest rank's static bytes plus one micro-batch's
  activations of the largest stage it holds, or on the rank holding the output layer
  with model.defer_embedding_wgrad its deferred micro-batches' buffers if more
  (deferred_held).  Every schedule holds at least that, so a floor above the device
  proves the candidate cannot fit;
* memory estimate: the static bytes plus the closed form's peak number of live
  activations (registry.analytic) of the rank's smallest stage (or the deferred
  buffers on their rank if more), or the floor where there is no formula;
* step time: the candidate's schedule replayed by the engine's replay core on
  its per-stage F, B, W and F&B (and, with model.defer_embedding_wgrad, the last stage's lighter
  backwards of the deferred micro-batches, as the run's CostModel.deferred) and its P2P time,
  extrapolated to its M, plus the step's end (grad sync, the deferred wgrad's drain, optimizer)
  after it (step_estimate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from ..schedules import registry
from ..schedules.ir import ops_of
from ..schedules.rules import WEIGHT_APART
from ..inputs.costs import CostModel
from ..step_costs import StepCosts
from ..model import derive
from ..model import memory as model_memory
from ..model.sections import HardwareSection
from ..model.deferred_wgrad import held_bytes
from ..inputs.scenario import apply_overrides, sections_only
from .shapes import VIRTUAL_OPTION, placement
from .space import Candidate
from ..model.placement import DEFAULT_ORDER, nvlink_pairs
from .step_estimate import Hops, StageCosts, built, pipelines, step_end_ms


@dataclass(frozen=True)
class Estimate:
    step_time: float | None  # ms; None for a candidate pruned before its step was estimated
    memory_floor: float  # bytes
    memory: float  # bytes
    compute_floor: float = 0.0  # ms: a lower bound of the run's step (compute_floor)


@dataclass(frozen=True)
class StageFigures:
    """Per stage: F + B, F&B (an overlapped pair), activation bytes; and the stages' means."""

    work: tuple[float, ...]
    pair: tuple[float, ...]
    activation: tuple[float, ...]
    mean: CostModel  # mean F, B, W (and F&B), no P2P: what the closed forms take
    static: tuple[float, ...] = ()  # parameters, gradients, optimizer, FP8 copies per stage (model/memory.py)
    buffers: tuple[float, ...] = ()  # ZeRO 2/3 unsharded buffers per stage (a rank holds its largest)
    costs: StageCosts | None = None  # per stage F, B, W, F&B: what the replay takes (step_estimate.py)
    p2p: float = 0.0  # ms per P2P transfer (model/derive.py's p2p_ms), across the NIC
    p2p_nvlink: float | None = None  # ms per P2P transfer inside one NVLink domain (model/placement.py)


class FigureCache:
    """Derived figures by layout, so the schedules sharing a stage count share one derivation."""

    def __init__(self, base: dict) -> None:
        self.base = base
        self._setups: dict[int, derive.Setup] = {}  # by stage count: the layers each stage holds
        self._figures: dict[tuple, StageFigures] = {}
        self._derived: dict[tuple, derive.Derived] = {}
        self._steps: dict[tuple, StepCosts | None] = {}  # step_costs, by layout, M and placement
        self._pipelines: dict[tuple, tuple] = {}  # pipeline_ms, by schedule shape and stage costs
        self._blocking: dict[tuple, bool] = {}  # comm.p2p_mode resolved blocking, by schedule and chunks
        # by (stages, tensor, expert, expert_tensor, data x context, zero): what memory depends on of a layout
        self._static: dict[tuple, tuple[float, ...]] = {}
        self._memory: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        self._deepep: dict[tuple, tuple[float, ...]] = {}  # by (stages, expert, expert_tensor): DeepEP's buffer
        self.floors: dict[tuple, float] = {}  # static_floor, by what it reads of a candidate
        self._last_scenario: tuple = (None, None)  # (overrides, Scenario): see scenario()
        self._memo = derive.Memo()  # per-layer and per-stage figures the derivations share (this plan's only)
        self.hardware_name = derive.hardware(HardwareSection.model_validate(base["hardware"])).name

    def runtime(self, cand: Candidate) -> float:
        """What simulation.py adds to every rank besides tensors: memory.runtime, else the CUDA
        context, one NCCL communicator per process group and the GEMM workspace."""
        given = self.base.get("memory", {}).get("runtime")
        if given is not None:
            return float(given)
        dp = cand.data * cand.context  # the optimizer's and the gradients' group (model/derive.py)
        routed = cand.expert * cand.expert_tensor  # the expert grid's groups, as simulation.py counts them
        groups = [cand.tensor, cand.pipeline, dp, cand.expert, round(dp * cand.tensor / routed) if routed > 1 else 1,
                  cand.expert_tensor]
        return model_memory.runtime_allowance(groups, self.hardware_name != "A100")

    def scenario(self, cand: Candidate):
        overrides = tuple(cand.overrides())
        # the last candidate's: a new layout asks for its scenario two or three times in a row
        # (derivation, step figures, P2P mode); the base is fixed, so the overrides are the whole key
        if self._last_scenario[0] != overrides:
            self._last_scenario = (overrides, sections_only(apply_overrides(self.base, list(overrides))))
        return self._last_scenario[1]

    def static(self, cand: Candidate) -> tuple[float, ...]:
        """Static bytes of each stage on a rank of this candidate."""
        if cand.stages not in self._setups:
            self._setups[cand.stages] = derive.setup(self.scenario(cand))
        key = (cand.stages, cand.tensor, cand.expert, cand.expert_tensor, cand.data * cand.context, cand.zero)
        if key not in self._static:
            setup = self._setups[cand.stages]
            sh = replace(setup.sharding, tensor=cand.tensor, expert=cand.expert, data=cand.data * cand.context,
                         zero=cand.zero, expert_tensor=cand.expert_tensor)  # fmt: skip
            # the stage's static bytes as `run` counts them (FP8 copies and FP8 parameters included)
            st = replace(setup, sharding=sh)
            self._static[key] = tuple(derive.stage_memory(st, stage, self._memo)[0].total for stage in setup.stages)
        return self._static[key]

    def deepep(self, cand: Candidate) -> tuple[float, ...]:
        """DeepEP's persistent buffer on a rank running each stage (derive.stage_deepep_bytes; 0 without DeepEP): one
        per process, so a rank holds the largest of its stages', as simulation.py adds it."""
        key = (cand.stages, cand.expert, cand.expert_tensor)
        if key not in self._deepep:
            self.static(cand)  # the stage count's Setup
            setup = self._setups[cand.stages]
            st = replace(setup, sharding=replace(setup.sharding, expert=cand.expert, expert_tensor=cand.expert_tensor))
            self._deepep[key] = tuple(derive.stage_deepep_bytes(st, stage) for stage in setup.stages)
        return self._deepep[key]

    def figures(self, cand: Candidate) -> StageFigures:
        key = (*_layout(cand), cand.zero)
        if key not in self._figures:
            # ZeRO 0-2 change only memory (model/derive.py costs data-parallel collectives inside
            # actions only for ZeRO 3): one derivation of the times serves them all (_derived_for), and
            # the memory is worked out per stage for the candidate's sharding.
            derived = self._derived_for(cand)
            deferred = self._deferred(cand, derived)
            f, b, w, pair, fa, ba = zip(*(_stage_costs(derived, s) for s in range(cand.stages)))
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            uniform = CostModel.uniform(cand.stages, mean(f), mean(b), mean(w), mean(pair))
            work = tuple(x + y for x, y in zip(f, b))
            static, buffers = self._stage_memory(cand, derived)
            self._figures[key] = StageFigures(work, pair, tuple(derived.activation_bytes), uniform, static, buffers,
                                              StageCosts(f, b, w, fa, ba, derived.comm_compute_slowdown, deferred,
                                                         _pair_host(derived), _apart(derived, cand.stages)),
                                              derived.p2p or 0.0, derived.p2p_nvlink)  # fmt: skip
        return self._figures[key]

    def _deferred(self, cand: Candidate, derived) -> tuple[int, int, float, float] | None:
        """model.defer_embedding_wgrad's lighter backwards as the run's CostModel.deferred (Scenario.deferral), refused
        as the run refuses it (a ScenarioError: the candidate is pruned with its words)."""
        if not self.base["model"].get("defer_embedding_wgrad"):
            return None
        scenario = self.scenario(cand)
        if derived.moe_layer is not None:  # the run costs such a stage with [chunk] components (Scenario.cost_model)
            scenario.check_deferral_per_stage()
        deferral = scenario.deferral(derived)
        return None if deferral is None else tuple(deferral[:4])

    def hops(self, cand: Candidate, fig: StageFigures) -> tuple[Hops, ...]:
        """Each distinct data-parallel replica's hand-offs (model/placement.py), as simulation.simulate replays them;
        the NIC's figure alone where nothing is known of NVLink."""
        if fig.p2p_nvlink is None or not fig.p2p:
            return (fig.p2p,)
        order = (self.base.get("parallel") or {}).get("rank_order", DEFAULT_ORDER)
        domain = self._derived_for(cand).setup.hw.domain
        pairs = nvlink_pairs(order, cand.tensor * cand.context, cand.data, cand.pipeline, domain)
        return tuple((fig.p2p, fig.p2p_nvlink, p) for p in pairs)

    def step_costs(self, cand: Candidate) -> StepCosts | None:
        """The candidate's [step] figures per stage, as its run resolves them (Scenario.step_costs:
        model/derived_step.py), from the shared derivation with the candidate's sharding."""
        # the schedule matters only by where the stages sit (M follows from data and micro-batch size)
        key = (*_layout(cand), cand.zero, placement(cand.schedule, cand.stages, cand.virtual))
        if key not in self._steps:
            derived = self._derived_for(cand)
            sharding = replace(derived.setup.sharding, data=cand.data * cand.context, zero=cand.zero)
            own = replace(derived, setup=replace(derived.setup, sharding=sharding))
            self._steps[key] = self.scenario(cand).step_costs(own)
        return self._steps[key]

    def pipeline_ms(self, cand: Candidate, fig: StageFigures) -> tuple[float, float]:
        """The pipeline's estimated makespan and what the step's end adds after it (ms)."""
        blocking = self.blocking(cand)
        hops = self.hops(cand, fig)
        key = (cand.schedule, cand.stages, cand.virtual, cand.microbatches, fig.costs, hops, blocking)
        if key not in self._pipelines:
            runs = pipelines(cand.schedule, cand.stages, cand.microbatches, cand.virtual, cand.pipeline,
                             [fig.costs] * len(hops), list(hops), blocking)  # fmt: skip
            self._pipelines[key] = slowest(runs)
        makespan, run, m = self._pipelines[key]
        return makespan, step_end_ms(built(cand.schedule, cand.stages, m, cand.virtual), run, self.step_costs(cand))

    def blocking(self, cand: Candidate) -> bool:
        """Whether the candidate's P2P sends block (Scenario.p2p_mode: by family when "derived")."""
        key = (cand.schedule, cand.virtual)
        if key not in self._blocking:
            self._blocking[key] = self.scenario(cand).p2p_mode() == "blocking"
        return self._blocking[key]

    def _derived_for(self, cand: Candidate) -> derive.Derived:
        # ZeRO 0-2 change only memory (model/derive.py costs data-parallel collectives inside actions
        # only for ZeRO 3): one derivation of the times serves them all.  The data-parallel degree is
        # read by the times too: Transformer Engine's FP8 amax reduction spans tensor x data x context
        # ranks (derive.setup's amax_group, in the kernels' Layout), and layouts with one stage count
        # differ in it where their families hold other numbers of stages per rank (DualPipeV on 8
        # ranks, 1F1B on 16), and Megatron-LM 2021's gradient accumulation costs per micro-batch
        # (derive.grad_accumulation_bytes), whose count it sets.  Keyed without it, a figure depended on
        # which candidate came first.
        fsdp = cand.zero >= 3
        times = (*_layout(cand), fsdp)
        if times not in self._derived:
            self._derived[times] = self.scenario(cand).derived(self._memo)
        return self._derived[times]

    def _stage_memory(self, cand: Candidate, derived) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Each stage's static bytes and ZeRO 2/3 buffers for the candidate's sharding, as derive()
        works them out (they depend on the stages and the sharding only)."""
        key = (cand.stages, cand.tensor, cand.expert, cand.expert_tensor, cand.data * cand.context, cand.zero)
        if key not in self._memory:
            sh = replace(derived.setup.sharding, data=cand.data * cand.context, zero=cand.zero)
            st = replace(derived.setup, sharding=sh)
            memory = [derive.stage_memory(st, stage, self._memo) for stage in st.stages]
            self._memory[key] = (tuple(m.total for m, _ in memory), tuple(b for _, b in memory))
        return self._memory[key]


def _layout(cand: Candidate) -> tuple:
    """What a derivation's times read of a candidate (ZeRO and the schedule aside): the FigureCache keys' core."""
    return (cand.tensor, cand.context, cand.expert, cand.expert_tensor, cand.data, cand.micro_batch_size, cand.stages,
            cand.recompute)


def _stage_costs(derived, s: int) -> tuple[float, ...]:
    """F, B, W and an overlapped F&B pair of stage ``s`` (ms), and the all-to-all inside its F and
    B.  With [chunk] components (MoE) the pair is its compute plus the slowdown of the compute an
    all-to-all overlaps (the simulated pair lies within a few % of it); the engine lays the real
    pair out with channels.py."""
    if not derived.stage_chunks:
        st = derived.stages[s]
        return st.forward, st.backward, st.weight, st.forward + st.backward, 0.0, 0.0
    n, t = derived.stage_chunks[s]
    fc, fa = t.attn_forward + t.mlp_forward, t.dispatch_forward + t.combine_forward
    bw = t.attn_backward_weight + t.mlp_backward_weight
    bc, ba = t.attn_backward_input + t.mlp_backward_input + bw, t.dispatch_backward + t.combine_backward
    pair = fc + bc + (derived.comm_compute_slowdown - 1) * min(fc + bc, fa + ba)
    return n * (fc + fa), n * (bc + ba), n * bw, n * max(pair, fa + ba), n * fa, n * ba


def _pair_host(derived) -> tuple[tuple[float, float, float], ...]:
    """Per stage, its MoE layers' host shares (derive.stage_pair_host x its layers), ms: () where none is costed."""
    return tuple(tuple(n * x for x in h) for (n, _), h in zip(derived.stage_chunks, derived.stage_pair_host))


def _apart(derived, stages: int) -> tuple[tuple[float, float], ...]:
    """Per stage, what a lone I carries less and a lone W more (derive.StageFigures.host_apart), as the run's
    CostModel.apart (or its [chunk] stages' Chunk.apart_host over their layers): () where none is costed."""
    hosts = [derived.stages[s].host_apart for s in range(stages)]
    return tuple(h or (0.0, 0.0) for h in hosts) if any(hosts) else ()


def static_floor(cache: FigureCache, cand: Candidate) -> float:
    """A lower bound of the fullest rank's bytes before any activation: its stages' static bytes
    (parameters, gradients, optimizer states, FP8 weight copies), DeepEP's buffer and the runtime allowance."""
    # static() reads (stages, tensor, expert, expert_tensor, data x context, zero), placement (schedule, stages,
    # virtual), runtime() (tensor, pipeline, data x context, expert, expert_tensor): candidates differing in micro-batch
    # size or recompute share the floor
    key = (cand.schedule, cand.stages, cand.virtual, cand.tensor, cand.pipeline, cand.expert, cand.expert_tensor,
           cand.data * cand.context, cand.zero)  # fmt: skip
    if key not in cache.floors:
        static, deepep = cache.static(cand), cache.deepep(cand)
        held = placement(cand.schedule, cand.stages, cand.virtual)
        cache.floors[key] = max(sum(static[s] for s in {s for _, s in on}) + max(deepep[s] for _, s in on)
                                for on in held) + cache.runtime(cand)  # fmt: skip
    return cache.floors[key]


def step_time(cache: FigureCache, cand: Candidate) -> float:
    """The estimated step (ms): the pipeline's replayed makespan plus the step's end after it."""
    makespan, step_end = cache.pipeline_ms(cand, cache.figures(cand))
    return makespan + step_end


@dataclass(frozen=True)
class StepInputs:
    """What a candidate's step time reads (``step_time``), gathered where its layout is derived so that
    the step can be worked out anywhere: the schedule's shape, the stage costs and P2P time, and its
    [step] figures (``step``: StepCosts, None, or the words of the error step_costs raised, which
    ``step_time`` would say only once the pipeline has been replayed)."""

    schedule: str
    stages: int
    microbatches: int
    virtual: int | None
    ranks: int
    blocking: bool
    costs: StageCosts
    p2p: tuple[Hops, ...]  # per distinct data-parallel replica (FigureCache.hops)
    step: StepCosts | None | str

    def shape(self) -> tuple:
        """What the candidates replayed together share: the schedules built and the replay's rules."""
        return (self.schedule, self.stages, self.microbatches, self.virtual, self.ranks, self.blocking)


def slowest(runs: list[tuple[float, object, int]]) -> tuple[float, object, int]:
    """The replica whose pipeline ends last (the first on a tie): the step waits for it (simulation.simulate)."""
    return max(runs, key=lambda r: r[0])


def step_inputs(cache: FigureCache, cand: Candidate) -> StepInputs | str:
    """The candidate's StepInputs, or the words of the ValueError that refused it (as step_time's)."""
    try:
        blocking = cache.blocking(cand)
        fig = cache.figures(cand)
    except ValueError as exc:  # ScenarioError / ScheduleError: a rule of the model or the schedule
        return str(exc)
    try:
        step = cache.step_costs(cand)
    except ValueError as exc:
        step = str(exc)
    return StepInputs(cand.schedule, cand.stages, cand.microbatches, cand.virtual, cand.pipeline, blocking, fig.costs,
                      cache.hops(cand, fig), step)  # fmt: skip


def step_times_of(inputs: list[StepInputs | str]) -> list[float | str]:
    """``step_time`` (or its error's words) of each candidate from its StepInputs: the candidates that share a
    schedule shape replayed together (step_estimate.pipelines), each pipeline's (costs, P2P) once, then each
    one's step end.  Every figure is that of step_time to the bit (tests/test_plan_step_times.py)."""
    out: list[float | str] = [x if isinstance(x, str) else 0.0 for x in inputs]
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs):
        if not isinstance(x, str):
            groups.setdefault(x.shape(), []).append(i)
    for (name, stages, m, virtual, ranks, blocking), members in groups.items():
        distinct = list(dict.fromkeys((inputs[i].costs, h) for i in members for h in inputs[i].p2p))
        try:
            runs = dict(zip(distinct, pipelines(name, stages, m, virtual, ranks, [c for c, _ in distinct],
                                                [p for _, p in distinct], blocking)))  # fmt: skip
        except ValueError as exc:  # the family refused to build the shape: every member's words
            for i in members:
                out[i] = str(exc)
            continue
        for i in members:
            x = inputs[i]
            makespan, run, at = slowest([runs[(x.costs, h)] for h in x.p2p])
            if isinstance(x.step, str):
                out[i] = x.step
                continue
            try:
                out[i] = makespan + step_end_ms(built(name, stages, at, virtual), run, x.step)
            except ValueError as exc:
                out[i] = str(exc)
    return out


def memory_estimate(cache: FigureCache, cand: Candidate) -> Estimate:
    """The memory floor and estimate, the step time left None (the plan prunes on memory first)."""
    fig = cache.figures(cand)
    held = placement(cand.schedule, cand.stages, cand.virtual)
    options = {VIRTUAL_OPTION: cand.virtual} if cand.virtual else {}
    closed = registry.analytic(cand.schedule, cand.stages, cand.microbatches, fig.mean, **options)
    runtime, deepep = cache.runtime(cand), cache.deepep(cand)
    statics = [sum(fig.static[s] for s in {s for _, s in on_rank}) + max(fig.buffers[s] for _, s in on_rank)
               + max(deepep[s] for _, s in on_rank) + runtime for on_rank in held]  # fmt: skip
    kept = deferred_held(cache, cand, fig)
    # model.defer_embedding_wgrad's buffers on the rank holding the output layer: all of them are held together after
    # its last deferring backward, until the drain (model/buffers.py), with no activation certain beside them (GPipe's
    # backwards may have freed every one), so a rank holds the larger of them and its activations at least
    wgrad = [kept[1] if kept and any(s == kept[0] for _, s in on_rank) else 0.0 for on_rank in held]
    floor = max(st + max(max(fig.activation[s] for _, s in on_rank), w) for st, on_rank, w in zip(statics, held, wgrad))
    peak = closed.get("peak_activation")
    # Optimistic on purpose (the smallest stage's activations on each rank, or the deferred buffers if more): it
    # decides what is simulated first, and a schedule such as DualPipe keeps few of its larger stage's activations.
    memory = max(st + max(peak * min(fig.activation[s] for _, s in on_rank), w)
                 for st, on_rank, w in zip(statics, held, wgrad)) if peak else floor  # fmt: skip
    return Estimate(None, floor, max(memory, floor), compute_floor(fig.costs, cand.microbatches, cand.pipeline, held,
                                                                   whole_backwards(cand.schedule, cand.stages,
                                                                                   cand.virtual)))  # fmt: skip


def deferred_held(cache: FigureCache, cand: Candidate, fig: StageFigures) -> tuple[int, float] | None:
    """model.defer_embedding_wgrad's buffers (None without it): the model stage holding the output layer and the bytes
    its deferred micro-batches hold together until the drain, count x model/deferred_wgrad.py's held_bytes (the count:
    the key, capped at the micro-batches, as CostModel.deferred gives it)."""
    if fig.costs is None or fig.costs.deferred is None:
        return None
    stage, count = fig.costs.deferred[:2]
    return stage, count * held_bytes(cache._derived_for(cand).setup)


def compute_floor(costs: StageCosts, microbatches: int, ranks: int, held: tuple = (),
                  whole_backwards: bool = False) -> float:  # fmt: skip
    """A lower bound of the run's step (ms): every micro-batch's forward and backward compute on every stage, shared
    by the ``ranks`` pipeline ranks as evenly as can be, plus the time each rank must stand idle.  A rank runs its
    actions one after another (the replay core), an action lasts at least its compute (a lone op its whole length; an
    overlapped pair, on the [chunk] model's compute channel, its two computes one after the other, only slowed beside
    an all-to-all: the F and B less their all-to-all, and less the MoE host rows a pair replaces by its own share,
    here), so with the makespan T every rank r is busy at most
    T - idle(r) and T >= (work + sum idle) / ranks.  ``held``: the (direction, stage) pairs on each rank
    (shapes.placement); a rank's first action is a forward of a stage s it holds (a backward follows its forward on
    its own rank), which waits for that micro-batch's forwards on stages 0 .. s - 1, each published at its action's
    end: idle(r) >= min over its stages of their forward computes' sum (s19n).  ``whole_backwards`` (no W action in
    the schedule): a rank's last action then holds a backward of a stage s it holds, after which the micro-batch's
    backwards on stages s - 1 .. 0 still run: idle(r) grows by the least of their sums (with W actions the rank's last
    may be a W, after which nothing need run).  The deferred output-layer wgrad's lighter backwards
    (StageCosts.deferred) count as the run runs them.  Without random durations only (``costs.jitter``,
    ``ranks.slowdown``, ``hardware.gpu_variability``: plan uses the floor only then, rank.py's ``floor_holds``);
    tests/test_plan_etp.py and tests/test_s19n_plan_leftovers.py hold it under every simulated step."""
    n = len(costs.forward)
    fa = costs.forward_a2a or (0.0,) * n
    ba = costs.backward_a2a or (0.0,) * n
    # less the host rows an overlapped pair replaces by its own share (>= 0, model/host_pair.py): a floor either way
    host = costs.pair_host or ((0.0, 0.0, 0.0),) * n
    fc = [max(0.0, f - a - h[0]) for f, a, h in zip(costs.forward, fa, host)]
    bc = [max(0.0, b - z - h[1]) for b, z, h in zip(costs.backward, ba, host)]
    work = sum(fc[s] + bc[s] for s in range(n)) * microbatches
    if costs.deferred is not None:
        stage, count, less_i, less_w = costs.deferred
        work -= count * (less_i + less_w)
        bc[stage] = max(0.0, bc[stage] - less_i - less_w)  # the lightest backward the chain below may hold
    idle = 0.0
    for on_rank in held:
        idle += min(sum(fc[:s]) for _, s in on_rank)
        if whole_backwards:
            idle += min(sum(bc[:s]) for _, s in on_rank)
    return (max(0.0, work) + idle) / ranks


@lru_cache(maxsize=None)
def whole_backwards(name: str, stages: int, virtual: int | None) -> bool:
    """Whether the schedule runs every backward whole (no action runs weight gradients apart, rules.WEIGHT_APART: W;
    compute_floor's drain), read off builds with 2 and 4 micro-batches per stage (every family accepts those counts;
    a family that splits splits there)."""
    options = {VIRTUAL_OPTION: virtual} if virtual else {}
    for m in (2 * stages, 4 * stages):
        schedule = registry.build(name, stages, m, **options)
        if any(op.kind in WEIGHT_APART for actions in schedule.ranks for a in actions for op in ops_of(a)):
            return False
    return True
