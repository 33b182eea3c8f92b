"""docs/make_validation.py and its inputs (docs/validation.md): published.csv agrees with each
scenario's layout and with the published step time it quotes, and the script splits the runs into
an A100 and a Hopper table, each with its own mean and worst.  No simulation runs here."""

from __future__ import annotations

import csv
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "scenarios" / "validation"
SCRIPT = runpy.run_path(str(ROOT / "docs" / "make_validation.py"), run_name="doc_script_under_test")
ROWS = list(csv.DictReader(open(FOLDER / "published.csv")))
STEP = re.compile(r"^([0-9.]+) s per (?:step|iteration)")


def load(row):
    return SCRIPT["scenario"].load(FOLDER / row["scenario"])


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_each_row_has_its_scenario_and_gpu_count(row):
    sc = load(row)
    assert SCRIPT["gpus"](sc) == int(row["gpus"])
    assert row["source"]


HOPPER = [r for r in ROWS if load(r).hardware.preset in ("H100", "H800")]


def test_hopper_rows_exist_and_cover_the_runs_the_doc_names():
    names = {r["name"] for r in HOPPER}
    assert len(HOPPER) >= 10
    assert {"mlperf30-gpt3-768", "mlperf31-gpt3-10752", "mz-qwen3-235b-ep32pp8"} <= names


@pytest.mark.parametrize("row", HOPPER, ids=[r["name"] for r in HOPPER])
def test_hopper_tokens_per_gpu_is_the_global_batch_over_the_published_step(row):
    """tokens/s per GPU = micro-batches x micro-batch x data x sequence / step / GPUs: the CSV's
    figure against the step time it quotes and the scenario's own layout (a typo in either fails)."""
    sc = load(row)
    step = float(STEP.match(row["published"]).group(1))
    model = sc.model
    tokens = sc.pipeline.microbatches * model.micro_batch_size * sc.parallel.data * model.seq_length
    expected = tokens / step / int(row["gpus"])
    assert float(row["published_tokens_per_second_per_gpu"]) == pytest.approx(expected, rel=5e-5)


@pytest.mark.parametrize(
    "name, tp, pp, vp, dp, m, gbs",
    [  # the submissions' config_DGXH100_<nodes>x8x<minibs>x<tp>x<pp>_mbs1.sh and their logs' global batch
        ("mlperf30-gpt3-512", 4, 8, 12, 16, 128, 2048),
        ("mlperf30-gpt3-3584cw", 4, 8, 12, 112, 24, 2688),
        ("mlperf31-gpt3-10752", 4, 8, 12, 336, 8, 2688),
        ("mlperf40-gpt3-512", 4, 8, 4, 16, 72, 2304),  # micro-batch 2
        ("mlperf40-gpt3-11616", 4, 6, 8, 484, 6, 2904),
        # Megatron-MoE-ModelZoo's Qwen3 H100 table: TP, PP, VPP, DP, GA, GBS
        ("mz-qwen3-235b-ep32pp8", 2, 8, 4, 16, 128, 2048),
        ("mz-qwen3-235b-tp4ep8pp8", 4, 8, 4, 8, 256, 2048),
    ],
)
def test_layouts_as_published(name, tp, pp, vp, dp, m, gbs):
    sc = SCRIPT["scenario"].load(FOLDER / f"{name}.toml")
    p = sc.pipeline
    assert (sc.parallel.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, sc.parallel.data) == (tp, pp, vp, dp)
    assert p.microbatches == m and m * sc.model.micro_batch_size * dp == gbs
    assert sc.hardware.preset == "H100" and sc.hardware.efficiency is None


def fake_run(sc):
    """A run whose tokens/s is 1000 per GPU on A100 and 2000 on Hopper (no simulation)."""
    per_gpu = 1000.0 if sc.hardware.preset == "A100" else 2000.0
    step = SimpleNamespace(tokens_per_second=per_gpu * SCRIPT["gpus"](sc), total=1000.0)
    return SimpleNamespace(metrics=SimpleNamespace(step=step, bubble_ratio=0.0))


def test_rows_split_by_gpu_and_cover_the_csv(monkeypatch):
    monkeypatch.setattr(SCRIPT["simulation"], "run", fake_run)
    a100, hopper = SCRIPT["rows"](("A100",)), SCRIPT["rows"](SCRIPT["HOPPER"])
    assert {r["name"] for r in a100} | {r["name"] for r in hopper} == {r["name"] for r in ROWS}
    assert not {r["name"] for r in a100} & {r["name"] for r in hopper}
    assert all(r["predicted"] == 1000.0 for r in a100) and all(r["predicted"] == 2000.0 for r in hopper)
    row = next(r for r in hopper if r["name"] == "mlperf30-gpt3-768")
    assert row["error"] == pytest.approx(2000.0 / 675.57 - 1)


def test_table_mean_and_worst_by_hand():
    data = [{"name": "a", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 110.0, "error": 0.10, "step_s": 1.0, "bubble": 0.0},
            {"name": "b", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 70.0, "error": -0.30, "step_s": 1.0, "bubble": 0.0}]  # fmt: skip
    last = SCRIPT["table"](data).splitlines()[-1]
    assert last == "Mean |error| 20.0%, worst 30.0% over 2 runs; mean signed error -10.0%."


def test_the_doc_has_both_tables_between_their_markers():
    doc = (ROOT / "docs" / "validation.md").read_text()
    for name in SCRIPT["SECTIONS"]:
        begin, end = f"<!-- {name}: docs/make_validation.py -->", f"<!-- end of {name} -->"
        assert doc.count(begin) == 1 and doc.count(end) == 1 and doc.index(begin) < doc.index(end)
    hopper = doc.split("<!-- hopper table: docs/make_validation.py -->")[1].split("<!-- end of hopper table -->")[0]
    assert f"over {len(HOPPER)} runs" in hopper
    a100 = doc.split("<!-- validation table: docs/make_validation.py -->")[1].split("<!-- end of validation table -->")[0]
    assert f"over {len(ROWS) - len(HOPPER)} runs" in a100


def test_readme_quotes_the_validation_tables_own_figures():
    """README's accuracy sentence repeats docs/validation.md's mean and worst of each table (the tables
    are regenerated by the script; a stale README figure fails here)."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    tables = re.findall(r"^Mean \|error\| ([0-9.]+)%, worst ([0-9.]+)% over (\d+) runs", doc, re.M)
    assert len(tables) == 2
    readme = " ".join((ROOT / "README.md").read_text().split())
    (a_mean, a_worst, a_runs), (h_mean, h_worst, h_runs) = tables
    assert f"on {a_runs} A100 runs" in readme and f"{a_mean}% too high on average, {a_worst}% at worst" in readme
    worst = f"{float(h_worst):.0f}%" if float(h_worst) >= 100 else f"{h_worst}%"
    assert f"on {h_runs} H100 runs" in readme and f"{h_mean}% too high on average and {worst} at worst" in readme
