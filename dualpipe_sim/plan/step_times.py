"""The estimated step times of many candidates, in ``jobs`` worker processes.

A candidate's step time (estimate.step_time: its schedule replayed and step.py's end of
step, step_estimate.py) is the costly part of the estimate, and a pure function of the
candidate and the plan's base: the FigureCache only remembers what it has worked out, so a
figure is the same whichever process fills it.  The workers are forked after the memory pass
(plan/__init__.py), so each starts with that pass's FigureCache, every surviving layout
derived, and is sent only positions in the candidate list; a step time, or a ValueError's
words, comes back for each, in the candidates' order.  Neighbours in enumeration order share
a layout (and so their step figures and built schedules), so a task is a run of neighbours.

Where fork is not available, or with one job, this process works them out in turn.

With more than one job the memory pass runs in the workers too (``memory_and_steps``): they
are forked before it, each is sent blocks of neighbouring candidates, prunes each as the plan
does and works out the step time of the first candidate of each key in the block (the plan's
first of a key is the first in its block, so it is always among them; a later one is worked out
only where a key straddles two blocks, and the plan reads it only if the first's step is refused,
as it would have worked it out then).  Every figure is a pure function of the candidate, so the
rows are those of the pass in one process (tests/test_plan_step_times.py).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ..progress import Progress, report
from ..signals import Terminated, worker_ignores_stop_signals
from .estimate import FigureCache, step_time
from .space import Candidate

BATCH = 64  # neighbouring candidates per task: their shared caches stay in one worker
BLOCK = 256  # neighbouring candidates per task of memory_and_steps (a layout's are a few hundred)

# What a forked worker reads: (FigureCache, candidates), set only while a pool runs.
_WORK: tuple[FigureCache, list[Candidate]] | None = None


def one(cache: FigureCache, cand: Candidate) -> float | str:
    """The candidate's estimated step (ms), or the words of the ValueError that refused it."""
    try:
        return step_time(cache, cand)
    except ValueError as exc:  # ScenarioError / ScheduleError: a rule of the model or the schedule
        return str(exc)


def _batch(positions: range) -> list[float | str]:
    cache, cands = _WORK
    return [one(cache, cands[i]) for i in positions]


# What a forked worker of memory_and_steps reads: (FigureCache, rows, prune), set only while its pool runs.
_PASS: tuple | None = None


def _block(positions: range) -> list[tuple]:
    cache, rows, prune = _PASS
    out, keys = [], set()
    for i in positions:
        row = rows[i]
        reason, key = prune(cache, row)  # sets row.estimate (this worker's copy of the row)
        step = None
        if not reason and key not in keys:  # the block's first of its key
            keys.add(key)
            step = one(cache, row.candidate)
        out.append((reason, row.estimate, key, step))
    return out


def memory_and_steps(cache: FigureCache, rows: list, prune, jobs: int,
                     progress: Progress | None = None) -> list[tuple] | None:  # fmt: skip
    """Per row, in order: ``prune(cache, row)``'s reason and key, the row's estimate as it left it, and
    the step (``one``) where the row is the first of its key in its block (else None); over ``jobs``
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
    """``one`` of each candidate, in order, over ``jobs`` forked worker processes (1: this one)."""
    global _WORK
    batches = [range(k, min(k + BATCH, len(cands))) for k in range(0, len(cands), BATCH)]
    if jobs <= 1 or len(batches) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        out = []
        for n, cand in enumerate(cands):
            if n % 100 == 0:
                report(progress, n, len(cands), "estimating step times")
            out.append(one(cache, cand))
        return out
    _WORK = (cache, cands)
    try:
        return _forked(_batch, batches, jobs, len(cands), progress, "estimating step times")
    finally:
        _WORK = None


def _forked(work, parts: list[range], jobs: int, total: int, progress: Progress | None, what: str) -> list:
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
