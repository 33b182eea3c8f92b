"""Where sweep points run: in this process, a local process pool, or a Dask cluster.

Each executor yields ``(point, fields)`` as points finish, in whatever order
they finish; results.py puts the rows back in point order.  A point whose
worker dies (a killed process, a Dask worker without dualpipe_sim installed)
becomes an ``error`` row like any other failure.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Iterator

from ..signals import Terminated, worker_ignores_stop_signals
from .errors import SweepError
from .grid import Point
from .point import run_point


def default_jobs() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_error(exc: BaseException) -> dict:
    return {"status": "error", "reason": f"worker failed: {type(exc).__name__}: {exc}"}




class LocalExecutor:
    """``jobs`` worker processes (concurrent.futures); jobs=1 runs in this process."""

    def __init__(self, jobs: int | None = None) -> None:
        jobs = default_jobs() if jobs is None else jobs
        if jobs < 1:
            raise SweepError("jobs", f"must be >= 1, got {jobs}")
        self.jobs = jobs

    def run(self, base: dict, points: list[Point]) -> Iterator[tuple[Point, dict]]:
        if self.jobs == 1 or len(points) <= 1:
            for point in points:
                yield point, run_point(base, point.overrides)
            return
        pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(points)), initializer=worker_ignores_stop_signals)
        try:
            futures = {pool.submit(run_point, base, p.overrides): p for p in points}
            for future in as_completed(futures):
                try:
                    fields = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool
                    fields = worker_error(exc)
                yield futures[future], fields
        except Terminated:
            # SIGTERM: stop now, the running points too (their rows were never written).  The
            # workers ignore SIGTERM (only the parent decides), so SIGKILL; the pool has no
            # public way to reach its processes.
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
            raise
        finally:
            # On Ctrl-C: drop queued points, let the few running ones end.
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.jobs} local process{'es' if self.jobs > 1 else ''}"


class DaskExecutor:
    """The same points on an existing dask.distributed cluster (``pip install -e '.[dask]'``).

    Workers must have dualpipe_sim installed (the same version): they import
    run_point by name.
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise SweepError("dask_scheduler", "dask.distributed is not installed; pip install -e '.[dask]'") from None
        from distributed.comm import resolve_address

        try:
            # Check the address first: a Client whose constructor fails on a malformed
            # address ("foo") still runs its __del__, which waits 20 s and prints a traceback.
            resolve_address(address)
        except (OSError, ValueError, TypeError) as exc:
            raise SweepError("dask_scheduler", f"{address}: not a scheduler address ({exc}); "
                                               f"expected e.g. tcp://host:8786") from None
        try:
            self.client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError("dask_scheduler", f"{address}: cannot connect: {exc}") from None
        self.address = address

    def run(self, base: dict, points: list[Point]) -> Iterator[tuple[Point, dict]]:
        from distributed import as_completed as dask_completed

        futures = {self.client.submit(run_point, base, p.overrides, pure=False): p for p in points}
        try:
            for future in dask_completed(list(futures), loop=self.client.loop):
                try:
                    fields = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that cannot import us, a lost worker
                    fields = worker_error(exc)
                yield futures[future], fields
        finally:
            self.client.cancel(list(futures))

    def close(self) -> None:
        self.client.close()

    def describe(self) -> str:
        return f"Dask cluster at {self.address}"
