"""Engine speed at scale: wall time, trace rows per second and peak RSS per case.

    python benchmarks/engine.py [--repeat N] [--tiny]

Cases (issue 8), each measured in a fresh subprocess so that peak RSS
(resource.getrusage ru_maxrss) is that case's alone:

* a        DualPipe, 16 ranks x 256 micro-batches, component model (4 MoE layers
           per chunk: scenarios/deepseek-v3.toml with pipeline.microbatches=256).
           Components need the SimPy engine.
* dp-simple DualPipe 16 x 256 with simple costs (F, B, W, F&B, no P2P): the peer
           comparison (an existing pure-Python emulator: ~0.05 s).  Fast path.
* b        1F1B, 64 ranks x 1024 micro-batches, simple costs, no P2P (peer: ~3 s).
           Fast path.
* b-p2p    the same with comm.p2p = 0.05: every activation and gradient crosses a link.
* b-simpy  b-p2p forced through the SimPy engine, for reference.

Each case also runs at 1/8, 1/4 and 1/2 of its micro-batches (c): the op count
grows linearly, so time per op should stay flat.

Columns: ``run s`` is simulation.run end to end (build the schedule, validate,
simulate, metrics); ``sim s`` the simulation alone; ``us/op`` = run s per op
(an FB pair counts as two ops); ``rows/s`` = trace rows (compute intervals,
transfers, all-to-all phases) per second of run; ``RSS MB`` = the subprocess's
peak resident memory.  Wall times are the best of --repeat runs (the machine is
shared, so the best run is the least disturbed one); RSS is the largest seen.
--tiny shrinks every case to a few hundred ops (the test suite runs it so the
script stays runnable).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"
FRACTIONS = (8, 4, 2, 1)  # 1/8, 1/4, 1/2, full
SIMPLE = {"forward": 1.0, "backward": 2.0, "weight": 1.0, "overlapped": 2.5}

# name: (schedule, stages, micro-batches, tiny stages, tiny micro-batches, p2p, costs, engine)
CASES = {
    "a": ("dualpipe", 16, 256, 4, 64, None, "components", "auto"),
    "dp-simple": ("dualpipe", 16, 256, 4, 64, 0.0, "simple", "auto"),
    "b": ("1f1b", 64, 1024, 4, 64, 0.0, "simple", "auto"),
    "b-p2p": ("1f1b", 64, 1024, 4, 64, 0.05, "simple", "auto"),
    "b-simpy": ("1f1b", 64, 1024, 4, 64, 0.05, "simple", "simpy"),
}


def scenario_for(case: str, fraction: int, tiny: bool):
    from dualpipe_sim import scenario

    name, stages, mbs, tiny_stages, tiny_mbs, p2p, costs, _ = CASES[case]
    if tiny:
        stages, mbs = tiny_stages, tiny_mbs
    shape = {"schedule": name, "stages": stages, "microbatches": mbs // fraction}
    if costs == "components":
        raw = scenario.load_raw(DEEPSEEK)
        raw["pipeline"].update(shape)
        return scenario.from_dict(raw)
    return scenario.from_dict({"pipeline": shape, "costs": dict(SIMPLE), "comm": {"p2p": p2p}})


def measure(case: str, fraction: int, tiny: bool) -> dict:
    """One case in this process: time run() end to end, then the simulation alone."""
    from dualpipe_sim import engine, fastpath, simulation

    if CASES[case][-1] == "simpy":
        simulation.fastpath = _NoFastPath  # run() then takes the SimPy engine
    simulation.run(scenario_for(case, 8, True))  # warm-up: first-call imports are not per-run cost
    scn = scenario_for(case, fraction, tiny)
    t0 = time.perf_counter()
    result = simulation.run(scn)
    t1 = time.perf_counter()
    simulate = fastpath.simulate if simulation.fastpath.applies(result.costs) else engine.simulate
    with simulation.gc_paused():  # as in run()
        simulate(result.schedule, result.costs)
    t2 = time.perf_counter()
    trace = result.trace
    return {
        "case": case,
        "fraction": fraction,
        "engine": "fast" if simulate is fastpath.simulate else "simpy",
        "ranks": trace.ranks,
        "microbatches": trace.microbatches,
        "ops": sum(len(action.ops) if action.kind == "FB" else 1 for r in result.schedule.ranks for action in r),
        "rows": len(trace.compute) + len(trace.comm),
        "run": t1 - t0,
        "sim": t2 - t1,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "makespan": result.metrics.makespan,
    }


class _NoFastPath:
    @staticmethod
    def applies(costs) -> bool:
        return False


def in_subprocess(case: str, fraction: int, tiny: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", case, str(fraction)] + (["--tiny"] if tiny else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best wall time is kept")
    parser.add_argument("--tiny", action="store_true", help="a few hundred ops per case (keeps the script tested)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "FRACTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.tiny)))
        return 0

    header = f"{'case':<10} {'size':>4} {'engine':>6} {'ranks':>5} {'mbs':>5} {'ops':>7} {'rows':>7} " \
             f"{'run s':>7} {'sim s':>7} {'us/op':>6} {'rows/s':>9} {'RSS MB':>7}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        per_op = []
        for fraction in FRACTIONS:
            runs = [in_subprocess(case, fraction, args.tiny) for _ in range(max(1, args.repeat))]
            best = min(runs, key=lambda r: r["run"])
            best["sim"] = min(r["sim"] for r in runs)
            rss = max(r["rss_mb"] for r in runs)
            us = 1e6 * best["run"] / best["ops"]
            per_op.append(us)
            size = "1" if fraction == 1 else f"1/{fraction}"
            print(
                f"{case:<10} {size:>4} {best['engine']:>6} {best['ranks']:>5} {best['microbatches']:>5} "
                f"{best['ops']:>7} {best['rows']:>7} {best['run']:>7.3f} {best['sim']:>7.3f} {us:>6.2f} "
                f"{best['rows'] / best['run']:>9.0f} {rss:>7.0f}",
                flush=True,
            )
        print(f"{'':<10} time per op, largest / smallest over sizes: {max(per_op) / min(per_op):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
