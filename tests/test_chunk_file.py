"""``chunk.file``: a scenario includes the [chunk] table of a calibrated chunk.toml (issue 25).
Truth: the same scenario with the table pasted in by hand gives byte-identical metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim import calibrate, simulation
from dualpipe_sim.inputs import kineto, scenario
from dualpipe_sim.cli import main
from dualpipe_sim.outputs.files import metrics_json

from test_calibrate import pair_trace

HEAD = '[pipeline]\nschedule = "dualpipe"\nstages = 4\nmicrobatches = 8\n[comm]\np2p = 0.1\n'


@pytest.fixture
def chunk_toml(tmp_path) -> Path:
    cal = calibrate.calibrate(kineto.read(pair_trace().write(tmp_path / "t.json")))
    calibrate.write(cal, tmp_path / "cal")
    return tmp_path / "cal" / "chunk.toml"


def test_included_equals_pasted(tmp_path, chunk_toml):
    (tmp_path / "sc").mkdir()
    included = tmp_path / "sc" / "included.toml"
    included.write_text(HEAD + '[chunk]\nfile = "../cal/chunk.toml"\n')  # relative to the scenario's folder
    pasted = tmp_path / "sc" / "pasted.toml"
    pasted.write_text(HEAD + chunk_toml.read_text())
    a = metrics_json(simulation.run(scenario.load(included)).metrics)
    b = metrics_json(simulation.run(scenario.load(pasted)).metrics)
    assert a == b


def test_own_keys_win_over_the_file(tmp_path, chunk_toml):
    path = tmp_path / "s.toml"
    path.write_text(HEAD + f'[chunk]\nfile = "{chunk_toml}"\nlayers = 3\n')
    sc = scenario.load(path)
    assert sc.chunk.layers == 3 and sc.chunk.attn_forward == pytest.approx(2.0)  # the hand-worked pair's Af
    assert scenario.load(path, ["chunk.mlp_forward=9"]).chunk.mlp_forward == 9


def test_set_chunk_file_is_relative_to_the_working_directory(tmp_path, chunk_toml, monkeypatch, capsys):
    path = tmp_path / "s.toml"
    path.write_text(HEAD)
    monkeypatch.chdir(chunk_toml.parent)
    assert main(["run", str(path), "--set", "chunk.file=chunk.toml", "--out", str(tmp_path / "o"), "--plots", "none"]) == 0


@pytest.mark.parametrize("body,fragment", [
    ('file = "nope.toml"', "chunk.file: {dir}/nope.toml: file not found"),
    ('file = "bad.toml"', "chunk.file: {dir}/bad.toml: not valid TOML"),
    ('file = "empty.toml"', "chunk.file: {dir}/empty.toml: has no [chunk] table"),
    ('file = "loop.toml"', "chunk.file: {dir}/loop.toml: includes another file (chunk.file); one level only"),
    ("file = 3", "chunk.file: must be the path of a TOML file with a [chunk] table, got 3"),
    ('file = "chunk.toml"\nattn_forward = -1', "chunk.attn_forward: input should be greater than 0"),
])  # fmt: skip
def test_errors_name_the_file(tmp_path, chunk_toml, capsys, body, fragment):
    (chunk_toml.parent / "bad.toml").write_text("[chunk\n")
    (chunk_toml.parent / "empty.toml").write_text("[costs]\nforward = 1\n")
    (chunk_toml.parent / "loop.toml").write_text('[chunk]\nfile = "loop.toml"\n')
    path = chunk_toml.parent / "s.toml"
    path.write_text(HEAD + "[chunk]\n" + body + "\n")
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + fragment.format(dir=chunk_toml.parent)) and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
