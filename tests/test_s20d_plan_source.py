"""s20d: plan says what of its source it did not keep, and what a stale journal needs.

3. A source TOML's [parallel] layout degrees (LAYOUT_PARALLEL) are searched over, not kept (docs/plan.md, section 1):
   the terminal's header and plan.md say so, one line naming each key and its value; a key --set pins or --unset
   takes out is not dropped, and a config.json states none.
"""

from __future__ import annotations

import json

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import files
from dualpipe_sim.plan.request import dropped_layout

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
