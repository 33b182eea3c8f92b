"""How well ``plan``'s cheap estimate ranks the candidates it then simulates.

    python benchmarks/plan_estimate.py [--case llama|deepseek|both] [--jobs J] [--keep DIR] [--csv PLAN.csv]

Runs the two docs/plan.md cases (benchmarks/plan.py's CASES: Llama-3-70B on 64 H100, DeepSeek-V3 on
2048 H800) and reads every simulated candidate off their plan.csv (``--keep DIR`` writes it there as
DIR/<case>.csv; ``--csv`` reads a plan.csv instead of planning).  For the simulated candidates it
prints:

* Spearman's rank correlation between the estimated and the simulated step time (1 = the same order);
* the winner's rank by estimated step time among every estimated candidate (simulated or not), and
  among those the plan orders first (memory estimate within 10% of the device, rank.py): how deep
  the plan must simulate to meet it;
* the median and the worst |estimated / simulated - 1|, in all and per schedule family.

The simulated figures are the check: nothing in the estimate is fitted to them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan import CASES  # noqa: E402  (benchmarks/plan.py)

from dualpipe_sim.plan.rank import MEMORY_SLACK  # noqa: E402


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson's correlation of the ranks (Spearman's rho, ties averaged)."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plan_csv(name: str, jobs: int | None, keep: Path | None) -> Path:
    from dualpipe_sim import plan
    from dualpipe_sim.plan import files

    c = CASES[name]
    start = time.perf_counter()
    result = plan(c["source"], c["gpus"], c["global_batch"], c["seq"], hardware=c["hardware"],
                  overrides=c["overrides"], jobs=jobs, top=3)  # fmt: skip
    out = keep if keep is not None else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    path.write_text(files.plan_csv(result))
    print(f"{name}: plan {time.perf_counter() - start:.1f} s wall (--jobs {jobs})", flush=True)
    return path


def report(name: str, rows: list[dict]) -> list[str]:
    estimated = [r for r in rows if r["estimated_step_time"] and not r["pruned"]]
    sim = [r for r in estimated if r["simulated"] == "yes"]
    winner = next(r for r in rows if r["rank"] == "1")
    est_w = float(winner["estimated_step_time"])
    rank_w = 1 + sum(float(r["estimated_step_time"]) < est_w for r in estimated)
    # the plan's own order (rank.estimate_order): those whose memory estimate is within 10% of the device first
    likely = [r for r in estimated if float(r["estimated_memory"]) <= float(r["device_memory"]) * (1 + MEMORY_SLACK)]
    order_w = 1 + sum(float(r["estimated_step_time"]) < est_w for r in likely)
    est = [float(r["estimated_step_time"]) for r in sim]
    got = [float(r["step_time"]) for r in sim]
    err = [abs(e / g - 1) for e, g in zip(est, got)]
    lines = [f"{name}: {len(sim)} simulated of {len(estimated)} estimated; Spearman {spearman(est, got):.3f}; "
             f"winner ({winner['schedule']}, {float(winner['step_time']):,.0f} ms simulated, "
             f"{est_w:,.0f} ms estimated) is {rank_w} of {len(estimated)} by estimate, {order_w} of {len(likely)} "
             f"likely to fit; "
             f"|est/sim - 1| median {statistics.median(err):.1%}, worst {max(err):.1%}"]  # fmt: skip
    lines.append(f"  {'schedule':26} {'n':>4} {'Spearman':>9} {'median':>7} {'worst':>7} {'mean est/sim':>13}")
    for family in sorted({r["schedule"] for r in sim}):
        idx = [i for i, r in enumerate(sim) if r["schedule"] == family]
        e, g = [est[i] for i in idx], [got[i] for i in idx]
        ratio = statistics.fmean(a / b for a, b in zip(e, g))
        rho = f"{spearman(e, g):.3f}" if len(idx) > 2 else "-"
        lines.append(f"  {family:26} {len(idx):>4} {rho:>9} {statistics.median(err[i] for i in idx):>7.1%} "
                     f"{max(err[i] for i in idx):>7.1%} {ratio:>13.3f}")  # fmt: skip
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=(*CASES, "both"), default="both")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="write each case's plan.csv as DIR/<case>.csv")
    ap.add_argument("--csv", type=Path, default=None, help="read this plan.csv instead of planning (one case)")
    args = ap.parse_args()
    if args.csv is not None:
        print("\n".join(report(args.csv.stem, read_csv(args.csv))))
        return 0
    for name in CASES if args.case == "both" else [args.case]:
        print("\n".join(report(name, read_csv(plan_csv(name, args.jobs, args.keep)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
