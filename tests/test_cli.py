"""The CLI contract: outputs, JSON shapes, and bad input -> one line, exit 2, no files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualpipe_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
METRIC_KEYS = {"schedule", "stages", "ranks", "microbatches", "makespan", "bubble_ratio", "per_rank", "comm", "analytic"}
PER_RANK_KEYS = {"rank", "busy", "idle", "peak_activation", "peak_activation_bytes", "parameter_bytes"}
COMM_KEYS = {"p2p_time", "exposed", "hidden", "overlap_ratio", "a2a_time"}


def test_run_writes_metrics_and_gantt(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", QUICK, "--out", str(out), "--set", "pipeline.schedule=1f1b"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert PER_RANK_KEYS <= metrics["per_rank"][0].keys()
    assert COMM_KEYS <= metrics["comm"].keys()
    assert {"bubble", "peak_activation"} <= metrics["analytic"].keys()
    assert metrics["schedule"] == "1f1b"
    assert (out / "gantt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bubble ratio" in capsys.readouterr().out


def test_run_table_last_column_is_parameter_copies(tmp_path, capsys):
    # s14f: the column was headed "params" beside the memory table's "params" (GB); DualPipe holds 2 stage copies
    # on each of its 8 ranks, 1F1B one.
    for schedule, copies in (("dualpipe", "2"), ("1f1b", "1")):
        assert main(["run", QUICK, "--out", str(tmp_path / schedule), "--plots", "none",
                     "--set", f"pipeline.schedule={schedule}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        head = next(i for i, x in enumerate(lines) if x.split()[:1] == ["rank"])
        assert lines[head - 1].endswith("param") and lines[head].endswith("copies")  # s14h: two-line headings
        assert [x.split()[-1] for x in lines[head + 1:head + 9]] == [copies] * 8


def test_json_flag_prints_the_same_document(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", QUICK, "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "metrics.json").read_text())


def test_same_scenario_same_bytes(tmp_path):
    for name in ("a", "b"):
        assert main(["run", QUICK, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


def test_set_overrides(tmp_path):
    out = tmp_path / "o"
    args = ["run", QUICK, "--out", str(out), "--set", "pipeline.schedule=gpipe", "--set", "pipeline.stages=3",
            "--set", "pipeline.microbatches=5", "--set", "costs.forward=[1, 2, 3]", "--set", "comm.p2p=0"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["schedule"], m["stages"], m["microbatches"]) == ("gpipe", 3, 5)
    # GPipe with per-stage forward 1,2,3 and B = 2: the slowest stage (F=3) paces the pipeline.
    assert m["per_rank"][2]["busy"] == pytest.approx(5 * (3 + 2))


BAD = [
    (["--set", "pipeline.stages=5"], "pipeline.stages: dualpipe needs an even number"),
    (["--set", "pipeline.microbatches=6"], "pipeline.microbatches"),
    (["--set", "costs.forward=-1"], "costs.forward: input should be greater than 0"),
    (["--set", "costs.backward=abc"], "costs.backward"),
    (["--set", "pipeline.nonsense=1"], "pipeline.nonsense: unknown key"),
    (["--set", "pipeline.schedule=nope"], "unknown schedule 'nope'"),
    (["--set", "nodot"], "expected KEY=VALUE"),
    (["--set", "costs.weight=9"], "costs.weight: must be <= costs.backward"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["run", QUICK, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind either


EIGHT_B = str(ROOT / "scenarios" / "validation" / "mlperf51-llama8b-64b200.toml")
BLOOM = str(ROOT / "scenarios" / "validation" / "bloom-176b.toml")  # step.runtime = "deepspeed-bf16"
A100 = str(ROOT / "scenarios" / "validation" / "n21-145b.toml")  # model.runtime = "megatron-lm-2021"
H100 = str(ROOT / "scenarios" / "validation" / "mlperf50-llama405b-512.toml")  # FP8 on a TN-only GPU
BF16 = str(ROOT / "scenarios" / "llama3-70b.toml")  # no FP8 linears, parallel.tp_comm_overlap = true, H100
DEEPGEMM = str(ROOT / "scenarios" / "deepseek-v3.toml")  # FP8 through DeepGEMM: no per-tensor amax
SELECTIVE = ["--set", "memory.recompute=selective"]
# s13i: the keys of sessions 11-12 (README's key table) on a Megatron-core row: wrong type, unknown value, out of range
BAD_RECENT = [
    (SELECTIVE + ["--set", 'memory.recompute_modules="core_attn"'],
     "memory.recompute_modules: input should be a valid list"),
    (SELECTIVE + ["--set", 'memory.recompute_modules=["nope"]'],
     "memory.recompute_modules.0: input should be 'core_attn', "),
    (SELECTIVE + ["--set", 'memory.recompute_modules=["mlp","mlp"]'],
     "memory.recompute_modules: must name each once: 'mlp' twice"),
    (["--set", 'memory.recompute_modules=["mlp"]'],
     'memory.recompute_modules: only with memory.recompute = "selective"'),
    (["--set", "hardware.nccl_version=2.25"], "hardware.nccl_version: input should be a valid string, got 2.25"),
    (["--set", "hardware.nccl_version=3.1.1"], "hardware.nccl_version: must be an NCCL 2 release as 2.minor.patch"),
    (["--set", 'hardware.nccl_version="2.x.1"'], "hardware.nccl_version: must be an NCCL 2 release as 2.minor.patch"),
    (["--set", "hardware.efficiency=true"], "hardware.efficiency: must be a number, not true/false"),
    (["--set", 'hardware.efficiency="0.5"'], "hardware.efficiency: must be a number, not text in quotes"),
    (["--set", "hardware.efficiency=2"], "hardware.efficiency: input should be less than or equal to 1"),
    (["--set", "hardware.a2a_overhead=true"], "hardware.a2a_overhead: must be a number, not true/false"),
    (["--set", 'hardware.hbm="80e9"'], "hardware.hbm: must be a number, not text in quotes"),
    (["--set", "hardware.gpus_per_node=true"], "hardware.gpus_per_node: must be a whole number"),
    (["--set", "step.fp32_embedding_grad_add=1"], "step.fp32_embedding_grad_add: must be true or false, got 1"),
    (["--set", "step.fp32_embedding_grad_add=true"], "step.fp32_embedding_grad_add: is NeMo 1.17's add"),
    (["--set", 'step.fp32_embedding_optimizer="yes"'], "step.fp32_embedding_optimizer: must be true or false"),
    (["--set", "step.fp32_embedding_grads=1"], "step.fp32_embedding_grads: must be true or false"),
    (["--set", 'step.grad_sync_held="embedding"'], "step.grad_sync_held: input should be a valid list"),
    (["--set", 'step.grad_sync_held=["nope"]'], "step.grad_sync_held.0: input should be 'embedding', "),
    (["--set", "step.average_in_collective=1"], "step.average_in_collective: must be true or false"),
    (["--set", "step.dp_comm_sms=65"], "step.dp_comm_sms: input should be less than or equal to 64"),
    (["--set", "step.dp_comm_sms=1.5"], "step.dp_comm_sms: must be a whole number"),
    (["--set", "step.bucket_cap_mb=0"], "step.bucket_cap_mb: input should be greater than 0"),
    (["--set", "step.bucket_cap_mb=nan"], "step.bucket_cap_mb: must be a finite number"),
    (["--set", "model.moe_force_load_balancing=1"], "model.moe_force_load_balancing: must be true or false"),
    (["--set", "model.moe_force_load_balancing=true"], "model.moe_force_load_balancing: needs an MoE model"),
    (["--set", 'model.fp8_params="true"'], "model.fp8_params: must be true or false, got 'true'"),
    (["--set", "model.moe_aux_loss=1"], "model.moe_aux_loss: must be true or false"),
    (["--set", "model.fp8_recipe=mxfp8"], "model.fp8_recipe: input should be 'delayed' or 'current', got 'mxfp8'"),
    (["--set", "model.fp8_transpose=1"], "model.fp8_transpose: input should be 'derived', 'kept' or 'none'"),
    (["--set", "model.fp8_amax_reduction=all"],
     "model.fp8_amax_reduction: input should be 'data', 'tensor' or 'hidden'"),
    (["--set", "model.cross_entropy=apex"],
     "model.cross_entropy: input should be 'megatron', 'megatron-fused' or 'te'"),
    (["--set", "model.attention_kernel=true"], "model.attention_kernel: input should be 'cudnn', "),
    (["--set", "model.moe_dispatcher=allgather"], "model.moe_dispatcher: input should be 'alltoall' or 'deepep'"),
    (["--set", "model.host_overhead_us=-1"], "model.host_overhead_us: input should be greater than or equal to 0"),
    (["--set", 'model.host_overhead_us="13.5"'], "model.host_overhead_us: must be a number of microseconds"),
    (["--set", "model.host_overhead_us=inf"], "model.host_overhead_us: must be a finite number"),
    (["--set", 'parallel.sync_tp_duplicated_parameters="yes"'],
     "parallel.sync_tp_duplicated_parameters: must be true or false"),
    (["--set", "parallel.pipeline_scatter_gather=1"], "parallel.pipeline_scatter_gather: must be true or false"),
    (["--set", 'parallel.tp_overlap_not_told=["proj"]'], "parallel.tp_overlap_not_told: unknown overlap 'proj'"),
    (["--set", 'parallel.tp_overlap_ring_rs=["qkv_dgrad"]'],
     "parallel.tp_overlap_ring_rs: unknown overlap 'qkv_dgrad'"),
    (["--set", "parallel.tp_overlap_sms={proj_fprop=100}"],
     "parallel.tp_overlap_sms.proj_fprop: input should be less than or equal to 64"),
    (["--set", "parallel.tp_overlap_sms={proj_fprop=true}"], "parallel.tp_overlap_sms: must be a whole number"),
    # s14f: the keys of sessions 12-13; a third item is the scenario when the 8B B200 row cannot show the rule
    (["--set", 'model.runtime="megatron-lm"'], "model.runtime: input should be 'megatron-core' or 'megatron-lm-2021'"),
    (["--set", 'model.training_loop="megatron-lm-2022"'], "model.training_loop: input should be 'derived', "),
    (["--set", 'model.training_loop="megatron-lm-2021"'],
     'model.training_loop: not "megatron-lm-2021" with step.runtime = "deepspeed-bf16"', BLOOM),
    (["--set", 'model.embed_layernorm="true"'], "model.embed_layernorm: must be true or false, got 'true'"),
    (["--set", "model.alibi=1"], "model.alibi: must be true or false, got 1"),
    (["--set", 'step.runtime="deepspeed"'], "step.runtime: input should be 'megatron' or 'deepspeed-bf16'"),
    # named by step.runtime, whose rule it is (was "step.grad_sync: step.runtime = ...")
    (["--set", "parallel.zero=0"], 'step.runtime: "deepspeed-bf16" shards the optimizer as ZeRO 1 does: '
                                   "parallel.zero must be 1, got 0", BLOOM),
    (["--set", "hardware.efficiency=0.5"], 'step.runtime: "deepspeed-bf16" needs a hardware.preset without', BLOOM),
    (["--set", "step.ddp_bucket_size=0"], "step.ddp_bucket_size: input should be greater than or equal to 1"),
    (["--set", "step.ddp_bucket_size=1.5"], "step.ddp_bucket_size: must be a whole number, got 1.5"),
    (["--set", "step.ddp_bucket_size=40000000", "--set", "step.grad_sync_buckets=4"],
     'step.ddp_bucket_size: is the size Megatron-core fills buckets to; it needs step.grad_sync_buckets = "derived"'),
    (["--set", 'step.grad_sync_buckets="auto"'], 'step.grad_sync_buckets: must be a whole number of buckets (1-1000) '
                                                 'or "derived"'),
    (["--set", "step.grad_sync_buckets=0"], "step.grad_sync_buckets: input should be greater than or equal to 1"),
    (["--set", 'step.grad_sync_launch="late"'], "step.grad_sync_launch: input should be 'ready', 'pp-aligned' or "),
    (["--set", "step.overlap_param_gather_with_optimizer_step=true"],
     'step.overlap_param_gather_with_optimizer_step: needs pipeline.schedule = "interleaved-1f1b"'),
    (["--set", 'hardware.gpu_variability="lonestar6"'], "hardware.gpu_variability: unknown GPU spread"),
    (["--set", "hardware.gpu_variability=0.02"], "hardware.gpu_variability: input should be a valid string"),
    (["--set", 'hardware.gpu_variability="lonestar6-a100"', "--set", "hardware.efficiency=0.5"],
     "hardware.gpu_variability: needs the kernel-level costs"),
    (["--set", 'hardware.nccl_version="2.25.1"', "--set", "hardware.efficiency=0.5"],
     "hardware.nccl_version: needs the kernel-level costs"),
    (SELECTIVE + ["--set", 'memory.recompute_modules=["layernorm"]'],
     'memory.recompute_modules: "layernorm" and "moe_act" cannot run with FP8'),
    (SELECTIVE + ["--set", 'memory.recompute_modules=["mla_up_proj"]'],
     'memory.recompute_modules: "mla_up_proj" needs multi-latent attention'),
    (SELECTIVE + ["--set", 'memory.recompute_modules=["mlp"]'],
     'memory.recompute_modules: not with model.runtime = "megatron-lm-2021"', A100),
    (["--set", 'model.fp8_transpose="none"'], 'model.fp8_transpose: "none" needs FP8 GEMMs that take non-TN', H100),
    (["--set", 'parallel.tp_overlap_not_told=["fc1_wgrad","fc1_wgrad"]'],
     "parallel.tp_overlap_not_told: must name each once: 'fc1_wgrad' twice"),
    (["--set", 'parallel.tp_overlap_not_told="fc1_wgrad"'], "parallel.tp_overlap_not_told: input should be a valid list"),
    # s14h: a non-default value where nothing reads it (FP8 keys without FP8 linears, userbuffers keys with
    # the overlap off) is refused; the 8B row runs parallel.tp_comm_overlap = false
    (["--set", 'model.fp8_gemm="deepgemm"'], 'model.fp8_gemm: "deepgemm" applies to FP8 linears only', BF16),
    (["--set", 'model.fp8_recipe="current"'], 'model.fp8_recipe: "current" applies to FP8 linears only', BF16),
    (["--set", 'model.fp8_transpose="kept"'], 'model.fp8_transpose: "kept" applies to FP8 linears only', BF16),
    (["--set", "memory.fp8_weight_cache=false"], "memory.fp8_weight_cache: false applies to FP8 linears' weight",
     BF16),
    (["--set", 'model.fp8_amax_reduction="tensor"'],
     'model.fp8_amax_reduction: "tensor" is Transformer Engine\'s delayed scaling', BF16),
    (["--set", 'model.fp8_amax_reduction="hidden"'],
     'model.fp8_amax_reduction: "hidden" is Transformer Engine\'s delayed scaling', DEEPGEMM),
    (["--set", 'parallel.tp_overlap_atomic=["proj_fprop"]'],
     "parallel.tp_overlap_atomic: Transformer Engine runs an atomic GEMM overlap for FP8 GEMMs only", BF16),
    (["--set", "parallel.tp_overlap_sms={proj_fprop=8}"],
     "parallel.tp_overlap_sms: configures Transformer Engine's userbuffers overlaps, which run only with "
     "parallel.tp_comm_overlap = true"),
    (["--set", 'parallel.tp_overlap_ring_rs=["fc2_fprop"]'], "parallel.tp_overlap_ring_rs: configures Transformer"),
    (["--set", 'parallel.tp_overlap_not_told=["fc1_wgrad"]'], "parallel.tp_overlap_not_told: configures Transformer"),
    (["--set", "parallel.tp_comm_overlap=false", "--set", 'parallel.tp_overlap_atomic=["proj_fprop"]'],
     "parallel.tp_overlap_atomic: configures Transformer Engine's userbuffers", BF16),
]


@pytest.mark.parametrize("extra,message,scenario", [(*c, EIGHT_B)[:3] for c in BAD_RECENT],
                         ids=[c[1].split(":")[0] + "-" + str(i) for i, c in enumerate(BAD_RECENT)])
def test_bad_recent_keys_one_line_exit_2_nothing_written(tmp_path, capsys, extra, message, scenario):
    out = tmp_path / "out"
    assert main(["run", scenario, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.split(":")[0] + ":") and err.count("\n") == 1, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == []


def test_fp8_and_userbuffers_defaults_given_explicitly_stay_accepted(tmp_path, capsys):
    # s14h: each key refused above, given its default value where it cannot apply, is no error
    defaults = {BF16: ['model.fp8_gemm="cublas"', 'model.fp8_recipe="delayed"', 'model.fp8_transpose="derived"',
                       'model.fp8_amax_reduction="data"', "memory.fp8_weight_cache=true", "model.fp8_params=false",
                       "parallel.tp_overlap_atomic=[]"],
                EIGHT_B: ["parallel.tp_overlap_sms={}", "parallel.tp_overlap_ring_rs=[]",
                          "parallel.tp_overlap_not_told=[]", "parallel.tp_overlap_atomic=[]"]}  # fmt: skip
    for path, keys in defaults.items():
        sets = [x for k in keys for x in ("--set", k)]
        assert main(["run", path, "--out", str(tmp_path / Path(path).stem), "--plots", "none", *sets]) == 0
        assert "error" not in capsys.readouterr().err


def test_missing_and_broken_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline\nschedule=")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "scenario file not found" in err and "not valid TOML" in err


def test_schedule_json_shape(capsys):
    assert main(["schedule", "1f1b", "--stages", "2", "--microbatches", "2", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schedule"] == "1f1b" and doc["stages"] == 2 and doc["microbatches"] == 2
    assert doc["ranks"][1] == [
        {"kind": "F", "microbatch": 0, "stage": 1, "direction": 0},
        {"kind": "B", "microbatch": 0, "stage": 1, "direction": 0},
        {"kind": "F", "microbatch": 1, "stage": 1, "direction": 0},
        {"kind": "B", "microbatch": 1, "stage": 1, "direction": 0},
    ]


def test_schedule_file_round_trip(tmp_path, capsys):
    assert main(["schedule", "dualpipe", "--stages", "4", "--microbatches", "8", "--format", "json"]) == 0
    path = tmp_path / "s.json"
    path.write_text(capsys.readouterr().out)
    base = ["run", QUICK, "--set", "pipeline.stages=4", "--set", "pipeline.microbatches=8"]
    assert main([*base, "--out", str(tmp_path / "reg")]) == 0
    assert main([*base, "--out", str(tmp_path / "file"), "--schedule-file", str(path)]) == 0
    reg = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    own = json.loads((tmp_path / "file" / "metrics.json").read_text())
    assert own["makespan"] == reg["makespan"] and own["per_rank"] == reg["per_rank"]


def test_schedule_file_says_why_no_closed_form(tmp_path, capsys):
    # Regular 1F1B, 4 stages, 8 micro-batches, p2p 0: inside 1F1B's range, so the built-in
    # schedule gets (S-1)(F+B) = 3 * (1 + 2) = 9 ms; the same ops read from a file get none, with why.
    assert main(["schedule", "1f1b", "--stages", "4", "--microbatches", "8", "--format", "json"]) == 0
    path = tmp_path / "s.json"
    path.write_text(capsys.readouterr().out)
    base = ["run", QUICK, "--set", "pipeline.schedule=1f1b", "--set", "pipeline.stages=4",
            "--set", "pipeline.microbatches=8", "--set", "comm.p2p=0", "--plots", "none"]
    assert main([*base, "--out", str(tmp_path / "reg")]) == 0
    assert json.loads((tmp_path / "reg" / "metrics.json").read_text())["analytic"]["bubble"] == 9
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "file"), "--schedule-file", str(path)]) == 0
    table = capsys.readouterr().out
    analytic = json.loads((tmp_path / "file" / "metrics.json").read_text())["analytic"]
    reason = "schedule given (e.g. read from a file), not built from pipeline.schedule: no closed form"
    # the keys every run's analytic has, in their order; only reason is filled
    assert analytic == {"bubble": None, "peak_activation": None, "formula": None, "range": None, "reason": reason}
    assert f"closed-form bubble not given: {reason}" in table.splitlines()


def test_schedules_lists_constraints(capsys):
    assert main(["schedules"]) == 0
    out = capsys.readouterr().out
    assert "1f1b" in out and "gpipe" in out and "dualpipe" in out and "constraints:" in out


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dualpipe_sim.cli", "run", QUICK, "--set", "pipeline.stages=5", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_closed_pipe_is_not_an_error():
    # `dualpipe-sim schedule ... | head -1`: the reader leaves early; no traceback, exit 0.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualpipe_sim.cli", "schedule", "1f1b", "--stages", "32", "--microbatches", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_plots_none_writes_no_chart_and_imports_no_matplotlib(tmp_path):
    # A fresh process: --json with --plots none must not pay for matplotlib.
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys; from dualpipe_sim.cli import main; "
            f"rc = main(['run', {QUICK!r}, '--json', '--plots', 'none', '--out', {str(out)!r}]); "
            "print('matplotlib' in sys.modules, 'simpy' in sys.modules, file=sys.stderr); sys.exit(rc)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.split()[:1] == ["False"]
    assert {p.name for p in out.iterdir()} == {"metrics.json"}


def test_compare_plots_none_has_no_image_link(tmp_path):
    out = tmp_path / "out"
    assert main(["compare", QUICK, "--schedules", "1f1b,dualpipe", "--plots", "none", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.md"}
    assert "![" not in (out / "compare.md").read_text()


@pytest.mark.parametrize("verb", ["run", "compare"])
def test_plots_html_without_plotly_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, verb):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    out = tmp_path / "out"
    assert main([verb, QUICK, "--plots", "html", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "error: --plots html: report.html needs plotly: pip install 'dualpipe-sim[html]'\n"
    assert not out.exists()


def test_run_table_reads_by_column(tmp_path, capsys):
    # s14h: two-line headings (name over unit), one decimal count per column.  1F1B, S = 8, M = 20, F = 1,
    # B = 2, no P2P: busy M(F + B) = 60, idle = between ops = closed form (S - 1)(F + B) = 21 on every rank;
    # rank r holds S - r activations of 2 GB, one stage copy.
    assert main(["run", QUICK, "--out", str(tmp_path / "o"), "--plots", "none", "--set", "pipeline.schedule=1f1b",
                 "--set", "comm.p2p=0"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, x in enumerate(lines) if x.split()[:1] == ["rank"])
    assert lines[head - 1].split() == ["busy", "idle", "between", "closed", "peak", "peak", "param"]
    assert lines[head].split() == ["rank", "ms", "ms", "ops", "ms", "form", "ms", "acts", "GB", "copies"]
    rows = [x.split() for x in lines[head + 1:head + 9]]
    assert rows == [[str(r), "60", "21", "21", "21", str(8 - r), str(2 * (8 - r)), "1"] for r in range(8)]
    widths = {len(x) for x in lines[head - 1:head + 9]}
    assert len(widths) == 1, widths  # every cell flush right: headings and rows end in one column
