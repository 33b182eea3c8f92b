"""The estimated step times of many candidates, in ``jobs`` worker processes.

A candidate's step time (estimate.step_time: its schedule replayed and step.py's end of
step, step_estimate.py) is the costly part of the estimate, and a pure function of the
candidate and the plan's base: the FigureCache only remembers what it has worked out, so a
figure is the same whichever process fills it.  It is worked out in two steps: what it reads
(estimate.step_inputs: the schedule's shape, the stage costs, the P2P time, the [step] figures),
gathered where the candidate's layout is derived, then the step itself from those alone
(estimate.step_times_of), the candidates that share a schedule shape together: their replays
run at once over them (step_estimate.replayed_many), the costly part of the estimate done once
per shape instead of once per candidate.  ``steps`` sends the shapes' candidates, whole shapes
at a time, to forked worker processes, which need nothing but the inputs; a step time, or a
ValueError's words, comes back for each, in the candidates' order.

Where fork is not available, or with one job, this process works them out.

With more than one job the memory pass runs in the workers (``memory_and_steps``): they are
forked before it, each is sent blocks of neighbouring candidates (which share a layout and so
its derivation), prunes each as the plan does and gathers the step inputs of the first
candidate of each key in the block (the plan's first of a key is the first in its block, so it
is always among them; a later one is gathered only where a key straddles two blocks, and its
step is read only if the first's is refused, as the plan would have worked it out then).  Every
figure is a pure function of the candidate, so the rows are those of the pass in one process
(tests/test_plan_step_times.py).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ..progress import Progress, report
from ..signals import Terminated, worker_ignores_stop_signals
from .estimate import FigureCache, StepInputs, step_inputs, step_time, step_times_of
from .space import Candidate

BATCH = 64  # candidates per task of steps at least (whole schedule shapes)
BLOCK = 256  # neighbouring candidates per task of memory_and_steps (a layout's are a few hundred)

# What a forked worker of steps reads: every candidate's StepInputs (or words), set only while a pool runs.
_WORK: list | None = None


def one(cache: FigureCache, cand: Candidate) -> float | str:
    """The candidate's estimated step (ms), or the words of the ValueError that refused it."""
    try:
        return step_time(cache, cand)
    except ValueError as exc:  # ScenarioError / ScheduleError: a rule of the model or the schedule
        return str(exc)


def _task(positions: list[int]) -> list[float | str]:
    return step_times_of([_WORK[i] for i in positions])


# What a forked worker of memory_and_steps reads: (FigureCache, rows, prune), set only while its pool runs.
_PASS: tuple | None = None


def _block(positions: range) -> list[tuple]:
    cache, rows, prune = _PASS
    out, keys = [], set()
    for i in positions:
        row = rows[i]
        reason, key = prune(cache, row)  # sets row.estimate (this worker's copy of the row)
        inputs = None
        if not reason and key not in keys:  # the block's first of its key
            keys.add(key)
            inputs = step_inputs(cache, row.candidate)
        out.append((reason, row.estimate, key, inputs))
    return out


def memory_and_steps(cache: FigureCache, rows: list, prune, jobs: int,
                     progress: Progress | None = None) -> list[tuple] | None:  # fmt: skip
    """Per row, in order: ``prune(cache, row)``'s reason and key, the row's estimate as it left it, and
    its step inputs (estimate.step_inputs) where the row is the first of its key in its block (else None); over ``jobs``
    forked worker processes.  None where that is not done (one job, too few rows, or no fork): the
    caller runs the pass here."""
    global _PASS
    blocks = [range(k, min(k + BLOCK, len(rows))) for k in range(0, len(rows), BLOCK)]
    if jobs <= 1 or len(blocks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    _PASS = (cache, rows, prune)
    try:
        return _forked(_block, blocks, jobs, len(rows), progress, "estimating")
    finally:
        _PASS = None


def all_step_times(cache: FigureCache, cands: list[Candidate], jobs: int,
                   progress: Progress | None = None) -> list[float | str]:  # fmt: skip
    """``one`` of each candidate, in order: their step inputs gathered here, their steps over ``jobs``
    processes (``steps``)."""
    inputs = []
    for n, cand in enumerate(cands):
        if n % 100 == 0:
            report(progress, n, len(cands), "estimating step times")
        inputs.append(step_inputs(cache, cand))
    return steps(inputs, jobs, progress)


def steps(inputs: list[StepInputs | str], jobs: int, progress: Progress | None = None) -> list[float | str]:
    """estimate.step_times_of the inputs, in order, over ``jobs`` forked worker processes (1: this one),
    each sent the candidates of whole schedule shapes (at least BATCH a task), the largest shapes first."""
    global _WORK
    shapes: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs):
        shapes.setdefault(x if isinstance(x, str) else x.shape(), []).append(i)
    tasks: list[list[int]] = [[]]
    for members in sorted(shapes.values(), key=len, reverse=True):
        if len(tasks[-1]) >= BATCH:
            tasks.append([])
        tasks[-1].extend(members)
    if jobs <= 1 or len(tasks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        report(progress, 0, len(inputs), "estimating step times")
        return step_times_of(inputs)
    _WORK = inputs
    try:
        done = _forked(_task, tasks, jobs, len(inputs), progress, "estimating step times")
    finally:
        _WORK = None
    out: list = [None] * len(inputs)
    for i, step in zip((i for task in tasks for i in task), done):
        out[i] = step
    return out


def _forked(work, parts: list, jobs: int, total: int, progress: Progress | None, what: str) -> list:
    """``work`` of each part over ``jobs`` forked worker processes, the results joined in the parts' order
    (whichever worker ends first), progress reported as ``what``; the module global ``work`` reads is set by
    the caller before the fork."""
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(parts)), mp_context=multiprocessing.get_context("fork"),
                               initializer=worker_ignores_stop_signals)  # fmt: skip
    try:
        out = []
        for done in pool.map(work, parts):
            out.extend(done)
            report(progress, len(out), total, what)
        return out
    except Terminated:  # SIGTERM: the workers ignore it (only the parent decides), so end them now
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
