"""scenarios/deepseek-v3.toml loads, derives its chunk costs, and shows the overlap."""

from pathlib import Path

import pytest

from dualpipe_sim import scenario, simulation

PRESET = Path(__file__).resolve().parent.parent / "scenarios" / "deepseek-v3.toml"


def test_preset_derives_chunk_costs():
    """Per layer: forward 4.37 + 6.69 + 4.60 + 8.68 = 24.34, backward 5.77 + 5.31 +
    5.06 + 7.49 + 9.34 + 2.39 = 35.36, weight 5.06 + 2.39 = 7.45; times 4 layers."""
    sc = scenario.load(PRESET)
    assert (sc.pipeline.schedule, sc.pipeline.stages) == ("dualpipe", 16)
    c = sc.cost_model()
    assert c.forward[0] == pytest.approx(97.36)
    assert c.backward[0] == pytest.approx(141.44)
    assert c.weight[0] == pytest.approx(29.8)
    assert c.forward[0] + c.backward[0] > c.overlapped[0] > max(c.forward[0], c.backward[0])


def test_dualpipe_hides_all_to_all_that_1f1b_exposes():
    small = ["pipeline.stages=4", "pipeline.microbatches=8"]  # same chunk, a quick shape
    dp = simulation.run(scenario.load(PRESET, small)).metrics.to_dict()
    f1 = simulation.run(scenario.load(PRESET, small + ["pipeline.schedule=1f1b"])).metrics.to_dict()
    assert f1["comm"]["a2a_exposed"] == pytest.approx(f1["comm"]["a2a_time"])  # no pairs, nothing hidden
    assert dp["comm"]["a2a_time"] == pytest.approx(f1["comm"]["a2a_time"])  # same work
    assert dp["comm"]["a2a_exposed"] < dp["comm"]["a2a_time"]
    assert dp["makespan"] < f1["makespan"]
    assert all(r["parameter_copies"] == 2 for r in dp["per_rank"])
    assert max(r["peak_activation"] for r in dp["per_rank"]) == 4 + 1


def test_preset_fits_the_80_gb_h800():
    """The report's shape: 120 micro-batches (15,360 sequences / 128 pipelines).  DualPipe's
    busiest rank holds PP + 1 = 17 chunk activations of 2.57e9 B and two 3.27e9 B parameter
    copies: 43.69 + 6.54 = 50.23 GB, under the H800's 80 GB (the rest is for gradients,
    optimizer states and communication buffers, which the scenario does not model)."""
    sc = scenario.load(PRESET)
    assert sc.pipeline.microbatches == 15_360 // (2_048 // 16) == 120
    m = simulation.run(scenario.load(PRESET, ["pipeline.microbatches=32"])).metrics  # same peak, quicker
    worst = max(r.peak_activation_bytes + r.parameter_bytes for r in m.per_rank)
    assert worst == pytest.approx(17 * 2.57e9 + 2 * 3.27e9)
    assert worst < 80e9
