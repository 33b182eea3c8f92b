"""Throughput as a first-class result (issue 25): metrics.json ``throughput``, run's summary
line, compare's columns, sweep's results.csv/summary.md and report.html, with or without [step].

Truth: tokens per step = M x micro_batch_size x seq_length x data, worked by hand from the
scenario; GPUs = ranks x tensor x data; MFU = tokens/s x training FLOPs per token / (GPUs x peak),
the peak being the H100's dense BF16 989.4 TFLOP/s (datasheet); a 6N-FLOPs estimate bounds it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation, units
from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
LLAMA = ROOT / "scenarios" / "llama3-70b.toml"  # 4 ranks, M 16, seq 8192, mbs 1, TP 8, DP 64, H100
TOKENS = 16 * 1 * 8192 * 64
GPUS = 4 * 8 * 64


def test_without_step_the_step_is_the_makespan():
    m = simulation.run(scenario.load(LLAMA, [])).metrics
    t = m.throughput
    assert m.step is None and t.step_source == "pipeline"
    assert t.step_time == m.makespan
    assert t.tokens_per_step == TOKENS and t.gpus == GPUS
    assert t.tokens_per_second == pytest.approx(TOKENS / (m.makespan / 1e3))
    assert t.tokens_per_second_per_gpu == pytest.approx(TOKENS / (m.makespan / 1e3) / GPUS)
    # 6 N FLOPs per token (N = 70.6e9 parameters, Llama 3 70B) leaves out attention's
    # s-squared term, so it bounds the model's FLOPs from below, by at most ~25% at s = 8192.
    six_n = t.tokens_per_second_per_gpu * 6 * 70.6e9 / 989.4e12
    assert six_n < t.mfu < 1.25 * six_n


def test_with_step_it_is_the_step_total_and_equals_the_step_block():
    m = simulation.run(scenario.load(LLAMA, ["step.grad_sync=derived", "step.optimizer=50"])).metrics
    t = m.throughput
    assert t.step_source == "step" and t.step_time == m.step.total > m.makespan
    assert t.tokens_per_second == pytest.approx(m.step.tokens_per_second)
    assert t.mfu == pytest.approx(m.step.mfu)


def test_no_model_no_block():
    sc = scenario.load(ROOT / "scenarios" / "quickstart.toml", [])
    m = simulation.run(sc).metrics
    assert m.throughput is None and "throughput" not in m.to_dict()
    assert m.scalars()["throughput.tokens_per_second"] is None


def test_no_hardware_peak_no_mfu():
    raw = scenario.load_raw(LLAMA)
    raw.pop("hardware")
    raw["pipeline"]["microbatches"] = 8
    raw["costs"] = {"forward": 10.0, "backward": 20.0}  # typed costs: no [hardware] to derive them from
    t = simulation.run(scenario.from_dict(raw)).metrics.throughput  # load_raw resolved model.config
    assert t.mfu is None and t.tokens_per_step == 8 * 8192 * 64


def test_run_prints_throughput_and_says_what_the_step_is(tmp_path, capsys):
    assert main(["run", str(LLAMA), "--out", str(tmp_path / "o"), "--plots", "none"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("throughput"))
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())["throughput"]
    assert "pipeline makespan only" in line and "no [step] work" in line
    per_gpu = doc["tokens_per_second"] / doc["gpus"]  # the JSON's own figures, divided here
    assert f"{units.number(per_gpu)} tokens/s per GPU" in line and doc["tokens_per_second_per_gpu"] == pytest.approx(per_gpu)
    assert f"MFU {doc['mfu']:.1%}" in line and "2,048 GPUs" in line


def test_compare_table_has_tokens_per_gpu_and_mfu(tmp_path, capsys):
    assert main(["compare", str(LLAMA), "--schedules", "1f1b,interleaved-1f1b", "--out", str(tmp_path / "c"),
                 "--plots", "none"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "tokens/s per GPU" in out.splitlines()[0] and "MFU" in out.splitlines()[0]
    assert "pipeline makespan alone" in out
    # 1F1B uses 20 ranks for 20 stages, interleaved 4: per GPU, interleaved wins despite its longer makespan.
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()[2:4]}
    m1 = simulation.run(scenario.load(LLAMA, ["pipeline.schedule=1f1b", "pipeline.chunks_per_rank=1"])).metrics
    assert m1.throughput.gpus == 20 * 8 * 64
    assert f"{m1.throughput.mfu:.1%}" in rows["1f1b"]
    assert "upper bound" in (tmp_path / "c" / "compare.md").read_text()


def test_sweep_csv_and_summary_have_throughput(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", str(LLAMA), "--grid", "pipeline.microbatches=8,16", "--out", str(out), "--jobs", "1",
                 "--plots", "none"]) == 0  # fmt: skip
    rows = list(csv.DictReader((out / "results.csv").open()))
    for row in rows:
        m = int(row["pipeline.microbatches"])
        tps = m * 8192 * 64 / (float(row["makespan"]) / 1e3)
        assert float(row["throughput.tokens_per_second"]) == pytest.approx(tps)
        assert float(row["throughput.tokens_per_second_per_gpu"]) == pytest.approx(tps / GPUS)
    summary = (out / "summary.md").read_text()
    assert "| tokens/s per GPU | MFU |" in summary and "pipeline makespan alone" in summary


def test_report_table_shows_throughput_and_percentages(tmp_path):
    pytest.importorskip("plotly")
    assert main(["run", str(LLAMA), "--out", str(tmp_path / "o"), "--plots", "html"]) == 0
    page = (tmp_path / "o" / "report.html").read_text()
    m = simulation.run(scenario.load(LLAMA, [])).metrics
    assert "<th class=name>throughput.mfu</th><td>" + f"{m.throughput.mfu:.1%}" in page
    assert "<th class=name>bubble_ratio</th><td>" + f"{m.bubble_ratio:.1%}" in page
    assert "pipeline makespan alone" in page


def test_run_help_names_the_throughput(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "tokens/s per GPU and MFU" in " ".join(capsys.readouterr().out.split())
