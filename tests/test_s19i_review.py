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
