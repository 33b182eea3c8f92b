"""One run, end to end: scenario -> schedule -> engine -> trace -> metrics.

The CLI, sweeps and comparisons all call :func:`run`; nothing else wires the
stages together.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from . import limits, units
from .engine import replay
from .schedules import registry
from .inputs.costs import CostModel
from .schedules.ir import Schedule, ScheduleError, ops_of
from .schedules.rules import WEIGHT_APART
from .inputs.resolve import Inputs, resolve
from .readers.metrics import Metrics, RankMemory, compute_metrics, throughput_metrics
from .model import buffers as model_buffers
from .model import memory as model_memory
from .model import placement
from .model import validation_band
from .model.throughput import throughput
from .inputs.scenario import Scenario, ScenarioError
from .schedules import closed_form
from .engine.step import with_step
from .readers.step_metrics import step_metrics
from .engine.trace import Trace
from .engine.validate import index_ops


@dataclass
class Result:
    scenario: Scenario
    schedule: Schedule
    costs: CostModel
    trace: Trace
    metrics: Metrics  # metrics.to_dict() is metrics.json
    inputs: Inputs | None = None  # what the run read off the scenario (resolve.py); costs is inputs.costs


def build_schedule(scenario: Scenario) -> Schedule:
    p = scenario.pipeline
    return registry.build(p.schedule, p.stages, p.microbatches, max_memory=scenario.limits.max_memory,
                          **scenario.options())


def run(scenario: Scenario, schedule: Schedule | None = None, inputs: Inputs | None = None) -> Result:
    """Simulate a scenario, with its registered schedule or with ``schedule``
    (a user's own, e.g. read from a file).  ``inputs``: ``resolve(scenario)`` when the
    caller has it already (scenario.resolved), else resolved here, once.  Raises
    ScenarioError/ScheduleError with a one-line message on bad input."""
    inputs = resolve(scenario) if inputs is None else inputs
    with gc_paused(), np.errstate(over="ignore", invalid="ignore"):  # overflow is reported in words
        result = _run(scenario, schedule, inputs)
    _check_finite(scenario, result.metrics)
    return result


@contextmanager
def gc_paused():
    """Python's cyclic collector re-walks every live object on its older-generation
    passes, so over a run's hundreds of thousands of small records its cost grows
    faster than the run (about 30% of a large SimPy run).  A run leaves no cycles
    that need collecting midway: pause the collector, restore it after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_size(scenario: Scenario, schedule: Schedule) -> None:
    """Refuse a user's own schedule too large for limits.max_memory (a scenario's
    own shape is checked when it is loaded; a schedule brings its own op count)."""
    ops = schedule.num_ops()
    boxes = ops if max(map(len, schedule.ranks), default=0) <= limits.BOX_ACTIONS_PER_RANK else 0  # else bands
    too_big = limits.ops_problem(ops, scenario.limits.max_memory, f"the schedule file has {ops:,} ops", boxes,
                                schedule.num_ranks)  # fmt: skip
    if too_big:
        raise ScenarioError(too_big)


def _run(scenario: Scenario, schedule: Schedule | None, inputs: Inputs) -> Result:
    costs = inputs.costs
    if schedule is None:
        schedule = build_schedule(scenario)
        analytic = registry.analytic(
            scenario.pipeline.schedule, schedule.stages, schedule.microbatches, costs, **scenario.options()
        )
    else:
        analytic = closed_form.given_schedule()  # null, with the reason
        check_size(scenario, schedule)
        if schedule.stages != scenario.pipeline.stages:
            raise ScenarioError(
                f"pipeline.stages: the schedule file has {schedule.stages} stages, the scenario {scenario.pipeline.stages}"
            )
    _check_deferral(schedule, costs)
    check_fsdp(schedule, inputs.derived)
    trace = with_step(simulate(schedule, costs), inputs.step_costs)
    metrics = _with_memory(compute_metrics(trace, analytic), scenario, trace, inputs)
    tp = throughput(scenario, inputs.derived)
    # a block only when [step] adds work (a row: a drain is one, StepKind.DRAIN): otherwise metrics stay as they were
    if len(trace.step):
        metrics = replace(metrics, step=step_metrics(trace, inputs.step_costs, tp))
    step_time = metrics.step.total if metrics.step is not None else metrics.makespan
    metrics = replace(metrics, throughput=throughput_metrics(step_time, metrics.step is not None, metrics.ranks, tp))
    if metrics.throughput is not None and inputs.derived is not None:  # reported beside the prediction, not applied
        band = validation_band.lookup(scenario.hardware, inputs.derived.setup.cfg.moe, metrics.step is not None)
        metrics = replace(metrics, validation_band=band)
    return Result(scenario, schedule, costs, trace, metrics, inputs)


def _check_deferral(schedule: Schedule, costs: CostModel) -> None:
    """model.defer_embedding_wgrad is Megatron-core's, on the one pipeline rank holding the output layer: a schedule
    that runs the head's stage on two ranks (DualPipe, Chimera: one copy a direction) would charge both the whole
    drain (StepCosts.drain is per stage) for micro-batches deferred once, so it is refused, as that schedule's rule
    (a ScheduleError: compare skips the schedule and runs the others)."""
    deferred = getattr(costs, "deferred", None)
    if deferred is None:
        return
    holders = [r for r, held in enumerate(schedule.stages_on_rank()) if deferred[0] in held]
    if len(holders) > 1:
        raise ScheduleError(field="model.defer_embedding_wgrad",
                            rule=f"is Megatron-core's, on the one rank holding the output layer; {schedule.name} runs "
                                 f"its stage ({deferred[0]}) on ranks {', '.join(map(str, holders[:-1]))} and "
                                 f"{holders[-1]}; set it to 0 or pick a schedule with one copy of each stage")  # fmt: skip


def check_fsdp(schedule: Schedule, derived) -> None:
    """ZeRO 3 (model/fsdp.py) works a backward's re-gathers and reduce-scatters against its whole compute, input and
    weight gradients, and puts what they leave exposed on the op that runs the input gradient; a schedule that runs the
    weight gradients apart (W ops) would hide that op's gathers under GEMMs that run later, and Megatron-FSDP releases
    a unit's reduce-scatter only once its delayed weight gradients exist.  So the pair is refused, as a rule of
    parallel.zero (a ScheduleError: compare skips the schedule and runs the others); docs/step.md, "ZeRO 3".
    ``derived``: the scenario's [model] figures (model/derive.py's Derived) or None.  Every verb that derives the
    model runs this one check: run (and compare, sweep, repeat through it) and model (cli._cmd_model)."""
    if derived is None or derived.setup.sharding.zero < 3:
        return
    if any(op.kind in WEIGHT_APART for actions in schedule.ranks for action in actions for op in ops_of(action)):
        raise ScheduleError(field="parallel.zero",
                            rule=f"3 (FSDP) is not modelled with a schedule that runs weight gradients apart ({schedule.name} "
                                 f"has W ops); use parallel.zero 0, 1 or 2, or a schedule without W ops (1f1b, "
                                 f"interleaved-1f1b, gpipe, chimera)")  # fmt: skip


def _with_memory(metrics: Metrics, scenario: Scenario, trace: Trace, inputs: Inputs) -> Metrics:
    """Metrics with ``device_memory`` (bytes or None) and, with [model], ``per_rank[].memory``."""
    ranks = metrics.per_rank
    derived = inputs.derived
    if derived is not None:
        setup = derived.setup
        runtime = scenario.memory.runtime
        if runtime is None:
            sh = setup.sharding
            groups = [sh.tensor, trace.ranks, sh.data, sh.expert, round(sh.expert_data) if sh.routed_ranks > 1 else 1,
                      sh.expert_tensor]
            runtime = model_memory.runtime_allowance(groups, setup.hw is None or setup.hw.name != "A100")
        rows = model_memory.per_rank([s.static for s in derived.stages], trace.stages_on_rank,
                                     [r.peak_activation_bytes for r in ranks],
                                     model_buffers.per_rank(trace, setup, getattr(inputs.costs, "deferred", None)),
                                     [s.sharding_buffers for s in derived.stages], runtime,
                                     [s.deepep_buffers for s in derived.stages])  # fmt: skip
        if "parameters" in scenario.memory.model_fields_set:  # memory.parameters typed by hand wins
            for r, mem in zip(ranks, rows):
                mem["total"] += r.parameter_bytes - mem["parameters"]
                mem["parameters"] = r.parameter_bytes
        ranks = [replace(r, memory=RankMemory(**mem)) for r, mem in zip(ranks, rows)]
    return replace(metrics, per_rank=ranks, device_memory=inputs.device_memory)


def simulate(schedule: Schedule, costs: CostModel) -> Trace:
    """Prove ``schedule`` complete, then replay it on ``costs`` (replay.py, async or blocking
    P2P): its trace.  The replay proves it can finish on the way, raising validate()'s words.
    The SimPy engine (engine/simpy_engine.py) is the reference the tests hold this replay equal to."""
    replay.check_costs_cover(schedule, costs)
    index = index_ops(schedule)
    if costs.placement is not None and not costs.nvlink_pairs:
        order, inner, data, domain = costs.placement
        costs = replace(costs, nvlink_pairs=placement.nvlink_pairs(order, inner, data, schedule.num_ranks, domain))
    if len(costs.nvlink_pairs) < 2:
        return replay.simulate(schedule, costs, index)
    # Data-parallel replicas whose hand-offs cross the NIC at different boundaries (model/placement.py): the step's
    # gradient sync waits for every replica, so the slowest replica's pipeline is the step's (the first on a tie)
    traces = [replay.simulate(schedule, replace(costs, nvlink_pairs=(pairs,)), index) for pairs in costs.nvlink_pairs]
    return max(traces, key=lambda t: t.makespan)


# Past this many ms times are finite but a chart's axis ticks overflow (matplotlib scales its
# tick steps by up to 10x the range): a run that ends later is refused.
MAX_END_MS = 1e305


def _check_finite(scenario: Scenario, metrics: Metrics) -> None:
    """Durations near the float limit (forward = 1e308) add up to inf: say so rather
    than write a metrics.json no JSON reader takes."""
    doc = metrics.to_dict()
    end = metrics.step.total if metrics.step is not None else metrics.makespan
    if math.isfinite(end) and end > MAX_END_MS:
        where = "step" if metrics.step is not None and metrics.step.total > metrics.makespan else (
            "chunk" if scenario.chunk is not None else "costs")
        raise ScenarioError(f"{where}: durations too large to simulate: the run ends at {units.duration(end)}, past "
                            f"{MAX_END_MS:g} ms (charts cannot scale their axes there); "
                            f"use smaller durations")
    bad = _first_non_finite(doc)
    if bad is not None:
        where = "chunk" if scenario.chunk is not None else "costs"
        raise ScenarioError(
            f"{where}: durations too large to simulate: {bad} comes out as {_first_value(doc, bad)} "
            f"(times add up past the largest float, about 1.8e308); use smaller durations"
        )


def _first_non_finite(node, path: str = "") -> str | None:
    if isinstance(node, float) and not math.isfinite(node):
        return path or "a metric"
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _first_value(node, path: str):
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


__all__ = ["Result", "run", "simulate", "build_schedule", "ScenarioError", "ScheduleError"]
