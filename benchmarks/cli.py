"""Whole-process CPU time of the ``dualpipe-sim`` command, against issue 17's targets.

    python benchmarks/cli.py [--repeat 5] [--plots png] [--cases quickstart,deepseek,1f1b-64x1024] [--tiny]

Each case runs the real command in a fresh Python process
(``python -m dualpipe_sim.cli run ...``, writing into a temporary folder),
so imports, simulation, charts and file writes all count.  One untimed run of
each case goes first, so the timed ones find the bytecode caches (.pyc) that
any first run leaves behind.  The figure is
the child's CPU time (user + system, from ``os.wait4``), not wall time: the
machine's cores are shared, and CPU time is what the command itself spends.
The median of --repeat runs is compared with the target.

Cases:

* quickstart      ``run scenarios/quickstart.toml`` (8 x 20, DualPipe): target < 1.0 s
* deepseek        ``run scenarios/deepseek-v3.toml`` (16 x 64, components): target < 2.0 s
* 1f1b-64x1024    ``run scenarios/quickstart.toml --set pipeline.schedule=1f1b
                  --set pipeline.stages=64 --set pipeline.microbatches=1024``: target < 4.0 s

--plots is passed through (png, the default, draws gantt.png and memory.png;
none draws nothing).  --tiny shrinks the 64 x 1024 case to 4 x 64 (the test
suite runs it so the script stays runnable; nothing is timed there).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
DEEPSEEK = str(ROOT / "scenarios" / "deepseek-v3.toml")
LARGE = ["--set", "pipeline.schedule=1f1b", "--set", "pipeline.stages=64", "--set", "pipeline.microbatches=1024"]
TINY = ["--set", "pipeline.schedule=1f1b", "--set", "pipeline.stages=4", "--set", "pipeline.microbatches=64"]

# name: (arguments after `run`, target CPU seconds)
CASES = {
    "quickstart": ([QUICK], 1.0),
    "deepseek": ([DEEPSEEK], 2.0),
    "1f1b-64x1024": ([QUICK, *LARGE], 4.0),
}


# The warm-up run may write bytecode caches even where PYTHONDONTWRITEBYTECODE is set (this
# machine sets it): otherwise every timed run would compile the package from source again,
# 0.06 s a run that no user pays after their first.
WRITE_BYTECODE = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cpu_seconds(args: list[str], env: dict[str, str] | None = None) -> float:
    """User + system CPU time of one ``dualpipe-sim`` process."""
    proc = subprocess.Popen([sys.executable, "-m", "dualpipe_sim.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"dualpipe-sim {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    return usage.ru_utime + usage.ru_stime


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; load average at start {load}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--plots", default="png", help="passed to `run --plots` (default: png)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    p.add_argument("--tiny", action="store_true", help="shrink the large case (for the test suite)")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"command: python -m dualpipe_sim.cli run ... --plots {args.plots} --out <tmp>; "
          f"CPU = user + sys of the child, median of {args.repeat} after one untimed warm-up run")
    print(f"{'case':<14} {'median s':>9} {'min s':>7} {'max s':>7} {'target s':>9}  verdict")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            case, target = CASES[name]
            if args.tiny and name == "1f1b-64x1024":
                case = [QUICK, *TINY]
            run = ["run", *case, "--out", str(Path(tmp) / name), "--plots", args.plots]
            cpu_seconds(run, WRITE_BYTECODE)  # untimed: leaves the .pyc files any first run leaves
            times = [cpu_seconds(run) for _ in range(args.repeat)]
            median = statistics.median(times)
            ok = median < target
            failed += not ok
            print(f"{name:<14} {median:>9.2f} {min(times):>7.2f} {max(times):>7.2f} {target:>9.1f}  "
                  f"{'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
