"""s17n: output gaps left by the NVFP4 (s17j) and ETP (s17m) work, each pinned by a test that failed before its fix.

1. `run`'s memory table headed the NVFP4 copies `fp8 w`, and the step's refresh row said "FP8": the labels now say
   `fp4 w` / "NVFP4 weight refresh" on a model.fp4 run (metrics.json's keys unchanged);
2. plan.md did not say the precision its layouts run: a line now does (the base scenario's);
3. `model --json` had no key for the layout or precision it costed: `parallel` and `precision`;
4. `fc1 grad bias sum (unfused)` on a model without biases: Transformer Engine release_v2.2 and v2.8 run that sum
   with or without a bias (docs/model.md, "NVFP4 in the outputs"), so the row stays and its shape text says why.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.plan import files

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
L8B_FP4 = VAL / "mlperf51-llama8b-8gb300-nvfp4.toml"  # Llama 3.1 8B, 8 GB300, TP 1, micro-batch 2 x 8192, NVFP4
L405B_FP4 = VAL / "mlperf51-llama405b-2560gb200-nvfp4.toml"  # TP 4, 64 stages at 8 a rank, CP 2, DP 40
AS_FP8 = ["--unset", "model.fp4", "--set", "model.fp8=true"]  # the same run in FP8 (delayed scaling, the default)


def _run_text(tmp_path, capsys, *extra) -> tuple[str, dict]:
    assert main(["run", str(L8B_FP4), "--out", str(tmp_path), "--plots", "none", *extra]) == 0
    return capsys.readouterr().out, json.loads((tmp_path / "metrics.json").read_text())


def _model_json(capsys, path, *extra) -> dict:
    assert main(["model", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# -- 1. labels that say what the low-precision copies are -------------------------------------------------------------
def test_run_memory_table_says_fp4_on_nvfp4_and_fp8_otherwise(tmp_path, capsys):
    out, metrics = _run_text(tmp_path / "fp4", capsys)
    header = next(line for line in out.splitlines() if line.strip().startswith("fp"))
    assert header.split()[0] == "fp4"  # the column's wrapped head: "fp4" over "w"
    assert "total = params + fp4 w + grads + optim + zero buf + dyn peak + runtime (docs/model.md)" in out
    assert "fp8 w" not in out
    # metrics.json's key is a name, not a format: unchanged, and it holds the NVFP4 copies (> 0)
    assert metrics["per_rank"][0]["memory"]["fp8_weights"] > 0
    out, metrics = _run_text(tmp_path / "fp8", capsys, *AS_FP8)
    assert "total = params + fp8 w + grads" in out and "fp4 w" not in out
    assert metrics["per_rank"][0]["memory"]["fp8_weights"] > 0


def test_step_refresh_row_and_model_table_say_nvfp4(capsys):
    names = lambda d: [i["name"] for i in d["step_end"]["items"] if "weight refresh" in i["name"]]  # noqa: E731
    assert names(_model_json(capsys, L8B_FP4)) == ["NVFP4 weight refresh (first micro-batch)"]
    assert names(_model_json(capsys, L8B_FP4, *AS_FP8)) == ["FP8 weight refresh (first micro-batch)"]
    assert main(["model", str(L8B_FP4), "--explain"]) == 0  # the step's end item by item
    text = capsys.readouterr().out
    assert "fp4 w/rank" in text and "fp8 w/rank" not in text
    assert "NVFP4 weight refresh (first micro-batch)" in text


# -- 2. plan.md says the precision -----------------------------------------------------------------------------------
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


@pytest.mark.parametrize("hardware,overrides,said", [
    ("H100", [], "bf16"),
    ("H100", ["model.fp8=true"], "fp8 delayed"),
    ("H100", ["model.fp8=true", 'model.fp8_recipe="current"'], "fp8 current"),
    ("B200", ['model.fp4="nvfp4"'], "nvfp4"),
])  # fmt: skip
def test_plan_md_says_the_precision_every_layout_runs(tmp_path, hardware, overrides, said):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY))
    result = ds_plan(config, 4, 8, 2048, hardware=hardware, schedules=["1f1b"], jobs=1, overrides=overrides)
    lines = [line for line in files.plan_md(result).splitlines() if line.startswith("Precision")]
    assert lines == [f"Precision (model.fp4, model.fp8, model.fp8_recipe): {said} in every layout; plan does not "
                     f"search it (the base scenario sets it)."]  # fmt: skip


# -- 3. model --json's parallel and precision ------------------------------------------------------------------------
def test_model_json_gives_the_layout_and_precision_costed(capsys):
    d = _model_json(capsys, L405B_FP4)
    # the scenario's [parallel]: TP 4, CP 2, DP 40, rank_order tp-cp-ep-pp-dp; 64 stages at chunks_per_rank 8 = 8
    # pipeline ranks; 4 x 8 x 2 x 40 = 2,560 GPUs, the run's name
    assert d["parallel"] == {"tensor": 4, "pipeline": 8, "stages": 64, "data": 40, "context": 2, "expert": 1,
                             "expert_tensor": 1, "rank_order": "tp-cp-ep-pp-dp"}  # fmt: skip
    p = d["parallel"]
    assert p["tensor"] * p["pipeline"] * p["context"] * p["data"] == 2560
    assert d["precision"] == "nvfp4"
    assert _model_json(capsys, L8B_FP4, *AS_FP8)["precision"] == "fp8 delayed"
    assert _model_json(capsys, L8B_FP4, *AS_FP8, "--set", 'model.fp8_recipe="current"')["precision"] == "fp8 current"
    assert _model_json(capsys, L8B_FP4, "--unset", "model.fp4")["precision"] == "bf16"  # the run's FP8=False
    given = _model_json(capsys, L8B_FP4, "--set", "parallel.tensor=2", "--set", "parallel.data=4")["parallel"]
    assert (given["tensor"], given["data"], given["pipeline"]) == (2, 4, 1)


# -- 4. fc1's bias-gradient sum without a bias ----------------------------------------------------------------------
def _fc1_sum(st):
    rows = [k for k in derive.layer_kernels(st, 0) if k.name == "fc1 grad bias sum (unfused)"]
    assert len(rows) == 1
    return rows[0]


def test_fc1_bias_sum_without_a_bias_stays_costed_and_says_why():
    st = derive.setup(scenario.load(L8B_FP4, []))
    assert not st.cfg.bias
    row = _fc1_sum(st)
    # 16,384 tokens (2 x 8,192) x fc1's output 2 x 14,336 (SwiGLU's gate and up) x 2 bytes, read once
    assert row.bytes == 16384 * 2 * 14336 * 2 == 939_524_096
    assert row.shape == f"940 MB; {kernels.NO_BIAS_SUM}"
    # with a bias the sum is the bias gradient: no note, the same bytes
    biased = _fc1_sum(replace(st, cfg=replace(st.cfg, bias=True)))
    assert biased.shape == "940 MB" and biased.bytes == row.bytes
