"""Session 18 (s18r): four things users tripped on, each checked where the user meets it.

1. `plan`'s errors name the flag typed (--global-batch), the library's the keyword (global_batch).
2. An HF integer field written as a float inline in [model] (hidden_size = 2048.0) is refused as `run` refuses a float
   count; a config.json's 2048.0 is still read as 2048.
3. DualPipeV at pipeline 1 (its two stages on one rank) is a layout plan keeps; DualPipe at pipeline 1 is pruned.
4. benchmarks/fit_kernel_rates.py checks gpu-fryer's GB200 burn against the GB200 preset (152 SMs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_error, kernel_table

import dualpipe_sim as ds
from dualpipe_sim.model import config, derive
from dualpipe_sim.model.config import ModelError
from dualpipe_sim.model.sections import ModelSection
from dualpipe_sim.plan import PlanError
from dualpipe_sim.plan.journal import read as read_journal
from dualpipe_sim.plan.shapes import placement, shapes
from dualpipe_sim.plan.space import Choices, ModelShape, Request, enumerate_candidates
from dualpipe_sim.schedules.ir import ScheduleError
from tests.test_inline_fields import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip
QWEN = str(ROOT / "scenarios" / "validation" / "pai643-qwen3-30b-a3b-pp2ep8.toml")  # Qwen3-30B-A3B, EP 8, inline
SCOUT = ROOT / "tests" / "data" / "configs" / "llama4-scout-config.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("s18r") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


# -- 1. plan's errors: the flag from the command line, the keyword from the library ---------------------------------
SIZE = {"--gpus": "4", "--global-batch": "8", "--seq": "2048", "--hardware": "H100"}
ONE = "must be a whole number >= 1, got 0"


@pytest.mark.parametrize("changed, line", [
    ({"--gpus": "0"}, f"--gpus: {ONE}"),
    ({"--global-batch": "0"}, f"--global-batch: {ONE}"),
    ({"--seq": "0"}, f"--seq: {ONE}"),  # before the base scenario, which would say model.seq_length
    ({"--top": "0"}, f"--top: {ONE}"),
    ({"--budget": "0"}, f"--budget: {ONE}"),
    ({"--hardware": "TPUv5"}, "--hardware: unknown GPU preset 'TPUv5' (known: "),
    # the near miss a [hardware] preset gets, here too (s19g's walk: --hardware b200 had no hint)
    ({"--hardware": "b200"}, "--hardware: unknown GPU preset 'b200'; did you mean 'B200'? (known: "),
    ({"--hardware": "GB20"}, "--hardware: unknown GPU preset 'GB20'; did you mean 'GB200'? (known: "),
    ({"--hardware": None}, "--hardware: give a GPU preset or a [hardware] section in the scenario"),
    ({"--gpus": "7"}, "--gpus: no layout of the model runs on 7 GPUs with global batch 8; pruned: "),
    ({"--schedules": "dualpipe-v"}, "--schedules: unknown schedule 'dualpipe-v'; did you mean 'dualpipev'?; known: "),
])  # fmt: skip
def test_plan_on_the_command_line_names_the_flag(tiny, tmp_path, changed, line):
    flags = {**SIZE, **changed}
    args = [a for flag, value in flags.items() if value is not None for a in (flag, value)]
    got = cli_error(tmp_path, "plan", str(tiny), *args)
    assert got.startswith(f"error: {line}"), got


def test_a_scenario_key_and_the_source_keep_their_names_on_the_command_line(tiny, tmp_path):
    # not plan()'s keywords: the key the user set and the positional source are named as typed
    args = [a for flag, value in SIZE.items() for a in (flag, value)]
    assert cli_error(tmp_path, "plan", str(tiny), *args, "--set", "pipeline.stages=2").startswith(
        "error: pipeline.stages: plan chooses it")
    missing = tmp_path.parent / "none.json"
    assert cli_error(tmp_path, "plan", str(missing), *args) == f"error: source: model config not found: {missing}"


@pytest.mark.parametrize("kwargs, field", [
    (dict(gpus=0), "gpus"), (dict(global_batch=0), "global_batch"), (dict(seq=0), "seq"), (dict(top=0), "top"),
    (dict(budget=0), "budget"), (dict(jobs=0), "jobs"), (dict(hardware="H900"), "hardware"), (dict(gpus=7), "gpus"),
])  # fmt: skip
def test_the_library_names_its_keyword(tiny, kwargs, field):
    args = dict(gpus=4, global_batch=8, seq=2048, hardware="H100", jobs=1, schedules=["1f1b"])
    args.update(kwargs)
    with pytest.raises(PlanError) as exc:
        ds.plan(tiny, args.pop("gpus"), args.pop("global_batch"), args.pop("seq"), **args)
    assert exc.value.field == field and str(exc.value) == f"{field}: {exc.value.rule}"


def test_an_unknown_schedule_names_the_schedules_keyword_and_stays_a_schedule_error(tiny):
    with pytest.raises(ScheduleError) as exc:
        ds.plan(tiny, 4, 8, 2048, hardware="H100", schedules=["1f1b", "nope"])
    assert str(exc.value).startswith("schedules: unknown schedule 'nope'; known: 1f1b, ")


def test_a_journal_refusal_names_resume(tmp_path):
    with pytest.raises(PlanError) as exc:
        read_journal(tmp_path, {}, "0")  # a folder, not a journal file
    assert exc.value.field == "resume"
    assert str(exc.value) == f"resume: cannot resume {tmp_path}: not a regular file; write to another folder"


# -- 2. integer HF fields inline ------------------------------------------------------------------------------------
def _refuses_a_fraction(raw: dict, key: str) -> bool:
    try:
        config.from_hf({**raw, key: 7.5})
    except ModelError as exc:
        return f"{key}: must be a whole number, got 7.5" in str(exc)
    return False


def test_integer_fields_are_exactly_the_ones_a_reader_reads_whole():
    # every reader, on configs reaching its conditional reads (tests/test_inline_fields.py): a field is an integer
    # field when 7.5 in it is refused as not whole
    whole = {key for variants in VARIANTS.values() for raw in variants for key in config.INLINE_FIELDS
             if _refuses_a_fraction(raw, key)}
    assert whole == config.INTEGER_FIELDS
    assert {"hidden_size", "num_experts", "vocab_size", "head_dim"} <= whole
    assert not {"partial_rotary_factor", "swiglu_limit", "attn_pdrop", "model_type"} & whole  # floats and text


def _inline(**fields):
    return derive.model_config(ModelSection.model_validate(fields))


@pytest.mark.parametrize("key, value", [("hidden_size", 256.0), ("hidden_size", 256.5), ("num_hidden_layers", 4.0),
                                        ("head_dim", 64.0), ("vocab_size", 1e3)])
def test_an_integer_field_written_as_a_float_inline_is_refused(key, value):
    with pytest.raises(ModelError) as exc:
        _inline(**{**TINY, key: value})
    assert str(exc.value) == f"model.{key}: must be a whole number, got {value!r}"
    _inline(**{**TINY, key: int(value)})  # the same field as an integer is read: the refusal is the float's


def test_a_float_field_inline_stays_a_float():
    cfg = _inline(**{**TINY, "model_type": "nemotron", "partial_rotary_factor": 1.0})  # a float field given 1.0
    assert cfg.rotary_fraction == 1.0


def test_a_config_file_may_carry_whole_floats(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({**TINY, "hidden_size": 256.0, "num_hidden_layers": 4.0}))
    cfg = _inline(config=str(path))
    assert (cfg.hidden_size, cfg.num_layers) == (256, 4) and type(cfg.hidden_size) is int
    # the same file with an inline float over it: the inline one is refused
    with pytest.raises(ModelError, match=r"^model.num_hidden_layers: must be a whole number, got 2.0$"):
        _inline(config=str(path), num_hidden_layers=2.0)


def test_an_inline_text_config_float_is_refused_by_its_path():
    with pytest.raises(ModelError) as exc:
        _inline(config=str(SCOUT), text_config={"num_local_experts": 16.0})
    assert str(exc.value) == "model.text_config.num_local_experts: must be a whole number, got 16.0"
    assert _inline(config=str(SCOUT), text_config={"num_local_experts": 16}).num_experts == 16


def test_run_refuses_it_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    scenario = tmp_path / "in" / "s.toml"
    scenario.write_text(Path(QWEN).read_text().replace("hidden_size = 2048\n", "hidden_size = 2048.0\n", 1))
    assert "hidden_size = 2048.0" in scenario.read_text()
    run = tmp_path / "run"
    run.mkdir()
    assert cli_error(run, "run", str(scenario)) == "error: model.hidden_size: must be a whole number, got 2048.0"
    line = cli_error(run, "plan", QWEN, "--gpus", "16", "--global-batch", "128", "--seq", "8192",
                     "--set", "model.num_experts=128.0")
    assert line == "error: model.num_experts: must be a whole number, got 128.0"


# -- 3. DualPipeV (and DualPipe) at pipeline 1 -----------------------------------------------------------------------
def test_dualpipev_at_pipeline_1_is_enumerated_and_dualpipe_is_pruned():
    rows = list(enumerate_candidates(ModelShape(heads=4, layers=4, experts=0, kv_heads=4), Request(4, 8, 2048),
                                     shapes(["dualpipe", "dualpipev"]),
                                     Choices(tensor=(1,), context=(1,), micro_batch_size=(1,), zero=(1,))))
    one = [r for r in rows if r.pipeline == 1 and r.schedule]
    # DualPipeV: stages 2 = 2 x 1 rank, M = 8 / 4 = 2 >= stages: complete (one row per recompute policy)
    assert {(r.schedule, r.stages, r.recompute) for r in one if not r.pruned} == {
        ("dualpipev", 2, "none"), ("dualpipev", 2, "full")}
    # DualPipe needs an even number of ranks (DeepSeek's dualpipe.py asserts num_ranks % 2 == 0)
    assert [r.pruned.split(",")[0] for r in one if r.schedule == "dualpipe"] == [
        'pipeline.schedule = "dualpipe": pipeline.stages: needs an even number >= 2 (half the ranks feed each '
        'direction)']
    # the V on one rank: stage 0 and its mirror S - 1 - 0 = 1 on rank 0
    assert placement("dualpipev", 2, None) == (((0, 0), (0, 1)),)


def test_dualpipev_on_one_rank_hides_an_moe_all_to_all_that_1f1b_exposes():
    # Why it stays: its F&B pairs (stage 0's forward of one micro-batch with stage 1's backward of another) overlap
    # the expert all-to-all with compute on that one rank; 1F1B on one stage runs each op alone, all-to-all exposed.
    def makespan(schedule: str, stages: int) -> float:
        sets = [f'pipeline.schedule="{schedule}"', f"pipeline.stages={stages}", "pipeline.microbatches=4"]
        return ds.run(ds.scenario(QWEN, overrides=sets)).metrics.makespan

    one_f_one_b, dualpipev = makespan("1f1b", 1), makespan("dualpipev", 2)
    assert dualpipev < 0.95 * one_f_one_b


# -- 4. gpu-fryer's GB200 burn against the GB200 preset --------------------------------------------------------------
def test_fit_kernel_rates_checks_the_gb200_burn_against_gb200(tmp_path):
    # 8192^3 on 152 SMs by hand: 128 x 256 tiles, 2,048 in 14 rounds (96.24% useful); 128 x 128 tiles, 4,096 in 27
    # rounds, 4096 / 4104 = 99.81% useful, the better; no split-K (tiles > 2 x SMs), k_overhead 0; at 1,579 TFLOP/s
    # and the 5.25 us floor: 1,564.2 TFLOP/s, +0.9% over the 1,550 burn (B200's 148 SMs: 28 rounds, 1,549.2, -0.1%).
    flops = 2 * 8192**3
    useful = 4096 / (27 * 152)
    gb200 = flops / (5.25e-6 + flops / (1579e12 * useful)) / 1e12
    b200 = flops / (5.25e-6 + flops / (1579e12 * 4096 / (28 * 148))) / 1e12
    assert (round(gb200, 1), round(b200, 1)) == (1564.2, 1549.2)
    burn = next(float(r["value"]) for r in kernel_table(ROOT / "tests/data/kernels/gpu_fryer_sustained.csv")
                if r["gpu"].startswith("NVIDIA GB200"))
    out = subprocess.run([sys.executable, "-c", "import fit_kernel_rates as f; f.main_gemm()"], cwd=ROOT / "benchmarks",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "GB200-NVL72" in ln]
    assert lines[0].endswith(f"measured {burn:.1f}, GB200 preset {gb200:.1f} TFLOP/s ({gb200 / burn - 1:+.1%})")
    assert lines[1].endswith(f"measured {burn:.1f}, B200 preset {b200:.1f} TFLOP/s ({b200 / burn - 1:+.1%})")
    assert "+0.9%" in lines[0] and len(lines) == 2
