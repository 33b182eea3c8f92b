"""Inputs that used to slip through or trip up (issue 25): more stages than layers, strongly
unequal stages, activation bytes nobody gave, a negative --memory-limit, a preset's case."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
LLAMA = str(ROOT / "scenarios" / "llama3-70b.toml")  # 80 layers
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
ONE_F_ONE_B = ["--set", "pipeline.schedule=1f1b", "--set", "pipeline.chunks_per_rank=0"]


def llama(tmp_path, *sets: str) -> list[str]:
    """llama3-70b.toml as 1F1B (no chunks_per_rank) with ``sets`` as --set."""
    text = Path(LLAMA).read_text().replace("chunks_per_rank = 5", "").replace('"interleaved-1f1b"', '"1f1b"')
    path = tmp_path / "llama.toml"
    path.write_text(text.replace('config = "models/', f'config = "{ROOT}/scenarios/models/'))
    return [str(path), *(x for s in sets for x in ("--set", s))]


def test_more_stages_than_layers_is_refused(tmp_path, capsys):
    assert main(["run", *llama(tmp_path, "pipeline.stages=100"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # Even split of 80 layers over 100 stages: stage 0 the embedding alone, stages 1..80 one layer
    # each, 81..98 nothing, 99 the head: 1 + 18 = 19 empty stages.
    assert err.startswith("error: parallel.layout: 19 stages (0, 81, 82, 83, 84, ...) would hold no layer, head")
    assert "use at most 80 stages" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_an_empty_stage_in_a_layout_is_refused(tmp_path, capsys):
    layout = "parallel.layout=[0, 40, 40]"
    assert main(["run", *llama(tmp_path, "pipeline.stages=3", layout), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "parallel.layout: stage 0 would hold no layer, head or MTP module" in err
    assert "give every stage at least one layer" in err


def test_as_many_stages_as_layers_runs(tmp_path, capsys):
    assert main(["run", *llama(tmp_path, "pipeline.stages=80"), "--out", str(tmp_path / "o"), "--plots", "none"]) == 0


def test_unequal_ranks_warn_once_naming_the_layout(tmp_path, capsys):
    args = llama(tmp_path, "pipeline.stages=80")
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--plots", "none"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "parallel.layout" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: parallel.layout: rank 79 computes ")
    # 1F1B, one stage per rank, W inside B: a rank's busy time is M (F + B) of its stage, so the
    # ratio is that of the derived per-stage figures (the head stage against a one-layer stage).
    d = scenario.load(args[0], ["pipeline.stages=80"]).derived().stages
    ratio = (d[79].forward + d[79].backward) / (d[40].forward + d[40].backward)
    shown = float(lines[0].split(" computes ")[1].split("x ")[0])
    assert shown == pytest.approx(ratio, abs=0.006) and ratio > 1.25


def test_balanced_shipped_scenarios_do_not_warn(tmp_path, capsys):
    name = "llama3-70b.toml"  # per-rank busy within 6% (interleaved)
    assert main(["run", str(ROOT / "scenarios" / name), "--out", str(tmp_path / name), "--plots", "none"]) == 0
    assert "parallel.layout" not in capsys.readouterr().err
    # DeepSeek-V3's ranks 0 and 15 carry the embedding, dense layers, MTP module and heads: 1.46x a middle
    # rank (docs/dualpipe.md), which the warning names; the rebalanced layout string there is within 1.33x.
    assert main(["run", str(ROOT / "scenarios" / "deepseek-v3.toml"), "--out", str(tmp_path / "ds"), "--plots", "none"]) == 0
    assert "parallel.layout" in capsys.readouterr().err


def test_without_memory_activation_bytes_show_n_a(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 4\nmicrobatches = 8\n[costs]\nforward = 1\nbackward = 2\n')
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--plots", "none"]) == 0
    out = capsys.readouterr().out
    rank0 = next(x for x in out.splitlines() if x.strip().startswith("0 "))
    assert rank0.split()[-2:] == ["n/a", "1"] and "peak bytes n/a: no memory.activation" in out
    assert main(["run", str(path), "--set", "memory.activation=2e9", "--out", str(tmp_path / "o2"), "--plots", "none"]) == 0
    out = capsys.readouterr().out
    head = next(x for x in out.splitlines() if x.split()[:1] == ["rank"])
    rank0 = next(x for x in out.splitlines() if x.strip().startswith("0 "))
    # 1F1B rank 0 holds S = 4 activations of 2 GB: 8 GB in the column headed GB
    assert head.split()[-2] == "GB" and rank0.split()[-2] == "8" and "n/a: no memory" not in out


@pytest.mark.parametrize("value,fragment", [
    ("-5GB", "--memory-limit: must be a finite size > 0, got '-5GB'"),
    ("-inf", "--memory-limit: expected a size in bytes such as 80e9, 80GB or 80GiB, got '-inf'"),
    ("-0", "--memory-limit: must be a finite size > 0, got '-0'"),
])  # fmt: skip
def test_negative_memory_limit_is_one_clear_line(tmp_path, capsys, value, fragment):
    assert main(["sweep", QUICK, "--grid", "pipeline.stages=2,4", "--memory-limit", value, "--out",
                 str(tmp_path / "s")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err == f"error: {fragment}\n" and not (tmp_path / "s").exists()


def test_a_dash_value_for_other_flags_reaches_their_checks(tmp_path, capsys):
    assert main(["run", QUICK, "--schedule-file", "-s.json", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: --schedule-file: cannot read -s.json: No such file")


@pytest.mark.parametrize("typed,meant", [("h100", "H100"), ("b200", "B200"), ("H10", "H100")])
def test_preset_did_you_mean(tmp_path, capsys, typed, meant):
    assert main(["run", LLAMA, "--set", f"hardware.preset={typed}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: hardware.preset: unknown GPU preset; did you mean '{meant}'?"), err


def test_compare_and_report_show_n_a_for_bytes_nobody_gave(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[pipeline]\nschedule = "1f1b"\nstages = 4\nmicrobatches = 8\n[costs]\nforward = 1\nbackward = 2\n')
    assert main(["compare", str(path), "--schedules", "1f1b,gpipe", "--out", str(tmp_path / "c"), "--plots", "none"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:4]
    assert all(r.split("|")[7].strip() == "n/a" for r in rows), rows  # the peak activation bytes column
