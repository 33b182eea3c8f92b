"""plan/journal.py's reading of plan.partial.jsonl for --resume, in the cases the s16g coverage run found no
test reaching: a path that is not a file, a file that is not UTF-8, and lines whose candidate is not a list
of --set texts (skipped like a line cut short, never taken as figures)."""

from __future__ import annotations

import json

import pytest

from dualpipe_sim.plan.journal import read
from dualpipe_sim.plan.request import PlanError
from dualpipe_sim.sweep.results import point_key, scenario_id

BASE = {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4}, "costs": {"forward": 1.0, "backward": 2.0}}
OURS = scenario_id(BASE)


def line(candidate, fields=None, sid=OURS, search=None) -> str:
    # a line as journal.py writes it since s19d: with the options of its search ({} here: none asked for)
    return json.dumps({"scenario_id": sid, "search": search or {}, "candidate": candidate,
                       "fields": fields or {"makespan": 1.5}})  # fmt: skip


def test_a_folder_in_the_journals_place_is_refused(tmp_path):
    with pytest.raises(PlanError, match=f"^resume: cannot resume {tmp_path}: not a regular file; write to another folder$"):
        read(tmp_path, BASE, OURS)


def test_a_journal_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "plan.partial.jsonl"
    path.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(PlanError, match=f"^resume: cannot read {path}: 'utf-8' codec can't decode byte 0xff"):
        read(path, BASE, OURS)


def test_only_whole_lines_whose_candidate_is_a_list_of_set_texts_are_kept(tmp_path):
    good = ["pipeline.microbatches=8"]
    path = tmp_path / "plan.partial.jsonl"
    path.write_text("\n".join([
        line(good, {"makespan": 2.5}),
        line("pipeline.microbatches=6"),  # a text, not a list: skipped
        line([6]),  # a list of a number: skipped
        line(["pipeline.microbatches=12"], fields=[1]),  # figures that are not an object: skipped
        line(["pipeline.microbatches=16"])[:30],  # cut short by a kill: skipped
    ]) + "\n")  # fmt: skip
    assert read(path, BASE, OURS) == {point_key(BASE, good): (good, {"makespan": 2.5})}


def test_another_plans_line_is_refused_naming_both_ids(tmp_path):
    path = tmp_path / "plan.partial.jsonl"
    path.write_text(line(["pipeline.microbatches=8"], sid="0123") + "\n")
    with pytest.raises(PlanError, match=f"^resume: {path} holds candidates of another plan \\(scenario_id 0123, this one is {OURS}:"):
        read(path, BASE, OURS)


def test_a_line_of_another_search_is_refused_naming_the_option(tmp_path):
    # s19d: the options that define the search are kept with each line; the first that differs is named
    path = tmp_path / "plan.partial.jsonl"
    path.write_text(line(["pipeline.microbatches=8"], search={"gpus": 8, "budget": 200}) + "\n")
    ours = {"gpus": 8, "budget": 50}
    with pytest.raises(PlanError, match=f"^budget: differs from the interrupted plan's in {path} \\(it had 200, this one "
                                        f"50\\); resume with the same options, or write to another folder$"):
        read(path, BASE, OURS, ours)
    assert read(path, BASE, OURS, {"gpus": 8, "budget": 200}) == {
        point_key(BASE, ["pipeline.microbatches=8"]): (["pipeline.microbatches=8"], {"makespan": 1.5})}
