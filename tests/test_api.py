"""The Python API (dualpipe_sim/__init__.py, README "Python API").

Numbers are checked on a hand-worked 1F1B run (p = 2 ranks, m = 3 micro-batches,
F = 1, B = 2, no P2P): 12 compute intervals (an F and a B per micro-batch per
rank), each rank busy m(F + B) = 9, makespan (m + p - 1)(F + B) = 12.
"""

from __future__ import annotations

import json
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

import dualpipe_sim as ds
from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.toml"
SMALL = {
    "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 3},
    "costs": {"forward": 1.0, "backward": 2.0},
}


def test_scenario_from_a_file_or_a_dict_with_the_same_keys():
    from_file = ds.scenario(QUICK, overrides=["pipeline.stages=4", "pipeline.schedule=1f1b"])
    raw = tomllib.loads(QUICK.read_text())
    from_dict = ds.scenario(raw, overrides=["pipeline.stages=4", "pipeline.schedule=1f1b"])
    assert isinstance(from_file, ds.Scenario) and from_file == from_dict
    assert from_file.pipeline.stages == 4
    assert raw["pipeline"]["stages"] == 8  # the caller's dict is left as it was


def test_metrics_equal_the_cli_metrics_json(tmp_path, capsys):
    res = ds.run(ds.scenario(QUICK))
    assert main(["run", str(QUICK), "--out", str(tmp_path / "out"), "--plots", "none"]) == 0
    capsys.readouterr()
    text = (tmp_path / "out" / "metrics.json").read_text()
    assert ds.metrics_json(res) == text
    assert res.metrics.to_dict() == json.loads(text)


def test_hand_worked_1f1b_through_the_api():
    res = ds.run(SMALL)  # a dict is read as a scenario
    assert isinstance(res.metrics, ds.Metrics) and isinstance(res.trace, ds.Trace)
    compute = res.trace.compute
    assert isinstance(compute, np.ndarray) and len(compute) == 12
    busy = [float(np.sum(compute["end"][compute["rank"] == r] - compute["start"][compute["rank"] == r]))
            for r in range(2)]  # fmt: skip
    assert busy == pytest.approx([9.0, 9.0]) == [r.busy for r in res.metrics.per_rank]
    assert res.metrics.makespan == pytest.approx(12.0) == res.metrics.scalars()["makespan"]


def test_another_schedule_by_name_or_as_a_schedule(tmp_path):
    sc = ds.scenario(QUICK, overrides=["pipeline.stages=4", "pipeline.microbatches=8"])
    by_name = ds.run(sc, "1f1b")
    by_key = ds.run(ds.scenario(QUICK, overrides=["pipeline.stages=4", "pipeline.microbatches=8",
                                                  "pipeline.schedule=1f1b"]))
    own = ds.run(sc, ds.build_schedule("1f1b", 4, 8))
    assert by_name.metrics.schedule == "1f1b"
    assert ds.metrics_json(by_name) == ds.metrics_json(by_key)
    # A user's own schedule has no closed form attached; every measured number is the same.
    assert own.metrics.to_dict() | {"analytic": None} == by_name.metrics.to_dict() | {"analytic": None}
    path = tmp_path / "s.txt"
    path.write_text((ROOT / "tests" / "data" / "1f1b-2ranks.txt").read_text())
    replay = ds.run(ds.scenario(QUICK, overrides=["pipeline.stages=2", "comm.p2p=0"]), ds.read_schedule(path))
    assert replay.metrics.makespan == pytest.approx(12.0)  # the file's 1F1B, p = 2, m = 3, F = 1, B = 2


def test_errors_name_the_key():
    with pytest.raises(ds.ScenarioError, match="^pipeline.stages: "):
        ds.scenario(SMALL, overrides=["pipeline.stages=0"])
    with pytest.raises(ds.ScheduleError, match="unknown schedule 'nope'"):
        ds.run(SMALL, "nope")
    assert "1f1b" in ds.schedule_names() and "dualpipe" in ds.schedule_names()


def test_charts_and_exports_take_a_result(tmp_path):
    res = ds.run(SMALL)
    ds.save_gantt(res, tmp_path / "g.png")
    ds.save_memory(res, tmp_path / "m.png")
    ds.save_compare([res, ds.run(SMALL, "gpipe")], tmp_path / "c.png")
    ds.save_chrome_trace(res, tmp_path / "t.json")
    for name in ("g.png", "m.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert sum(1 for e in events if e.get("ph") == "X" and e.get("cat") == "compute") == 12


def test_the_public_names_are_the_exported_ones():
    for name in ds.__all__:
        assert hasattr(ds, name), name
    public = {n for n, v in vars(ds).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(ds.__all__) | {"annotations"}, public - set(ds.__all__)


def test_schedule_names_are_the_descriptions_the_gallery_prints():
    """docs/schedules.md gives each family a section "<description>. Constraints: <constraints>." (docs/make_gallery.py):
    schedule_names() is the part before "Constraints", for every family, and never the constraints."""
    text = (ROOT / "docs" / "schedules.md").read_text(encoding="utf-8")
    names = ds.schedule_names()
    assert {"1f1b", "gpipe", "dualpipe", "zbv"} <= set(names)
    for name, description in names.items():
        section = text.split(f"#### `{name}`\n\n", 1)[1]
        first, _, constraints = section.split("\n", 1)[0].partition(". Constraints: ")
        assert constraints and first == description.rstrip("."), name
    assert names["gpipe"].startswith("GPipe")
