"""Session 18 (s18d): what a new user met following README on the bundled and their own scenarios, each a
regression test through the real entry point (``python -m dualpipe_sim``) where the slip is a command line's.

The rule checked is README's "Bad input": one line ``error: <field>: <rule>``, exit status 2, no traceback,
nothing written; and "Counts must be integers (``microbatches = 20.0`` is refused)", which the [model],
[parallel] and [hardware] counts broke by reading 8.0 as 8.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dualpipe_sim as ds
from dualpipe_sim.plan.request import PlanError, make_request

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
# Qwen3-30B-A3B, PP 2 x EP 8 x DP 8 on 16 H800 (inline HF fields): an MoE scenario with every count in play
QWEN = str(ROOT / "scenarios" / "validation" / "pai643-qwen3-30b-a3b-pp2ep8.toml")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualpipe_sim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The error line of a refused command, after checking README's rule for it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr.rstrip("\n")


# -- counts given as floats --------------------------------------------------------------------
FLOAT_COUNTS = [
    ("model.seq_length", "8192.0"),
    ("model.micro_batch_size", "1.0"),
    ("parallel.tensor", "1.0"),
    ("parallel.expert", "8.0"),
    ("parallel.expert_tensor", "1.0"),
    ("parallel.data", "8.0"),
    ("parallel.context", "1.0"),
    ("parallel.zero", "1.0"),
    ("parallel.tp_max_ctas", "4.0"),
    ("hardware.gpus_per_node", "8.0"),
    ("hardware.nvlink_domain", "8.0"),
]


@pytest.mark.parametrize("key,value", FLOAT_COUNTS)
def test_a_count_written_as_a_float_is_refused_by_name(key, value):
    with pytest.raises(ds.ScenarioError) as exc:
        ds.scenario(QWEN, overrides=[f"{key}={value}"])
    assert str(exc.value) == f"{key}: must be a whole number, got {value}"
    # the same count as an integer is a scenario (so the refusal is the float's, not the value's)
    ds.scenario(QWEN, overrides=[f"{key}={value[:-2]}"])


def test_expert_parallel_as_a_float_on_the_command_line_writes_nothing(tmp_path):
    out = tmp_path / "out"
    line = one_line(cli("run", QWEN, "--set", "parallel.expert=8.0", "--out", str(out), cwd=tmp_path))
    assert line == "error: parallel.expert: must be a whole number, got 8.0"
    assert not out.exists()


def test_the_new_keys_as_floats_are_refused_by_plan_too(tmp_path):
    out = tmp_path / "plan"
    line = one_line(cli("plan", QWEN, "--gpus", "16", "--global-batch", "128", "--seq", "8192",
                        "--set", "parallel.expert_tensor=2.0", "--out", str(out), cwd=tmp_path))
    assert line == "error: parallel.expert_tensor: must be a whole number, got 2.0"
    assert not out.exists()


def test_tp_overlap_sms_and_layout_counts_as_floats():
    with pytest.raises(ds.ScenarioError, match=r"^parallel.tp_overlap_sms: must be a whole number"):
        ds.scenario(QWEN, overrides=["parallel.tp_overlap_sms={ fc1_wgrad = 4.0 }"])
    # 48 layers over 2 stages: [24, 24] is a layout, [24.0, 24.0] names its first float
    ds.scenario(QWEN, overrides=["parallel.layout=[24, 24]"])
    with pytest.raises(ds.ScenarioError) as exc:
        ds.scenario(QWEN, overrides=["parallel.layout=[24, 24.0]"])
    assert str(exc.value) == "parallel.layout: item 1 must be a whole number of layers, got [24, 24.0]"


@pytest.mark.parametrize("key", ["model.master_weights", "model.fp8"])
@pytest.mark.parametrize("value,shown", [("1", "1"), ('"true"', "'true'")])
def test_model_switches_take_only_true_or_false(key, value, shown):
    with pytest.raises(ds.ScenarioError) as exc:
        ds.scenario(QWEN, overrides=[f"{key}={value}"])
    assert str(exc.value) == f"{key}: must be true or false, got {shown}"
    assert ds.scenario(QWEN, overrides=[f"{key}=false"]).model is not None


# -- argparse's own errors ---------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["run", QUICK, "--plots", "pdf"],
     "error: --plots: invalid choice: 'pdf' (choose from 'none', 'png', 'html', 'all'); see dualpipe-sim run --help"),
    (["sweep", QUICK], "error: the following arguments are required: --grid; see dualpipe-sim sweep --help"),
    (["run", QUICK, "--repeat", "two"], "error: --repeat: invalid int value: 'two'; see dualpipe-sim run --help"),
    (["bogus"], "error: command: invalid choice: 'bogus' (choose from 'run', 'schedule', 'schedules', 'sweep', "
                "'compare', 'calibrate', 'model', 'plan'); see dualpipe-sim --help"),
])  # fmt: skip
def test_command_line_misuse_is_one_line_not_the_usage_block(tmp_path, args, expected):
    proc = cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path) if args[0] != "bogus" else cli(*args, cwd=tmp_path)
    assert one_line(proc) == expected
    assert "usage:" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_help_still_prints_the_usage():
    proc = cli("run", "--help", cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: dualpipe-sim run") and proc.stderr == ""


# -- the wording of three lines ----------------------------------------------------------------
@pytest.mark.parametrize("slip,hint", [("hiden_size", "hidden_size"), ("num_expert", "num_experts"),
                                       ("seq_lenght", "seq_length"), ("fp8_recip", "fp8_recipe")])
def test_a_model_key_slip_gets_the_closest_key(tmp_path, slip, hint):
    line = one_line(cli("model", QWEN, "--set", f"model.{slip}=1", cwd=tmp_path))
    assert line == f"error: model.{slip}: unknown key; did you mean model.{hint}?"


def test_a_model_key_nothing_is_close_to_has_no_hint(tmp_path):
    assert one_line(cli("model", QWEN, "--set", "model.zzzzqqq=1", cwd=tmp_path)) == "error: model.zzzzqqq: unknown key"


@pytest.mark.parametrize("key,value,shown", [("pipeline", "3", "3"), ("costs.jitter", "2", "2"),
                                             ("hardware", "true", "True")])
def test_a_section_given_a_value_says_it_is_a_table(key, value, shown):
    with pytest.raises(ds.ScenarioError) as exc:
        ds.scenario(QUICK, overrides=[f"{key}={value}"])
    assert str(exc.value) == f"{key}: must be a table of keys ([{key}] in TOML), got {shown}"


def test_plan_names_a_hardware_key_once():
    base = {"hardware": {"preset": "GB300", "nvlink_domain": 6}}
    with pytest.raises(PlanError) as exc:
        make_request(base, 64, 128, 8192)
    assert str(exc.value) == ("hardware.nvlink_domain: must be a multiple of hardware.gpus_per_node (4 on the "
                              "GB300), got 6")


# -- compare's devices column under a [model] --------------------------------------------------
def test_compare_says_devices_are_pipeline_ranks_of_several_gpus(tmp_path):
    out = tmp_path / "cmp"
    proc = cli("compare", QWEN, "--schedules", "1f1b,dualpipev", "--plots", "none", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # tensor 1 x data 8 x context 1 = 8 GPUs a rank; 1F1B on the file's 2 stages = 2 ranks = 16 GPUs, DualPipeV
    # folds those 2 stages onto 1 rank = 8 GPUs
    line = "devices counts pipeline ranks, each 8 GPUs here (tensor 1 x data 8 x context 1); GPUs: 1f1b 16, dualpipev 8"
    assert line in proc.stdout.splitlines()
    assert f"- {line}" in (out / "compare.md").read_text().splitlines()


def test_compare_without_a_model_has_no_devices_line(tmp_path):
    proc = cli("compare", QUICK, "--plots", "none", "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert proc.returncode == 0 and "devices counts pipeline ranks" not in proc.stdout


# -- the model verb refuses the schedules run refuses ------------------------------------------
INTERLEAVED = str(ROOT / "scenarios" / "llama3-70b.toml")  # interleaved-1f1b, 20 stages, chunks_per_rank 5
KNOWN = ("known: 1f1b, 1f1b-overlap, chimera, chimera-doubling, dualpipe, dualpipev, gpipe, interleaved-1f1b, "
         "interleaved-1f1b-overlap, zb-h1, zb-h1-megatron, zb-h2, zbv")


@pytest.mark.parametrize("verb", ["model", "run"])
def test_a_misspelt_schedule_is_named_before_the_options_it_would_not_take(tmp_path, verb):
    out = ["--out", str(tmp_path / "out")] if verb == "run" else []
    line = one_line(cli(verb, INTERLEAVED, "--set", 'pipeline.schedule="interleaved_1f1b"', *out, cwd=tmp_path))
    assert line == f"error: pipeline.schedule: unknown schedule 'interleaved_1f1b'; did you mean 'interleaved-1f1b'?; {KNOWN}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("sets,expected", [
    (['pipeline.schedule="dualpipe"'],
     "error: pipeline.chunks_per_rank: dualpipe does not take it (only interleaved-1f1b, interleaved-1f1b-overlap do); "
     "leave it out"),
    (["pipeline.stages=21"],
     "error: pipeline.stages: interleaved-1f1b needs a positive multiple of chunks_per_rank = 5, got 21 (stages counts "
     "every model chunk: pipeline ranks x chunks_per_rank, e.g. 40 for 8 ranks)"),
])  # fmt: skip
def test_the_model_verb_refuses_a_shape_its_schedule_cannot_take(tmp_path, sets, expected):
    args = [a for s in sets for a in ("--set", s)]
    assert one_line(cli("model", INTERLEAVED, *args, cwd=tmp_path)) == expected
    # the same with 40 stages (8 ranks x 5 chunks) is a layout the verb describes: 8 pipeline ranks
    ok = cli("model", INTERLEAVED, "--set", "pipeline.stages=40", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert '"pipeline": 8,' in ok.stdout


# -- --unset of an inline HF field -------------------------------------------------------------
def test_unset_takes_an_inline_hf_field_out(tmp_path):
    """pai643's [model] sets head_dim = 128 inline; unset, Qwen3 falls back to hidden / heads = 2048 / 32 = 64."""
    import json

    full = cli("model", QWEN, "--json", cwd=tmp_path)
    less = cli("model", QWEN, "--unset", "model.head_dim", "--json", cwd=tmp_path)
    assert full.returncode == 0 and less.returncode == 0, less.stderr
    # per layer q and o are 2048 x 32 heads x head_dim each, k and v 2048 x 4 x head_dim: 2048 x 72 x head_dim, and
    # the q / k norms head_dim each; 48 layers, head_dim 128 -> 64
    drop = 48 * (2048 * 72 * (128 - 64) + 2 * (128 - 64))
    assert json.loads(full.stdout)["parameters_total"] - json.loads(less.stdout)["parameters_total"] == drop


def test_unset_of_a_misspelt_model_field_names_the_closest(tmp_path):
    line = one_line(cli("model", QWEN, "--unset", "model.hiden_size", cwd=tmp_path))
    assert line == "error: model.hiden_size: unknown key; did you mean model.hidden_size?"


def test_a_model_key_only_loosely_like_a_field_gets_no_misleading_hint(tmp_path):
    # activation_fusion is 0.65 like activations_dtype (difflib): no hint, rather than a wrong one
    assert one_line(cli("model", QWEN, "--set", "model.activation_fusion=false", cwd=tmp_path)) == (
        "error: model.activation_fusion: unknown key")
