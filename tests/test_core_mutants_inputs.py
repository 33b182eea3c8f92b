"""Bad input on the core path: one clear error naming the field and the rule, exit 2 from the CLI,
nothing written (issue s10d: planted bugs the suite let through)."""

import json
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.inputs.scenario import ScenarioError
from dualpipe_sim.schedules.ir import Schedule, ScheduleError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "scenarios" / "quickstart.toml")


def _one_f_one_b_json(**counts) -> dict:
    """1F1B on 2 stages, 2 micro-batches, written out by hand, with ``counts`` as its header."""
    ops = lambda s, order: [{"kind": k, "microbatch": m, "stage": s} for k, m in order]  # noqa: E731
    ranks = [ops(0, [("F", 0), ("F", 1), ("B", 0), ("B", 1)]), ops(1, [("F", 0), ("B", 0), ("F", 1), ("B", 1)])]
    return {"schedule": "custom", **counts, "ranks": ranks}


@pytest.mark.parametrize("key", ["stages", "microbatches"])
@pytest.mark.parametrize("value", [0, -1])
def test_schedule_json_count_below_one_is_refused_not_inferred(key, value):
    """A schedule file that declares 0 stages or micro-batches is wrong, not absent: it must be
    refused naming the key, not silently replaced by the count read off the ops."""
    with pytest.raises(ScheduleError, match=rf"^schedule JSON: {key} must be a whole number >= 1, got {value}$"):
        Schedule.from_json(_one_f_one_b_json(**{key: value}))


def test_schedule_json_zero_microbatches_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "zero.json"
    path.write_text(json.dumps(_one_f_one_b_json(stages=2, microbatches=0)))
    out = tmp_path / "out"
    status = main(["run", QUICKSTART, "--set", "pipeline.schedule=1f1b", "--set", "pipeline.stages=2",
                   "--set", "pipeline.microbatches=2", "--schedule-file", str(path), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "microbatches must be a whole number >= 1, got 0" in err
    assert not out.exists()


def _scenario(**pipeline) -> dict:
    return {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4, **pipeline},
            "costs": {"forward": 1.0, "backward": 2.0}}  # fmt: skip


def test_per_stage_list_longer_than_the_stages_is_refused():
    """A per-stage list needs exactly one value per stage: a longer one is as wrong as a shorter
    one (the extra figures would be dropped without a word)."""
    data = _scenario()
    data["costs"]["forward"] = [1.0, 1.0, 1.0]
    rule = r"^costs.forward: a per-stage list needs one value per stage \(2\), got 3$"
    with pytest.raises(ScenarioError, match=rule):
        scenario.from_dict(data)


def test_override_into_a_value_names_the_override(tmp_path, capsys):
    """--set pipeline.stages.x=1 walks into a number: one error line naming the override, exit 2."""
    with pytest.raises(ScenarioError, match=r"^override 'pipeline.stages.x=1': stages is a value, not a table$"):
        scenario.apply_overrides(_scenario(), ["pipeline.stages.x=1"])
    out = tmp_path / "out"
    assert main(["run", QUICKSTART, "--set", "pipeline.stages.x=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "error: override 'pipeline.stages.x=1': stages is a value, not a table\n"
    assert not out.exists()


@pytest.mark.parametrize("stages", [0, -3])
def test_zero_stages_is_refused_by_the_schema_naming_the_rule(stages):
    rule = rf"^pipeline.stages: input should be greater than or equal to 1, got {stages}$"
    with pytest.raises(ScenarioError, match=rule):
        scenario.from_dict(_scenario(stages=stages))


def test_weight_equal_to_backward_runs_and_above_it_is_refused():
    """W <= B (B - W is the input-gradient part, which cannot be negative): W = B is the edge
    that is accepted, W just above B at any stage is refused naming that stage."""
    data = _scenario()
    data["costs"]["weight"] = 2.0
    scenario.from_dict(data)
    data["costs"]["weight"] = [1.0, 2.001]
    rule = r"^costs.weight: must be <= costs.backward .* got W=2.001 > B=2.0 at stage 1$"
    with pytest.raises(ScenarioError, match=rule):
        scenario.from_dict(data)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--jobs", "0"], "error: --jobs: must be >= 1, got 0\n"),
        (["--jobs", "-2"], "error: --jobs: must be >= 1, got -2\n"),
        (["--schedules", " , "], "error: --schedules: give at least one schedule name, e.g. 1f1b,dualpipe\n"),
    ],
)
def test_plan_refuses_bad_flags_before_reading_anything(extra, message, tmp_path, capsys):
    """plan's own flag rules: exit 2, one line naming the flag, no output folder.  The source
    does not exist: the flags are checked first, so its error never shows."""
    out = tmp_path / "plan"
    status = main(["plan", str(tmp_path / "no-such-config.json"), "--gpus", "4", "--global-batch", "8",
                   "--seq", "2048", "--out", str(out), *extra])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == message and captured.out == ""
    assert not out.exists()
