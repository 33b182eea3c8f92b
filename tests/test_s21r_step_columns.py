"""The step's later parts everywhere a step's parts are shown (s21r): results.csv's ``step.drain`` (after s21e's
``step.slowed``), and ``step.slowed`` in compare's table and report.html's metrics table.

The drain's figure is checked against what [step] was given (StepCosts.drain on the output layer's stage, the
deferred wgrad GEMMs and their gathers, model/deferred_wgrad.py): with dp_comm_sms = 0 nothing stretches it, so
metrics.json's step.drain is that figure; the slowdown against the per-rank identity
end = pipeline_end + slowed + grad_sync_exposed + optimizer (no drain, no cross-copy sums; docs/step.md, "Metrics").
"""

from __future__ import annotations

import csv
import re
import tomllib

import pytest

from dualpipe_sim import compare, simulation, units
from dualpipe_sim.cli import parse_grid
from dualpipe_sim.inputs import scenario
from dualpipe_sim.outputs.plots.report import report_html
from dualpipe_sim.sweep import run_sweep
from test_step_slowed import MODEL


def text(sms=0, defer=0):
    return (f'[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 8\n{MODEL}defer_embedding_wgrad = {defer}\n'
            '[parallel]\ndata = 8\n[hardware]\npreset = "H100"\n[step]\ngrad_sync = "derived"\noptimizer = "derived"\n'
            f"overlap_grad_sync = true\ndp_comm_sms = {sms}\n")  # fmt: skip


def test_sweep_results_carry_step_drain(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(text())
    run_sweep(path, parse_grid(["model.defer_embedding_wgrad=0,2"]), tmp_path / "out", jobs=1, charts=False)
    with (tmp_path / "out" / "results.csv").open(newline="") as f:
        rows = {r["model.defer_embedding_wgrad"]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == rows["2"]["status"] == "ok"
    assert rows["0"]["step.drain"] == "" and rows["0"]["step.total"] != ""  # no drain without deferral
    given = scenario.from_dict(tomllib.loads(text(defer=2))).step_costs().drain
    assert given[0] == 0.0 and given[1] > 0.0  # the output layer's stage only
    assert float(rows["2"]["step.drain"]) == pytest.approx(given[1])


def with_slowdown(sms):
    comparison = compare.compare(scenario.from_dict(tomllib.loads(text(sms=sms))), ["1f1b", "zb-h1"])
    return comparison, compare.table(comparison)


def test_compare_table_shows_compute_slowed():
    comparison, table = with_slowdown(16)
    head, _, *body = table.splitlines()
    names = [c.strip() for c in head.strip("|").split("|")]
    assert names[names.index("step (ms)") + 1] == "compute slowed (ms)"  # beside the step it is part of
    for result, line in zip(comparison.results, body):
        st = result.metrics.step
        by_identity = max(p.end - p.pipeline_end - p.grad_sync_exposed - p.optimizer for p in st.per_rank)
        assert st.slowed == pytest.approx(by_identity) and st.slowed > 0.0
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[names.index("compute slowed (ms)")] == units.number(st.slowed)
    assert "compute slowed" not in with_slowdown(0)[1]  # nothing slowed: no column


def test_report_table_shows_slowed_and_drain():
    def rows(sms, defer):
        page = report_html([simulation.run(scenario.from_dict(tomllib.loads(text(sms, defer))))])
        return dict(re.findall(r"<tr><th class=name>([^<]+)</th><td>([^<]*)</td></tr>", page))

    shown = rows(16, 2)
    names = list(shown)
    assert names[names.index("step.optimizer") + 1: names.index("step.optimizer") + 3] == ["step.slowed", "step.drain"]
    res = simulation.run(scenario.from_dict(tomllib.loads(text(16, 2)))).metrics.step
    assert shown["step.slowed"] == units.number(res.slowed) and shown["step.drain"] == units.number(res.drain)
    plain = rows(0, 0)
    assert "step.total" in plain and "step.slowed" not in plain and "step.drain" not in plain
