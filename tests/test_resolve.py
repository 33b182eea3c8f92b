"""Inputs resolved once (resolve.py): a [model] scenario's figures are derived exactly once per run,
on every path that runs one (the API, the CLI, sweep points, plan candidates, compare), and the
figures a run reads are the ones the Scenario's own methods compute."""

from __future__ import annotations

from pathlib import Path

import pytest

import dualpipe_sim as ds
from dualpipe_sim.inputs import scenario as scenario_mod
from dualpipe_sim.cli import main
from dualpipe_sim.compare import compare
from dualpipe_sim.model import derive
from dualpipe_sim.plan.simulate import run_candidate
from dualpipe_sim.inputs.resolve import Inputs, resolve
from dualpipe_sim.sweep.point import run_point

TINY = {
    "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
    "model": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
              "num_attention_heads": 4, "intermediate_size": 512, "seq_length": 128},
    "parallel": {"data": 2},
    "hardware": {"preset": "H100"},
    # every [step] figure derived: before resolve.py each of them derived the model again, twice a run
    "step": {"grad_sync": "derived", "optimizer": "derived", "cross_copy_sync": "derived"},
}  # fmt: skip


@pytest.fixture
def derivations(monkeypatch):
    """How many times model/derive.py's derive() ran since the fixture started (a list of one int)."""
    count = [0]
    real = derive.derive

    def counted(setup):
        count[0] += 1
        return real(setup)

    monkeypatch.setattr(derive, "derive", counted)
    return count


def test_a_run_of_a_loaded_scenario_derives_once(derivations):
    sc = ds.scenario(TINY)
    assert derivations[0] == 1  # reading checks the cross-field rules: one derivation
    derivations[0] = 0
    result = ds.run(sc)
    assert derivations[0] == 1
    assert result.inputs.derived is not None and result.costs is result.inputs.costs


def test_a_run_from_a_dict_derives_once_in_all(derivations):
    ds.run(TINY)  # read and run: the inputs resolved on reading serve the run
    assert derivations[0] == 1


def test_cli_run_derives_once(derivations, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(_toml(TINY))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--plots", "none"]) == 0
    assert derivations[0] == 1


def test_a_sweep_point_and_a_plan_candidate_derive_once(derivations):
    row = run_point(TINY, ("pipeline.microbatches=6",))
    assert row["status"] == "ok" and derivations[0] == 1
    derivations[0] = 0
    row = run_candidate(TINY, ("pipeline.microbatches=6",))
    assert row["status"] == "ok" and derivations[0] == 1


def test_compare_derives_once_per_schedule(derivations):
    sc = ds.scenario(TINY)
    derivations[0] = 0
    comparison = compare(sc, ["1f1b", "gpipe"])
    assert len(comparison.results) == 2 and derivations[0] == 2


def test_model_verb_derives_once(derivations, tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(_toml(TINY))
    assert main(["model", str(path), "--json"]) == 0
    assert derivations[0] == 1


def test_inputs_are_the_scenarios_own_figures():
    """Threading one derivation through changes no figure: each field equals the Scenario's method
    computed on its own (which derives afresh)."""
    sc = ds.scenario(TINY)
    inputs = resolve(sc)
    assert isinstance(inputs, Inputs)
    assert inputs.costs == sc.cost_model()
    assert inputs.step_costs == sc.step_costs()
    assert inputs.device_memory == sc.device_memory() == 81559 * 2**20  # H100: the 81559 MiB it reports
    assert [s.static for s in inputs.derived.stages] == [s.static for s in sc.derived().stages]
    assert all(x > 0 for x in inputs.step_costs.grad_sync + inputs.step_costs.optimizer)


def test_a_scenario_without_model_resolves_without_deriving(derivations):
    sc = ds.scenario({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 2},
                      "costs": {"forward": 1.0, "backward": 2.0}, "step": {"optimizer": 0.5}})  # fmt: skip
    inputs = resolve(sc)
    assert derivations[0] == 0
    assert inputs.derived is None and inputs.device_memory is None
    assert inputs.costs.forward == (1.0, 1.0) and inputs.step_costs.optimizer == (0.5, 0.5)


def test_scenario_stays_a_plain_record():
    """No derived state hangs off a Scenario: its fields are the scenario keys and nothing is cached."""
    sc = ds.scenario(TINY)
    ds.run(sc)
    assert sc.__pydantic_private__ in (None, {})
    assert set(vars(sc)) == set(scenario_mod.Scenario.model_fields)


def test_bad_input_still_named_on_reading():
    bad = {**TINY, "parallel": {"data": 2, "tensor": 3}}
    with pytest.raises(ds.ScenarioError, match="parallel.tensor: must divide the attention heads"):
        ds.scenario(bad)


def _toml(data: dict) -> str:
    def value(v):
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)

    return "".join(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
                   for section, keys in data.items())  # fmt: skip


def test_toml_helper_round_trips(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(_toml(TINY))
    assert scenario_mod.load_raw(Path(path)) == TINY
