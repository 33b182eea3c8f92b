"""Session 17 QA (s17m): today's new keys used as a new user would, each defect pinned by a test that failed
before its fix.

- ``model.rope_fusion`` took 1, 0 and the text "false" as booleans, where every other true / false key refuses
  them (``must be true or false``): a scenario saying ``rope_fusion = "false"`` ran fused;
- ``plan`` wrote the ETP it was given (``--set parallel.expert_tensor=2``) into its top-K TOMLs but nowhere a
  reader of plan.csv / plan.md / --json could see it: plan.csv gains an ``expert_tensor`` column (added at the
  end, nothing renamed) and plan.md a line saying the ETP every layout used and that plan does not search it;
- plan counted every row breaking an ETP rule as the bare reason "model: parallel.expert_tensor"; the grid rule
  (expert x ETP divides tensor x data x context) and ZeRO 3's (ETP 1 only) now prune by name, before derivation.
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
def _plan(tmp_path, model: dict, overrides: list[str], seq: int = 2048):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model))
    return ds_plan(config, 4, 8, seq, hardware="H100", schedules=["1f1b"], jobs=1, overrides=overrides)


def test_plan_csv_and_md_carry_the_expert_tensor_given(tmp_path):
    result = _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2"])
    rows = list(csv.DictReader(files.plan_csv(result).splitlines()))
    header = files.plan_csv(result).splitlines()[0].split(",")
    # added at the end: every existing column keeps its position
    # (s18q appended the validation band's columns after it)
    assert header == list(files.COLUMNS) and header[header.index("expert_tensor") - 1] == "pruned"
    assert rows and {r["expert_tensor"] for r in rows} == {"2"}
    md = files.plan_md(result)
    assert "Expert tensor parallelism (parallel.expert_tensor): 2 in every layout" in md
    top = [r for r in files.records(result) if r["rank"] is not None]
    assert top and all(r["expert_tensor"] == 2 for r in top)


def test_plan_prunes_etp_rules_by_name(tmp_path):
    # ETP 2 on 4 GPUs: expert 2 x ETP 2 = 4 must divide tensor x data x context, and ZeRO 3 takes ETP 1 only
    # (model/derive.py's rules); before, every such row was counted as the bare "model: parallel.expert_tensor"
    result = _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2"])
    assert not any(k.startswith("model:") for k in result.pruned)
    rows = files.records(result)
    bad_grid = [r for r in rows if r["pruned"] == "parallel.expert: parallel.expert x parallel.expert_tensor must divide parallel.tensor x parallel.data x parallel.context"]
    assert bad_grid and all((r["tensor"] * r["data"] * r["context"]) % (r["expert"] * 2) for r in bad_grid)
    fsdp = [r for r in rows if r["pruned"].startswith("parallel.zero: 3 (FSDP) with parallel.expert_tensor > 1")]
    assert fsdp and all(r["zero"] == 3 and r["expert"] == 1 for r in fsdp)
    # and no row that ran breaks either rule
    ran = [r for r in rows if r["simulated"] == "yes"]
    assert ran and all((r["tensor"] * r["data"] * r["context"]) % (r["expert"] * 2) == 0 and r["zero"] != 3
                       for r in ran)


def test_plan_etp_grid_counts_the_context_ranks(tmp_path):
    # at 4096 tokens context 2 is tried: tensor 1 x data 2 x context 2 = 4 = expert 2 x ETP 2, a grid Megatron-core
    # fills (the expert grid spans tensor x data x context), so that layout is simulated, not pruned
    result = _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2", "parallel.expert=2"], seq=4096)
    rows = [r for r in files.records(result)
            if (r["tensor"], r["context"], r["data"], r["expert"]) == (1, 2, 2, 2) and r["simulated"] == "yes"]
    assert rows and all(r["expert_tensor"] == 2 for r in rows)


def test_plan_md_says_etp_1_on_moe_and_nothing_on_dense(tmp_path):
    moe = _plan(tmp_path, TINY_MOE, [])
    # unpinned, an MoE plan keeps ETP 1 unless --search-expert-tensor (s18i2; tests/test_plan_etp.py)
    assert "Expert tensor parallelism (parallel.expert_tensor): 1 in every layout" in files.plan_md(moe)
    assert {r["expert_tensor"] for r in files.records(moe)} == {1}
    dense = _plan(tmp_path, TINY_DENSE, [])
    assert "Expert tensor parallelism" not in files.plan_md(dense)
