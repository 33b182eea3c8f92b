"""simulation.py branches the s16g coverage run found no test reaching: a schedule file whose stage count
is not the scenario's (one line, exit 2), and memory.parameters typed by hand beside a [model] (it replaces the
derived parameter bytes in each rank's total; gradients and optimizer stay the model's)."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from tests.helpers import TINY_LLAMA_MODEL, cli_error

QUICK = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"  # 8 stages
BASE = tomllib.loads('[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n' + TINY_LLAMA_MODEL
                    + '[hardware]\npreset = "H100"\n')  # fmt: skip
# stage 0 of the tiny Llama: the embedding (1000 x 256) and 2 layers of 655,872 (tests/test_cover_derived_step.py)
STAGE_0 = 1000 * 256 + 2 * (4 * 256 * 256 + 3 * 256 * 512 + 2 * 256)


def test_a_schedule_file_with_another_stage_count_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "run").mkdir()
    one = tmp_path / "in" / "one.json"
    one.write_text(json.dumps({"ranks": [[{"kind": "F", "microbatch": 0, "stage": 0},
                                          {"kind": "B", "microbatch": 0, "stage": 0}]]}))  # fmt: skip
    line = cli_error(tmp_path / "run", "run", str(QUICK), "--schedule-file", str(one))
    assert line == "error: pipeline.stages: the schedule file has 1 stages, the scenario 8"


def test_typed_parameters_replace_the_derived_ones_in_each_ranks_total():
    derived = simulation.run(scenario.from_dict(BASE)).metrics.per_rank[0].memory
    typed_raw = copy.deepcopy(BASE)
    typed_raw["memory"] = {"parameters": 1e9}
    typed = simulation.run(scenario.from_dict(typed_raw)).metrics.per_rank[0].memory
    assert derived.parameters == STAGE_0 * 2  # bf16 weights: 3,135,488 bytes
    assert typed.parameters == 1e9
    assert typed.total - derived.total == 1e9 - STAGE_0 * 2
    # the rest is still the model's: fp32 gradients (4 bytes), Adam's fp32 master, m and v (12 bytes)
    assert (typed.gradients, typed.optimizer) == (derived.gradients, derived.optimizer) == (STAGE_0 * 4, STAGE_0 * 12)
