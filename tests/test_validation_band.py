"""s18c: the validation band (dualpipe_sim/model/validation_band.py), reported beside a throughput prediction.

1. validation_band.json agrees with docs/validation.md's generated tables, recomputed here from the markdown rows
   (each run's class: the table's GPU family, or the community table's GPU column, and whether its model has
   experts), so the file cannot go stale; and docs/make_validation.py writes the same bytes from the same page;
2. hand-worked lookups: an H100 dense row, B200 / GB300 rows, MoE rows, a custom GPU, hardware.efficiency given;
3. `run` (a line after the throughput line, metrics.json's ``validation_band``), `model` (text and --json) and plan.md
   report it, and it never changes a predicted figure.
"""

from __future__ import annotations

import csv
import json
import runpy
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim import simulation
from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, validation_band
from dualpipe_sim.model.sections import HardwareSection
from dualpipe_sim.model.validation_band import Band
from dualpipe_sim.plan import files

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
DOC = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
DATA = json.loads(validation_band.DATA.read_text(encoding="utf-8"))
PAGE = "docs/validation.md"
# the whole-run tables: their markers' names, the family every row is on (None: the GPU column says), their anchors
TABLES = {"validation table": ("A100", "whole-training-runs"),
          "hopper table": ("Hopper", "whole-training-runs-on-h100"),
          "b200 table": ("Blackwell", "whole-training-runs-on-b200"),
          "community table": (None, "community-runs-moe-runs-reported-by-users-issue-21")}  # fmt: skip
GPU_FAMILY = {"A100": "A100", "H100": "Hopper", "H800": "Hopper", "H200": "Hopper", "B200": "Blackwell",
              "GB200": "Blackwell", "GB300": "Blackwell"}  # fmt: skip
SCENARIOS = {row["name"]: row["scenario"] for row in csv.DictReader(open(VAL / "published.csv"))}


def table_rows(name: str) -> list[dict]:
    """The markdown rows between a table's markers, as {column: cell}."""
    text = DOC.split(f"<!-- {name}: docs/make_validation.py -->")[1].split(f"<!-- end of {name} -->")[0]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("|")]  # fmt: skip
    head, _, *body = cells
    return [dict(zip(head, row)) for row in body]


def has_experts(run: str) -> bool:
    return derive.model_config(scenario.load(VAL / SCENARIOS[run]).model).num_experts > 0


def recomputed() -> dict[str, list[tuple[str, float, str]]]:
    """Per class, (run, error as a fraction, anchor) in the tables' order."""
    out: dict[str, list] = {}
    for name, (family, anchor) in TABLES.items():
        for row in table_rows(name):
            fam = family or GPU_FAMILY[row["GPU"]]
            kind = "MoE" if has_experts(row["run"]) else "dense"
            out.setdefault(f"{fam} {kind}", []).append((row["run"], float(row["error"].rstrip("%")) / 100, anchor))
    return out


CLASSES = recomputed()


# -- 1. the data file against the page -------------------------------------------------------------------------------
def test_the_runs_the_tables_hold_fall_in_the_classes_they_should():
    # by hand from the tables: Hopper's three MoE rows, the community runs (all MoE), dense rows beside them
    assert {"mz-qwen3-235b-ep32pp8", "mz-qwen3-235b-tp4ep8pp8", "mz-mixtral-8x22b",
            "pai643-qwen3-30b-a3b-pp2ep8"} <= {r for r, _, _ in CLASSES["Hopper MoE"]}  # fmt: skip
    assert [r for r, _, _ in CLASSES["Blackwell MoE"]] == ["mz7-qwen3-30b-a3b-b200"]  # the one community B200 run
    assert {"mlperf50-llama405b-512", "nemotron4-340b-dp16", "mlperf51-llama8b-64h200"} <= {
        r for r, _, _ in CLASSES["Hopper dense"]}
    assert {"mlperf51-llama8b-72gb300", "mlperf50-llama405b-256gb200"} <= {r for r, _, _ in CLASSES["Blackwell dense"]}
    assert "A100 MoE" not in CLASSES  # no published A100 MoE run
    # every run of the four tables is in exactly one class
    counted = sum(len(table_rows(name)) for name in TABLES)
    assert sum(map(len, CLASSES.values())) == counted == len({r for rows in CLASSES.values() for r, _, _ in rows})


def test_data_file_agrees_with_the_tables_as_written():
    assert set(DATA["classes"]) == {f"{f} {k}" for f in ("A100", "Hopper", "Blackwell") for k in ("dense", "MoE")}
    for name, entry in DATA["classes"].items():
        rows = CLASSES.get(name, [])
        errs = [e for _, e, _ in rows]
        assert entry["runs"] == len(rows), name
        assert entry["rows"] == [r for r, _, _ in rows], name
        anchors = list(dict.fromkeys(a for _, _, a in rows))
        assert [(t["anchor"], t["runs"]) for t in entry["tables"]] == [
            (f"{PAGE}#{a}", sum(x == a for _, _, x in rows)) for a in anchors], name
        if not rows:
            assert entry["mean_error"] is None and entry["note"] == "no published run"
            continue
        assert entry["mean_error"] == pytest.approx(sum(errs) / len(errs), abs=5e-5), name
        if len(rows) >= 3:
            assert (entry["min_error"], entry["max_error"]) == (pytest.approx(min(errs)), pytest.approx(max(errs)))
            assert entry["note"] is None
        else:  # says so rather than giving a range
            assert entry["min_error"] is None and entry["max_error"] is None
            assert "fewer than 3: no range" in entry["note"], name


def test_hopper_dense_band_by_hand():
    """The Hopper table's mean signed error is over its MoE rows too: taking out the three MoE rows' errors (read off
    the page) from that mean's sum gives the dense class's."""
    rows = table_rows("hopper table")
    moe = [float(r["error"].rstrip("%")) / 100 for r in rows if r["run"].startswith("mz-")]
    assert len(moe) == 3
    total = sum(float(r["error"].rstrip("%")) / 100 for r in rows)
    entry = DATA["classes"]["Hopper dense"]
    assert entry["runs"] == len(rows) - 3
    assert entry["mean_error"] == pytest.approx((total - sum(moe)) / (len(rows) - 3), abs=5e-5)


def test_make_validation_writes_these_bytes_from_this_page():
    script = runpy.run_path(str(ROOT / "docs" / "make_validation.py"), run_name="doc_script_under_test")
    assert script["band"](DOC) == validation_band.DATA.read_text(encoding="utf-8")


# -- 2. lookups by hand -----------------------------------------------------------------------------------------------
def lookup(path: Path, *overrides: str) -> Band:
    sc = scenario.load(path, list(overrides))
    return validation_band.lookup(sc.hardware, derive.model_config(sc.model).moe)


def as_file(name: str) -> Band:
    """The band the data file gives a class, built by hand."""
    e = DATA["classes"][name]
    sources = tuple(t["anchor"] for t in e["tables"])
    return Band(True, name, e["runs"], e["mean_error"], e["min_error"], e["max_error"], sources, None)


@pytest.mark.parametrize("run,cls", [
    ("mlperf50-llama405b-512.toml", "Hopper dense"),  # H100
    ("mlperf51-llama8b-64h200.toml", "Hopper dense"),  # H200: Hopper's rates
    ("mlperf41-gpt3-64b200.toml", "Blackwell dense"),  # B200
    ("mlperf51-llama8b-72gb300.toml", "Blackwell dense"),  # GB300 NVL72, in the B200 table
    ("n21-1.7b.toml", "A100 dense"),
    ("mz-mixtral-8x22b.toml", "Hopper MoE"),  # H100, 8 experts
    ("xt-qwen3-235b-tp2ep8pp8.toml", "Hopper MoE"),  # H800, a community run
])  # fmt: skip
def test_a_validation_row_looks_up_its_class(run, cls):
    band = lookup(VAL / run)
    assert band == as_file(cls)
    assert band.validated and band.reason is None
    assert band.min_error <= band.mean_error <= band.max_error


def test_hopper_moe_band_cites_both_tables():
    assert lookup(VAL / "mz-mixtral-8x22b.toml").sources == (f"{PAGE}#whole-training-runs-on-h100",
                                                              f"{PAGE}#community-runs-moe-runs-reported-by-users-issue-21")


def test_one_b200_moe_run_gives_no_range():
    band = lookup(VAL / "mz7-qwen3-30b-a3b-b200.toml")
    e = DATA["classes"]["Blackwell MoE"]
    assert e["runs"] == 1  # the community table's one B200 row
    assert band == Band(False, "Blackwell MoE", 1, e["mean_error"], None, None,
                        (f"{PAGE}#community-runs-moe-runs-reported-by-users-issue-21",),
                        "1 published run: too few for a range")  # fmt: skip


def test_an_a100_moe_run_has_no_class_rows():
    band = validation_band.lookup(HardwareSection(preset="A100"), True)
    assert band == Band(False, "A100 MoE", 0, None, None, None, (), "no published A100 MoE run in docs/validation.md")


@pytest.mark.parametrize("hardware,why", [
    (HardwareSection(bf16_tflops=312, p2p_bandwidth=25), "a custom GPU (no hardware.preset)"),
    (HardwareSection(bf16_tflops=312, p2p_bandwidth=25, efficiency=0.5), "a custom GPU (no hardware.preset)"),
    (HardwareSection(preset="H100", efficiency=0.5), "hardware.efficiency is set"),
    (None, "no [hardware]"),
])  # fmt: skip
def test_no_band_without_the_kernel_model_on_a_preset(hardware, why):
    for moe in (False, True):
        band = validation_band.lookup(hardware, moe)
        assert (band.validated, band.run_class, band.runs, band.mean_error, band.sources) == (False, None, 0, None, ())
        assert band.reason.startswith(why)
        assert validation_band.describe(band) == f"validation band: not validated, {band.reason}"


def test_describe_by_hand():
    band = Band(True, "Hopper MoE", 9, 0.3944, 0.114, 0.718, (f"{PAGE}#a", f"{PAGE}#b"), None)
    assert validation_band.describe(band) == (
        "validation band (Hopper MoE): over 9 published runs, predicted tokens/s against measured +39.4% on average, "
        "+11.4% to +71.8% (+: the prediction too high); reported, not applied; docs/validation.md#a, #b")
    few = Band(False, "Blackwell MoE", 1, 2.463, None, None, (f"{PAGE}#c",), "1 published run: too few for a range")
    assert validation_band.describe(few) == (
        "validation band (Blackwell MoE): not validated, 1 published run: too few for a range (mean +246.3%, "
        "+: the prediction too high); reported, not applied; docs/validation.md#c")


# -- 3. in the outputs, never applied --------------------------------------------------------------------------------
SMALL = VAL / "n21-1.7b.toml"  # A100, 32 GPUs: a second to run


def test_run_prints_the_band_after_throughput_and_writes_it(tmp_path, capsys):
    assert main(["run", str(SMALL), "--out", str(tmp_path), "--plots", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("throughput ("))
    assert lines[at + 1] == validation_band.describe(as_file("A100 dense"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics)[-2:] == ["throughput", "validation_band"]
    e = DATA["classes"]["A100 dense"]
    assert metrics["validation_band"] == {"validated": True, "run_class": "A100 dense", "runs": e["runs"],
                                          "mean_error": e["mean_error"], "min_error": e["min_error"],
                                          "max_error": e["max_error"], "sources": [f"{PAGE}#whole-training-runs"],
                                          "reason": None}  # fmt: skip


def test_run_says_not_validated_with_efficiency(tmp_path, capsys):
    args = ["--set", "hardware.efficiency=0.5", "--set", "step.optimizer=0"]
    assert main(["run", str(SMALL), "--out", str(tmp_path), "--plots", "none", *args]) == 0
    out = capsys.readouterr().out
    assert "validation band: not validated, hardware.efficiency is set" in out
    band = json.loads((tmp_path / "metrics.json").read_text())["validation_band"]
    assert (band["validated"], band["run_class"], band["runs"]) == (False, None, 0)


def test_pipeline_only_throughput_gets_no_band(tmp_path, capsys):
    # no [step]: the figure is the pipeline's makespan alone, while every published figure is a whole step
    assert main(["run", str(SMALL), "--out", str(tmp_path), "--plots", "none", "--unset", "step"]) == 0
    out = capsys.readouterr().out
    assert "validation band (A100 dense): not validated, no [step]" in out
    band = json.loads((tmp_path / "metrics.json").read_text())["validation_band"]
    assert (band["validated"], band["run_class"], band["runs"], band["mean_error"]) == (False, "A100 dense", 0, None)


def test_no_model_no_band(tmp_path):
    m = simulation.run(scenario.load(ROOT / "scenarios" / "quickstart.toml")).metrics
    assert m.throughput is None and m.validation_band is None
    assert "validation_band" not in m.to_dict()


@pytest.mark.parametrize("path", [SMALL, VAL / "mz7-qwen3-30b-a3b-b200.toml"])
def test_the_band_never_changes_a_predicted_figure(path, monkeypatch):
    """The same run with the band's figures made absurd (or with no band at all): every other key of metrics.json
    identical, and the band the figures say."""
    sc = scenario.load(path)
    plain = simulation.run(sc).metrics.to_dict()
    absurd = {k: {**e, "runs": 40, "mean_error": -0.9, "min_error": -0.99, "max_error": 5.0,
                  "tables": [{"anchor": "x", "runs": 40, "table": "x"}]} for k, e in DATA["classes"].items()}  # fmt: skip
    monkeypatch.setattr(validation_band, "classes", lambda: absurd)
    moved = simulation.run(sc).metrics.to_dict()
    assert moved.pop("validation_band")["mean_error"] == -0.9
    assert plain.pop("validation_band")["mean_error"] == DATA["classes"][lookup(path).run_class]["mean_error"]
    assert moved == plain
    monkeypatch.setattr(validation_band, "lookup", lambda *a: None)
    none = simulation.run(sc).metrics
    assert none.validation_band is None and none.to_dict() == plain


def test_model_text_and_json_report_it(capsys):
    path = VAL / "mz-mixtral-8x22b.toml"
    assert main(["model", str(path)]) == 0
    assert validation_band.describe(as_file("Hopper MoE")) in capsys.readouterr().out.splitlines()
    assert main(["model", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["validation_band"]
    assert got["run_class"] == "Hopper MoE" and got["runs"] == DATA["classes"]["Hopper MoE"]["runs"]
    assert main(["model", str(path), "--json", "--set", "hardware.efficiency=0.4"]) == 0
    got = json.loads(capsys.readouterr().out)["validation_band"]
    assert got["validated"] is False and got["reason"].startswith("hardware.efficiency is set")


TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


@pytest.mark.parametrize("hardware,cls", [("H100", "Hopper dense"), ("GB200", "Blackwell dense")])
def test_plan_md_has_the_band_line(tmp_path, hardware, cls):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY))
    result = ds_plan(config, 4, 8, 2048, hardware=hardware, schedules=["1f1b"], jobs=1)
    line = validation_band.describe(as_file(cls))
    assert f"V{line[1:]}" in files.plan_md(result).splitlines()
    # every layout is on the base's GPU, so one line: an MoE model's class is its MoE class
    moe = replace(result, experts=8)
    assert files.band_line(moe) == "V" + validation_band.describe(validation_band.lookup(
        HardwareSection(preset=hardware), True))[1:]
