"""errors.InputError: the one error line as before, and its parts (field, rule, by) where the raiser has them."""

from __future__ import annotations

import pickle

import pytest

from dualpipe_sim import InputError, ScenarioError, ScheduleError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.schedules import registry


def test_the_line_is_made_of_its_parts():
    assert str(InputError(field="a.b", rule="needs 2, got 1")) == "a.b: needs 2, got 1"
    assert str(InputError(field="a.b", rule="needs 2, got 1", by="dualpipe")) == "a.b: dualpipe needs 2, got 1"
    whole = InputError("scenario file not found: x.toml")
    assert (str(whole), whole.field, whole.rule, whole.by) == ("scenario file not found: x.toml", None,
                                                              "scenario file not found: x.toml", None)  # fmt: skip
    assert issubclass(ScenarioError, InputError) and issubclass(ScheduleError, InputError)
    assert issubclass(InputError, ValueError)


def test_parts_survive_a_process_boundary():
    """A sweep's or plan's workers hand errors back pickled: the parts come with the line."""
    error = pickle.loads(pickle.dumps(ScheduleError(field="pipeline.stages", rule="needs 2", by="dualpipev")))
    assert (type(error), str(error), error.field, error.rule, error.by) == (
        ScheduleError, "pipeline.stages: dualpipev needs 2", "pipeline.stages", "needs 2", "dualpipev")


@pytest.mark.parametrize("name, stages, microbatches, field, rule", [
    ("dualpipe", 4, 6, "pipeline.microbatches", "needs >= 2 * pipeline.stages = 8, got 6"),
    ("chimera", 3, 6, "pipeline.stages", "needs an even number >= 2, got 3"),
])  # fmt: skip
def test_a_family_rule_carries_its_family(name, stages, microbatches, field, rule):
    with pytest.raises(ScheduleError) as caught:
        registry.build(name, stages, microbatches)
    error = caught.value
    assert (error.field, error.rule, error.by) == (field, rule, name)
    assert str(error) == f"{field}: {name} {rule}" == registry.get(name).problem(stages, microbatches)


def test_every_family_error_is_its_problem_line():
    """For every registered family and a few shapes: Family.error's line is Family.problem's, its field first."""
    broken = set()
    for name, family in registry.families().items():
        for stages, microbatches in [(1, 1), (3, 5), (4, 8), (5, 2)]:
            error, line = family.error(stages, microbatches), family.problem(stages, microbatches)
            assert (error is None) == (line is None), name
            if error is not None:
                assert line == str(error) and line.startswith(f"{error.field}: {name} ") and error.by == name
                broken.add(name)
    assert {"dualpipe", "dualpipev", "chimera", "zbv"} <= broken  # the shapes do break rules


def test_a_schema_error_carries_its_key():
    with pytest.raises(ScenarioError) as caught:
        scenario({"pipeline": {"schedule": "1f1b", "stages": 0, "microbatches": 4}, "costs": {"forward": 1, "backward": 2}})
    assert str(caught.value) == "pipeline.stages: input should be greater than or equal to 1, got 0"
    assert (caught.value.field, caught.value.rule) == ("pipeline.stages", "input should be greater than or equal to 1, got 0")
    with pytest.raises(ScenarioError) as caught:
        scenario({"pipeline": {"schedule": "1f1b", "stages": 2, "microbatch": 4}, "costs": {"forward": 1, "backward": 2}})
    assert (caught.value.field, caught.value.rule) == ("pipeline.microbatch",
                                                       "unknown key; did you mean pipeline.microbatches?")  # fmt: skip


def test_an_unused_option_names_its_key():
    error = registry.unused_option(["1f1b", "dualpipe"], {"chunks_per_rank": 2})
    assert error.field == "pipeline.chunks_per_rank"
    assert str(error) == ("pipeline.chunks_per_rank: 1f1b, dualpipe do not take it (only interleaved-1f1b, "
                          "interleaved-1f1b-overlap do); leave it out")  # fmt: skip
    assert registry.unused_option(["interleaved-1f1b"], {"chunks_per_rank": 2}) is None
