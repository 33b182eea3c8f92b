"""Simulating the chosen candidates with the normal engine, in worker processes.

Each candidate is the plan's base scenario with its overrides, run by
``simulation.run`` exactly as ``run`` runs the TOML written for it.  One
derivation serves the whole run: the checks on reading (``scenario.resolved``)
resolve the candidate's inputs (resolve.py), and the run reads those.  The
candidates of a plan are layouts of one model: their derivations share one
derive.Memo (its keys hold all a figure reads, tests/test_plan_memo.py) per
local worker process, which lives as long as the plan's pool (per task on a
Dask cluster, whose workers outlive the plan).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Iterator

from .. import simulation
from ..model import derive
from ..inputs.scenario import ScenarioError, apply_overrides, resolved
from ..signals import Terminated, worker_ignores_stop_signals
from ..sweep.executors import DaskExecutor, default_jobs
from ..sweep.executors import worker_error

BATCH = 8  # candidates per task: fewer round trips between processes


# A local worker's derive.Memo, set by _start_worker: the worker ends with the plan's pool.
_WORKER_MEMO: derive.Memo | None = None


def run_candidate(base: dict, overrides: tuple[str, ...], memo: derive.Memo | None = None) -> dict:
    """``status`` (ok / error), ``reason`` and the scalar metrics of one candidate; never raises.
    ``memo``: the derivations' shared figures (the base's layouts only)."""
    try:
        scenario, inputs = resolved(apply_overrides(base, list(overrides)), memo)
        return {"status": "ok", "reason": "", **simulation.run(scenario, inputs=inputs).metrics.scalars()}
    except (ScenarioError, ValueError) as exc:
        return {"status": "error", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one bad candidate must not stop the plan
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}


def _run_batch(base: dict, batch: list[tuple[int, tuple[str, ...]]]) -> list[tuple[int, dict]]:
    memo = _WORKER_MEMO if _WORKER_MEMO is not None else derive.Memo()  # on Dask: this task's
    return [(i, run_candidate(base, overrides, memo)) for i, overrides in batch]


def _start_worker() -> None:
    global _WORKER_MEMO
    worker_ignores_stop_signals()
    _WORKER_MEMO = derive.Memo()


def run_all(base: dict, todo: list[tuple[int, tuple[str, ...]]], jobs: int | None) -> Iterator[tuple[int, dict]]:
    """(index, fields) for each (index, overrides), as they finish; ``jobs`` processes (1: this one)."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs == 1 or len(todo) <= 1:
        memo = derive.Memo()  # this call's
        for i, overrides in todo:
            yield i, run_candidate(base, overrides, memo)
        return
    batches = [todo[k:k + BATCH] for k in range(0, len(todo), BATCH)]
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(batches)), initializer=_start_worker)
    try:
        futures = [pool.submit(_run_batch, base, b) for b in batches]
        for future in as_completed(futures):
            yield from future.result()
    except Terminated:  # SIGTERM: the workers ignore it (only the parent decides), so end them now
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class LocalCandidates:
    """``jobs`` local worker processes (None: every core; 1: this process)."""

    def __init__(self, jobs: int | None) -> None:
        self.jobs = jobs

    def run(self, base: dict, todo: list[tuple[int, tuple[str, ...]]]) -> Iterator[tuple[int, dict]]:
        return run_all(base, todo, self.jobs)

    def close(self) -> None:
        pass


class DaskCandidates(DaskExecutor):
    """The candidates on a dask.distributed cluster: sweep's executor (its address checks, its
    words for a bad address, its client), shipping plan's batches instead of sweep points."""

    def run(self, base: dict, todo: list[tuple[int, tuple[str, ...]]]) -> Iterator[tuple[int, dict]]:
        from distributed import as_completed as dask_completed

        batches = [todo[k:k + BATCH] for k in range(0, len(todo), BATCH)]
        futures = {self.client.submit(_run_batch, base, b, pure=False): b for b in batches}
        try:
            for future in dask_completed(list(futures), loop=self.client.loop):
                try:
                    done = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that cannot import us, a lost worker
                    done = [(i, worker_error(exc)) for i, _ in futures[future]]
                yield from done
        finally:
            self.client.cancel(list(futures))
