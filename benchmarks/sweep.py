"""Sweep throughput: points per second for a ~1,000-point grid.

    python benchmarks/sweep.py [--jobs N] [--profile]

The grid is 3 schedules (1f1b, dualpipe, chimera) x stages 4:32:4 (8 values)
x micro-batches 8:254:6 (42 values, 8..254) = 1,008 points on the quick-start
scenario's costs.  Points a schedule cannot take (chimera needs micro-batches
a multiple of stages, dualpipe at least 2 x stages) are skipped in
microseconds, so the figure is printed both per grid point and per point
actually simulated.  --profile runs the heaviest point in this process under
cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

from dualpipe_sim.sweep import run_sweep
from dualpipe_sim.sweep.executors import default_jobs
from dualpipe_sim.sweep.point import run_point
from dualpipe_sim.inputs.scenario import load_raw

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "quickstart.toml"
GRID = {  # the CLI's --grid pipeline.schedule=1f1b,dualpipe,chimera pipeline.stages=4:32:4 pipeline.microbatches=8:254:6
    "pipeline.schedule": ["1f1b", "dualpipe", "chimera"],
    "pipeline.stages": range(4, 33, 4),
    "pipeline.microbatches": range(8, 255, 6),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--profile", action="store_true", help="profile the heaviest point instead")
    args = parser.parse_args()
    if args.profile:
        return profile()
    jobs = args.jobs or default_jobs()
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        report = run_sweep(SCENARIO, GRID, Path(tmp) / "sweep", jobs=jobs)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    c = report.counts
    print(f"grid: {report.points} points ({c['ok']} simulated, {c['skipped']} skipped, {c['error']} error) "
          f"on {report.executor}")
    print(f"wall time: {seconds:.1f} s (including results.csv, summary.md and 3 charts)")
    print(f"throughput: {report.points / seconds:.1f} grid points/s, {c['ok'] / seconds:.1f} simulated points/s")
    # The cores are shared: CPU time does not depend on what else runs, wall time does.
    print(f"CPU time: {cpu:.1f} s in all processes; on {jobs} otherwise idle cores that is at best "
          f"{cpu / jobs:.1f} s wall, {report.points * jobs / cpu:.1f} grid points/s")
    return 0


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def profile() -> int:
    base = load_raw(SCENARIO)
    overrides = ("pipeline.schedule=dualpipe", "pipeline.stages=32", "pipeline.microbatches=254")
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    row = run_point(base, overrides)
    profiler.disable()
    print(f"heaviest point {overrides}: {time.perf_counter() - start:.2f} s, status {row['status']}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
