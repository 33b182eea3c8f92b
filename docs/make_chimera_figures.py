"""Draw docs/schedules.md's Chimera figures: direct concatenation and forward doubling.

    python docs/make_chimera_figures.py

4 stages x 8 micro-batches, F = 1, B = 2 ms, no communication and no recompute (so both run the
same costs), one unit of activation per stage per micro-batch.  The same scenario gives the same
pixels: no random input, and the charts carry no time stamp.
"""

from __future__ import annotations

from pathlib import Path

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.outputs.plots.gantt_file import save_gantt

DOCS = Path(__file__).resolve().parent
SHAPE = {"stages": 4, "microbatches": 8}
COSTS = {"forward": 1.0, "backward": 2.0}


def main() -> None:
    for name in ("chimera", "chimera-doubling"):
        data = {"pipeline": {**SHAPE, "schedule": name}, "costs": COSTS, "memory": {"recompute": "none"}}
        result = simulation.run(scenario.from_dict(data))
        path = DOCS / "img" / f"{name}-4x8.png"
        save_gantt(result.trace, result.metrics, path)
        m = result.metrics
        print(f"{path.name}: makespan {m.makespan:g}, bubble {m.bubble_ratio:.1%}, "
              f"peak activation {max(r.peak_activation for r in m.per_rank)}")


if __name__ == "__main__":
    main()
