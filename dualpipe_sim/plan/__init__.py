"""``plan``: the best layout and schedule for a model on N GPUs (docs/plan.md).

enumerate (space.py, shapes.py) -> prune by divisibility, schedule constraints
and a memory floor -> estimate (estimate.py) -> simulate the best estimates with
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
from ..model import derive, flops
from ..model.sections import HardwareSection, ModelSection
from ..outputs.files import write_all, write_text
from ..progress import Progress, each_file, report
from . import files
from .estimate import FigureCache, estimate, static_floor
from .rank import Row, estimate_order, ranked, to_simulate
from .request import (PlanError, base_scenario, device_memory, make_request, model_shape, pinned_choices,
                      source_pins)
from .shapes import shapes
from .simulate import run_all
from .space import enumerate_candidates

DEFAULT_BUDGET = 200  # candidates simulated at least (when that many survive pruning)
DEFAULT_TOP = 10

__all__ = ["Plan", "PlanError", "plan", "write", "top_json", "out_files"]


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

    @property
    def top(self) -> list[Row]:
        return [r for r in self.rows if r.ok and r.fits is not False][: self.top_k]


def reason_kind(reason: str) -> str:
    """A pruning reason without its figures: 'memory', 'schedule: dualpipe', 'tensor: ...'."""
    head, _, rest = reason.partition(": ")
    if head in ("schedule", "model"):
        return f"{head}: {rest.split(':')[0]}"
    if head in ("memory", "layers", "duplicate"):
        return head
    return reason


def plan(source: str | Path, gpus: int, global_batch: int, seq: int, *, hardware: str | None = None,
         top: int = DEFAULT_TOP, schedules: list[str] | None = None, overrides: list[str] = (),
         jobs: int | None = None, budget: int = DEFAULT_BUDGET, progress: Progress | None = None) -> Plan:
    """Rank every layout of the model in ``source`` (scenario TOML or HF config.json) on ``gpus`` GPUs,
    ``global_batch`` sequences of ``seq`` tokens per step.  Raises PlanError (a ScenarioError) naming
    the parameter for an impossible request."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise PlanError(f"top: must be a whole number >= 1, got {top!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise PlanError(f"budget: must be a whole number >= 1, got {budget!r}")
    overrides = list(overrides)
    base = base_scenario(source, hardware, seq, overrides)
    req = make_request(base, gpus, global_batch, seq)
    names = list(schedules) if schedules else list(registry.families())
    for name in names:
        registry.get(name)  # ScheduleError naming the unknown schedule
    device = device_memory(base)
    rows: list[Row] = []
    for i, cand in enumerate(enumerate_candidates(model_shape(base), req, shapes(names), pinned_choices(source_pins(base) + overrides))):
        rows.append(Row(i, cand, pruned=cand.pruned))
    live = [r for r in rows if not r.pruned]
    cache = FigureCache(base)
    same_as: dict[tuple, int] = {}
    for n, row in enumerate(live):
        if n % 100 == 0:
            report(progress, n, len(live), "estimating")
        row.pruned = _prune(cache, row, device, same_as)
    survivors = [r for r in live if not r.pruned]
    if not survivors:
        counts = Counter(reason_kind(r.pruned) for r in rows)
        worst = ", ".join(f"{k} ({v})" for k, v in counts.most_common(3))
        raise PlanError(f"gpus: no layout of the model runs on {gpus} GPUs with global batch {global_batch}; "
                        f"pruned: {worst}")  # fmt: skip
    chosen = to_simulate(estimate_order(survivors, device), budget, device)
    _simulate(base, chosen, jobs, progress)
    per_gpu_tokens = global_batch * seq / gpus
    flops_per_token, peak = _flops(base, seq)
    for row in chosen:
        if row.ok and row.simulated.get("step.total"):
            row.tokens_per_second_per_gpu = per_gpu_tokens / (row.simulated["step.total"] / 1e3)
            if peak:
                row.mfu = row.tokens_per_second_per_gpu * flops_per_token / peak
    pruned = Counter(reason_kind(r.pruned) for r in rows if r.pruned)
    return Plan(base, gpus, global_batch, seq, device, ranked(rows), top, dict(sorted(pruned.items())))


def _prune(cache: FigureCache, row: Row, device: float | None, same_as: dict[tuple, int]) -> str:
    """Why a complete candidate is not worth simulating ('' when it is): a rule of the model,
    a memory floor over the device, or costs and memory equal to another candidate's."""
    cand = row.candidate
    try:
        if device and static_floor(cache, cand) > device:
            return f"memory: parameters, gradients and optimizer states alone exceed {device / 1e9:.1f} GB"
        row.estimate = estimate(cache, cand)
    except ValueError as exc:  # ScenarioError / ScheduleError: a rule of the model or the schedule
        return f"model: {exc}"
    if device and row.estimate.memory_floor > device:
        return f"memory: at least {row.estimate.memory_floor / 1e9:.1f} GB per rank > {device / 1e9:.1f} GB"
    # Policies that change nothing here (selective recompute under flash attention) run once.
    fig = cache.figures(cand)
    key = (replace(cand, recompute=None), fig.work, fig.pair, fig.activation)
    if key in same_as:
        return f"duplicate: same costs and memory as candidate {same_as[key]}"
    same_as[key] = row.index
    return ""


def _simulate(base: dict, chosen: list[Row], jobs: int | None, progress: Progress | None) -> None:
    todo = [(i, tuple(r.candidate.overrides())) for i, r in enumerate(chosen)]
    for done, (i, fields) in enumerate(run_all(base, todo, jobs), 1):
        chosen[i].simulated = fields
        report(progress, done, len(todo), "simulating")


def _flops(base: dict, seq: int) -> tuple[float, float | None]:
    """Model FLOPs of training per token (no recompute) and the GPU's dense peak FLOP/s."""
    cfg = derive.model_config(ModelSection.model_validate(base["model"]))
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
    return write_all(out, each_file(writers, progress))


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
