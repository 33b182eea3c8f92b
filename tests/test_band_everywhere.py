"""s18q: the validation band (model/validation_band.py) wherever a tokens/s is shown: `compare` (its terminal table and
compare.md), `plan` (its terminal table, plan.csv and --json), the sweep's results.csv and summary.md, and report.html.

The expectations are worked by hand: a tiny Llama (no experts: dense) on H100 is in the class "Hopper dense" (H100 is
a Hopper, docs/validation.md's H100 table), on A100 "A100 dense"; a custom GPU (no hardware.preset) and a run timed
by hardware.efficiency are in no class; without [step] the tokens/s is the pipeline's alone and no published run is.
The lines are spelled out here from validation_band.json's figures, not taken from describe(). Nothing the band
says may change a figure: each output is compared with the band's figures made absurd.
"""

from __future__ import annotations

import csv
import html
import json
import tomllib

import pytest

from helpers import TINY_LLAMA_MODEL
from dualpipe_sim import compare, plan as ds_plan
from dualpipe_sim.cli import main, parse_grid
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import validation_band
from dualpipe_sim.plan import files
from dualpipe_sim.sweep import run_sweep
from dualpipe_sim.sweep.point import run_point

DATA = json.loads(validation_band.DATA.read_text(encoding="utf-8"))
H100 = '[hardware]\npreset = "H100"\n'
CUSTOM = "[hardware]\nbf16_tflops = 500\nhbm = 80e9\np2p_bandwidth = 50\n"  # no preset: a GPU of the user's own
EFFICIENCY = '[hardware]\npreset = "H100"\nefficiency = 0.5\n'
STEP = "[step]\noptimizer = 1\n"
BAND_COLUMNS = ["validation_band.validated", "validation_band.run_class", "validation_band.runs",
                "validation_band.mean_error", "validation_band.min_error", "validation_band.max_error",
                "validation_band.sources", "validation_band.reason"]  # fmt: skip


def validated_line(cls: str, anchor: str) -> str:
    """The line of a class with a range, written out by hand from validation_band.json's figures."""
    e = DATA["classes"][cls]
    return (f"validation band ({cls}): over {e['runs']} published runs, predicted tokens/s against measured "
            f"{e['mean_error']:+.1%} on average, {e['min_error']:+.1%} to {e['max_error']:+.1%} (+: the prediction "
            f"too high); reported, not applied; docs/validation.md#{anchor}")  # fmt: skip


HOPPER_DENSE = validated_line("Hopper dense", "whole-training-runs-on-h100")
A100_DENSE = validated_line("A100 dense", "whole-training-runs")
NO_CLASS = {CUSTOM: "validation band: not validated, a custom GPU (no hardware.preset): the runs are held against "
                    "the presets' kernel rates",
            EFFICIENCY: "validation band: not validated, hardware.efficiency is set: the runs are held against the "
                        "kernel model, which it replaces"}  # fmt: skip
NO_STEP = ("validation band (Hopper dense): not validated, no [step]: the throughput is the pipeline alone, the "
           "published runs' a whole step")  # fmt: skip


def toml(tmp_path, hardware: str = H100, step: str = STEP, name: str = "tiny.toml"):
    """A tiny Llama on 2 stages of 1F1B, 4 micro-batches (a second to run)."""
    path = tmp_path / name
    path.write_text(f'[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n{TINY_LLAMA_MODEL}{hardware}{step}')
    return path


def absurd_classes(monkeypatch):
    """Every class's figures made absurd: what the band says must move, and nothing else."""
    absurd = {k: {**e, "runs": 40, "mean_error": -0.9, "min_error": -0.99, "max_error": 5.0,
                  "tables": [{"anchor": "x#y", "runs": 40, "table": "x"}]} for k, e in DATA["classes"].items()}  # fmt: skip
    monkeypatch.setattr(validation_band, "classes", lambda: absurd)


# -- compare: a line under the table, once for all schedules --------------------------------------------------------
@pytest.mark.parametrize("hardware,step,line", [(H100, STEP, HOPPER_DENSE), (CUSTOM, STEP, NO_CLASS[CUSTOM]),
                                                (EFFICIENCY, STEP, NO_CLASS[EFFICIENCY]), (H100, "", NO_STEP)])
def test_compare_prints_and_writes_the_band_once(tmp_path, capsys, hardware, step, line):
    path = toml(tmp_path, hardware, step)
    assert main(["compare", str(path), "--schedules", "1f1b,dualpipev,gpipe", "--out", str(tmp_path / "c"),
                 "--plots", "none"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out.count(line) == 1  # three schedules, one class: one line
    table_end = max(i for i, text in enumerate(out) if text.startswith("|"))
    assert out.index(line) > table_end
    md = (tmp_path / "c" / "compare.md").read_text().splitlines()
    assert md.count(f"- {line}") == 1


def test_compare_without_a_model_has_no_band(tmp_path, capsys):
    path = tmp_path / "plain.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n[costs]\nforward = 1\nbackward = 2\n')
    assert main(["compare", str(path), "--schedules", "1f1b,gpipe", "--out", str(tmp_path / "c"), "--plots", "none"]) == 0
    assert "validation band" not in capsys.readouterr().out
    assert "validation band" not in (tmp_path / "c" / "compare.md").read_text()


def test_compare_figures_do_not_move_with_the_band(tmp_path, monkeypatch):
    sc = scenario.load(toml(tmp_path))
    plain = compare.compare(sc, ["1f1b", "dualpipev"])
    absurd_classes(monkeypatch)
    moved = compare.compare(sc, ["1f1b", "dualpipev"])
    assert compare.summary_rows(moved) == compare.summary_rows(plain)
    assert compare.band_lines(plain) == [HOPPER_DENSE]
    assert compare.band_lines(moved) == ["validation band (Hopper dense): over 40 published runs, predicted tokens/s "
                                         "against measured -90.0% on average, -99.0% to +500.0% (+: the prediction too "
                                         "high); reported, not applied; x#y"]  # fmt: skip
    assert compare.table(moved) == compare.table(plain)


# -- the sweep: results.csv's columns, summary.md's lines -----------------------------------------------------------
def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_results_and_summary_name_each_points_class(tmp_path):
    run_sweep(toml(tmp_path), parse_grid(["hardware.preset=H100,A100"]), tmp_path / "s", jobs=1, charts=False)
    with (tmp_path / "s" / "results.csv").open(newline="") as f:
        header = next(csv.reader(f))
    # added before the identity (and s21e's step.slowed, s21r's step.drain after them)
    assert header[-4 - len(BAND_COLUMNS):] == [*BAND_COLUMNS, "step.slowed", "step.drain", "point", "scenario_id"]
    rows = {r["hardware.preset"]: r for r in read_csv(tmp_path / "s" / "results.csv")}
    for preset, cls, anchor in (("H100", "Hopper dense", "whole-training-runs-on-h100"),
                                ("A100", "A100 dense", "whole-training-runs")):  # fmt: skip
        e, row = DATA["classes"][cls], rows[preset]
        assert (row["validation_band.validated"], row["validation_band.run_class"]) == ("true", cls)
        assert int(row["validation_band.runs"]) == e["runs"]
        assert [float(row[f"validation_band.{k}"]) for k in ("mean_error", "min_error", "max_error")] == \
            [e["mean_error"], e["min_error"], e["max_error"]]
        assert json.loads(row["validation_band.sources"]) == [f"docs/validation.md#{anchor}"]
        assert row["validation_band.reason"] == ""
    summary = (tmp_path / "s" / "summary.md").read_text().splitlines()
    assert summary[-2:] == [f"- {HOPPER_DENSE}", f"- {A100_DENSE}"]  # each class once, in grid order


@pytest.mark.parametrize("hardware,step,cls,reason", [(CUSTOM, STEP, "", "a custom GPU (no hardware.preset)"),
                                                      (EFFICIENCY, STEP, "", "hardware.efficiency is set"),
                                                      (H100, "", "Hopper dense", "no [step]")])
def test_sweep_rows_say_not_validated(tmp_path, hardware, step, cls, reason):
    run_sweep(toml(tmp_path, hardware, step), parse_grid(["pipeline.microbatches=4"]), tmp_path / "s", jobs=1,
              charts=False)  # fmt: skip
    (row,) = read_csv(tmp_path / "s" / "results.csv")
    assert (row["validation_band.validated"], row["validation_band.run_class"], row["validation_band.runs"]) == \
        ("false", cls, "0")
    assert row["validation_band.mean_error"] == row["validation_band.min_error"] == ""
    assert row["validation_band.reason"].startswith(reason)
    line = {CUSTOM: NO_CLASS[CUSTOM], EFFICIENCY: NO_CLASS[EFFICIENCY]}.get(hardware, NO_STEP)
    assert (tmp_path / "s" / "summary.md").read_text().splitlines()[-1] == f"- {line}"


def test_sweep_without_a_model_has_empty_band_cells(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n[costs]\nforward = 1\nbackward = 2\n')
    run_sweep(path, parse_grid(["pipeline.microbatches=4,8"]), tmp_path / "s", jobs=1, charts=False)
    assert all(r[c] == "" for r in read_csv(tmp_path / "s" / "results.csv") for c in BAND_COLUMNS)
    assert "validation band" not in (tmp_path / "s" / "summary.md").read_text()


def test_sweep_point_figures_do_not_move_with_the_band(tmp_path, monkeypatch):
    base = tomllib.loads(toml(tmp_path).read_text())
    plain = run_point(base, ())
    absurd_classes(monkeypatch)
    moved = run_point(base, ())
    assert moved["validation_band.mean_error"] == -0.9 and plain["validation_band.mean_error"] == \
        DATA["classes"]["Hopper dense"]["mean_error"]
    assert {k: v for k, v in moved.items() if k not in BAND_COLUMNS} == \
        {k: v for k, v in plain.items() if k not in BAND_COLUMNS}


def test_a_band_read_back_from_its_cells_is_the_same_band():
    # summary.md describes the band of each results.csv row, from its text cells (a resumed sweep has only those)
    from dualpipe_sim.model.sections import HardwareSection
    from dualpipe_sim.sweep.results import format_value

    for band in (validation_band.lookup(HardwareSection(preset="H100"), False),
                 validation_band.lookup(HardwareSection(preset="B200"), True),  # a mean, too few runs for a range
                 validation_band.lookup(HardwareSection(preset="H100", efficiency=0.5), False),
                 validation_band.lookup(HardwareSection(preset="A100"), False, whole_step=False)):  # fmt: skip
        text = {k: format_value(v) for k, v in validation_band.cells(band).items()}
        assert validation_band.from_cells(text) == band
    assert validation_band.from_cells({}) is None


# -- plan: plan.csv's last columns, --json's keys, the terminal's line -----------------------------------------------
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(TINY))
    return path


def test_plan_csv_json_and_table_carry_the_band(tmp_path, config, capsys):
    out = tmp_path / "p"
    args = ["plan", str(config), "--gpus", "4", "--global-batch", "8", "--seq", "2048", "--hardware", "H100",
            "--schedules", "1f1b", "--jobs", "1", "--top", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "V" + HOPPER_DENSE[1:] in capsys.readouterr().out.splitlines()
    with (out / "plan.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[-len(BAND_COLUMNS) - 1:] == ["expert_tensor", *BAND_COLUMNS]  # appended after the earlier columns
    rows = read_csv(out / "plan.csv")
    e = DATA["classes"]["Hopper dense"]
    want = {"validation_band.validated": "true", "validation_band.run_class": "Hopper dense",
            "validation_band.runs": str(e["runs"]), "validation_band.mean_error": repr(e["mean_error"]),
            "validation_band.min_error": repr(e["min_error"]), "validation_band.max_error": repr(e["max_error"]),
            "validation_band.sources": '["docs/validation.md#whole-training-runs-on-h100"]',
            "validation_band.reason": ""}  # fmt: skip
    assert len(rows) > 2 and all({k: r[k] for k in BAND_COLUMNS} == want for r in rows)  # every layout: one class
    assert main([*args, "--json", "--out", str(tmp_path / "q")]) == 0
    top = json.loads(capsys.readouterr().out)
    assert len(top) == 2
    for rec in top:
        assert (rec["validation_band.validated"], rec["validation_band.run_class"], rec["validation_band.runs"]) == \
            (True, "Hopper dense", e["runs"])
        assert rec["validation_band.sources"] == ["docs/validation.md#whole-training-runs-on-h100"]
        assert rec["validation_band.reason"] is None


def test_plan_with_efficiency_is_not_validated_and_its_figures_stay(config, monkeypatch):
    result = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1,
                     overrides=["hardware.efficiency=0.5", "step.optimizer=1"])  # fmt: skip
    recs = files.records(result)
    assert {(r["validation_band.validated"], r["validation_band.run_class"]) for r in recs} == {(False, None)}
    assert all(r["validation_band.reason"].startswith("hardware.efficiency is set") for r in recs)
    plain = files.records(ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1))
    absurd_classes(monkeypatch)
    moved = files.records(ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1))
    assert {r["validation_band.mean_error"] for r in moved} == {-0.9}
    assert [{k: v for k, v in r.items() if k not in BAND_COLUMNS} for r in moved] == \
        [{k: v for k, v in r.items() if k not in BAND_COLUMNS} for r in plain]


# -- report.html: the line under the metrics heading ----------------------------------------------------------------

@pytest.mark.parametrize("hardware,step,line", [(H100, STEP, HOPPER_DENSE), (CUSTOM, STEP, NO_CLASS[CUSTOM]),
                                                (H100, "", NO_STEP)])
def test_report_html_has_the_line_once(tmp_path, hardware, step, line):
    path = toml(tmp_path, hardware, step)
    assert main(["compare", str(path), "--schedules", "1f1b,dualpipev", "--out", str(tmp_path / "c"),
                 "--plots", "html"]) == 0  # fmt: skip
    page = (tmp_path / "c" / "report.html").read_text()
    assert page.count(f"<p>{html.escape(line)}</p>") == 1
    assert page.index("<h2>Metrics</h2>") < page.index(html.escape(line))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--plots", "html"]) == 0
    assert f"<p>{html.escape(line)}</p>" in (tmp_path / "r" / "report.html").read_text()
