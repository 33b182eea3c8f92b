"""scenarios/deepseek-v3.toml loads, derives its chunk costs, and shows the overlap."""

from pathlib import Path

import pytest

from dualpipe_sim import scenario, simulation

PRESET = Path(__file__).resolve().parent.parent / "scenarios" / "deepseek-v3.toml"


def test_preset_derives_chunk_costs():
    """Per layer: forward 4.13 + 6.69 + 4.60 + 8.68 = 24.10, backward 5.77 + 5.31 +
    3.54 + 7.49 + 8.80 + 2.39 = 33.30, weight 3.54 + 2.39 = 5.93; times 4 layers."""
    sc = scenario.load(PRESET)
    assert (sc.pipeline.schedule, sc.pipeline.stages) == ("dualpipe", 16)
    c = sc.cost_model()
    assert c.forward[0] == pytest.approx(96.4)
    assert c.backward[0] == pytest.approx(133.2)
    assert c.weight[0] == pytest.approx(23.72)
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
