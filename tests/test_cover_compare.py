"""compare.py's --same-gpus refusals the s16g coverage run found no test reaching: a schedule that cannot
take the scenario at the stage count the same GPUs give it is skipped with the family's own reason."""

from __future__ import annotations

from pathlib import Path

from dualpipe_sim.compare import _try_run, compare
from dualpipe_sim.inputs import scenario

QUICK = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"  # 8 stages, 20 micro-batches


def test_dualpipe_on_16_gpus_needs_32_microbatches():
    """16 GPUs, one stage a rank: 16 stages; DualPipe feeds half the micro-batches from each end and needs
    2 x 16 = 32 of them; the quickstart has 20."""
    q = scenario.load(QUICK)
    assert str(_try_run(q, "dualpipe", 16)) == "pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = 32, got 20"
    assert _try_run(q, "dualpipe", 8).metrics.stages == 8  # its own 8 GPUs: runs
    result = compare(q, ["1f1b", "dualpipe"], same_gpus=16)
    assert [r.metrics.schedule for r in result.results] == ["1f1b"]
    assert str(dict(result.skipped)["dualpipe"]) == "pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = 32, got 20"
