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
