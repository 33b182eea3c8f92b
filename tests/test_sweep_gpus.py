"""Sweep points on different numbers of GPUs: results.csv's ``gpus`` and ``gpu_time`` columns, and
summary.md naming both the fastest point and the one that uses its GPUs best (docs/sweep.md)."""

from __future__ import annotations

import csv

from dualpipe_sim.cli import parse_grid
from dualpipe_sim.sweep import run_sweep
from dualpipe_sim.model import validation_band
from dualpipe_sim.sweep.point import METRIC_COLUMNS
from dualpipe_sim.readers.metrics import scalar_names
from dualpipe_sim.sweep.results import columns
from dualpipe_sim.sweep.summary import summary_markdown

from helpers import tiny_llama_toml
from test_step import BASE_43 as BASE  # 1F1B, S = 4, M = 8, F = 1, B = 2, W = 1, no P2P


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_new_columns_come_after_every_earlier_one():
    cols = columns(parse_grid(["pipeline.stages=2,4"]))
    band = list(validation_band.COLUMNS)  # s18q: the validation band after them, the identity columns still last
    # s21e: step.slowed after the band, s21r: step.drain after it
    assert cols[-6 - len(band):] == ["gpus", "gpu_time", *band, "step.slowed", "step.drain", "point", "scenario_id"]
    assert METRIC_COLUMNS[: len(scalar_names())] == scalar_names()  # the earlier columns, in their order


def test_gpus_and_gpu_time_by_hand(tmp_path):
    # No [model]/[parallel]: one GPU per pipeline rank.  1F1B, M = 8, F + B = 3: makespan (M + S - 1)(F + B)
    # = 27 on 2 ranks, 33 on 4; DualPipeV folds 4 stages onto 2 ranks.
    path = tmp_path / "s.toml"
    path.write_text(BASE)
    run_sweep(path, parse_grid(["pipeline.schedule=1f1b,dualpipev", "pipeline.stages=2,4"]), tmp_path / "out",
              jobs=1, charts=False)
    rows = {(r["pipeline.schedule"], r["pipeline.stages"]): r for r in read(tmp_path / "out" / "results.csv")}
    assert (rows["1f1b", "2"]["gpus"], float(rows["1f1b", "2"]["gpu_time"])) == ("2", 27.0 * 2)
    assert (rows["1f1b", "4"]["gpus"], float(rows["1f1b", "4"]["gpu_time"])) == ("4", 33.0 * 4)
    assert rows["dualpipev", "4"]["gpus"] == "2" and rows["dualpipev", "2"]["gpus"] == "1"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Across points on different numbers of GPUs" in summary
    assert "run on 1 to 4 GPUs" in summary


def test_gpus_count_tensor_and_data_with_a_model(tmp_path):
    path = tiny_llama_toml(tmp_path, '[parallel]\ntensor = 2\ndata = 3\n[hardware]\npreset = "H100"\n')
    run_sweep(path, parse_grid(["pipeline.stages=2"]), tmp_path / "out", jobs=1, charts=False)
    (row,) = read(tmp_path / "out" / "results.csv")
    assert row["gpus"] == str(2 * 2 * 3)  # 2 pipeline ranks x tensor 2 x data 3
    assert float(row["throughput.tokens_per_second"]) / 12 == float(row["throughput.tokens_per_second_per_gpu"])
    assert float(row["gpu_time"]) == float(row["step.total"] or row["makespan"]) * 12


def _row(stages, gpus, step, tokens=None):
    return {"pipeline.schedule": "1f1b", "pipeline.stages": str(stages), "pipeline.microbatches": "8",
            "status": "ok", "reason": "", "makespan": str(step), "bubble_ratio": "0.1",
            "peak_memory_bytes": "1e9", "gpus": str(gpus), "gpu_time": str(step * gpus),
            "throughput.tokens_per_second": "" if tokens is None else str(tokens)}


COLS = ["pipeline.schedule", "pipeline.stages", "pipeline.microbatches", "status", "reason"]


def test_faster_on_twice_the_gpus_without_tokens():
    # A: 10 ms on 2 GPUs = 20 GPU-ms per step; B: 6 ms on 4 GPUs = 24 GPU-ms.  B is faster, A costs less.
    text = summary_markdown([_row(2, 2, 10.0), _row(4, 4, 6.0)], COLS, None)
    assert ("- fastest (smallest makespan, whatever the GPUs): `pipeline.schedule=1f1b, pipeline.stages=4, "
            "pipeline.microbatches=8`: makespan 6 ms on 4 GPUs, 24 GPU-ms per step") in text
    assert ("- most efficient (least step time x GPUs: the GPU-milliseconds one step costs; no [model], so no "
            "tokens): `pipeline.schedule=1f1b, pipeline.stages=2, pipeline.microbatches=8`: makespan 10 ms on "
            "2 GPUs, 20 GPU-ms per step") in text


def test_faster_on_twice_the_gpus_with_tokens():
    # Same steps, 1,000 tokens each: A 100,000 tokens/s / 2 GPUs = 50,000 per GPU; B 166,667 / 4 = 41,667.
    rows = [_row(2, 2, 10.0, 1000 / 0.010), _row(4, 4, 6.0, 1000 / 0.006)]
    text = summary_markdown(rows, COLS, None)
    assert "most efficient (most tokens/s per GPU: the step's tokens/s over every GPU the point runs on)" in text
    assert "`pipeline.schedule=1f1b, pipeline.stages=2, pipeline.microbatches=8`: makespan 10 ms on 2 GPUs, " \
           "50,000 tokens/s per GPU" in text
    # B at 4.8 ms: 208,333 / 4 = 52,083 per GPU beats A's 50,000, so B is both.
    text = summary_markdown([_row(2, 2, 10.0, 1000 / 0.010), _row(4, 4, 4.8, 1000 / 0.0048)], COLS, None)
    assert "- most efficient (most tokens/s per GPU: the step's tokens/s over every GPU the point runs on): " \
           "the same point" in text


def test_one_gpu_count_leaves_the_summary_as_it_was():
    rows = [_row(2, 2, 10.0), {**_row(2, 2, 12.0), "pipeline.schedule": "gpipe"}]
    text = summary_markdown(rows, COLS, None)
    assert "Across points" not in text and "GPUs |" not in text


def test_a_shape_whose_schedules_use_different_gpus_names_both():
    # One shape (4 stages, 8 micro-batches): dualpipe on 4 GPUs at 6 ms (24 GPU-ms), dualpipev on 2 at 10 (20).
    rows = [{**_row(4, 4, 6.0), "pipeline.schedule": "dualpipe"}, {**_row(4, 2, 10.0), "pipeline.schedule": "dualpipev"}]
    line = next(ln for ln in summary_markdown(rows, COLS, None).splitlines() if ln.startswith("| 4 "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "dualpipe" and cells[-2:] == ["4", "dualpipev (2 GPUs, 20 GPU-ms per step)"]
