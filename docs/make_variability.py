"""Regenerate the tables and charts of docs/variability.md.

    python docs/make_variability.py > /tmp/tables.md

The quick-start costs (F 1, B 2, W 1, F&B 2.5, P2P 0.05 ms) on 8 stages and 20
micro-batches, for 1F1B, ZB-H1, DualPipe and DualPipeV: (1) rank 3 slowed down
by 1.0 to 2.0x; (2) lognormal per-op jitter, cv 0 to 0.3, 20 seeds each
(``repeat.repeat``).  Prints the two markdown tables and writes
docs/img/variability-straggler.png and docs/img/variability-gantt-dualpipe.png.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dualpipe_sim import repeat, simulation  # noqa: E402
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots.canvas import PNG_METADATA  # noqa: E402
from dualpipe_sim.outputs.plots.gantt_file import save_gantt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEDULES = ("1f1b", "zb-h1", "dualpipe", "dualpipev")
FACTORS = (1.0, 1.1, 1.2, 1.5, 2.0)
CVS = (0.0, 0.05, 0.1, 0.2, 0.3)
SEEDS = 20


def base(name: str, **extra) -> dict:
    data = scenario.load_raw(ROOT / "scenarios" / "quickstart.toml")
    data["pipeline"].update(schedule=name, stages=8, microbatches=20)
    data.update(extra)
    return data


def main() -> None:
    straggler, jitter = {}, {}
    for name in SCHEDULES:
        for k in FACTORS:
            straggler[name, k] = simulation.run(scenario.from_dict(base(name, ranks={"slowdown": {"3": k}}))).metrics.to_dict()
        for cv in CVS:
            data = base(name)
            data["costs"]["jitter"] = {"distribution": "lognormal", "cv": cv}
            jitter[name, cv] = repeat.repeat(scenario.from_dict(data), SEEDS)["summary"]

    print("| schedule | ranks | slowdown of rank 3 | makespan | vs none | bubble ratio | rank 3 busy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in SCHEDULES:
        m0 = straggler[name, 1.0]["makespan"]
        for k in FACTORS:
            m = straggler[name, k]
            print(f"| {name} | {m['ranks']} | {k:g} | {m['makespan']:.2f} | {m['makespan'] / m0 - 1:+.1%} | "
                  f"{m['bubble_ratio']:.1%} | {m['per_rank'][3]['busy']:.1f} |")  # fmt: skip
    print()
    print("| schedule | cv | makespan p50 | p95 | max | p95 vs no jitter | bubble ratio p50 | p95 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in SCHEDULES:
        j0 = jitter[name, 0.0]["makespan"]["p50"]
        for cv in CVS:
            s, b = jitter[name, cv]["makespan"], jitter[name, cv]["bubble_ratio"]
            print(f"| {name} | {cv:g} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} | {s['p95'] / j0 - 1:+.1%} | "
                  f"{b['p50']:.1%} | {b['p95']:.1%} |")  # fmt: skip

    fig, (z, a, b) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in SCHEDULES:
        m0, j0 = straggler[name, 1.0]["makespan"], jitter[name, 0.0]["makespan"]["p50"]
        z.plot(FACTORS, [straggler[name, k]["makespan"] for k in FACTORS], marker="o",
               label=f"{name} ({straggler[name, 1.0]['ranks']} ranks)")  # fmt: skip
        a.plot(FACTORS, [straggler[name, k]["makespan"] / m0 for k in FACTORS], marker="o", label=name)
        (line,) = b.plot(CVS, [jitter[name, cv]["makespan"]["p50"] / j0 for cv in CVS], marker="o", label=f"{name} p50")
        b.plot(CVS, [jitter[name, cv]["makespan"]["p95"] / j0 for cv in CVS], marker="^", linestyle="--",
               color=line.get_color(), label=f"{name} p95")  # fmt: skip
    a.plot(FACTORS, FACTORS, color="grey", linestyle=":", label="makespan x factor")
    z.set(xlabel="slowdown of rank 3 (x)", ylabel="makespan (ms)", title="One straggler: makespan")
    a.set(xlabel="slowdown of rank 3 (x)", ylabel="makespan / makespan without straggler",
          title="One straggler: relative to none")  # fmt: skip
    b.set(xlabel="jitter cv (lognormal, per op)", ylabel="makespan / makespan without jitter",
          title=f"Per-op jitter, {SEEDS} seeds: p50 and p95")  # fmt: skip
    z.legend(fontsize=8)
    a.legend(fontsize=8)
    b.legend(fontsize=7, ncol=2)
    for ax in (z, a, b):
        ax.grid(alpha=0.3)
    fig.suptitle("quickstart costs (F 1, B 2, W 1, F&B 2.5, P2P 0.05), 8 stages, 20 micro-batches", fontsize=10)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "img" / "variability-straggler.png", dpi=100, metadata=PNG_METADATA)
    plt.close(fig)

    result = simulation.run(scenario.from_dict(base("dualpipe", ranks={"slowdown": {"3": 1.5}})))
    save_gantt(result.trace, result.metrics, ROOT / "docs" / "img" / "variability-gantt-dualpipe.png")


if __name__ == "__main__":
    main()
