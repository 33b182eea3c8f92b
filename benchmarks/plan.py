"""How long ``plan`` takes on the issue's two cases, and what it picks.

    python benchmarks/plan.py [--case llama|deepseek|both] [--jobs J] [--search-expert-tensor]

* Llama-3-70B (scenarios/models/llama3-70b.json) on 64 H100, global batch 128 x 8192 tokens;
* DeepSeek-V3 (scenarios/models/deepseek-v3.json) on 2048 H800, global batch 15,360 x 4096
  tokens, with the report's BF16 Adam moments and recompute policy (--set model.optimizer_dtype=bf16
  --set memory.recompute=deepseek, as scenarios/deepseek-v3-predicted.toml; the policy is pinned).

For each: wall time of the whole plan (enumerate, prune, estimate, simulate; no files written) and of
each phase (from the first progress report of each: the memory pass "estimating", the step times
"estimating step times" (with --jobs 2 or more from the end of the workers' first task of step times,
after the memory pass in the workers), "simulating"), its
CPU time (this process's and its finished worker processes', ``resource.getrusage``), the 1-minute
load average at its end (other work shares the machine), the row counts, the pruning counts and the top 3.  Issue 27's target: under 2 minutes each on
the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim import plan  # noqa: E402

CASES = {
    "llama": dict(source=ROOT / "scenarios/models/llama3-70b.json", gpus=64, global_batch=128, seq=8192,
                  hardware="H100", overrides=[]),
    "deepseek": dict(source=ROOT / "scenarios/models/deepseek-v3.json", gpus=2048, global_batch=15360, seq=4096,
                     hardware="H800", overrides=["model.optimizer_dtype=bf16", "memory.recompute=deepseek"]),
}  # fmt: skip


def _cpu() -> float:
    """CPU seconds so far of this process and of its worker processes that have ended."""
    own, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=(*CASES, "both"), default="both")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--search-expert-tensor", action="store_true", help="plan's option: MoE tries ETP = TP too")
    args = ap.parse_args()
    for name in CASES if args.case == "both" else [args.case]:
        c = CASES[name]
        start, cpu = time.perf_counter(), _cpu()
        phases: dict[str, float] = {}  # each phase's first progress report (wall clock)
        result = plan(c["source"], c["gpus"], c["global_batch"], c["seq"], hardware=c["hardware"],
                      overrides=c["overrides"], jobs=args.jobs, top=3, search_expert_tensor=args.search_expert_tensor,
                      progress=lambda done, total, what: phases.setdefault(what, time.perf_counter()))  # fmt: skip
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
        load = os.getloadavg()[0]  # other processes share the 2 cores: the 1-minute load average says how many
        kinds = Counter("simulated" if r.simulated else "estimated only" if r.estimate and not r.pruned else "pruned"
                        for r in result.rows)  # fmt: skip
        print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load average {load:.2f} at the end); {len(result.rows)} rows: "
              + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
        marks = [("enumerating", start), *phases.items(), ("end", start + wall)]
        print("  phases (wall): " + ", ".join(f"{what} {b - a:.1f} s" for (what, a), (_, b) in zip(marks, marks[1:])))
        print("  pruned: " + ", ".join(f"{k} ({v})" for k, v in result.pruned.items()))
        for k, r in enumerate(result.top, 1):
            print(f"  #{k} {r.candidate.label()}: {r.tokens_per_second_per_gpu:.0f} tok/s/GPU, "
                  f"step {r.simulated['step.total']:.0f} ms, MFU {r.mfu:.1%}, bubble {r.simulated['bubble_ratio']:.1%}, "
                  f"exposed comm {r.simulated['comm.exposed']:.0f} ms, peak {r.peak_memory / 1e9:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
