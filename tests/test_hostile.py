"""Hostile input: every broken file in tests/hostile/ gives one clear line and exit 2.

Each ``*.toml`` is a scenario (its first line says what is wrong with it); each
``*.json`` is a schedule file replayed on a valid 2-stage, 2-micro-batch 1F1B
scenario.  Every file runs through ``dualpipe_sim.cli.main`` in-process (under
a watchdog, so a hang fails instead of stalling the suite): exit 2, exactly one
line ``error: ...`` naming the problem, nothing on stdout, nothing written.  A
sample with one file per kind of failure (all the ones that could hang or blow
up memory among them) also runs as a real ``python -m dualpipe_sim.cli``
process: exit status 2, no traceback, finished within a timeout.  Last, the
engine's own guard against running forever (a bound on SimPy events).  (Every file as
a process would cost ~0.3 s of imports each; the in-process run already covers
every file's message.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from dualpipe_sim import limits
from dualpipe_sim.schedules import registry
from dualpipe_sim.inputs import scenario
from dualpipe_sim.cli import main
from dualpipe_sim.inputs.costs import CostModel
from dualpipe_sim.engine.simpy_engine import DeadlockError, Engine
from dualpipe_sim.schedules.ir import ops_of

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
SCHEDULE_BASE = [str(ROOT / "scenarios" / "quickstart.toml"), "--set", "pipeline.schedule=1f1b",
                 "--set", "pipeline.stages=2", "--set", "pipeline.microbatches=2"]  # fmt: skip

# file -> a fragment the one error line must contain (field and rule).
EXPECT = {
    "activation-inf.toml": "memory.activation: must be a finite number",
    "backward-inf.toml": "costs.backward: must be a finite number",
    "backward-zero.toml": "costs.backward: input should be greater than 0",
    "bad-toml.toml": "not valid TOML",
    "bom-bad-toml.toml": "not valid TOML: Expected ']' at the end of a table declaration (at line 2",
    "chunks-per-rank-unused.toml": "pipeline.chunks_per_rank: dualpipe does not take it (only interleaved-1f1b",
    "forward-overflow.toml": "costs: durations too large to simulate: makespan comes out as inf",
    "forward-string.toml": "costs.forward: must be a number, not text in quotes, got '1.0'",
    "microbatches-float-whole.toml": "pipeline.microbatches: must be a whole number, got 20.0",
    "microbatches-typo.toml": "pipeline.microbatch: unknown key; did you mean pipeline.microbatches?",
    "deep-nesting.toml": "nested too deeply",
    "dualpipe-odd-stages.toml": "pipeline.stages: dualpipe needs an even number >= 2",
    "empty.toml": "pipeline: required key is missing",
    "forward-list-nan.toml": "costs.forward.1: must be a finite number, got nan",
    "forward-list-short.toml": "costs.forward: a per-stage list needs one value per stage (4), got 2",
    "forward-nan.toml": "costs.forward: must be a finite number, got nan",
    "forward-negative.toml": "costs.forward: input should be greater than 0",
    "forward-table.toml": "costs.forward: input should be a valid number",
    "huge-integer.toml": "not valid TOML: Exceeds the limit",
    "jitter-cv-too-wide.toml": "costs.jitter.cv: must be <= 0.3 for the normal distribution",
    "jitter-unknown-distribution.toml": "costs.jitter.distribution: input should be 'lognormal', 'normal' or 'uniform'",
    "limits-nan.toml": "limits.max_memory: must be a finite number",
    "limits-too-small.toml": "limits.max_memory: 4 stages x 8 micro-batches is up to 96 ops",
    "microbatches-negative.toml": "pipeline.microbatches: input should be greater than or equal to 1",
    "missing-costs.toml": "costs.forward: required key is missing",
    "not-utf8.toml": "cannot read scenario",
    "overlapped-negative-inf.toml": "costs.overlapped: must be a finite number",
    "p2p-mode-unknown.toml": "comm.p2p_mode: input should be 'async', 'blocking' or 'derived'",
    "p2p-negative.toml": "comm.p2p: input should be greater than or equal to 0",
    "pipeline-not-table.toml": "pipeline: must be a table of keys ([pipeline] in TOML), got 3",
    "schedule-number.toml": "pipeline.schedule: input should be a valid string",
    "seed-float.toml": "seed: must be a whole number",
    "seed-negative.toml": "seed: input should be greater than or equal to 0",
    "slowdown-missing-rank.toml": "ranks.slowdown: rank 7 does not exist, the schedule has 4 ranks (0..3)",
    "slowdown-zero.toml": "ranks.slowdown.1: input should be greater than 0",
    "stages-bool.toml": "pipeline.stages: must be a whole number",
    "stages-float.toml": "pipeline.stages: must be a whole number",
    "stages-huge.toml": "pipeline.stages: input should be less than or equal to 4096",
    "stages-string.toml": "pipeline.stages: must be a whole number",
    "stages-zero.toml": "pipeline.stages: input should be greater than or equal to 1",
    "too-big-for-memory.toml": "limits.max_memory: 4096 stages x 1000000 micro-batches is up to 12,288,000,000 ops",
    "unknown-costs-key.toml": "costs.fwd: unknown key",
    "unknown-schedule.toml": "pipeline.schedule: unknown schedule 'pipedream-flush'",
    "unknown-section.toml": "gpu: unknown key",
    "unknown-top-key.toml": "sede: unknown key",
    "weight-over-backward.toml": "costs.weight: must be <= costs.backward",
    # [model], [parallel], [hardware] (issue 14).
    "model-config-missing.toml": "no-such-config.json: model config file not found",
    "model-expert-parallel.toml": "parallel.expert: must divide the number of routed experts (8), got 3",
    # s15e: an MoE user's slips
    "model-expert-over-data.toml": "parallel.expert: must divide parallel.tensor x parallel.context x parallel.data (4)",
    "model-topk-over-experts.toml": "model.num_experts_per_tok: must be <= the number of experts (8), got 16",
    "model-tensor-beyond-node.toml": "parallel.tensor: must be at most the GPUs of one NVLink domain (8 on the H800",
    "dualpipe-few-microbatches.toml": "pipeline.microbatches: dualpipe needs >= 2 * pipeline.stages = 8, got 6",
    "schedule-dash.toml": "pipeline.schedule: unknown schedule 'dualpipe-v'; did you mean 'dualpipev'?",
    "model-layout-string-stages.toml": "parallel.layout: 'Et|t|ttL' has 3 stages, pipeline.stages is 2",
    "model-layout-huge.toml": "parallel.layout: expands to more than a million tokens",
    "model-layout-sum.toml": "parallel.layout: the stages hold 3 layers, the model has 4 (num_hidden_layers)",
    "model-missing-field.toml": "model.num_attention_heads: required key is missing",
    "model-negative-size.toml": "model.hidden_size: must be >= 1, got -256",
    "model-unknown-architecture.toml": "model.model_type: unknown architecture 'rwkv'",
    "model-unknown-key.toml": "model.hidden_sizes: unknown key",
    "hardware-unknown-preset.toml": "hardware.preset: unknown GPU preset; did you mean 'H800'? (known: H100, H800, H200, B200, A100, GB200, GB300, B300)",
    "parallel-without-model.toml": "parallel: only applies with a [model] section",
    "recompute-unknown.toml": "memory.recompute: input should be 'none', 'selective', 'full' or 'deepseek'",
    "step-grad-sync-word.toml": 'step.grad_sync: must be a time in ms, a per-stage list, or "derived"',
    "step-derived-without-model.toml": 'step.cross_copy_sync: "derived" needs the [model] and [hardware] sections',
    # Issue 25's hostile pass: chunk.file, layouts with empty stages, files that never end,
    # near-miss names, times past what charts can scale.
    "activation-overflow.toml": "costs: durations too large to simulate: per_rank.0.peak_activation_bytes comes out as inf",
    "chunk-file-dev-zero.toml": "chunk.file: /dev/zero: more than 16.8 MB, too large to be one",
    "chunk-file-directory.toml": "chunk.file: cannot read",
    "chunk-file-empty.toml": "chunk.file: must be the path of a TOML file with a [chunk] table, got ''",
    "chunk-file-missing.toml": "no-such-chunk.toml: file not found",
    "chunk-file-no-table.toml": "empty.toml: has no [chunk] table",
    "chunk-file-number.toml": "chunk.file: must be the path of a TOML file with a [chunk] table, got 3",
    "chunk-file-self.toml": "chunk-file-self.toml: includes another file (chunk.file); one level only",
    "chunk-order-twice.toml": "chunk.order.compute: must list each compute component once",
    "hardware-efficiency-over-one.toml": "hardware.efficiency: input should be less than or equal to 1, got 2",
    "hardware-efficiency-zero.toml": "hardware.efficiency: input should be greater than 0, got 0",
    "hardware-hbm-negative.toml": "hardware.hbm: input should be greater than 0, got -1",
    "hardware-preset-empty.toml": "hardware.preset: unknown GPU preset (known: H100, H800, H200, B200, A100, GB200, GB300, B300), got ''",
    "hardware-preset-lowercase.toml": "hardware.preset: unknown GPU preset; did you mean 'H100'?",
    "hardware-preset-number.toml": "hardware.preset: input should be a valid string, got 100",
    "model-config-dev-zero.toml": "model.config: /dev/zero: more than 16 MiB, too large to be a model config",
    "model-layout-empty-stage.toml": "parallel.layout: stage 0 would hold no layer, head or MTP module",
    "model-layout-empty-string.toml": "parallel.layout: '' has 1 stage, pipeline.stages is 2",
    "model-layout-string-empty-stage.toml": "parallel.layout: stage 1 would hold no layer, head or MTP module",
    "model-micro-batch-negative.toml": "model.micro_batch_size: input should be greater than or equal to 1, got -1",
    "model-more-stages-than-layers.toml": "use at most 4 stages (the model has 4 layers, num_hidden_layers)",
    "model-seq-length-huge.toml": "model.seq_length: must be a whole number, got 1e+30",
    "p2p-overflow.toml": "costs: durations too large to simulate: makespan comes out as inf",
    "parallel-data-zero.toml": "parallel.data: input should be greater than or equal to 1, got 0",
    "parallel-tensor-too-big.toml": "parallel.tensor: must divide the attention heads (4), got 8",
    "parameters-list-short.toml": "memory.parameters: a per-stage list needs one value per stage (4), got 2",
    "recompute-uppercase.toml": "memory.recompute: input should be 'none', 'selective', 'full' or 'deepseek', got 'FULL'",
    "schedule-case.toml": "pipeline.schedule: unknown schedule 'DualPipe'; did you mean 'dualpipe'?",
    "schedule-empty-string.toml": "pipeline.schedule: unknown schedule ''; known: 1f1b",
    "step-buckets-zero.toml": "step.grad_sync_buckets: input should be greater than or equal to 1, got 0",
    "step-optimizer-negative.toml": "step.optimizer: input should be greater than or equal to 0, got -1.0",
    "step-optimizer-overflow.toml": "step: durations too large to simulate: the run ends at 100e306 ms, past 1e+305 ms",
    # Schedule files.
    "schedule-bad-kind.json": "op kind must be one of F, B, I, W or FB, got 'X'",
    "schedule-cycle.json": "schedule deadlocks: rank 0 is stuck at 0B1",  # waits on each other
    "schedule-deep-nesting.json": "not valid JSON: maximum recursion depth exceeded",
    "schedule-direction-2.json": "op direction must be 0 or 1, got 2",
    "schedule-duplicate.json": "0F0 appears twice",
    "schedule-fb-two-forwards.json": "FB needs a forward F and a backward B or I",
    "schedule-huge-integer.json": "not valid JSON: Exceeds the limit",
    "schedule-microbatches-huge.json": "microbatches must be a whole number >= 1, got 1e+300",
    "schedule-missing-op.json": "missing op 0B1",
    "schedule-not-json.json": "not valid JSON",
    "schedule-not-object.json": 'expected an object with a "ranks" list',
    "schedule-stage-on-two-ranks.json": "stage 0 (direction 0) appears on rank 0 and on rank 1",
    "schedule-stages-infinity.json": "schedule JSON: stages must be a whole number >= 1, got inf",
    "schedule-stages-mismatch.json": "missing op 2F0",
}
# One per kind of failure, run as real processes.
AS_PROCESS = [
    "bad-toml.toml", "deep-nesting.toml", "forward-nan.toml", "forward-overflow.toml", "huge-integer.toml", "too-big-for-memory.toml",
    "unknown-top-key.toml", "model-negative-size.toml", "schedule-cycle.json", "schedule-deep-nesting.json", "schedule-microbatches-huge.json",
    "chunk-file-dev-zero.toml", "model-config-dev-zero.toml", "step-optimizer-overflow.toml",
]  # fmt: skip
WATCHDOG_SECONDS = 60


def args_for(name: str, out: Path) -> list[str]:
    path = str(HOSTILE / name)
    head = [*SCHEDULE_BASE, "--schedule-file", path] if name.endswith(".json") else [path]
    return ["run", *head, "--out", str(out)]


@contextmanager
def watchdog(seconds: int):
    """Turn a hang into a failure (SIGALRM in the main thread)."""

    def hung(*_):
        raise TimeoutError(f"no answer within {seconds} s: the CLI hangs on this input")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_corpus_and_expectations_match():
    on_disk = {p.name for p in HOSTILE.iterdir()}
    assert on_disk == set(EXPECT), f"unlisted: {on_disk - set(EXPECT)}, missing: {set(EXPECT) - on_disk}"
    assert set(AS_PROCESS) <= set(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_in_process_one_line_exit_2_nothing_written(name, tmp_path, capsys):
    out = tmp_path / "out"
    with watchdog(WATCHDOG_SECONDS):
        status = main(args_for(name, out))
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert EXPECT[name] in captured.err
    assert len(captured.err) < 600  # a clear line, not an echo of the hostile input
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder


def test_oversized_run_is_refused_before_any_schedule_is_built(monkeypatch, tmp_path, capsys):
    def must_not_build(*args, **kwargs):
        raise AssertionError("a schedule was built for a run that had to be refused")

    monkeypatch.setattr(registry, "build", must_not_build)
    assert main(args_for("too-big-for-memory.toml", tmp_path / "out")) == 2
    # 3 x 4096 x 1e6 ops x 768 B; no chart boxes (1e6 micro-batches: bands)
    assert "about 9.44 TB" in capsys.readouterr().err


def test_memory_cap_is_the_estimate_and_configurable():
    raw = {"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": 8}, "costs": {"forward": 1, "backward": 2}}
    # 3 x 4 x 8 = 96 ops at 768 B, each drawn as a box at 10 KiB (8 micro-batches: boxes, not bands),
    # on a 4,950 x 792 px picture at 4 B a pixel (45 in wide; 4 ranks under the 6.2 in floor: 7.2 in tall)
    need = 96 * 768 + 96 * 10 * 1024 + 4950 * 792 * 4
    assert limits.estimate(4, 8) == (96, need)
    scenario.from_dict({**raw, "limits": {"max_memory": need}})  # exactly at the cap: runs
    with pytest.raises(scenario.ScenarioError, match=r"^limits.max_memory: 4 stages x 8 micro-batches"):
        scenario.from_dict({**raw, "limits": {"max_memory": need - 1}})
    assert scenario.from_dict(raw).limits.max_memory == limits.DEFAULT_MAX_MEMORY


def test_schedule_file_is_held_to_the_same_cap(tmp_path, capsys):
    """A schedule file brings its own op count (here 8 micro-batches on a 2-micro-batch
    scenario); it is checked against limits.max_memory before anything runs."""
    assert main(["schedule", "1f1b", "--stages", "2", "--microbatches", "8", "--format", "json"]) == 0
    path = tmp_path / "s.json"
    path.write_text(capsys.readouterr().out)
    base = [*SCHEDULE_BASE, "--schedule-file", str(path), "--out", str(tmp_path / "o")]
    # 2 stages x 8 micro-batches x (F, B) = 32 ops, each a box, on a 4,950 x 792 px picture: exactly fits
    cap = 32 * 768 + 32 * 10 * 1024 + 4950 * 792 * 4
    assert main(["run", *base, "--set", f"limits.max_memory={cap}"]) == 0
    capsys.readouterr()
    assert main(["run", *base, "--set", f"limits.max_memory={cap - 1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: limits.max_memory: the schedule file has 32 ops") and err.count("\n") == 1


def test_as_processes_exit_2_without_traceback(tmp_path):
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dualpipe_sim.cli", *args_for(name, tmp_path / name)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        for name in AS_PROCESS
    }
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=WATCHDOG_SECONDS)
            assert proc.returncode == 2, (name, err)
            assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, (name, err)
            assert EXPECT[name] in err
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert list(tmp_path.iterdir()) == []


def test_engine_livelock_guard_names_where_it_stopped(monkeypatch):
    """The engine steps SimPy at most limits.max_events times (~3 events per op are
    used, 32 allowed); past that it stops and says where every rank was."""
    schedule = registry.build("1f1b", 3, 4)
    monkeypatch.setattr(limits, "max_events", lambda ops, ranks: 10)
    with pytest.raises(DeadlockError, match=r"did not finish within 10 events \(livelock guard\): rank 0 at action"):
        Engine(schedule, CostModel.uniform(3, p2p=0.5)).run()


def test_event_bound_leaves_room_for_real_runs():
    schedule = registry.build("dualpipe", 8, 20)
    engine = Engine(schedule, CostModel.uniform(8, p2p=0.3, p2p_mode="blocking"))
    steps = 0
    step = engine.env.step

    def counting():
        nonlocal steps
        steps += 1
        return step()

    engine.env.step = counting
    engine.run()
    ops = sum(len(ops_of(a)) for actions in schedule.ranks for a in actions)
    assert steps * 4 <= limits.max_events(ops, schedule.num_ranks)


def test_library_run_refuses_an_oversized_own_schedule():
    # The cap holds for simulation.run() too, not only for the CLI's --schedule-file.
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim import simulation
    from dualpipe_sim.inputs.scenario import ScenarioError

    sc = scenario.from_dict({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "costs": {"forward": 1.0, "backward": 2.0},
        # room for its own 3 ops (3 x (768 B + a 10 KiB box)) and the 4,950 x 792 px picture, not for 16
        "limits": {"max_memory": 3 * (768 + 10240) + 4950 * 792 * 4},
    })
    big = registry.build("1f1b", 1, 8)  # 16 ops, on the scenario's one stage
    with pytest.raises(ScenarioError, match="the schedule file has 16 ops"):
        simulation.run(sc, big)


# -- issue 25: hostile command lines and files that are not what they claim --------------------
QUICK = str(ROOT / "scenarios" / "quickstart.toml")


def _full_results(tmp_path: Path) -> list[str]:
    """A results.csv that is a link to /dev/full (reads zeros forever, writes fail: no space)."""
    out = tmp_path / "full"
    out.mkdir()
    (out / "results.csv").symlink_to("/dev/full")
    return ["sweep", QUICK, "--grid", "pipeline.stages=2,4", "--out", str(out), "--resume", "--jobs", "1"]


HOSTILE_COMMANDS = {
    "run-out-empty": (lambda t: ["run", QUICK, "--out", ""], "--out: an empty path; give a folder"),
    "sweep-out-blank": (lambda t: ["sweep", QUICK, "--grid", "pipeline.stages=2,4", "--out", " "],
                        "--out: an empty path; give a folder"),
    "run-scenario-dev-zero": (lambda t: ["run", "/dev/zero", "--out", str(t / "o")], "scenario /dev/zero: more than 16.8 MB"),
    "schedule-file-dev-zero": (lambda t: ["run", QUICK, "--schedule-file", "/dev/zero", "--out", str(t / "o")],
                               "--schedule-file: /dev/zero: more than 268 MB"),
    "resume-dev-full": (_full_results, "--resume: cannot resume"),
    "memory-limit-negative": (lambda t: ["sweep", QUICK, "--grid", "pipeline.stages=2,4", "--memory-limit", "-5GB",
                                         "--out", str(t / "o")], "--memory-limit: must be a finite size > 0, got '-5GB'"),
    "memory-limit-minus-inf": (lambda t: ["sweep", QUICK, "--grid", "pipeline.stages=2,4", "--memory-limit", "-inf",
                                          "--out", str(t / "o")], "--memory-limit: expected a size in bytes"),
    "chunk-file-set-list": (lambda t: ["run", QUICK, "--set", "chunk.file=[1, 2]", "--out", str(t / "o")],
                            "chunk.file: must be the path of a TOML file with a [chunk] table, got [1, 2]"),
    "run-schedule-case": (lambda t: ["run", QUICK, "--set", "pipeline.schedule=GPipe", "--out", str(t / "o")],
                          "unknown schedule 'GPipe'; did you mean 'gpipe'?"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE_COMMANDS))
def test_hostile_command_lines_one_line_exit_2(name, tmp_path, capsys, monkeypatch):
    make, fragment = HOSTILE_COMMANDS[name]
    args = make(tmp_path)
    monkeypatch.chdir(tmp_path)  # an --out that slipped through would land here
    before = sorted(p.name for p in tmp_path.iterdir())
    with watchdog(WATCHDOG_SECONDS):
        status = main(args)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert fragment in captured.err, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_size_guard_counts_trace_rows_and_chart_boxes():
    """limits.estimate by hand: 768 B per op, 128 B per further trace row, 10 KiB per box drawn;
    boxes only while a rank can hold at most 366 actions (then bands), at most 366 per rank; with
    boxes, the picture at 45 in x 110 dpi = 4,950 px wide, 4 B a pixel (tests/test_limits_chart.py)."""
    # 2 stages x 8 micro-batches: 48 ops, all boxes; 2 ranks: the 7.2 in floor, 792 px
    assert limits.estimate(2, 8) == (48, 48 * 768 + 48 * 10240 + 4950 * 792 * 4)
    # 64 x 200: 38,400 ops, boxes capped at 64 ranks x 366 actions; 40.68 in, 4,474 px
    assert limits.estimate(64, 200) == (38400, 38400 * 768 + 64 * 366 * 10240 + 4950 * 4474 * 4)
    # 64 x 1024: a rank runs at least 1024 actions, more than 366: bands, no boxes
    assert limits.estimate(64, 1024) == (196608, 196608 * 768)
    # 20 rows per op: 19 further rows at 128 B per op, and 20 boxes per op drawn; components: the
    # pair view's 2.4 in under the chart, 9.6 in = 1,056 px
    assert limits.estimate(2, 8, 20.0) == (48, 48 * (768 + 19 * 128) + 48 * 20 * 10240 + 4950 * 1056 * 4)


def test_size_guard_reads_rows_per_op_off_the_component_model():
    """With [chunk], each part of an op is one trace row: 2 layers x 4 forward components = 8
    for an F, 2 x 6 backward components = 12 for a B; F+B averages 10 rows per op, F+I+W
    (8 + 2 x 4 + 2 x 2) / 3 = 6.67; the guard takes the larger."""
    chunk = {"layers": 2, "attn_forward": 0.4, "mlp_forward": 0.5, "dispatch_forward": 0.6, "combine_forward": 0.7,
             "attn_backward_input": 0.8, "attn_backward_weight": 0.2, "mlp_backward_input": 0.5,
             "mlp_backward_weight": 0.3, "dispatch_backward": 0.6, "combine_backward": 0.5}
    raw = {"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "chunk": chunk}
    scn, inputs = scenario.resolved(raw)
    assert scenario.trace_rows_per_op(inputs.costs) == 10.0
    simple = {"pipeline": raw["pipeline"], "costs": {"forward": 1, "backward": 2}}
    assert scenario.trace_rows_per_op(scenario.resolved(simple)[1].costs) == 1.0
    _, need = limits.estimate(4, 8, 10.0)
    scenario.from_dict({**raw, "limits": {"max_memory": need}})  # exactly at the cap: runs
    with pytest.raises(scenario.ScenarioError, match=r"^limits.max_memory: 4 stages x 8 micro-batches"):
        scenario.from_dict({**raw, "limits": {"max_memory": need - 1}})


# -- s12c: the scenario keys of sessions 10-11, each given a wrong type, a value out of its range and a name
# it does not know, on a scenario that uses them all (NeMo on apex, userbuffers rings, an NCCL release).  The
# whole line is written out: the field, the rule as the schema states it, and the value echoed.
APEX = str(ROOT / "scenarios" / "validation" / "mlperf41-gpt3-256.toml")
OVERLAPS = "one of proj_fprop, fc2_fprop"
RECENT_KEYS = {
    ("step.grad_sync_held", '"embedding"'): "input should be a valid list, got 'embedding'",
    ("step.grad_sync_held", '["embeddings"]'):
        "step.grad_sync_held.0: input should be 'embedding', 'sequence-parallel' or 'final-norm', got 'embeddings'",
    ("step.grad_sync_held", '["embedding", "embedding"]'):
        "must name each once: 'embedding' twice, got ['embedding', 'embedding']",
    ("step.bucket_cap_mb", '"100"'): "must be a number, not text in quotes, got '100'",
    ("step.bucket_cap_mb", "0"): "input should be greater than 0, got 0",
    ("step.bucket_cap_mb", "1e7"): "input should be less than or equal to 1000000, got 10000000.0",
    ("step.bucket_cap_mb", "inf"): "must be a finite number, got inf",
    ("step.fp32_embedding_optimizer", "1"): "must be true or false, got 1",
    ("step.fp32_embedding_optimizer", '"true"'): "must be true or false, got 'true'",
    ("step.fp32_embedding_grads", '"yes"'): "must be true or false, got 'yes'",
    ("step.average_in_collective", "2"): "must be true or false, got 2",
    ("step.overlap_param_gather_with_optimizer_step", "1"): "must be true or false, got 1",
    ("step.ddp_bucket_size", "0"): "input should be greater than or equal to 1, got 0",
    ("step.ddp_bucket_size", '"200"'): "must be a whole number, got '200'",
    ("step.ddp_bucket_size", "1.5e8"): "must be a whole number, got 150000000.0",
    ("step.dp_comm_sms", "65"): "input should be less than or equal to 64, got 65",
    ("step.dp_comm_sms", "8.5"): "must be a whole number, got 8.5",
    ("step.param_gather", '"nemo"'): "input should be 'megatron-core' or 'apex', got 'nemo'",
    ("hardware.nccl_version", "2.25"): "input should be a valid string, got 2.25",
    ("hardware.nccl_version", '"2.25"'): 'must be an NCCL 2 release as 2.minor.patch, e.g. "2.25.1", got \'2.25\'',
    ("hardware.nccl_version", '"1.3.0"'): 'must be an NCCL 2 release as 2.minor.patch, e.g. "2.25.1", got \'1.3.0\'',
    ("hardware.nccl_version", '"3.0.0"'): 'must be an NCCL 2 release as 2.minor.patch, e.g. "2.25.1", got \'3.0.0\'',
    ("parallel.tp_overlap_ring_rs", '"fc2_fprop"'): "input should be a valid list, got 'fc2_fprop'",
    ("parallel.tp_overlap_ring_rs", '["fc1_fprop"]'): f"unknown overlap 'fc1_fprop': {OVERLAPS}, got ['fc1_fprop']",
    ("parallel.tp_overlap_ring_rs", '["fc2_fprop", "fc2_fprop"]'):
        "must name each once: 'fc2_fprop' twice, got ['fc2_fprop', 'fc2_fprop']",
    ("parallel.tp_overlap_ring_rs", '["proj_fprop"]'): "proj_fprop also in parallel.tp_overlap_atomic; the atomic GEMM "
                                                       "is the pipelined reduce-scatter's (name each overlap in one of the two)",
    ("parallel.tp_overlap_atomic", '["proj_fprop", "proj_fprop"]'):
        "must name each once: 'proj_fprop' twice, got ['proj_fprop', 'proj_fprop']",
    ("parallel.tp_overlap_not_told", '["bogus"]'): "unknown overlap 'bogus': one of qkv_dgrad, qkv_wgrad, fc1_dgrad, "
                                                   "fc1_wgrad, proj_fprop, fc2_fprop, got ['bogus']",
    ("parallel.tp_overlap_sms", "{qkv_dgrad = 65}"):
        "parallel.tp_overlap_sms.qkv_dgrad: input should be less than or equal to 64, got 65",
}  # fmt: skip


@pytest.mark.parametrize("key,value", sorted(RECENT_KEYS))
def test_recent_keys_bad_values_one_line_exit_2(key, value, tmp_path, capsys):
    rule = RECENT_KEYS[key, value]
    line = f"error: {rule}" if rule.startswith(key + ".") else f"error: {key}: {rule}"  # an item names its place
    with watchdog(WATCHDOG_SECONDS):
        status = main(["run", APEX, "--set", f"{key}={value}", "--out", str(tmp_path / "out"), "--plots", "none"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.out == "" and captured.err == line + "\n"
    assert list(tmp_path.iterdir()) == []


def test_recent_keys_legal_edges_run(tmp_path):
    """The edges the rules above keep: an empty held list, the cap's upper bound, NCCL 2.0.0 and a
    two-digit minor; all run (so the refusals are not blanket ones)."""
    sets = ["step.grad_sync_held=[]", "step.bucket_cap_mb=1e6", "hardware.nccl_version=\"2.0.0\""]
    assert main(["run", APEX, *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "a"), "--plots", "none"]) == 0
    assert main(["run", APEX, "--set", 'hardware.nccl_version="2.28.3"', "--out", str(tmp_path / "b"), "--plots", "none"]) == 0
    assert (tmp_path / "a" / "metrics.json").is_file() and (tmp_path / "b" / "metrics.json").is_file()
