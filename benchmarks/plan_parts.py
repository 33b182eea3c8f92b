"""Where ``plan``'s estimate spends its CPU: every step time of a docs/plan.md case in this one process, by part.

    python benchmarks/plan_parts.py [--case llama|deepseek|both] [--every N]

For each case (benchmarks/plan.py's CASES): the candidates enumerated and pruned as ``plan`` does (the memory
pass, its CPU time printed), then the step time (``step_times.one``) of the first candidate of each key, or of
every N-th of them, in order, with ``time.process_time()`` summed around the parts below (wrappers; their own
cost is a few microseconds a call), the machine's 1-minute load average, and a hash of the (candidate, step time)
pairs: two versions of the code that give the same hash gave the same estimate.  Parts nest: the replay core's
loop and step.py's ``rows_of`` (``simulate_step``'s rows unsorted, what the estimate reads) are inside the
pipeline replay and the step's end; ``Scenario.step_costs`` holds ``FigureCache.scenario``'s calls made from it.  CPU, not wall time: other processes share the project's 2-core VM.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan import CASES  # noqa: E402  (benchmarks/plan.py)

from dualpipe_sim.engine import replay  # noqa: E402
from dualpipe_sim.inputs.scenario import Scenario  # noqa: E402
from dualpipe_sim.plan import Row, _prune  # noqa: E402
from dualpipe_sim.plan import step_estimate  # noqa: E402
from dualpipe_sim.plan.estimate import FigureCache  # noqa: E402
from dualpipe_sim.plan.request import (base_scenario, device_memory, make_request, model_shape, pinned_choices,  # noqa: E402
                                       source_pins)
from dualpipe_sim.plan.shapes import shapes  # noqa: E402
from dualpipe_sim.plan.space import enumerate_candidates  # noqa: E402
from dualpipe_sim.plan.step_times import one  # noqa: E402
from dualpipe_sim.schedules import registry  # noqa: E402

SPENT: Counter = Counter()
CALLS: Counter = Counter()
PARTS = [(replay, "replay", "replay core (its loop)"), (step_estimate, "rows_of", "step.py's rows_of"),
         (step_estimate, "trace_of", "replay written as a trace"), (Scenario, "step_costs", "Scenario.step_costs"),
         (FigureCache, "scenario", "FigureCache.scenario")]  # fmt: skip


def _timed(owner, name: str, label: str) -> None:
    work = getattr(owner, name)

    def timed(*args, **kw):
        start = time.process_time()
        try:
            return work(*args, **kw)
        finally:
            SPENT[label] += time.process_time() - start
            CALLS[label] += 1

    setattr(owner, name, timed)


def run(name: str, every: int) -> None:
    c = CASES[name]
    base = base_scenario(c["source"], c["hardware"], c["seq"], c["overrides"])
    req = make_request(base, c["gpus"], c["global_batch"], c["seq"])
    choices = pinned_choices(source_pins(base) + c["overrides"])
    model, device = model_shape(base), device_memory(base)
    rows = [Row(i, cand, pruned=cand.pruned)
            for i, cand in enumerate(enumerate_candidates(model, req, shapes(list(registry.families())), choices))]
    live = [r for r in rows if not r.pruned]
    cache = FigureCache(base)
    start = time.process_time()
    firsts: dict[tuple, int] = {}
    for n, row in enumerate(live):  # the memory pass, as plan._estimated runs it in one process
        row.pruned, key = _prune(cache, row, device)
        if not row.pruned:
            firsts.setdefault(key, n)
    memory = time.process_time() - start
    todo = sorted(firsts.values())[::every]
    SPENT.clear(), CALLS.clear()
    digest = hashlib.sha256()
    start = time.process_time()
    for n in todo:
        digest.update(f"{live[n].index}:{one(cache, live[n].candidate)!r}\n".encode())
    steps = time.process_time() - start
    print(f"{name}: memory pass {memory:.1f} s CPU; {len(todo)} step times {steps:.1f} s CPU "
          f"(load average {os.getloadavg()[0]:.2f} at the end); hash {digest.hexdigest()[:16]}")
    for label, spent in SPENT.most_common():
        print(f"  {label:28s} {CALLS[label]:7d} calls {spent:7.2f} s  {spent / steps:5.1%}")


def _machine() -> str:
    """The CPU's model name (Linux), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=(*CASES, "both"), default="both")
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    if args.every < 1:
        print("--every: must be a whole number >= 1", file=sys.stderr)
        return 2
    print(f"machine: {_machine()}, {os.cpu_count()} CPUs; "
          f"python benchmarks/plan_parts.py --case {args.case} --every {args.every}")
    for owner, name, label in PARTS:
        _timed(owner, name, label)
    for name in CASES if args.case == "both" else [args.case]:
        run(name, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
