"""Grid axes: the CLI's --grid syntax (lists, inclusive ranges; bad syntax -> one clear
error naming --grid) and the library's axes (a key once, a value once, checked values)."""

from pathlib import Path

import pytest
from helpers import cli_error

from dualpipe_sim.cli import UsageError, parse_axis, parse_grid
from dualpipe_sim.inputs.scenario import ScenarioError, parse_override
from dualpipe_sim.sweep.grid import Axis, check_against, make_axes, points, toml_text

QUICK = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"
BASE = {
    "pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8},
    "costs": {"forward": 1.0, "backward": 2.0},
}


def test_list_values_are_read_like_set_values():
    axis = parse_axis("pipeline.schedule=1f1b, zb-h1,dualpipe")
    assert axis.key == "pipeline.schedule"
    assert axis.values == ("1f1b", "zb-h1", "dualpipe")
    assert parse_axis("costs.forward=1,1.5,2").values == (1, 1.5, 2)
    assert axis.override(1) == "pipeline.schedule=zb-h1"


def test_list_items_keep_their_own_commas():
    assert parse_axis("costs.forward=[1, 2],[3,4]").values == ([1, 2], [3, 4])
    assert parse_axis('pipeline.schedule="a,b",c').values == ("a,b", "c")


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("pipeline.microbatches=8:64:8", [8, 16, 24, 32, 40, 48, 56, 64]),  # stop included
        ("pipeline.microbatches=8:60:8", [8, 16, 24, 32, 40, 48, 56]),  # stop not on a step
        ("pipeline.stages=4:4:1", [4]),
        ("pipeline.stages=-2:2:2", [-2, 0, 2]),
        ("costs.forward=0.1:0.5:0.1", [0.1, 0.2, 0.3, 0.4, 0.5]),  # decimal steps, no 0.30000000000000004
        ("costs.forward=1:2:0.5", [1.0, 1.5, 2.0]),
    ],
)
def test_ranges(spec, expected):
    values = parse_axis(spec).values
    assert list(values) == expected
    assert all(type(v) is type(e) for v, e in zip(values, expected))  # 1:2:0.5 gives floats, 8:64:8 ints


@pytest.mark.parametrize(
    "spec,words",
    [
        ("pipeline.stages", "expected KEY=VALUES"),
        ("=1,2", "expected KEY=VALUES"),
        ("pipeline..stages=1", "expected KEY=VALUES"),
        ("pipeline.stages=8:64:0", "step of start:stop:step must be > 0"),
        ("pipeline.stages=8:64:-8", "step of start:stop:step must be > 0"),
        ("pipeline.stages=64:8:8", "start must be <= stop"),
        ("pipeline.stages=8:64", "a range is start:stop:step with three numbers"),
        ("pipeline.stages=a:b:c", "a range is start:stop:step with three numbers"),
        ("pipeline.stages=4,,8", "empty value in the list"),
        ("pipeline.stages=", "empty value in the list"),
        ("costs.forward=[1,2", "unbalanced brackets"),
        ("pipeline.stages=1:10000000:1", "more than the 1000000"),
    ],
)
def test_bad_syntax_names_the_rule(spec, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_axis(spec)
    line = str(info.value)
    assert "\n" not in line
    key = spec.partition("=")[0]
    if words == "expected KEY=VALUES":  # no key to name: the flag is the field, the text follows
        assert line.startswith("--grid: expected KEY=VALUES") and repr(spec) in line, line
    else:  # field first (the key), the rule, then the --grid it came from
        assert line.startswith(f"{key}: ") and line.endswith(f" (in --grid {spec})"), line


def test_a_key_or_a_value_twice_is_an_error():
    with pytest.raises(ScenarioError, match="pipeline.stages: the key is given twice"):
        parse_grid(["pipeline.stages=4", "pipeline.stages=8"])
    with pytest.raises(ScenarioError, match="pipeline.stages: value 4 appears twice"):
        parse_grid(["pipeline.stages=4,8,4"])
    with pytest.raises(ScenarioError, match="pipeline.stages: value 4 appears twice"):
        make_axes({"pipeline.stages": [4, 8, 4]})
    with pytest.raises(ScenarioError, match="pipeline.stages: a grid axis needs at least one value"):
        make_axes({"pipeline.stages": []})
    with pytest.raises(ScenarioError, match="grid: 1001000 points, more than the 1000000"):
        make_axes({"pipeline.stages": range(1001), "pipeline.microbatches": range(1000)})


@pytest.mark.parametrize("value", [8, 0.1, 1e-05, -2.5e20, "1f1b", "true", 'a "quoted", b', True,
                                   [1, 2.5], {"3": 1.2}, [[1, 2], [3]]])
def test_python_values_become_override_text_that_reads_back(value):
    assert parse_override(f"k={toml_text(value)}")[1] == value


def test_axes_from_python_values_equal_the_cli_syntax():
    api = make_axes({"pipeline.schedule": ["1f1b", "gpipe"], "pipeline.stages": range(2, 5, 2)})
    cli = parse_grid(["pipeline.schedule=1f1b,gpipe", "pipeline.stages=2:4:2"])
    assert [p.values for p in points(api)] == [p.values for p in points(cli)]
    assert isinstance(api[0], Axis) and api[0].override(1) == 'pipeline.schedule="gpipe"'


def test_points_are_the_product_first_axis_slowest():
    axes = parse_grid(["pipeline.schedule=1f1b,gpipe", "pipeline.stages=2:4:2", "pipeline.microbatches=4,8"])
    pts = points(axes)
    assert len(pts) == 2 * 2 * 2
    assert [p.index for p in pts] == list(range(8))
    assert pts[0].values == ("1f1b", 2, 4)
    assert pts[1].values == ("1f1b", 2, 8)
    assert pts[2].values == ("1f1b", 4, 4)
    assert pts[4].overrides == ("pipeline.schedule=gpipe", "pipeline.stages=2", "pipeline.microbatches=4")


@pytest.mark.parametrize(
    "key,values,bad,words",
    [
        ("pipeline.nonsense", "1,2", "1", "pipeline.nonsense: unknown key"),
        ("pipeline.stages", "4,a", "a", "pipeline.stages: must be a whole number, got 'a'"),
        ("costs.forward", "1,-1", "-1", "costs.forward: input should be greater than 0"),
        ("pipeline.schedule", "1f1b,nope", "nope", "pipeline.schedule: unknown schedule 'nope'"),
    ],
)
def test_values_wrong_whatever_the_point_stop_the_sweep(key, values, bad, words):
    with pytest.raises(ScenarioError) as info:
        check_against(BASE, parse_grid([f"{key}={values}"]))
    line = str(info.value)  # field first, then the --grid the value came from
    assert line.startswith(words) and line.endswith(f" (in --grid {key}={values})"), line
    # An axis built in Python has no --grid: the bad value itself is named instead.
    texts = tuple(values.split(","))
    with pytest.raises(ScenarioError) as info:
        check_against(BASE, make_axes([Axis(key, texts, texts)]))
    line = str(info.value)
    assert line.startswith(words) and line.endswith(f" (grid value {key}={bad})"), line


def test_an_option_no_swept_schedule_takes_names_the_axis_to_blame():
    # The option set in the base: the schedules' axis is at fault; swept itself: its own axis.
    base = {**BASE, "pipeline": {**BASE["pipeline"], "chunks_per_rank": 2}}
    with pytest.raises(ScenarioError) as info:
        check_against(base, parse_grid(["pipeline.schedule=1f1b,gpipe"]))
    assert str(info.value).startswith("pipeline.chunks_per_rank: 1f1b, gpipe do not take it")
    assert str(info.value).endswith(" (in --grid pipeline.schedule=1f1b,gpipe)")
    with pytest.raises(ScenarioError) as info:
        check_against(BASE, parse_grid(["pipeline.chunks_per_rank=2,3", "pipeline.stages=4,8"]))
    assert str(info.value).startswith("pipeline.chunks_per_rank: 1f1b does not take it")
    assert str(info.value).endswith(" (in --grid pipeline.chunks_per_rank=2,3)")


def test_combination_rules_are_left_to_each_point():
    # A 4-value per-stage list is fine at 4 stages and wrong at 8: not the value's fault alone.
    check_against(BASE, parse_grid(["costs.forward=[1,1,1,1]", "pipeline.stages=4,8"]))
    check_against(BASE, parse_grid(["pipeline.schedule=dualpipe", "pipeline.microbatches=3"]))


_E = "e.g. pipeline.stages=4,8,16 or pipeline.microbatches=8:64:8"


@pytest.mark.parametrize(
    "grid,line",
    [  # README: `error: <field>: <rule>`; a grid's line then says which --grid it came from
        (["pipeline.stage=4,8"],
         "pipeline.stage: unknown key; did you mean pipeline.stages? (in --grid pipeline.stage=4,8)"),
        (["pipeline.stages=4,a"], "pipeline.stages: must be a whole number, got 'a' (in --grid pipeline.stages=4,a)"),
        (["costs.forward=1,-1"],
         "costs.forward: input should be greater than 0, got -1 (in --grid costs.forward=1,-1)"),
        (["pipeline.schedule=1f1b,nope"], "pipeline.schedule: unknown schedule 'nope'; known: 1f1b, 1f1b-overlap, "
         "chimera, chimera-doubling, dualpipe, dualpipev, gpipe, interleaved-1f1b, interleaved-1f1b-overlap, zb-h1, "
         "zb-h1-megatron, zb-h2, zbv (in --grid pipeline.schedule=1f1b,nope)"),
        (["pipeline.chunks_per_rank=2,3"], "pipeline.chunks_per_rank: dualpipe does not take it (only "
         "interleaved-1f1b, interleaved-1f1b-overlap do); leave it out (in --grid pipeline.chunks_per_rank=2,3)"),
        (["pipeline.stages=8:4:1"],
         "pipeline.stages: start must be <= stop in start:stop:step (in --grid pipeline.stages=8:4:1)"),
        (["pipeline.stages=4:8:0"], "pipeline.stages: the step of start:stop:step must be > 0, got 0 "
         "(in --grid pipeline.stages=4:8:0)"),
        (["pipeline.stages=4:8"], f"pipeline.stages: a range is start:stop:step with three numbers, {_E} "
         "(in --grid pipeline.stages=4:8)"),
        (["pipeline.stages=1:2000000:1"], "pipeline.stages: 2000000 values, more than the 1000000 a sweep takes "
         "(in --grid pipeline.stages=1:2000000:1)"),
        (["pipeline.stages=4,,8"], f"pipeline.stages: empty value in the list, {_E} (in --grid pipeline.stages=4,,8)"),
        (["costs.forward=[1,2"],
         "costs.forward: unbalanced brackets or quotes in the value list (in --grid costs.forward=[1,2)"),
        (["pipeline.stages=4,8,4"],
         "pipeline.stages: value 4 appears twice in the grid (in --grid pipeline.stages=4,8,4)"),
        (["pipeline.stages4"], f"--grid: expected KEY=VALUES with a dotted scenario key, got 'pipeline.stages4'; {_E}"),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "unknown-schedule", "unused-option", "range-backwards",
         "range-step", "range-two-numbers", "range-too-long", "empty-item", "brackets", "value-twice", "no-key"],
)
def test_grid_error_lines_name_the_field_first(tmp_path, grid, line):
    """Through the CLI as a user meets it: one line, exit 2, nothing written (helpers.cli_error)."""
    args = [a for g in grid for a in ("--grid", g)]
    assert cli_error(tmp_path, "sweep", str(QUICK), *args, "--plots", "none") == f"error: {line}"
