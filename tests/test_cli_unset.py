"""--unset KEY: a key the scenario file sets, taken out before any --set (run, sweep, compare, plan, model).

Hand-worked: an interleaved-1F1B file (8 stages, 2 chunks a rank) run as 1F1B needs pipeline.chunks_per_rank
gone; 1F1B with uniform stages and free P2P takes (M + S - 1)(F + B) = (8 + 8 - 1) x (1 + 2) = 45 ms.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dualpipe_sim import scenario
from dualpipe_sim.cli import _parser, main
from dualpipe_sim.inputs.scenario import ScenarioError, unset_keys

ROOT = Path(__file__).resolve().parent.parent
S, M, F, B = 8, 8, 1.0, 2.0
BODY = f"stages = {S}\nmicrobatches = {M}\n[costs]\nforward = {F}\nbackward = {B}\n"


def interleaved(tmp_path) -> str:
    path = tmp_path / "interleaved.toml"
    path.write_text(f'[pipeline]\nschedule = "interleaved-1f1b"\nchunks_per_rank = 2\n{BODY}')
    return str(path)


def one_f_one_b(tmp_path) -> str:
    """The same scenario as written for 1F1B: no chunks_per_rank at all."""
    path = tmp_path / "1f1b.toml"
    path.write_text(f'[pipeline]\nschedule = "1f1b"\n{BODY}')
    return str(path)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def test_unset_then_set_runs_the_file_written_without_the_key(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", interleaved(tmp_path), "--unset", "pipeline.chunks_per_rank", "--set", "pipeline.schedule=1f1b",
                 "--plots", "none", "--out", str(a)]) == 0  # fmt: skip
    assert main(["run", one_f_one_b(tmp_path), "--plots", "none", "--out", str(b)]) == 0
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    metrics = json.loads((a / "metrics.json").read_text())
    assert (metrics["schedule"], metrics["makespan"]) == ("1f1b", (M + S - 1) * (F + B)) == ("1f1b", 45.0)
    # Without --unset the file's key stops the run, as before.
    capsys.readouterr()
    assert main(["run", interleaved(tmp_path), "--set", "pipeline.schedule=1f1b", "--plots", "none",
                 "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert one_line(capsys).endswith("leave it out")
    assert not (tmp_path / "c").exists()


def test_unset_comes_before_set_whatever_the_order_on_the_line(tmp_path):
    """--set of the key it unsets puts it back: the --unset goes first, so the run is the file's own."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", interleaved(tmp_path), "--plots", "none", "--out", str(a)]) == 0
    assert main(["run", interleaved(tmp_path), "--set", "pipeline.chunks_per_rank=2", "--unset", "pipeline.chunks_per_rank",
                 "--plots", "none", "--out", str(b)]) == 0  # fmt: skip
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert json.loads((a / "metrics.json").read_text())["schedule"] == "interleaved-1f1b"


@pytest.mark.parametrize("key", ["pipeline.microbatch_group", "ranks", "step.grad_sync", "chunk.file"])
def test_a_key_the_file_does_not_set_is_already_unset(tmp_path, key):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", one_f_one_b(tmp_path), "--plots", "none", "--out", str(a)]) == 0
    assert main(["run", one_f_one_b(tmp_path), "--unset", key, "--plots", "none", "--out", str(b)]) == 0
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()


def test_unset_keys_copies_and_removes_a_key_or_a_section():
    raw = {"pipeline": {"schedule": "interleaved-1f1b", "chunks_per_rank": 2}, "ranks": {"slowdown": {"1": 2.0}}}
    assert unset_keys(raw, ["pipeline.chunks_per_rank", "ranks"]) == {"pipeline": {"schedule": "interleaved-1f1b"}}
    assert raw["pipeline"]["chunks_per_rank"] == 2 and "ranks" in raw  # the caller's dict is left as it was
    assert unset_keys({"pipeline": 3}, ["pipeline.stages"]) == {"pipeline": 3}  # not a table: nothing under it to unset
    assert unset_keys(raw, "ranks") == {"pipeline": raw["pipeline"]}  # one key given bare
    with pytest.raises(ScenarioError, match=r"^unset 3: expected a dotted key alone"):
        unset_keys(raw, [3])
    # The public API takes it too, before its overrides.
    sc = scenario({"pipeline": {"schedule": "interleaved-1f1b", "chunks_per_rank": 2, "stages": S, "microbatches": M},
                   "costs": {"forward": F, "backward": B}}, ["pipeline.schedule=1f1b"], unset=["pipeline.chunks_per_rank"])
    assert (sc.pipeline.schedule, sc.pipeline.chunks_per_rank) == ("1f1b", None)


@pytest.mark.parametrize("key, message", [
    ("pipeline.chunk_per_rank", "error: pipeline.chunk_per_rank: unknown key; did you mean pipeline.chunks_per_rank?"),
    ("pipelin", "error: pipelin: unknown key; did you mean pipeline?"),
    ("pipeline.stages.x", "error: pipeline.stages.x: unknown key"),
    ("pipeline.stages=4", "error: unset 'pipeline.stages=4': expected a dotted key alone, e.g. pipeline.chunks_per_rank"),
    ("pipeline..stages", "error: unset 'pipeline..stages': expected a dotted key alone, e.g. pipeline.chunks_per_rank"),
])  # fmt: skip
def test_bad_key_one_line_exit_2_nothing_written_in_every_verb(tmp_path, capsys, key, message):
    path = interleaved(tmp_path)
    model = str(ROOT / "scenarios" / "llama3-70b.toml")
    verbs = {
        "run": ["run", path],
        "compare": ["compare", path, "--schedules", "1f1b,interleaved-1f1b"],
        "sweep": ["sweep", path, "--grid", "pipeline.microbatches=8,16"],
        "plan": ["plan", model, "--gpus", "8", "--global-batch", "8", "--seq", "4096"],
    }
    for verb, args in verbs.items():
        out = tmp_path / f"out-{verb}"
        assert main([*args, "--unset", key, "--out", str(out)]) == 2, verb
        assert one_line(capsys) == message, verb
        assert not out.exists(), verb
    assert main(["model", model, "--unset", key]) == 2
    assert one_line(capsys) == message


def test_sweep_compare_and_plan_take_it(tmp_path, capsys):
    """Sweep: the 1F1B makespans (M + 7) x 3 at M = 8, 16; compare.md names the --unset it ran with."""
    path = interleaved(tmp_path)
    assert main(["sweep", path, "--unset", "pipeline.chunks_per_rank", "--set", "pipeline.schedule=1f1b",
                 "--grid", "pipeline.microbatches=8,16", "--jobs", "1", "--plots", "none",
                 "--out", str(tmp_path / "sw")]) == 0  # fmt: skip
    with open(tmp_path / "sw" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], float(r["makespan"])) for r in rows] == [("ok", 45.0), ("ok", 69.0)]
    assert main(["compare", path, "--unset", "pipeline.chunks_per_rank", "--schedules", "1f1b,dualpipe",
                 "--plots", "none", "--out", str(tmp_path / "cmp")]) == 0  # fmt: skip
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"Scenario `{path}` `--unset pipeline.chunks_per_rank`: {S} model stages" in text
    capsys.readouterr()
    # plan: a key its source sets (memory.recompute) unset; a key it does not set passes.
    model = str(ROOT / "scenarios" / "llama3-70b.toml")
    from dualpipe_sim.plan.request import base_scenario, source_pins

    base = base_scenario(model, None, 4096, [], ["memory.recompute", "pipeline.microbatch_group"])
    assert "recompute" not in base.get("memory", {}) and source_pins(base) == []  # enumerated, not pinned
    kept = base_scenario(model, None, 4096, [])  # the file's, kept and pinned without --unset
    assert kept["memory"]["recompute"] == "none" and source_pins(kept) == ['memory.recompute="none"']


def test_help_says_so():
    for verb in ("run", "sweep", "compare", "plan", "model"):
        sub = _parser()._subparsers._group_actions[0].choices[verb]
        text = " ".join(sub.format_help().split())
        assert "--unset KEY" in text and "before any --set" in text and "already unset: no error" in text, verb


def test_unset_error_carries_its_parts():
    with pytest.raises(ScenarioError) as caught:
        unset_keys({}, ["memory.recompute_module"])
    error = caught.value
    assert (error.field, error.rule, error.by) == (
        "memory.recompute_module", "unknown key; did you mean memory.recompute_modules?", None)
