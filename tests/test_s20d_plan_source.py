"""s20d: plan says what of its source it did not keep, and what a stale journal needs.

3. A source TOML's [parallel] layout degrees (LAYOUT_PARALLEL) are searched over, not kept (docs/plan.md, section 1):
   the terminal's header and plan.md say so, one line naming each key and its value; a key --set pins or --unset
   takes out is not dropped, and a config.json states none.
4. --resume with a journal another base scenario wrote (such as one from before s19n, whose base kept fewer of a
   source's [parallel] keys) says in one line what differs and what to do (delete the journal to start afresh),
   exit 2: the key, since s20d's journal lines keep their base; the ids and the usual causes for an older journal.
"""

from __future__ import annotations

import json

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import JOURNAL, Interrupted, files
from dualpipe_sim.plan.request import dropped_layout
from dualpipe_sim.sweep.results import scenario_id

TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip
PLAN = ["--gpus", "4", "--global-batch", "8", "--seq", "2048", "--schedules", "1f1b", "--jobs", "1"]
LINE = ("From the source: tensor = 2, data = 2, zero = 1 searched over, not kept (plan chooses the layout; an "
        "override of parallel.tensor, context, expert or zero pins one).")  # fmt: skip


def _source(tmp_path, parallel: str) -> str:
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY))
    path = tmp_path / "source.toml"
    path.write_text(f'[model]\nconfig = "{config}"\n\n[hardware]\npreset = "H100"\n\n[parallel]\n{parallel}\n')
    return str(path)


def test_dropped_layout_names_the_source_keys_plan_searches(tmp_path):
    src = _source(tmp_path, 'zero = 1\ntensor = 2\ndata = 2\nsequence_parallel = false\nlayout = [2, 2]')
    # LAYOUT_PARALLEL's order; sequence_parallel is kept (not named)
    assert dropped_layout(src) == {"tensor": 2, "data": 2, "zero": 1, "layout": [2, 2]}
    assert dropped_layout(src, unset=["parallel.layout"], overrides=["parallel.tensor=4"]) == {"data": 2, "zero": 1}
    assert dropped_layout(tmp_path / "model.json") == {}


def test_the_header_names_them_in_the_terminal_and_plan_md(tmp_path, capsys):
    from dualpipe_sim.cli import main

    src = _source(tmp_path, "tensor = 2\ndata = 2\nzero = 1")
    assert main(["plan", src, *PLAN, "--top", "2", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == LINE  # first, before the table
    assert LINE in (tmp_path / "p" / "plan.md").read_text().splitlines()
    got = ds_plan(_source(tmp_path, 'sequence_parallel = true'), 4, 8, 2048, schedules=["1f1b"], jobs=1, top=2)
    assert got.dropped == {} and files.dropped_line(got) is None  # nothing of the layout stated: no line
    assert not any(line.startswith("From the source") for line in files.plan_md(got).splitlines())


def test_with_json_the_line_is_a_note_on_stderr(tmp_path, capsys):
    from dualpipe_sim.cli import main

    src = _source(tmp_path, "tensor = 2\ndata = 2\nzero = 1")
    assert main(["plan", src, *PLAN, "--top", "1", "--json", "--out", str(tmp_path / "p")]) == 0
    got = capsys.readouterr()
    json.loads(got.out)  # stdout stays one JSON document
    assert "note: from the source: tensor = 2, data = 2, zero = 1 searched over, not kept" in got.err


def _interrupted(src: str, out) -> list[dict]:
    """A plan of ``src`` stopped (Ctrl-C) after 2 simulated candidates: its journal's lines."""
    def stop(done, total, what):
        if what == "simulating" and done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        ds_plan(src, 4, 8, 2048, schedules=["1f1b"], jobs=1, out=out, progress=stop)
    return [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]


def _resume(src: str, out, capsys) -> tuple[int, list[str]]:
    from dualpipe_sim.cli import main

    code = main(["plan", src, *PLAN, "--out", str(out), "--resume"])
    return code, capsys.readouterr().err.splitlines()


def test_a_journal_of_another_base_names_the_key_that_differs(tmp_path, capsys):
    out = tmp_path / "p"
    lines = _interrupted(_source(tmp_path, 'rank_order = "tp-cp-ep-pp-dp"'), out)
    assert len(lines) == 2 and lines[0]["base"]["parallel"] == {"rank_order": "tp-cp-ep-pp-dp"}
    before = (out / JOURNAL).read_bytes()
    code, err = _resume(_source(tmp_path, "tp_max_ctas = 8"), out, capsys)  # the same request, another [parallel]
    assert code == 2 and len(err) == 1
    assert err[0] == (f"error: --resume: {out / JOURNAL} holds candidates of another plan: its base scenario's "
                      f"parallel.rank_order is 'tp-cp-ep-pp-dp', this one's absent; delete {out / JOURNAL} to start "
                      f"this plan afresh, or write to another folder")  # fmt: skip
    assert (out / JOURNAL).read_bytes() == before  # left as it was


def test_a_journal_from_before_s19n_says_so_and_what_to_do(tmp_path, capsys):
    """Before s19n a source's rank_order was dropped from the base (and before s20d a line kept no base): the same
    command's journal then had the id of the base without it.  Resumed now: one line, exit 2, delete it."""
    out = tmp_path / "p"
    src = _source(tmp_path, 'rank_order = "tp-cp-ep-pp-dp"')
    lines = _interrupted(src, out)
    old_base = {k: v for k, v in lines[0]["base"].items() if k != "parallel"}
    old = [{"scenario_id": scenario_id(old_base), "search": e["search"], "candidate": e["candidate"],
            "fields": e["fields"]} for e in lines]  # fmt: skip
    (out / JOURNAL).write_text("".join(json.dumps(e) + "\n" for e in old))
    code, err = _resume(src, out, capsys)
    assert code == 2 and len(err) == 1
    ours = lines[0]["scenario_id"]
    assert err[0] == (f"error: --resume: {out / JOURNAL} holds candidates of another plan (scenario_id "
                      f"{scenario_id(old_base)}, this one is {ours}: the model, hardware, sequence, overrides or the "
                      f"[parallel] keys kept from a source differ; a journal from before s20d does not say which); "
                      f"delete {out / JOURNAL} to start this plan afresh, or write to another folder")  # fmt: skip
