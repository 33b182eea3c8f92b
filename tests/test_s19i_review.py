"""Session 19's review of session 18's code (s19i): each problem found, held by the test that failed before its fix."""

import json

import pytest

from dualpipe_sim import cli, simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import validation_band
from helpers import TINY_LLAMA_MODEL

H100 = '[parallel]\ntensor = 4\nsequence_parallel = true\n[hardware]\npreset = "H100"\n'
STEP = '[step]\ngrad_sync = "derived"\noptimizer = "derived"\n'


def write(tmp_path, tail="", microbatches=4, vocab=32000):
    """TINY_LLAMA_MODEL (a 32,000 vocabulary) on 2 stages of 1F1B, TP 4 with sequence parallelism on an H100."""
    path = tmp_path / "t.toml"
    model = TINY_LLAMA_MODEL.replace("vocab_size = 1000", f"vocab_size = {vocab}")
    path.write_text(f'[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = {microbatches}\n{model}'
                    f"micro_batch_size = 64\n{H100}{tail}")
    return path


# -- `model`'s validation band is the one `run` reports for the same scenario ------------------------------------

@pytest.mark.parametrize("tail, validated", [("", False), (STEP, True)])
def test_model_verb_band_is_runs_band(tmp_path, capsys, tail, validated):
    """Without [step] `run`'s tokens/s is the pipeline's alone and its band says "not validated" (no published run is
    a pipeline alone); `model` on the same file must not print the whole-step range beside it."""
    path = write(tmp_path, tail)
    ran = simulation.run(scenario.load(path)).metrics.validation_band
    assert ran.validated is validated  # Hopper dense holds >= 3 runs: only the [step] decides
    assert cli.main(["model", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["validation_band"]
    assert shown == json.loads(json.dumps(validation_band.cells(ran)).replace("validation_band.", ""))
    assert cli.main(["model", str(path)]) == 0
    assert validation_band.describe(ran) in capsys.readouterr().out.splitlines()


# -- model.defer_embedding_wgrad: the drain is never dropped while the backwards it came from are lighter --------------

def deferred(path, n):
    raw = scenario.load(path).model_dump(exclude_unset=True)
    raw["model"]["defer_embedding_wgrad"] = n
    return scenario.from_dict(raw)


def test_deferral_without_step_is_refused(tmp_path, capsys):
    """Without [step] the run's time is the pipeline's: the deferred micro-batches' backwards ran lighter and the drain
    (StepCosts.drain) had nowhere to go, so the run came out faster by all of it. One line naming the key, exit 2."""
    path = write(tmp_path)
    with pytest.raises(scenario.ScenarioError, match=r"^model.defer_embedding_wgrad: .*\[step\]"):
        simulation.run(deferred(path, 4))
    out = tmp_path / "o"
    code = cli.main(["run", str(path), "--set", "model.defer_embedding_wgrad=4", "--out", str(out), "--plots", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "model.defer_embedding_wgrad" in err and "[step]" in err and "Traceback" not in err
    assert not out.exists()


def test_drain_ends_the_step_when_step_adds_nothing_else(tmp_path):
    """A [step] of zeros adds no row, so the run had no step block and its tokens/s was the makespan's, without the
    drain. With the drain outlasting the last rank's gap to rank 0 (a 256,000 vocabulary: 4 long wgrad GEMMs), the
    step ends at the last rank's pipeline end + its drain, and tokens/s is the tokens over that."""
    from dualpipe_sim.readers.step_metrics import pipeline_ends

    path = write(tmp_path, '[step]\ngrad_sync = 0.0\noptimizer = 0.0\n', vocab=256000)
    sc = deferred(path, 4)
    drain = sc.step_costs().drain
    r = simulation.run(sc)
    ends = pipeline_ends(r.trace).rank_end
    assert drain[0] == 0.0 and ends[1] + drain[1] > ends[0]  # the case: the drain outlasts the gap
    assert r.metrics.step is not None
    assert r.metrics.step.total == pytest.approx(ends[1] + drain[1])
    tokens = 4 * 64 * 128  # micro-batches x micro_batch_size x seq_length, one data-parallel replica
    assert r.metrics.throughput.tokens_per_second == pytest.approx(tokens / (ends[1] + drain[1]) * 1e3)


# -- model.defer_embedding_wgrad: the deferred micro-batches' buffers are memory until the drain ----------------------

@pytest.mark.parametrize("sp", [True, False])
def test_deferred_buffers_are_held_until_the_drain(tmp_path, sp):
    """Megatron-core (core_r0.11.0 tensor_parallel/layers.py, ColumnParallelLinear.forward and
    LinearWithGradAccumulationAndAsyncCommunication.backward) keeps, for each deferred micro-batch, the output layer's
    input (embedding_activation_buffer: the rank's shard, tokens / TP x hidden, under sequence parallelism; the whole
    tokens x hidden without) and its output gradient (grad_output_buffer: tokens x vocabulary / TP), both 2-byte, until
    the drain after the last backward. By hand on the tiny Llama: tokens 64 x 128 = 8,192, vocabulary 32,000 / TP 4,
    hidden 256. All 4 deferred micro-batches' buffers are alive at once after the last backward, on rank 1 alone."""
    path = write(tmp_path, STEP)
    if not sp:
        path.write_text(path.read_text().replace("sequence_parallel = true", "sequence_parallel = false"))
    n, v, h, t = 64 * 128, 32000 // 4, 256, 4
    held = n * v * 2 + (n // t if sp else n) * h * 2
    off, on = (simulation.run(deferred(path, k)).metrics.per_rank for k in (0, 4))
    assert on[0].memory == off[0].memory  # rank 0 holds no output layer
    d_on, d_off = on[1].memory.dynamic_peak, off[1].memory.dynamic_peak
    assert 4 * held <= d_on <= 4 * held + d_off
    assert on[1].memory.total - off[1].memory.total == pytest.approx(d_on - d_off)
    two = simulation.run(deferred(path, 2)).metrics.per_rank[1].memory.dynamic_peak
    assert 2 * held <= two <= 2 * held + d_off


def test_deferred_buffers_with_a_split_backward(tmp_path):
    """ZB-H1 splits each backward into I and W: a deferred micro-batch's buffers are taken at its I (the pass that runs
    the output layer's backward), once each: 3 of 4 micro-batches deferred, 3 buffers alive after the last I."""
    path = write(tmp_path, STEP)
    path.write_text(path.read_text().replace('schedule = "1f1b"', 'schedule = "zb-h1"'))
    n, v, h, t = 64 * 128, 32000 // 4, 256, 4
    held = n * v * 2 + n // t * h * 2
    off = simulation.run(deferred(path, 0)).metrics.per_rank[1].memory.dynamic_peak
    on = simulation.run(deferred(path, 3)).metrics.per_rank[1].memory.dynamic_peak
    assert 3 * held <= on <= 3 * held + off


@pytest.mark.parametrize("sp, expected", [(True, 8192 * 8000 * 2 + 2048 * 256 * 2),  # 132,120,576 B
                                          (False, 8192 * 8000 * 2 + 8192 * 256 * 2)])  # 135,266,304 B
def test_held_bytes_by_hand(tmp_path, sp, expected):
    """One deferred micro-batch's buffers: the output gradient 8,192 tokens x 32,000 / TP 4 and the input, the TP
    shard (8,192 / 4 tokens) under sequence parallelism, else all 8,192 tokens, x hidden 256; 2 bytes each."""
    from dualpipe_sim.model import deferred_wgrad

    path = write(tmp_path, STEP)
    if not sp:
        path.write_text(path.read_text().replace("sequence_parallel = true", "sequence_parallel = false"))
    assert deferred_wgrad.held_bytes(scenario.load(path).derived().setup) == expected


@pytest.mark.parametrize("key, value, words", [
    ("model.runtime", "megatron-lm-2021", "gradient accumulation fusion"),
    ("step.runtime", "deepspeed-bf16", "DeepSpeed"),
])  # fmt: skip
def test_deferral_where_megatron_core_does_not_run_it(tmp_path, capsys, key, value, words):
    """Megatron-core refuses defer_embedding_wgrad_compute without gradient_accumulation_fusion (core_r0.11.0
    model_parallel_config.py, beside the pipeline check the key already mirrors), which model.runtime =
    "megatron-lm-2021" runs without (its accumulation a separate pass); DeepSpeed's pipeline engine runs its own
    schedule, with no drain. Both were accepted and timed as Megatron-core's."""
    path = write(tmp_path, STEP)
    out = tmp_path / "o"
    more = ["--set", "parallel.zero=1", "--set", "step.overlap_grad_sync=false"] if key == "step.runtime" else []
    code = cli.main(["run", str(path), "--set", "model.defer_embedding_wgrad=4", "--set", f'{key}="{value}"', *more,
                     "--out", str(out), "--plots", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model.defer_embedding_wgrad: ") and words in err, err
    assert "Traceback" not in err and not out.exists()


# -- a sync beside the drain is not exposed: the rank still has the drain's compute to run ----------------------------

def test_sync_beside_the_drain_is_not_exposed():
    """tests/test_defer_embedding_wgrad.py's hand-worked step: 1F1B, 2 stages x 4 micro-batches, stage 1's first two
    backwards lighter; rank 1's pipeline ends at 15.5, its drain of 4 runs to 19.5. Overlapped, stage 1's grad sync of 1
    runs [15.5, 16.5], beside the drain: nothing of it is exposed (step_metrics: exposed is what runs after the rank has
    nothing left to do but wait). Not overlapped it runs [19.5, 20.5], after the drain: all of it is exposed."""
    from dualpipe_sim.engine.step import with_step
    from dualpipe_sim.inputs.costs import CostModel
    from dualpipe_sim.readers.step_metrics import step_metrics
    from dualpipe_sim.schedules import registry
    from dualpipe_sim.step_costs import StepCosts

    base = dict(forward=(1.0, 1.0), backward=(3.0, 3.0), weight=(1.0, 1.0), activation_bytes=(1.0, 1.0),
                parameter_bytes=(1.0, 1.0), deferred=(1, 2, 0.5, 1.0))
    pipeline = simulation.simulate(registry.build("1f1b", 2, 4), CostModel(**base))
    for overlap, exposed in ((True, 0.0), (False, 1.0)):
        costs = StepCosts(grad_sync=(0.0, 1.0), cross_copy_sync=(0.0, 0.0), optimizer=(0.5, 0.5),
                          overlap_grad_sync=overlap, drain=(0.0, 4.0))
        m = step_metrics(with_step(pipeline, costs), costs)
        assert m.per_rank[1].grad_sync == 1.0
        assert m.per_rank[1].grad_sync_exposed == exposed
        assert m.grad_sync.exposed == exposed


# -- memory.png names the deferred buffers its grey band now holds ----------------------------------------------------

def test_memory_chart_names_the_deferred_buffers(tmp_path, monkeypatch):
    """With model.defer_embedding_wgrad the grey band (total - activation peak) holds the deferred micro-batches'
    buffers (dynamic_peak, model/buffers.py): its words say so, for `run` and for the API's save_memory; without the
    key they stay the P2P / all-to-all words."""
    import dualpipe_sim
    from dualpipe_sim.outputs.plots import memory as plot

    said = []
    real = plot.draw_memory
    monkeypatch.setattr(plot, "draw_memory", lambda fig, trace, **kw: (said.append(kw["static_words"]),
                                                                         real(fig, trace, **kw))[1])
    path = write(tmp_path, STEP)
    for n in (0, 4):
        assert cli.main(["run", str(path), "--set", f"model.defer_embedding_wgrad={n}", "--out", str(tmp_path / f"o{n}"),
                         "--plots", "png"]) == 0
        dualpipe_sim.save_memory(simulation.run(deferred(path, n)), tmp_path / f"m{n}.png")
    buffers = "buffers (dynamic peak - activation peak)"
    assert [w.endswith("P2P / all-to-all " + buffers) for w in said] == [True, True, False, False]
    assert [w.endswith("P2P / all-to-all / deferred wgrad " + buffers) for w in said] == [False, False, True, True]


# -- a bidirectional schedule holds the output layer on two ranks: the deferral is Megatron-core's, on one ------------

@pytest.mark.parametrize("schedule, stages", [("dualpipe", 2), ("chimera", 2)])
def test_deferral_on_a_stage_two_ranks_hold_is_refused(tmp_path, capsys, schedule, stages):
    """DualPipe and Chimera run each stage on two ranks (one per direction): StepCosts.drain charged the whole drain of N
    GEMMs to both ranks holding the head while the N deferred micro-batches were split between them (Chimera) or all on
    one (DualPipe): the deferred GEMMs counted twice. Megatron-core's deferral is on its one last pipeline rank."""
    path = write(tmp_path, STEP, microbatches=6)
    out = tmp_path / "o"
    code = cli.main(["run", str(path), "--set", "model.defer_embedding_wgrad=3", "--set", f'pipeline.schedule="{schedule}"',
                     "--set", f"pipeline.stages={stages}", "--out", str(out), "--plots", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model.defer_embedding_wgrad: ") and "ranks 0 and 1" in err, err
    assert "Traceback" not in err and not out.exists()


def test_deferral_on_dualpipev_runs_on_the_one_rank_holding_the_head(tmp_path):
    """DualPipeV folds stages 0 and 3 onto rank 0: the head's stage (3) is on rank 0 alone, which takes the drain."""
    path = write(tmp_path, STEP, microbatches=6)
    sc = deferred(path, 3)
    raw = sc.model_dump(exclude_unset=True)
    raw["pipeline"].update(schedule="dualpipev", stages=4)
    raw["model"]["num_hidden_layers"] = 8
    r = simulation.run(scenario.from_dict(raw))
    drains = r.inputs.step_costs.drains(r.trace.stages_on_rank)
    assert drains[0] > 0 and drains[1] == 0.0


def test_compare_skips_the_schedules_that_hold_the_head_twice(tmp_path):
    """compare with the key: dualpipe and chimera skipped with the rule's words, the one-way schedules run."""
    from dualpipe_sim import compare

    path = write(tmp_path, STEP, microbatches=8)
    c = compare.compare(deferred(path, 3), ["1f1b", "dualpipe", "chimera", "zb-h1"])
    assert [r.metrics.schedule for r in c.results] == ["1f1b", "zb-h1"]
    assert {name for name, _ in c.skipped} == {"dualpipe", "chimera"}
    assert all(why.field == "model.defer_embedding_wgrad" for _, why in c.skipped)
