"""Regenerate the figures of docs/charts.md.

    python docs/make_charts.py

Runs the CLI's own chart code on the sizes the page shows: a small run box
by box, the deepseek-v3 scenario (16 ranks x 64 micro-batches, components),
runs too long for boxes (1F1B 64 x 2000 and 2 x 80000, drawn as heat
strips), and the deepseek-v3 comparison of the schedules in SCHEDULES (those
that cannot take the scenario are named on stdout with the reason, and left out).
"""

from __future__ import annotations

from pathlib import Path

from dualpipe_sim import compare, simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots.compare import save_compare
from dualpipe_sim.outputs.plots.gantt_file import save_gantt
from dualpipe_sim.outputs.plots.memory import save_memory

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
QUICK = ROOT / "scenarios" / "quickstart.toml"
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"
BIG = ["limits.max_memory=16e9"]

RUNS = {
    "charts-8x32.png": (QUICK, ["pipeline.microbatches=32"]),
    "charts-deepseek-16x64.png": (DEEPSEEK, ["pipeline.microbatches=64"]),
    "charts-1f1b-64x2000.png": (QUICK, ["pipeline.schedule=1f1b", "pipeline.stages=64", "pipeline.microbatches=2000", *BIG]),
    "charts-1f1b-2x80000.png": (QUICK, ["pipeline.schedule=1f1b", "pipeline.stages=2", "pipeline.microbatches=80000",
                                        *BIG]),
}  # fmt: skip
SCHEDULES = ["1f1b", "zb-h1", "dualpipe", "dualpipev", "chimera", "gpipe", "interleaved-1f1b", "zbv"]


def main() -> None:
    for name, (path, overrides) in RUNS.items():
        result = simulation.run(scenario.load(path, overrides))
        save_gantt(result.trace, result.metrics, IMG / name)
        print(f"wrote docs/img/{name}")
    result = simulation.run(scenario.load(DEEPSEEK, []))
    save_memory(result.trace, result.metrics, IMG / "charts-memory-deepseek.png")
    print("wrote docs/img/charts-memory-deepseek.png")
    comparison = compare.compare(scenario.load(DEEPSEEK, []), SCHEDULES)
    for name, why in comparison.skipped:  # e.g. chimera: 120 micro-batches are not whole units of 16
        print(f"charts-compare-deepseek.png: {name} not shown: {compare.said_once(name, why)}")
    save_compare(comparison.results, IMG / "charts-compare-deepseek.png")
    print("wrote docs/img/charts-compare-deepseek.png")


if __name__ == "__main__":
    main()
