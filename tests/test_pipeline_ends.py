"""What the end of a step waits for (trace.pipeline_ends), worked by hand.

1F1B, 2 stages, 2 micro-batches, F = 1, B = 2, no P2P time.  Rank 1 (the last stage) runs F0 [1, 2]
(after rank 0's F0 [0, 1]), B0 [2, 4], F1 [4, 5] (rank 0's F1 ended at 2), B1 [5, 7].  Rank 0 runs
F0 [0, 1], F1 [1, 2], then B0 once rank 1's B0 has ended: [4, 6], B1 after rank 1's B1: [7, 9].
Each stage copy's last weight-gradient op is its B1: [7, 9] on rank 0, [5, 7] on rank 1; its first,
B0, must not be read for it.
"""

from __future__ import annotations

from dualpipe_sim import simulation
from dualpipe_sim.engine.trace import pipeline_ends
from dualpipe_sim.inputs import scenario


def test_pipeline_ends_by_hand():
    raw = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2}, "costs": {"forward": 1.0, "backward": 2.0}}
    ends = pipeline_ends(simulation.run(scenario.from_dict(raw)).trace)
    assert ends.rank_end == [9.0, 7.0]
    assert ends.last_weight == {(0, 0): (7.0, 9.0), (1, 1): (5.0, 7.0)}
    assert ends.holders == {0: [0], 1: [1]}
