"""``plan``: enumeration and pruning on a hand-worked small model, the ranking, and the outputs.

The small model: 4 layers, 4 attention heads (flash attention), dense; 4 GPUs of an H100 node,
global batch 8 sequences of 2048 tokens, schedules 1f1b and dualpipev.  Every row below is
counted by hand from the rules in docs/plan.md, not read off a previous run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import PlanError, reason_kind
from dualpipe_sim.plan.chart import pareto
from dualpipe_sim.plan.estimate import Estimate
from dualpipe_sim.plan.rank import Row, ranked, to_simulate
from dualpipe_sim.plan.shapes import shape
from dualpipe_sim.plan.space import Candidate

TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def tiny(config):
    return ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b", "dualpipev"], jobs=1)


# The layouts by hand.  tensor 8 does not divide 4 heads; tensor x context must divide 4 GPUs
# (t1: c8; t2: c4, c8; t4: c2, c4, c8 fail); context > 1 leaves < 2048 tokens per rank (t1: c2, c4;
# t2: c2).  Then (tensor, pipeline, data) and micro-batch size -> M = 8 / (data x mbs):
HAND_LAYOUTS = {  # (tensor, pipeline, data): {mbs: M}
    (1, 1, 4): {1: 2, 2: 1},  # mbs 4: 8 % 16 -> pruned (global_batch)
    (1, 2, 2): {1: 4, 2: 2, 4: 1},
    (1, 4, 1): {1: 8, 2: 4, 4: 2},
    (2, 1, 2): {1: 4, 2: 2, 4: 1},
    (2, 2, 1): {1: 8, 2: 4, 4: 2},
    (4, 1, 1): {1: 8, 2: 4, 4: 2},
}


def hand_complete() -> set[tuple]:
    """(schedule, tensor, pipeline, data, mbs, M, stages, recompute, zero) of every complete candidate:
    1f1b runs every layout (stages = pipeline); dualpipev needs stages = 2 x pipeline <= 4 layers and
    M >= stages.  Selective recompute equals none (flash attention) and zero 0 never beats zero 1, so
    both are pruned: none and full at zero 1 remain."""
    out = set()
    for (t, p, d), by_mbs in HAND_LAYOUTS.items():
        for mbs, m in by_mbs.items():
            for rc in ("none", "full"):
                out.add(("1f1b", t, p, d, mbs, m, p, rc, 1))
                if 2 * p <= 4 and m >= 2 * p:
                    out.add(("dualpipev", t, p, d, mbs, m, 2 * p, rc, 1))
    return out


def test_every_complete_candidate_is_listed(tiny):
    complete = [r.candidate for r in tiny.rows if not r.pruned]
    got = {(c.schedule, c.tensor, c.pipeline, c.data, c.micro_batch_size, c.microbatches, c.stages, c.recompute,
            c.zero) for c in complete}  # fmt: skip
    assert got == hand_complete()
    assert len(got) == 17 * 2 + 9 * 2  # 17 (layout, mbs) pairs run 1f1b; 9 run dualpipev


def test_every_pruning_reason_is_counted(tiny):
    # 1f1b: 17 pairs x 3 recompute x 2 zero = 102 rows; dualpipev: 9 pairs x 6 = 54 rows, the 3 pairs
    # with pipeline 4 need 8 stages (> 4 layers), and 5 pairs have M < stages (A: M1; D: M1; B: M2, M1;
    # E: M2).  Selective rows: (17 + 9) x 2; zero-0 rows besides those: (17 + 9) x 2.
    assert tiny.pruned == {
        "context: fewer than 2048 tokens per context rank": 3,
        "global_batch: not a multiple of data x micro_batch_size": 1,
        "gpus: 4 not a multiple of tensor x context": 6,
        "layers": 3,
        "recompute: selective equals none under flash attention (it saves only the scores)": 52,
        "schedule: dualpipev": 5,
        "tensor: does not divide the 4 attention heads": 1,
        "zero: 0 never beats 1 here (same compute, sharded optimizer; the model costs no all-gather)": 52,
    }
    assert len(tiny.rows) == 1 + 6 + 3 + 1 + 102 + 3 + 5 + 54


def test_small_space_is_simulated_whole_and_ranked_by_throughput(tiny):
    complete = [r for r in tiny.rows if not r.pruned]
    assert all(r.ok for r in complete)  # 52 survivors < the default budget: every one simulated
    tokens_per_gpu = 8 * 2048 / 4
    for r in complete:  # tokens/s per GPU = the step's tokens on one GPU / the step time
        assert r.tokens_per_second_per_gpu == pytest.approx(tokens_per_gpu / (r.simulated["step.total"] / 1e3))
    fitting = [r for r in tiny.rows if r.ok and r.fits]
    assert tiny.rows[: len(fitting)] == fitting  # fitting first, then the pruned rows
    keys = [(-r.tokens_per_second_per_gpu, r.peak_memory) for r in fitting]
    assert keys == sorted(keys)
    assert tiny.top == fitting[:10]


def test_memory_floor_is_below_every_simulated_peak(tiny):
    # The floor prunes without simulating, so it must never exceed what the engine finds.
    for r in tiny.rows:
        if r.ok:
            assert r.estimate.memory_floor <= r.simulated["memory.total"] * (1 + 1e-12)
            if r.candidate.pipeline == 1 and r.candidate.schedule == "1f1b":  # one micro-batch alive at a time
                assert r.estimate.memory_floor == pytest.approx(r.simulated["memory.total"])


def test_memory_pruning_counts_and_respects_the_device(config):
    # An H100 with 1.79 GB: the floor (static, runtime allowance and one micro-batch of activations)
    # prunes some layouts; every simulated one that fits is under the device.
    small = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1,
                    overrides=["hardware.hbm=1.79e9"])  # fmt: skip
    memory = [r for r in small.rows if r.pruned.startswith("memory")]
    assert memory and small.pruned["memory"] == len(memory)
    assert all(r.estimate is None or r.estimate.memory_floor > 1.79e9 for r in memory)
    assert small.top and all(r.peak_memory <= 1.79e9 for r in small.top)
    assert any(r.ok and not r.fits for r in small.rows)  # over the device once simulated: ranked after


def _row(i, tps=None, mem=None, fits=True, est=None, pruned=""):
    r = Row(i, Candidate(tensor=1), pruned=pruned)
    if est is not None:
        r.estimate = Estimate(est, 0.0, 0.0)
    if tps is not None:
        r.simulated = {"status": "ok", "fits": fits, "memory.total": mem, "step.total": 1.0}
        r.tokens_per_second_per_gpu = tps
    return r


def test_ranking_by_hand():
    rows = [_row(0, pruned="tensor: x"), _row(1, est=5.0), _row(2, 100, 50), _row(3, 120, 70),
            _row(4, 120, 60), _row(5, 200, 90, fits=False), _row(6, est=4.0)]  # fmt: skip
    # fitting by throughput (ties: less memory) > not fitting > estimated only (by estimate) > pruned
    assert [r.index for r in ranked(rows)] == [4, 3, 2, 5, 6, 1, 0]


def test_simulation_choice_by_hand():
    # 100 candidates estimated 100, 101, ..., 199 ms: budget 1 -> the best 5% (5) and every one within
    # 10% of the best (100..110: 11 candidates)
    rows = [_row(i, est=100.0 + i) for i in range(100)]
    assert [r.index for r in to_simulate(rows, 1, None)] == list(range(11))
    assert [r.index for r in to_simulate(rows, 20, None)] == list(range(20))


def test_schedule_shapes_from_the_registry():
    assert (shape("1f1b").stages_per_rank, shape("1f1b").directions) == (1, 1)
    assert (shape("dualpipe").stages_per_rank, shape("dualpipe").directions) == (1, 2)
    assert (shape("dualpipev").stages_per_rank, shape("zbv").stages_per_rank) == (2, 2)
    assert shape("interleaved-1f1b").virtual and not shape("1f1b").virtual


def test_pareto_front_by_hand():
    # (memory, throughput): (1, 1) and (2, 3) and (4, 5) are on the front; (3, 2) is beaten by (2, 3)
    assert pareto([(3, 2), (1, 1), (4, 5), (2, 3)]) == [1, 3, 2]


def test_reason_kinds_drop_figures():
    assert reason_kind("memory: at least 90.1 GB per rank > 80.0 GB") == "memory"
    assert reason_kind("schedule: dualpipe: pipeline.microbatches must be even") == "schedule: dualpipe"


def test_pins_narrow_the_space(config):
    pinned = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1,
                     overrides=["parallel.tensor=2", "memory.recompute=full"])  # fmt: skip
    complete = [r.candidate for r in pinned.rows if not r.pruned]
    assert {c.tensor for c in complete} == {2} and {c.recompute for c in complete} == {"full"}
    assert len(complete) == 6  # (2,1,2) x 3 mbs + (2,2,1) x 3 mbs


@pytest.mark.parametrize("kwargs, words", [
    (dict(gpus=7), "gpus: no layout of the model runs on 7 GPUs"),
    (dict(hardware="H900"), "hardware: unknown GPU preset 'H900'"),
    (dict(gpus=0), "gpus: must be a whole number >= 1"),
    (dict(overrides=["pipeline.stages=4"]), "pipeline.stages: plan chooses it"),
])  # fmt: skip
def test_impossible_requests(config, kwargs, words):
    args = dict(gpus=4, hardware="H100", jobs=1)
    args.update(kwargs)
    with pytest.raises(PlanError, match=words.replace("(", r"\(")):
        ds_plan(config, args.pop("gpus"), 8, 2048, **args)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dualpipe_sim", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)  # fmt: skip


def test_cli_outputs_and_a_top_scenario_reproduces_its_metrics(config, tmp_path):
    out = tmp_path / "plan"
    proc = _cli("plan", config, "--gpus", 4, "--hardware", "H100", "--global-batch", 8, "--seq", 2048,
                "--schedules", "1f1b,dualpipev", "--top", 3, "--out", out, "--jobs", 1, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)
    assert [t["rank"] for t in top] == [1, 2, 3]
    required = {"tensor", "pipeline", "virtual", "context", "expert", "data", "micro_batch_size", "recompute", "zero",
                "schedule", "tokens_per_second_per_gpu", "step_time", "peak_memory", "fits", "pruned", "scenario"}
    assert required <= set(top[0])
    rows = list(csv.DictReader((out / "plan.csv").open()))
    assert len(rows) == 175 and required - {"scenario"} <= set(rows[0])
    assert sum(r["simulated"] == "yes" for r in rows) == 52 and sum(bool(r["pruned"]) for r in rows) == 123
    assert {p.name for p in out.iterdir()} == {"plan.csv", "plan.md", "plan.png", "top-01.toml", "top-02.toml",
                                               "top-03.toml"}  # fmt: skip
    # `run` on a written scenario gives the plan's figures
    run_out = tmp_path / "run"
    proc = _cli("run", top[1]["scenario"], "--out", run_out, "--plots", "none")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_out / "metrics.json").read_text())
    assert metrics["step"]["total"] == top[1]["step_time"]
    assert max(r["memory"]["total"] for r in metrics["per_rank"]) == top[1]["peak_memory"]


def test_cli_bad_request_is_one_line_exit_2_nothing_written(config, tmp_path):
    out = tmp_path / "plan"
    proc = _cli("plan", config, "--gpus", 7, "--hardware", "H100", "--global-batch", 8, "--seq", 2048, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: gpus: no layout") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_scenario_source_keeps_its_recompute_and_switches(config, tmp_path):
    # A TOML's memory.recompute pins the policy; its [parallel] degrees are plan's to choose, its
    # tp_comm_overlap switch is kept in every candidate.
    toml = tmp_path / "tiny.toml"
    toml.write_text(f'[model]\nconfig = "{config}"\n[memory]\nrecompute = "full"\n'
                    '[parallel]\ntensor = 2\ntp_comm_overlap = false\n[hardware]\npreset = "H100"\n')  # fmt: skip
    result = ds_plan(toml, 4, 8, 2048, schedules=["1f1b"], jobs=1)
    complete = [r.candidate for r in result.rows if not r.pruned]
    assert {c.recompute for c in complete} == {"full"}
    assert {c.tensor for c in complete} == {1, 2, 4}
    assert result.base["parallel"] == {"tp_comm_overlap": False}
    assert len(complete) == 17  # every (layout, mbs) pair of HAND_LAYOUTS, at zero 1
