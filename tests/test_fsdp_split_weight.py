"""ZeRO 3 (FSDP) with a schedule that runs weight gradients apart (W ops) is refused (s20o): model/fsdp.py works a
backward's re-gathers and reduce-scatters against the layers' whole backward (input and weight gradients) and derive.py
puts the exposure on the op that runs the input gradient, so under a split schedule I's gathers were hidden under W
GEMMs that run later (tests/test_layout_fuzz_found.py, zb-h1 shorter with a larger micro-batch). The rule is
parallel.zero's (simulation.check_fsdp, a ScheduleError: compare skips the schedule); plan prunes the pair by the
family's ``splits_weight`` (plan/space.py _unmodelled). docs/step.md, "ZeRO 3"."""

from __future__ import annotations

import pytest

from dualpipe_sim import compare, simulation
from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.schedules import FAMILIES, registry
from dualpipe_sim.schedules.ir import ScheduleError, ops_of
from helpers import TINY_LLAMA_MODEL

RULE = ("parallel.zero: 3 (FSDP) is not modelled with a schedule that runs weight gradients apart "
        "({} has W ops)")


def tiny(tmp_path, zero: int, schedule: str = "zb-h1", stages: int = 2):
    path = tmp_path / f"tiny-{zero}-{schedule}-{stages}.toml"
    path.write_text(f"""
[pipeline]
schedule = "{schedule}"
stages = {stages}
microbatches = 4
{TINY_LLAMA_MODEL}[parallel]
data = 2
zero = {zero}
[hardware]
bf16_tflops = 1.0
p2p_bandwidth = 1.0
[step]
grad_sync = "derived"
""")
    return path


def has_w(schedule) -> bool:
    return any(op.kind == "W" for actions in schedule.ranks for a in actions for op in ops_of(a))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_a_family_splits_weight_exactly_when_its_schedules_have_w_ops(family):
    """The flag plan prunes by is what the built schedules hold: 4 stages and 16 micro-batches (every family's check
    takes it; the virtual ones with 2 chunks a rank), W ops in every schedule of a splitting family."""
    options = {"chunks_per_rank": 2} if "chunks_per_rank" in family.options else {}
    assert has_w(registry.build(family.name, 4, 16, **options)) == family.splits_weight
    assert family.splits_weight == (family.name in ("zb-h1", "zb-h1-megatron", "zb-h2", "zbv", "dualpipe", "dualpipev"))


def test_zero_3_with_w_ops_is_refused_as_parallel_zeros_rule(tmp_path):
    with pytest.raises(ScheduleError) as caught:
        simulation.run(scenario.load(tiny(tmp_path, 3)))
    assert str(caught.value).startswith(RULE.format("zb-h1"))
    assert caught.value.field == "parallel.zero" and "\n" not in str(caught.value)
    assert simulation.run(scenario.load(tiny(tmp_path, 2))).metrics.step.total > 0  # ZeRO 2 with W ops runs
    assert simulation.run(scenario.load(tiny(tmp_path, 3, "1f1b"))).metrics.step.total > 0  # ZeRO 3 without W runs


def test_the_rule_reads_the_built_schedule_not_its_name(tmp_path):
    """A user's own schedule with W ops is refused under ZeRO 3; zb-h1-megatron on one stage has no W (its one
    backward is fused: tests above) and runs."""
    sc = scenario.load(tiny(tmp_path, 3, "1f1b"))
    with pytest.raises(ScheduleError, match=r"^parallel\.zero: 3 \(FSDP\) is not modelled"):
        simulation.run(sc, schedule=registry.build("zb-h1", 2, 4))
    one = registry.build("zb-h1-megatron", 1, 4)
    assert not has_w(one)
    assert simulation.run(scenario.load(tiny(tmp_path, 3, "zb-h1-megatron", stages=1))).metrics.step.total > 0


def test_cli_refuses_it_in_one_line_with_exit_2(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", str(tiny(tmp_path, 3, "1f1b")), "--set", 'pipeline.schedule="dualpipev"', "--out", str(out),
                 "--plots", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: " + RULE.format("dualpipev")), err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()


def test_model_refuses_it_as_run_does(tmp_path, capsys):
    """The model verb derives the same figures, so it runs the same check on the scenario's built schedule (s21e;
    before, it printed zb-h1's ZeRO 3 figures that run refuses): one line, exit 2; ZeRO 2 with W ops, ZeRO 3 with 1F1B
    and zb-h1-megatron on one stage (no W op) are described."""
    assert main(["model", str(tiny(tmp_path, 3)), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + RULE.format("zb-h1")) and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["model", str(tiny(tmp_path, 3, "1f1b")), "--set", 'pipeline.schedule="dualpipev"']) == 2
    assert capsys.readouterr().err.startswith("error: " + RULE.format("dualpipev"))
    for path in (tiny(tmp_path, 2), tiny(tmp_path, 3, "1f1b"), tiny(tmp_path, 3, "zb-h1-megatron", stages=1)):
        assert main(["model", str(path), "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_a_sweep_point_that_hits_it_is_that_points_error(tmp_path):
    """As another invalid point: status error, the rule as its reason; the sweep's other points run."""
    import csv

    from dualpipe_sim.cli import parse_grid
    from dualpipe_sim.sweep import run_sweep

    run_sweep(tiny(tmp_path, 3, "1f1b"), parse_grid(["pipeline.schedule=1f1b,zb-h1,dualpipev"]), tmp_path / "out",
              jobs=1, charts=False)  # fmt: skip
    with (tmp_path / "out" / "results.csv").open(newline="") as f:
        rows = {r["pipeline.schedule"]: r for r in csv.DictReader(f)}
    assert rows["1f1b"]["status"] == "ok" and float(rows["1f1b"]["step.total"]) > 0
    for name in ("zb-h1", "dualpipev"):
        assert rows[name]["status"] == "error" and rows[name]["reason"].startswith(RULE.format(name))

def test_compare_skips_the_splitting_schedules_and_runs_the_others(tmp_path):
    c = compare.compare(scenario.load(tiny(tmp_path, 3, "1f1b")), ["1f1b", "zb-h1", "dualpipev", "gpipe"])
    assert [r.metrics.schedule for r in c.results] == ["1f1b", "gpipe"]
    assert [name for name, _ in c.skipped] == ["zb-h1", "dualpipev"]
    assert all(why.field == "parallel.zero" for _, why in c.skipped)
    assert compare.skipped_lines(c)[0] == "skipped zb-h1: " + str(c.skipped[0][1])


def test_plan_prunes_zero_3_with_a_splitting_schedule_with_the_reason():
    """A dense model, 1f1b / zb-h1 / dualpipev: a zero-3 row of a splitting schedule is pruned as not modelled
    wherever its zero-2 twin (the same layout) is a complete candidate (ZeRO 2 and 3 share their one pruning rule,
    one data-parallel rank); 1f1b's zero-3 rows stay."""
    from dualpipe_sim.plan.shapes import shapes
    from dualpipe_sim.plan.space import ModelShape, Request, enumerate_candidates

    rows = list(enumerate_candidates(ModelShape(heads=4, layers=4, experts=0), Request(4, 8, 2048),
                                     shapes(["1f1b", "zb-h1", "dualpipev"])))  # fmt: skip
    for name in ("zb-h1", "dualpipev"):
        reason = (f'parallel.zero: 3 (FSDP) with pipeline.schedule = "{name}", which runs weight gradients apart '
                  "(W ops), is not modelled (the run refuses it)")
        pruned = [c for c in rows if c.schedule == name and c.pruned == reason]
        twins = [c for c in rows if c.schedule == name and c.zero == 2 and not c.pruned]
        assert pruned and len(pruned) == len(twins)
        assert all(c.zero == 3 for c in pruned)
        assert not any(c.schedule == name and c.zero == 3 and not c.pruned for c in rows)
    assert any(c.schedule == "1f1b" and c.zero == 3 and not c.pruned for c in rows)
