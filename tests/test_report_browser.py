"""report.html renders in a real headless browser with every op of the trace drawn.

Chromium loads the file offline, runs plotly.js, and the page writes how many
op bars it drew (SVG paths in the op traces) into <body data-ops-drawn>; that
must equal the number of ops in the trace, counted here from the trace itself
(one per whole op, one per op of a component run, two per overlapped pair).
Skipped, saying why, when no Chromium is installed (.ci/run installs it).
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim import compare, simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main

pytest.importorskip("plotly", reason="report.html needs plotly (pip install 'dualpipe-sim[html]')")

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")


def ops_in(trace) -> int:
    """Ops of a trace, independently of the report: distinct (rank, action, kind)."""
    c = trace.compute
    return len(np.unique(np.stack([c["rank"], c["action"], c["kind"]]), axis=1).T)


def drawn(path: Path) -> int:
    dom = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000", "--dump-dom",
         path.as_uri()],
        capture_output=True, text=True, timeout=240,
    ).stdout  # fmt: skip
    match = re.search(r'<body[^>]*data-ops-drawn="(\d+)"', dom)
    assert match, "the page did not finish drawing (no data-ops-drawn on <body>)"
    return int(match.group(1))


@needs_browser
def test_run_report_draws_every_op(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(QUICK), "--plots", "html", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.html"}
    trace = simulation.run(scenario.load(QUICK, [])).trace
    # Every micro-batch has an F and a B (or I) on each of the 8 stages, plus the W ops split off.
    n_w = int((trace.compute["kind"] == 3).sum())
    assert drawn(out / "report.html") == ops_in(trace) == 2 * 8 * 20 + n_w


@needs_browser
def test_compare_report_with_components_draws_every_op(tmp_path):
    sc = scenario.load(DEEPSEEK, ["pipeline.stages=4", "pipeline.microbatches=8"])
    c = compare.compare(sc, ["1f1b", "dualpipe"])
    from dualpipe_sim.outputs.plots.report import save_report

    save_report(c.results, tmp_path / "report.html")
    assert drawn(tmp_path / "report.html") == sum(ops_in(r.trace) for r in c.results)


def test_report_is_offline_and_self_contained(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(QUICK), "--plots", "html", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inline, no fetch
    assert "Plotly.newPlot" in page and page.count("<script>") == 2  # the library, then the figures
