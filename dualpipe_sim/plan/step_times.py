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
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ..progress import Progress, report
from ..signals import Terminated, worker_ignores_stop_signals
from .estimate import FigureCache, step_time
from .space import Candidate

BATCH = 64  # neighbouring candidates per task: their shared caches stay in one worker

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
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(batches)), mp_context=multiprocessing.get_context("fork"),
                               initializer=worker_ignores_stop_signals)  # fmt: skip
    try:
        out = []
        for times in pool.map(_batch, batches):  # in the batches' order, whichever worker ends first
            out.extend(times)
            report(progress, len(out), len(cands), "estimating step times")
        return out
    except Terminated:  # SIGTERM: the workers ignore it (only the parent decides), so end them now
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        raise
    finally:
        _WORK = None
        pool.shutdown(wait=True, cancel_futures=True)
