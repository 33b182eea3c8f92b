"""compare: same scenario through several schedules; the table against closed forms and metrics."""

import matplotlib.pyplot as plt
import pytest

from dualpipe_sim import compare
from dualpipe_sim.errors import InputError, ScenarioError
from dualpipe_sim.schedules.ir import ScheduleError
from dualpipe_sim.schedules import registry
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main
from dualpipe_sim.outputs.plots.compare import compare_figure

F, B, S, M = 1.0, 2.0, 4, 8
ONE_F_ONE_B = (M + S - 1) * (F + B)  # 1F1B makespan with uniform stages and free P2P


def base(**pipeline):
    return scenario.from_dict(
        {
            "pipeline": {"schedule": "1f1b", "stages": S, "microbatches": M, **pipeline},
            "costs": {"forward": F, "backward": B},
            "memory": {"activation": 2e9, "parameters": 1e9},
        }
    )


def write_scenario(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        f'[pipeline]\nschedule = "1f1b"\nstages = {S}\nmicrobatches = {M}\n'
        f"[costs]\nforward = {F}\nbackward = {B}\n"
    )
    return str(path)


def test_rows_against_closed_forms_and_metrics():
    c = compare.compare(base(), ["1f1b", "dualpipev", "not-a-schedule", "gpipe"])
    assert [r.metrics.schedule for r in c.results] == ["1f1b", "dualpipev", "gpipe"]
    assert c.skipped[0][0] == "not-a-schedule" and "not registered" in str(c.skipped[0][1])
    rows = {r["schedule"]: r for r in compare.summary_rows(c)}
    assert rows["1f1b"]["makespan"] == pytest.approx(ONE_F_ONE_B)
    assert rows["1f1b"]["speedup"] == pytest.approx(1.0)
    # GPipe: same makespan as 1F1B here, but every micro-batch's activation alive on rank 0.
    assert rows["gpipe"]["makespan"] == pytest.approx(ONE_F_ONE_B)
    assert (rows["gpipe"]["peak"], rows["gpipe"]["peak_bytes"]) == (M, M * 2e9)
    assert (rows["1f1b"]["peak"], rows["1f1b"]["params"], rows["1f1b"]["devices"]) == (S, 1, S)
    # DualPipeV folds S stages onto S/2 ranks, two stages each.
    assert (rows["dualpipev"]["devices"], rows["dualpipev"]["params"]) == (S // 2, 2)
    dv = c.results[1].metrics.to_dict()
    assert rows["dualpipev"]["speedup"] == pytest.approx(ONE_F_ONE_B / dv["makespan"])
    assert rows["dualpipev"]["bubble"] == dv["bubble_ratio"]
    assert rows["dualpipev"]["exposed"] == dv["comm"]["exposed"] == 0


def test_baseline_runs_when_1f1b_is_not_listed():
    c = compare.compare(base(), ["gpipe"])
    assert c.baseline_makespan == pytest.approx(ONE_F_ONE_B)
    assert "1.00x" in compare.table(c)


def test_constraint_broken_is_skipped_with_reason():
    c = compare.compare(base(microbatches=6), ["dualpipe", "1f1b"])  # DualPipe needs M >= 2S
    assert [r.metrics.schedule for r in c.results] == ["1f1b"]
    (name, why), = c.skipped
    assert name == "dualpipe" and "microbatches" in str(why)
    # The schedule is named once: before the colon, not again inside the field-first rule (s15m).
    line = f"skipped dualpipe: pipeline.microbatches needs >= 2 * pipeline.stages = {2 * S}, got 6"
    assert line in compare.report(c).splitlines()
    assert f"- `dualpipe`: pipeline.microbatches needs >= 2 * pipeline.stages = {2 * S}, got 6" in \
        compare.markdown(c, "s.toml").splitlines()
    assert str(why) == f"pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = {2 * S}, got 6"  # as raised
    assert (why.field, why.by, why.rule) == ("pipeline.microbatches", "dualpipe", f"needs >= 2 * pipeline.stages = {2 * S}, got 6")


def test_skip_reason_drops_only_the_repeated_name():
    """said_once reads the error's parts (field, rule, the family whose rule it is), not its text."""
    own = ScheduleError(field="pipeline.stages", rule="needs an even number >= 2, got 3", by="chimera")
    assert str(own) == "pipeline.stages: chimera needs an even number >= 2, got 3"
    assert compare.said_once("chimera", own) == "pipeline.stages needs an even number >= 2, got 3"
    assert compare.said_once("nope", InputError("not registered (`dualpipe-sim schedules` lists the known ones)")) == \
        "not registered (`dualpipe-sim schedules` lists the known ones)"
    # Another family's rule, a rule of no family, or a whole line stays its line, whatever its text says.
    other = ScheduleError(field="pipeline.stages", rule="needs 2", by="dualpipe")
    assert compare.said_once("dualpipev", other) == "pipeline.stages: dualpipe needs 2"
    assert compare.said_once("zb-v", ScenarioError(field="pipeline.stages", rule="zb-v needs x")) == "pipeline.stages: zb-v needs x"
    assert compare.said_once("zb-v", InputError("pipeline.stages: zb-v needs x")) == "pipeline.stages: zb-v needs x"
    assert compare.said_once("zb-v", InputError("at 4 stages: zb-v needs x")) == "at 4 stages: zb-v needs x"


def test_every_registered_schedule_runs_or_says_why():
    names = list(registry.families())
    c = compare.compare(base(), names + ["zz-unknown"])
    assert len(c.results) + len(c.skipped) == len(names) + 1
    assert all(why for _, why in c.skipped)
    table = compare.table(c).splitlines()
    assert len(table) == 2 + len(c.results)
    assert len({len(line) for line in table}) == 1  # aligned


def test_none_can_run_is_an_error():
    with pytest.raises(scenario.ScenarioError, match="pipeline.schedule: none of the schedules") as err:
        compare.compare(base(microbatches=6), ["nope", "dualpipe"])
    assert str(err.value).endswith(f"; dualpipe: pipeline.microbatches needs >= 2 * pipeline.stages = {2 * S}, got 6)")


def test_figure_shares_one_time_axis():
    c = compare.compare(base(), ["1f1b", "dualpipev"])
    fig = compare_figure(c.results)
    longest = max(r.metrics.makespan for r in c.results)
    assert len(fig.axes) == 2
    assert all(ax.get_xlim() == pytest.approx((0, longest)) for ax in fig.axes)
    plt.close(fig)


def test_cli_writes_table_and_chart(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["compare", write_scenario(tmp_path), "--schedules", "1f1b,dualpipe,nope", "--out", str(out),
            "--set", "pipeline.microbatches=6"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "speed-up vs 1F1B" in printed and "skipped nope: not registered" in printed
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.png"}
    md = (out / "compare.md").read_text()
    assert "| 1f1b" in md and "`dualpipe`:" in md and "![" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--schedules", "nope,dualpipe", "--set", "pipeline.microbatches=6"], "pipeline.schedule: none of the schedules"),
        (["--schedules", " , "], "--schedules: give at least one"),
        (["--set", "costs.forward=-1"], "costs.forward"),
    ],
)
def test_cli_bad_input_one_line_nothing_written(tmp_path, capsys, extra, message):
    path = write_scenario(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", path, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]
