"""``plan``: the best layout and schedule for a model on N GPUs (docs/plan.md).

enumerate (space.py, shapes.py) -> prune by divisibility, schedule constraints
and a memory floor -> estimate (estimate.py; the step times, the candidates sharing a
schedule shape replayed together, and with more than one job the memory pass too, in forked
worker processes, step_times.py) -> simulate the best estimates with
the normal engine in worker processes (sweep's executors) -> rank (rank.py) ->
outputs (files.py, chart.py).
"""

from __future__ import annotations

import sys
import types

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..schedules import registry
from ..schedules.ir import ScheduleError
from ..model import derive, flops
from ..model.sections import HardwareSection
from ..inputs.scenario import parse_override, sections_only
from ..outputs.files import write_all, write_text
from ..progress import Progress, each_file, report
from ..sweep.errors import SweepError
from . import files
from .estimate import FigureCache, memory_estimate, static_floor
from .rank import BEYOND_TOP, Row, beyond_top, estimate_order, floor_holds, ranked, split_later, to_simulate
from .request import (PlanError, base_scenario, check_sizes, device_memory, dropped_layout, make_request, model_config,
                      model_shape, pinned_choices, source_pins)
from .journal import NAME as JOURNAL
from .journal import Journal
from .shapes import shapes
from .simulate import DaskCandidates, LocalCandidates
from ..sweep.executors import default_jobs
from .space import enumerate_candidates
from .step_times import one as step_time_or_words
from .step_times import all_step_times, memory_and_steps, steps
from ..errors import shown

DEFAULT_BUDGET = 200  # candidates simulated at least (when that many survive pruning)
DEFAULT_TOP = 10

__all__ = ["Plan", "PlanError", "Interrupted", "plan", "write", "top_json", "out_files", "JOURNAL"]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a plan while simulating; every finished candidate is in the
    journal (``path``, journal.py) and ``resume`` simulates only the ``left`` others.  ``signal``
    is the KeyboardInterrupt that did (signals.Terminated for SIGTERM)."""

    def __init__(self, path: Path, finished: int, left: int, signal: BaseException) -> None:
        super().__init__(f"interrupted: {finished} finished candidates are in {path}; resume to simulate the "
                         f"other {left}")  # fmt: skip
        self.path, self.finished, self.left, self.signal = path, finished, left, signal


@dataclass
class Plan:
    """Every candidate, best first (rank.py's order); ``top`` the best simulated ones that fit."""

    base: dict
    gpus: int
    global_batch: int
    seq: int
    device_memory: float | None
    rows: list[Row]
    top_k: int = DEFAULT_TOP
    pruned: dict[str, int] = field(default_factory=dict)  # reason (its rule, without figures) -> rows
    journal: Path | None = None  # the finished candidates on disk (journal.py); write() removes it
    experts: int = 0  # the model's routed experts (0: dense): plan.md then says the ETP the layouts share
    search_expert_tensor: bool = False  # ETP = tensor tried beside ETP 1 (plan.md's ETP line says so)
    dropped: dict = field(default_factory=dict)  # the source's layout keys plan searched over (request.dropped_layout)

    @property
    def top(self) -> list[Row]:
        return [r for r in self.rows if r.ok and r.fits is not False][: self.top_k]


def reason_kind(reason: str) -> str:
    """A pruning reason without its figures: 'memory', 'pipeline.schedule = "dualpipe": pipeline.microbatches',
    'parallel.tensor: ...' (the others hold none that varies between candidates)."""
    head, _, rest = reason.partition(": ")
    if head == "model" or head.startswith("pipeline.schedule"):
        return f"{head}: {rest.split(':')[0]}"
    if head == "parallel.expert_tensor" and rest.startswith(BEYOND_TOP):
        return f"{head}: {BEYOND_TOP}"
    if head in ("memory", "duplicate"):
        return head
    return reason


def plan(source: str | Path, gpus: int, global_batch: int, seq: int, *, hardware: str | None = None,
         top: int = DEFAULT_TOP, schedules: list[str] | None = None, overrides: list[str] = (),
         unset: list[str] = (), jobs: int | None = None, budget: int = DEFAULT_BUDGET,
         progress: Progress | None = None, out: str | Path | None = None, resume: bool = False,
         dask_scheduler: str | None = None, search_expert_tensor: bool = False) -> Plan:
    """Rank every layout of the model in ``source`` (scenario TOML or HF config.json) on ``gpus`` GPUs,
    ``global_batch`` sequences of ``seq`` tokens per step.  Raises PlanError (a ScenarioError) naming
    the parameter for an impossible request.  ``unset``: dotted keys taken out of the source's
    scenario before ``overrides`` apply (as sweep and the CLI's --unset).

    ``out``: keep each simulated candidate in ``out``/plan.partial.jsonl as it finishes, so that
    Ctrl-C (raising :class:`Interrupted`) loses none and ``resume=True`` simulates only the others.
    ``dask_scheduler``: simulate on that dask.distributed cluster instead of ``jobs`` local
    processes (a bad address raises sweep's SweepError, param ``dask_scheduler``).
    ``search_expert_tensor``: an MoE candidate tries ETP = tensor beside ETP 1 (about twice the simulations);
    off, every candidate keeps its experts whole unless ``overrides`` pin parallel.expert_tensor."""
    check_sizes(gpus, global_batch, seq)  # before the base scenario, whose seq_length would name the key instead
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise PlanError(field="top", rule=f"must be a whole number >= 1, got {shown(top)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise PlanError(field="budget", rule=f"must be a whole number >= 1, got {shown(budget)}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise PlanError(field="jobs", rule=f"must be a whole number >= 1, got {shown(jobs)}")
    if dask_scheduler is not None and jobs is not None:
        raise PlanError(field="jobs", rule="does not apply with dask_scheduler (the cluster's workers run the candidates)")
    if dask_scheduler is not None and not dask_scheduler.strip():  # "" is a slip, not "run locally"
        raise SweepError("dask_scheduler", f"empty address {shown(dask_scheduler)}; give the scheduler's address, "
                                           f"e.g. tcp://host:8786 (or leave it out to run locally)")
    if not isinstance(search_expert_tensor, bool):
        raise PlanError(field="search_expert_tensor", rule=f"must be true or false, got {shown(search_expert_tensor)}")
    overrides = list(overrides)
    base = base_scenario(source, hardware, seq, overrides, unset)
    pinned_etp = base.get("parallel", {}).get("expert_tensor")
    set_etp = any(parse_override(o)[0] == ["parallel", "expert_tensor"] for o in overrides)
    if search_expert_tensor and set_etp:
        raise PlanError(f"search_expert_tensor: does not apply with parallel.expert_tensor pinned to {shown(pinned_etp)} "
                        f"(the pin fixes ETP; drop one)")  # fmt: skip
    sections_only(base)  # a malformed section refused in `run`'s one line (hardware.gpus_per_node: ...), first
    if search_expert_tensor and pinned_etp is not None:  # the source's own pin (request.source_pins), as --set's
        raise PlanError(field="search_expert_tensor", rule=f"does not apply with parallel.expert_tensor = "
                        f"{shown(pinned_etp)} in {source}, which pins it (the pin fixes the expert tensor "
                        f"parallelism); drop one (unset parallel.expert_tensor to search it)")  # fmt: skip
    req = make_request(base, gpus, global_batch, seq)
    # Read the model's config once, before the minutes of work: a file removed mid-run then fails
    # the candidates that read it (each row says so), not the whole plan after they have run.
    flops_per_token, peak = _flops(base, seq)
    experts = model_shape(base).experts
    names = list(schedules) if schedules else list(registry.families())
    for name in names:
        try:
            registry.get(name)
        except ScheduleError as exc:  # the keyword the name came in, not the scenario key it would set
            raise ScheduleError(field="schedules", rule=exc.rule) from None
    # what sets the candidates and which are simulated, kept with each finished one: a resume must match
    search = {"gpus": gpus, "global_batch": global_batch, "schedules": names, "budget": budget,
              "search_expert_tensor": search_expert_tensor}  # fmt: skip
    journal = Journal(Path(out), base, resume, search) if out is not None else None  # read and checked, not written
    # Connect first: a bad Dask address is refused before the minutes of estimating.
    executor = DaskCandidates(dask_scheduler) if dask_scheduler else LocalCandidates(jobs)
    try:
        device = device_memory(base)
        # the step times in `jobs` processes too (on a Dask cluster, in this one)
        estimate_jobs = 1 if dask_scheduler else (default_jobs() if jobs is None else jobs)
        rows, survivors = _estimated(base, req, names, overrides, device, progress, estimate_jobs,
                                     search_expert_tensor)
        chosen = to_simulate(estimate_order(survivors, device), budget, device)
        # with --search-expert-tensor the ETP = tensor candidates run after the others, those that cannot reach the
        # top table left out (rank.beyond_top): the top table is the same, in fewer simulations
        first, later = split_later(chosen, search_expert_tensor)
        if journal is not None:
            journal.start()
        try:
            _simulate(executor, base, first, journal, progress, len(chosen))
            if later:
                kept = beyond_top(first, later, top, floor_holds(base))
                _simulate(executor, base, kept, journal, progress, len(first) + len(kept))
        finally:
            if journal is not None:
                journal.close()
    finally:
        executor.close()
    per_gpu_tokens = global_batch * seq / gpus
    for row in chosen:
        if row.ok and row.simulated.get("step.total"):
            row.tokens_per_second_per_gpu = per_gpu_tokens / (row.simulated["step.total"] / 1e3)
            if peak:
                row.mfu = row.tokens_per_second_per_gpu * flops_per_token / peak
    pruned = Counter(reason_kind(r.pruned) for r in rows if r.pruned)
    return Plan(base, gpus, global_batch, seq, device, ranked(rows), top, dict(sorted(pruned.items())),
                journal.path if journal is not None else None, experts, search_expert_tensor,
                dropped_layout(source, unset, overrides))  # fmt: skip


def _estimated(base: dict, req, names: list[str], overrides: list[str], device: float | None,
               progress: Progress | None, jobs: int = 1,
               search_expert_tensor: bool = False) -> tuple[list[Row], list[Row]]:  # fmt: skip
    """Every candidate as a row (pruned ones with their reason, the rest estimated), and the survivors.
    ``jobs``: processes working out the step times (step_times.py)."""
    rows: list[Row] = []
    choices = replace(pinned_choices(source_pins(base) + overrides), search_expert_tensor=search_expert_tensor)
    model = model_shape(base)
    for i, cand in enumerate(enumerate_candidates(model, req, shapes(names), choices)):
        rows.append(Row(i, cand, pruned=cand.pruned))
    live = [r for r in rows if not r.pruned]
    cache = FigureCache(base)
    keys: dict[int, tuple] = {}  # position in live -> what a duplicate shares (_prune)
    # With `jobs` processes the memory pass runs in them, each block's step inputs gathered with it; the steps
    # are then worked out by schedule shape (step_times.py).
    passed = memory_and_steps(cache, live, lambda c, row: _prune(c, row, device), jobs, progress)
    if passed is not None:
        inputs: dict[int, object] = {}  # position -> its step inputs (estimate.step_inputs), the blocks' firsts
        for n, (reason, estimate, key, got) in enumerate(passed):
            live[n].pruned, live[n].estimate = reason, estimate
            if not reason:
                keys[n] = key
            if got is not None:
                inputs[n] = got
        todo = sorted(inputs)
        times = dict(zip(todo, steps([inputs[n] for n in todo], jobs, progress)))
    else:
        for n, row in enumerate(live):
            if n % 100 == 0:
                report(progress, n, len(live), "estimating")
            row.pruned, key = _prune(cache, row, device)
            if not row.pruned:
                keys[n] = key
        # A step time for the first candidate of each key: the others are its duplicates (unless its step
        # is refused, then the next one is tried, as below).
        firsts: dict[tuple, int] = {}
        for n, key in keys.items():
            firsts.setdefault(key, n)
        todo = sorted(firsts.values())
        times = dict(zip(todo, all_step_times(cache, [live[n].candidate for n in todo], jobs, progress)))
    same_as: dict[tuple, int] = {}
    for n, key in keys.items():  # in enumeration order: the first of a key is kept, the later ones pruned
        row = live[n]
        if key in same_as:
            row.pruned = f"duplicate: same costs and memory as candidate {same_as[key]}"
            continue
        step = times[n] if n in times else step_time_or_words(cache, row.candidate)
        if isinstance(step, str):
            row.pruned = f"model: {step}"
            continue
        row.estimate = replace(row.estimate, step_time=step)
        same_as[key] = row.index
    survivors = [r for r in live if not r.pruned]
    if not survivors:
        counts = Counter(reason_kind(r.pruned) for r in rows)
        worst = ", ".join(f"{k} ({v})" for k, v in counts.most_common(3))
        raise PlanError(field="gpus", rule=f"no layout of the model runs on {req.gpus} GPUs with global batch "
                                          f"{req.global_batch}; pruned: {worst}")  # fmt: skip
    return rows, survivors


def _prune(cache: FigureCache, row: Row, device: float | None) -> tuple[str, tuple | None]:
    """Why a complete candidate is not worth simulating ('' when it is): a rule of the model or a
    memory floor over the device; and, for one that is, what a candidate with equal stage costs
    and memory shares with it (the caller prunes the later ones as duplicates and works out the step
    time of the first)."""
    cand = row.candidate
    try:
        if device and static_floor(cache, cand) > device:
            return f"memory: parameters, gradients, optimizer states and FP8 weight copies alone exceed {device / 1e9:.1f} GB", None
        row.estimate = memory_estimate(cache, cand)
    except ValueError as exc:  # ScenarioError / ScheduleError: a rule of the model or the schedule
        return f"model: {exc}", None
    if device and row.estimate.memory_floor > device:
        return f"memory: at least {row.estimate.memory_floor / 1e9:.1f} GB per rank > {device / 1e9:.1f} GB", None
    # Candidates whose figures are the same whatever their recompute policy run once.
    fig = cache.figures(cand)
    return "", (replace(cand, recompute=None), fig.work, fig.pair, fig.activation)


def _simulate(executor, base: dict, chosen: list[Row], journal: Journal | None, progress: Progress | None,
              of: int | None = None) -> None:  # fmt: skip
    """Simulate the chosen rows, those the journal holds from an interrupted run excepted.  ``of``: how many
    the plan simulates in all (the Interrupted's count of those left; default: these)."""
    todo = []
    for i, row in enumerate(chosen):
        overrides = tuple(row.candidate.overrides())
        row.simulated = journal.finished(overrides) if journal is not None else None
        if row.simulated is None:
            todo.append((i, overrides))
    report(progress, 0, len(todo), "simulating")
    done = 0
    try:
        for i, fields in executor.run(base, todo):
            if journal is not None:
                journal.append(chosen[i].candidate.overrides(), fields)
            chosen[i].simulated = fields
            done += 1
            report(progress, done, len(todo), "simulating")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
        if journal is None:
            raise
        finished = journal.held()
        raise Interrupted(journal.path, finished, (len(chosen) if of is None else of) - finished, exc) from None


def _flops(base: dict, seq: int) -> tuple[float, float | None]:
    """Model FLOPs of training per token (no recompute) and the GPU's dense peak FLOP/s."""
    cfg = model_config(base)
    hw = derive.hardware(HardwareSection.model_validate(base["hardware"]))
    return flops.per_token(cfg, seq).training, hw.peak(cfg.fp8)


def out_files(top: int) -> list[str]:
    """The files ``write`` may write (for the output check before any work)."""
    return ["plan.csv", "plan.md", "plan.png", *(files.scenario_name(k) for k in range(1, top + 1))]


def write(result: Plan, out_dir: str | Path, progress: Progress | None = None) -> list[Path]:
    """plan.csv, plan.md, plan.png and top-NN.toml for each of the top K, all or nothing."""
    from . import chart  # matplotlib only when a chart is drawn

    out = Path(out_dir)
    writers = {"plan.csv": write_text(files.plan_csv(result)), "plan.md": write_text(files.plan_md(result)),
               "plan.png": lambda path: chart.draw(result, path)}  # fmt: skip
    for k, row in enumerate(result.top, 1):
        writers[files.scenario_name(k)] = write_text(files.scenario_toml(result, row, out))
    written = write_all(out, each_file(writers, progress))
    if result.journal is not None:  # the outputs hold every finished candidate now
        result.journal.unlink(missing_ok=True)
    return written


def top_json(result: Plan, out_dir: str | Path) -> list[dict]:
    """--json: the ranked top K with plan.csv's keys plus ``scenario`` (the written TOML's path)."""
    recs = [r for r in files.records(result) if r["rank"] is not None][: len(result.top)]
    return [{**rec, "scenario": str(Path(out_dir) / files.scenario_name(rec["rank"]))} for rec in recs]


class _CallableModule(types.ModuleType):
    """The public API calls this package: ``dualpipe_sim.plan(...)`` is :func:`plan`, while
    ``dualpipe_sim.plan.write`` and the rest stay reachable (as scenario.py does)."""

    def __call__(self, source: str | Path, gpus: int, global_batch: int, seq: int, **options) -> Plan:
        return plan(source, gpus, global_batch, seq, **options)


sys.modules[__name__].__class__ = _CallableModule
