"""Session 17 QA (s17m): today's new keys used as a new user would, each defect pinned by a test that failed
before its fix.

- ``model.rope_fusion`` took 1, 0 and the text "false" as booleans, where every other true / false key refuses
  them (``must be true or false``): a scenario saying ``rope_fusion = "false"`` ran fused;
- ``plan`` wrote the ETP it was given (``--set parallel.expert_tensor=2``) into its top-K TOMLs but nowhere a
  reader of plan.csv / plan.md / --json could see it: plan.csv gains an ``expert_tensor`` column (added at the
  end, nothing renamed) and plan.md a line saying the ETP every layout used and that plan does not search it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.cli import main
from dualpipe_sim.plan import files

from helpers import cli_error

ROOT = Path(__file__).resolve().parents[1]
LLAMA70 = ROOT / "scenarios" / "llama3-70b.toml"

# A tiny Mixtral: 4 experts of FFN width 512 (ETP 2 divides it), 4 heads, 4 layers.
TINY_MOE = {"model_type": "mixtral", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 512, "num_local_experts": 4, "num_experts_per_tok": 2,
            "vocab_size": 1000}  # fmt: skip
TINY_DENSE = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


# -- 1. model.rope_fusion is a strict boolean like every other true / false key ---------------------------------
@pytest.mark.parametrize("value,shown", [("1", "1"), ("0", "0"), ('"false"', "'false'"), ('"true"', "'true'")])
def test_rope_fusion_refuses_numbers_and_text(tmp_path, value, shown):
    line = cli_error(tmp_path, "run", str(LLAMA70), "--set", f"model.rope_fusion={value}")
    assert line == f"error: model.rope_fusion: must be true or false, got {shown}"


def test_rope_fusion_false_still_runs(capsys):
    # the strict check must not refuse the real boolean: false unfuses RoPE (10 kernels a tensor each way, docs)
    assert main(["model", str(LLAMA70), "--json", "--set", "model.rope_fusion=false"]) == 0
    names = [k["kernel"] for k in json.loads(capsys.readouterr().out)["kernels"]["dense layer"]]
    assert "rope" not in names and "rope (unfused: mul, neg, cat, mul, add, cat) q" in names


# -- 2. plan says which ETP its layouts used ---------------------------------------------------------------------
def _plan(tmp_path, model: dict, overrides: list[str]):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model))
    return ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1, overrides=overrides)


def test_plan_csv_and_md_carry_the_expert_tensor_given(tmp_path):
    result = _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2"])
    rows = list(csv.DictReader(files.plan_csv(result).splitlines()))
    header = files.plan_csv(result).splitlines()[0].split(",")
    # added at the end: every existing column keeps its position
    assert header[:-1] == list(files.COLUMNS[:-1]) and header[-1] == "expert_tensor"
    assert rows and {r["expert_tensor"] for r in rows} == {"2"}
    md = files.plan_md(result)
    assert "Expert tensor parallelism (parallel.expert_tensor): 2 in every layout" in md
    top = [r for r in files.records(result) if r["rank"] is not None]
    assert top and all(r["expert_tensor"] == 2 for r in top)


def test_plan_md_says_etp_1_on_moe_and_nothing_on_dense(tmp_path):
    moe = _plan(tmp_path, TINY_MOE, [])
    assert "Expert tensor parallelism (parallel.expert_tensor): 1 in every layout" in files.plan_md(moe)
    assert {r["expert_tensor"] for r in files.records(moe)} == {1}
    dense = _plan(tmp_path, TINY_DENSE, [])
    assert "Expert tensor parallelism" not in files.plan_md(dense)
