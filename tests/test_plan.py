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
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.plan import PlanError, reason_kind
from dualpipe_sim.plan.chart import fitting_front, pareto
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
    M >= stages, and dualpipev not with ZeRO 3 (it runs weight gradients apart, W ops: s20o).  Selective recompute is
    not worth it beside none (flash attention), so it is pruned; zero 0, 2 and 3 equal 1 with one data-parallel rank
    (pruned there): none and full at zero 0, 1, 2 and 3 remain where data > 1 (dualpipev's without zero 3), at zero 1
    where data = 1 (no rule prunes zero 0 or 1 beside a data-parallel group since s20l: each can be the fastest,
    test_zero_0_is_kept_where_it_beats_zero_1 and test_zero_1_is_kept_where_it_beats_zero_2)."""
    out = set()
    for (t, p, d), by_mbs in HAND_LAYOUTS.items():
        for mbs, m in by_mbs.items():
            for rc in ("none", "full"):
                for z in (0, 1, 2, 3) if d > 1 else (1,):
                    out.add(("1f1b", t, p, d, mbs, m, p, rc, z))
                    if 2 * p <= 4 and m >= 2 * p and z < 3:  # dualpipev has W ops: ZeRO 3 not modelled (s20o)
                        out.add(("dualpipev", t, p, d, mbs, m, 2 * p, rc, z))
    return out


def test_every_complete_candidate_is_listed(tiny):
    complete = [r.candidate for r in tiny.rows if not r.pruned]
    got = {(c.schedule, c.tensor, c.pipeline, c.data, c.micro_batch_size, c.microbatches, c.stages, c.recompute,
            c.zero) for c in complete}  # fmt: skip
    assert got == hand_complete()
    # 17 (layout, mbs) pairs run 1f1b, 8 of them with data > 1 (2 recompute x 4 zero), 9 with data 1 (2 x 1);
    # 9 run dualpipev, 4 of them with data > 1 (2 recompute x 3 zero: not zero 3, W ops, s20o)
    assert len(got) == (8 * 8 + 9 * 2) + (4 * 6 + 5 * 2)


def test_every_pruning_reason_is_counted(tiny):
    # 1f1b: 17 pairs x 3 recompute x 4 zero = 204 rows; dualpipev: 9 pairs x 12 = 108 rows, the 3 pairs
    # with pipeline 4 need 8 stages (> 4 layers), and 5 pairs have M < stages (A: M1; D: M1; B: M2, M1;
    # E: M2).  Selective rows: (17 + 9) x 4; zero 2 and 3 at none and full on the pairs with data 1 (9 of
    # 1f1b's, 5 of dualpipev's): 14 x 4; zero 0 there: 14 x 2; dualpipev's zero 3 at none and full on its 4 pairs
    # with data > 1 (it runs weight gradients apart, W ops: s20o): 8.
    assert tiny.pruned == {
        "parallel.context: must leave at least 2048 tokens of the sequence per context rank": 3,
        "global batch: must be a multiple of parallel.data x model.micro_batch_size": 1,
        "GPUs: must be a multiple of parallel.tensor x parallel.context": 6,
        "pipeline.stages: must be at most the model's 4 layers": 3,
        'memory.recompute: "selective" under flash attention reruns the flash forward to free only its log-sum-exp': 104,
        'pipeline.schedule = "dualpipev": pipeline.microbatches': 5,
        "parallel.tensor: must divide the model's 4 attention heads": 1,
        "parallel.zero: 2 and 3 equal 1 with one data-parallel rank (nothing to shard)": 56,
        "parallel.zero: 0 equals 1 with one data-parallel rank (nothing to shard)": 28,
        'parallel.zero: 3 (FSDP) with pipeline.schedule = "dualpipev", which runs weight gradients apart (W ops), '
        "is not modelled (the run refuses it)": 8,
    }
    assert len(tiny.rows) == 1 + 6 + 3 + 1 + 204 + 3 + 5 + 108


# s20l: found by tests/test_plan_pruning_sound.py.  Each pair below is one layout at two ZeRO stages, simulated
# (plan/simulate.py run_candidate, as plan simulates its survivors); the lower stage is the faster, so a rule that
# pruned it ("0 never beats 1", "1 never beats 2", both dropped: docs/plan.md, "Pruning") lost the better candidate.
TINIER = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 4, "intermediate_size": 256, "vocab_size": 1000}  # fmt: skip
WIDER = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 32000}  # fmt: skip
LAYOUT = ["parallel.tensor=1", "parallel.context=1", "model.micro_batch_size=1", "memory.recompute=none"]


def _both_zeros(tmp_path, model, gpus, batch, pipeline, low):
    """plan's rows of the layout (1F1B, TP1, the given pipeline, mbs 1, recompute none) at ZeRO ``low`` and ``low`` + 1."""
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model))
    result = ds_plan(config, gpus, batch, 2048, hardware="H100", schedules=["1f1b"], jobs=1, overrides=LAYOUT)
    return [next(r for r in result.rows if r.candidate.pipeline == pipeline and r.candidate.zero == z) for z in (low, low + 1)]


def test_zero_0_is_kept_where_it_beats_zero_1(tmp_path):
    # 2 layers of hidden 128 on 8 H100, PP2 DP4, M = 1: ZeRO 1's optimizer shard saves a few us of streaming, while
    # the next step's start waits for stage 0's first parameter all-gather (latency-bound): 0.484 ms against 0.512
    zero0, zero1 = _both_zeros(tmp_path, TINIER, 8, 4, 2, 0)
    assert not zero0.pruned and not zero1.pruned and zero0.ok and zero1.ok
    assert zero0.simulated["step.total"] < zero1.simulated["step.total"]
    assert zero0.simulated["step.optimizer"] < zero1.simulated["step.optimizer"]  # where ZeRO 1 loses: its step end


def test_zero_1_is_kept_where_it_beats_zero_2(tmp_path):
    # 8 layers of hidden 2048 on 16 H100, PP2 DP8, M = 4: ZeRO 2 reduce-scatters every micro-batch's gradients
    # (docs/step.md, "ZeRO 2 and 3"); its step ends 2.5 us after ZeRO 1's, 46.93 ms, though it is no heavier and every
    # whole-gradient reduce-scatter fits under a micro-batch's F + B, the old rule's two conditions
    zero1, zero2 = _both_zeros(tmp_path, WIDER, 16, 32, 2, 1)
    assert not zero1.pruned and not zero2.pruned and zero1.ok and zero2.ok
    assert zero1.simulated["step.total"] < zero2.simulated["step.total"]
    assert zero2.simulated["memory.total"] <= zero1.simulated["memory.total"]


def test_small_space_is_simulated_whole_and_ranked_by_throughput(tiny):
    complete = [r for r in tiny.rows if not r.pruned]
    assert all(r.ok for r in complete)  # 116 survivors < the default budget: every one simulated
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
    memory = [r for r in small.rows if r.pruned.startswith("memory: ")]  # not memory.recompute: ...
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
    # (4, 5) needs more than the device's 3.5: the front stops at (2, 3); (3, 2) is beaten by it
    assert fitting_front([(3, 2), (1, 1), (4, 5), (2, 3)], 3.5) == [1, 3]
    assert fitting_front([(3, 2), (1, 1), (4, 5), (2, 3)], None) == [1, 3, 2]


def test_reason_kinds_drop_figures():
    assert reason_kind("memory: at least 90.1 GB per rank > 80.0 GB") == "memory"
    assert reason_kind('pipeline.schedule = "dualpipe": pipeline.microbatches: needs an even number >= 1 (half enter '
                       'from each end), got 3') == 'pipeline.schedule = "dualpipe": pipeline.microbatches'
    assert reason_kind("model: model.defer_embedding_wgrad: needs pipeline.stages >= 2 (...)") == \
        "model: model.defer_embedding_wgrad"
    assert reason_kind("duplicate: same costs and memory as candidate 12") == "duplicate"


def test_pins_narrow_the_space(config):
    pinned = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1,
                     overrides=["parallel.tensor=2", "memory.recompute=full"])  # fmt: skip
    complete = [r.candidate for r in pinned.rows if not r.pruned]
    assert {c.tensor for c in complete} == {2} and {c.recompute for c in complete} == {"full"}
    assert len(complete) == 15  # (2,1,2) x 3 mbs x zero 0-3 + (2,2,1) x 3 mbs x zero 1


def test_a_pinned_context_degree_is_kept_below_the_token_floor(config):
    # Context 2 halves the 2048 tokens to 1024 a rank, under the 2048 plan keeps unpinned (3 such layouts pruned in
    # test_every_pruning_reason_is_counted).  Pinned, the user asked for it: tensor x 2 divides 4 GPUs for t1 (p x d
    # = 2: (1, 2), (2, 1)) and t2 (1, 1); t4 x 2 = 8 does not.
    pinned = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1,
                     overrides=["parallel.context=2", "memory.recompute=none", "parallel.zero=1"])  # fmt: skip
    complete = [r.candidate for r in pinned.rows if not r.pruned]
    assert {c.context for c in complete} == {2}
    assert {(c.tensor, c.pipeline, c.data) for c in complete} == {(1, 1, 2), (1, 2, 1), (2, 1, 1)}
    assert not any(reason.startswith("parallel.context:") for reason in pinned.pruned)


@pytest.mark.parametrize("kwargs, words", [
    (dict(gpus=7), "gpus: no layout of the model runs on 7 GPUs"),
    (dict(hardware="H900"), "hardware: unknown GPU preset 'H900'"),
    (dict(gpus=0), "gpus: must be a whole number >= 1"),
    (dict(overrides=["pipeline.stages=4"]), "pipeline.stages: plan chooses it"),
    (dict(overrides=['pipeline.schedule="gpipe"']), "pipeline.schedule: plan chooses it"),
    (dict(overrides=["parallel.data=2"]), "parallel.data: plan chooses it"),
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
    assert len(rows) == 331 and required - {"scenario"} <= set(rows[0])
    assert sum(r["simulated"] == "yes" for r in rows) == 116 and sum(bool(r["pruned"]) for r in rows) == 215
    assert {r["zero"] for r in rows if r["simulated"] == "yes"} == {"0", "1", "2", "3"}
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
    assert proc.stderr.startswith("error: --gpus: no layout") and len(proc.stderr.strip().splitlines()) == 1
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
    # every (layout, mbs) pair of HAND_LAYOUTS: zero 0-3 where data > 1, zero 1 where data = 1
    assert len(complete) == 8 * 4 + 9


# -- ZeRO 2 and 3 in the search ------------------------------------------------------------------


def test_fsdp_with_expert_parallelism_is_pruned_and_counted():
    # The tiny model with 4 routed experts, 1f1b only.  Expert degrees by (tensor, pipeline, data): e
    # divides 4 experts and data x tensor.  A zero-3 row (none or full recompute) with e > 1 is pruned
    # as not modelled unless the one-rank rule (data 1, tensor = expert) takes it first:
    # (1,1,4): e2, e4 x 2 mbs; (1,2,2): e2 x 3; (1,4,1): none; (2,1,2): e2, e4 x 3; (2,2,1): e2 is
    # one-rank; (4,1,1): e2 x 3 (e4 one-rank).  16 per policy, 32 rows (ETP 1, plan's default; with
    # --search-expert-tensor 38: tests/test_plan_etp.py).
    from dualpipe_sim.plan.shapes import shapes
    from dualpipe_sim.plan.space import ModelShape, Request, enumerate_candidates

    rows = list(enumerate_candidates(ModelShape(heads=4, layers=4, experts=4), Request(4, 8, 2048), shapes(["1f1b"])))
    fsdp = [c for c in rows if c.pruned.startswith("parallel.zero: 3 (FSDP) with parallel.expert > 1")]
    assert len(fsdp) == 32
    assert all(c.zero == 3 and c.expert > 1 and c.recompute in ("none", "full") for c in fsdp)
    complete = [c for c in rows if not c.pruned]
    assert not any(c.zero == 3 and c.expert > 1 for c in complete)
    assert any(c.zero == 3 and c.expert == 1 and c.data > 1 for c in complete)  # FSDP without EP stays
    assert any(c.zero == 2 and c.expert > 1 for c in complete)  # ZeRO 2 with EP stays


def test_zero_2_and_3_equal_zero_1_on_one_data_parallel_rank(config):
    # The rule that prunes them: over one rank a ZeRO shard is the whole and every collective is
    # empty, so the simulation gives the same metrics to the byte (1f1b, TP1 PP4 DP1, and TP2 PP2 DP1).
    from dualpipe_sim.plan.request import base_scenario
    from dualpipe_sim.plan.simulate import run_candidate

    base = base_scenario(config, "H100", 2048, [])
    for t, p in ((1, 4), (2, 2)):
        runs = [run_candidate(base, tuple(Candidate(tensor=t, context=1, pipeline=p, data=1, expert=1, micro_batch_size=1,
                                                    microbatches=8, schedule="1f1b", stages=p, recompute="none",
                                                    zero=z).overrides())) for z in (1, 2, 3)]  # fmt: skip
        assert runs[0]["status"] == "ok" and runs[0] == runs[1] == runs[2]


def test_memory_floor_sees_zero_savings(config):
    # Static bytes per parameter with bf16 parameters, fp32 gradients and Adam (fp32 master + two fp32
    # moments: 12 B) over 4 data-parallel ranks: ZeRO 1 2 + 4 + 12/4 = 9; ZeRO 2 2 + (4 + 12)/4 = 6;
    # ZeRO 3 (2 + 4 + 12)/4 = 4.5.  The floor that prunes by memory is those bytes + the runtime allowance.
    from dualpipe_sim.plan.estimate import FigureCache, static_floor
    from dualpipe_sim.plan.request import base_scenario

    cache = FigureCache(base_scenario(config, "H100", 2048, []))
    cands = [Candidate(tensor=1, context=1, pipeline=1, data=4, expert=1, micro_batch_size=1, microbatches=2,
                       schedule="1f1b", stages=1, recompute="none", zero=z) for z in (1, 2, 3)]  # fmt: skip
    static = [static_floor(cache, c) - cache.runtime(c) for c in cands]
    assert static[1] / static[0] == pytest.approx(6 / 9) and static[2] / static[0] == pytest.approx(4.5 / 9)
    # and the figures the estimate adds activations to hold the same shards (plus ZeRO 2/3's buffers)
    full = [cache.figures(c).static[0] for c in cands]
    assert full == pytest.approx(static)
    # The tiny model by hand: a layer 4 x 256^2 (attention) + 3 x 256 x 512 (MLP) + 2 x 256 (norms) =
    # 655,872; with the embedding and head (1000 x 256 each) and the final norm, 3,135,744 parameters.
    assert static[0] == 9 * 3_135_744
    # ZeRO 2 holds two units' whole fp32 gradients (the largest unit: a layer), ZeRO 3 also their bf16 parameters
    assert [cache.figures(c).buffers[0] for c in cands] == [0, 2 * 4 * 655_872, 2 * (4 + 2) * 655_872]


def test_every_schedule_has_its_own_colour_and_shape_in_the_chart():
    from dualpipe_sim.outputs.plots.style import schedule_colour
    from dualpipe_sim.plan.chart import schedule_marker
    from dualpipe_sim.schedules import registry

    names = list(registry.families())
    assert len({(schedule_colour(n), schedule_marker(n)) for n in names}) == len(names)
    assert len({schedule_marker(n) for n in names}) == len(names)  # the shape alone tells them apart


@pytest.mark.parametrize("legacy", [False, True])
def test_figure_cache_equals_a_fresh_derivation_of_each_candidate(tiny, config, legacy):
    # FigureCache derives the stage times once for every data-parallel degree and ZeRO 0-2 and works
    # the memory out per candidate; each complete candidate's figures must equal its own derivation.
    # Megatron-LM 2021 with bf16 gradients costs an accumulation pass that depends on the micro-batch
    # count (model/derive.py's grad_accumulation_bytes), so there the data degree is part of the key.
    from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
    from dualpipe_sim.plan.estimate import FigureCache

    if legacy:
        tiny = ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b", "dualpipev"], jobs=1, budget=1,
                       overrides=['model.runtime="megatron-lm-2021"', 'model.grads_dtype="bf16"'])  # fmt: skip
    complete = [r.candidate for r in tiny.rows if not r.pruned]
    assert {c.data for c in complete} == {1, 2, 4} and {c.zero for c in complete} == {0, 1, 2, 3}
    # ZeRO 1 and 2 share one derivation: each complete candidate's twin at the other stage goes in too (a plan
    # whose cache mixed the two up prunes the wrong twin, so the complete ones alone would not show it)
    twins = [replace(c, zero=3 - c.zero) for c in complete if c.zero in (1, 2)]
    complete = list(dict.fromkeys(complete + twins))
    fresh = {c: sections_only(apply_overrides(tiny.base, c.overrides())).derived() for c in complete}
    # Which candidate derives a shared entry first depends on the order asked: both orders of data.
    for order in (1, -1):
        cache = FigureCache(tiny.base)
        for cand in sorted(complete, key=lambda c: order * c.data):
            fig, own = cache.figures(cand), fresh[cand]
            assert fig.static == tuple(st.static.total for st in own.stages)
            assert fig.buffers == tuple(st.sharding_buffers for st in own.stages)
            assert fig.activation == tuple(own.activation_bytes)
            assert fig.work == tuple(st.forward + st.backward for st in own.stages)
            # the [step] figures the estimated step's end reads: the candidate's own, whatever the
            # shared derivation's sharding and whichever candidate filled the entry first
            assert cache.step_costs(cand) == sections_only(apply_overrides(tiny.base, cand.overrides())).step_costs(own)


def test_a_config_removed_mid_run_fails_its_candidates_not_the_plan(tmp_path, monkeypatch):
    # The config is read before any candidate runs; a file gone once simulation starts fails the
    # candidates (each row names model.config) and the plan still returns its ranked rows.
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    real = sys.modules["dualpipe_sim.plan"]._simulate

    def remove_then_simulate(*args, **kwargs):
        path.unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules["dualpipe_sim.plan"], "_simulate", remove_then_simulate)
    result = ds_plan(path, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1, budget=2)
    simulated = [r for r in result.rows if r.simulated is not None]
    assert simulated and not path.exists()
    assert all(r.simulated["status"] == "error" and "model.config" in r.simulated["reason"] for r in simulated)


def test_empty_top_table_says_why():
    # s14f: a plan whose simulated layouts all exceed the device printed a bare table header. Two simulated rows
    # at 95 and 90 GB on an 80 GB device (one failed row ignored): the note gives 2 rows and the smaller, 90 GB.
    from types import SimpleNamespace as NS

    from dualpipe_sim.plan import files

    rows = [NS(ok=True, peak_memory=95e9), NS(ok=False, peak_memory=None), NS(ok=True, peak_memory=90e9)]
    note = files.none_fits(NS(top=[], rows=rows, device_memory=80e9))
    assert note.startswith("No simulated layout fits the device: the 2 simulated peak at 90 GB or more per GPU "
                           "against 80 GB.")
    assert "a larger budget" in note
    assert files.none_fits(NS(top=[], rows=[NS(ok=False, peak_memory=None)], device_memory=80e9)).startswith(
        "No layout could be simulated")
    assert files.none_fits(NS(top=[rows[0]], rows=rows, device_memory=80e9)) is None


def test_chart_draws_the_front_above_the_dots_and_through_the_top_k_rings(tiny, tmp_path, monkeypatch):
    # s14h: the Pareto line was hidden under the top-K circles.  Order now: other dots < the line < the front's
    # own dots < the top K's rings, which are hollow and wider than a dot, so the line shows through them.
    from matplotlib.collections import PathCollection

    from dualpipe_sim.plan import chart

    figs = []
    monkeypatch.setattr(chart, "save", lambda fig, path: figs.append(fig))
    chart.draw(tiny, tmp_path / "plan.png")
    ax = figs[0].axes[0]
    rows = [r for r in tiny.rows if r.ok and r.tokens_per_second_per_gpu]
    pts = [(r.peak_memory / 1e9, r.tokens_per_second_per_gpu) for r in rows]
    front = chart.fitting_front(pts, tiny.device_memory / 1e9)
    line = next(x for x in ax.lines if x.get_linestyle() == "-")  # the device's memory is the dashed one
    assert list(zip(line.get_xdata(), line.get_ydata())) == [pts[i] for i in front]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    rings = [c for c in dots if not c.get_facecolors().size]  # hollow
    filled = [c for c in dots if c.get_facecolors().size and len(c.get_offsets())]
    assert len(rings) == len(tiny.top) >= 1
    above = {tuple(p) for c in filled if c.get_zorder() > line.get_zorder() for p in c.get_offsets()}
    below = {tuple(p) for c in filled if c.get_zorder() < line.get_zorder() for p in c.get_offsets()}
    assert above == {pts[i] for i in front} and below == set(pts) - above  # the front's dots on the line, no other
    assert min(r.get_zorder() for r in rings) > max(c.get_zorder() for c in filled)
    assert min(r.get_sizes()[0] for r in rings) > max(c.get_sizes()[0] for c in filled)  # a ring round the dot


# -- s15m: top-NN.toml's config path survives moving the output folder ---------------------------


def test_top_toml_config_is_absolute_outside_the_folder_relative_inside(tiny, config, tmp_path):
    """A config outside the output folder is written as its absolute path (moving the folder keeps
    it found); one inside it relative to the TOML (the folder moves with it).  Nothing else in the
    TOML depends on where the folder is."""
    from dualpipe_sim.inputs.scenario import load_raw
    from dualpipe_sim.plan import files

    out = tmp_path / "plan"
    out.mkdir()
    text = files.scenario_toml(tiny, tiny.top[0], out)
    assert f'config = "{config.resolve()}"' in text.splitlines()
    (out / "top-01.toml").write_text(text)
    moved = tmp_path / "elsewhere" / "plan"
    moved.parent.mkdir()
    out.rename(moved)
    assert load_raw(moved / "top-01.toml")["model"]["config"] == str(config.resolve())
    assert Path(load_raw(moved / "top-01.toml")["model"]["config"]).is_file()
    # The same TOML for another folder differs only in that line.
    other = files.scenario_toml(tiny, tiny.top[0], tmp_path / "a" / "b")
    assert text == other
    # Inside: the config in the output folder (or below it) is named relative to it.
    assert files.config_path(str(out / "tiny.json"), out) == "tiny.json"
    assert files.config_path(str(out / "models" / "tiny.json"), out) == "models/tiny.json"
    assert files.config_path(str(tmp_path / "tiny.json"), out) == str(tmp_path / "tiny.json")
    assert files.config_path(str(tmp_path / "plan2" / "tiny.json"), out) == str(tmp_path / "plan2" / "tiny.json")


def test_top_toml_with_its_config_inside_moves_with_the_folder(tiny, config, tmp_path):
    from dualpipe_sim.inputs.scenario import load_raw
    from dualpipe_sim.plan import files

    out = tmp_path / "plan"
    (out / "models").mkdir(parents=True)
    inside = out / "models" / "tiny.json"
    inside.write_text(config.read_text())
    plan = ds_plan(inside, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1, top=1)
    text = files.scenario_toml(plan, plan.top[0], out)
    assert 'config = "models/tiny.json"' in text.splitlines()
    (out / "top-01.toml").write_text(text)
    out.rename(tmp_path / "moved")
    moved = load_raw(tmp_path / "moved" / "top-01.toml")["model"]["config"]
    assert moved == str(tmp_path / "moved" / "models" / "tiny.json") and Path(moved).is_file()


def test_every_pruning_reason_names_a_scenario_key_or_a_flag(tiny):
    # s19d: a reason starts with what rules the candidate out in the user's terms: a scenario key a candidate sets
    # (request.PINS, request.CHOSEN), the request's GPUs or global batch in plan.md's words ("# Plan: 4 GPUs, global
    # batch 8 x 2048 tokens"; the library names no CLI flag, tests/test_architecture.py), or one of the three kinds
    # that are no one key's (memory, model, duplicate); never a library keyword such as global_batch or a column
    # such as layers
    from dualpipe_sim.plan.request import CHOSEN, PINS
    from dualpipe_sim.plan.shapes import shapes
    from dualpipe_sim.plan.space import Choices, ModelShape, Request, enumerate_candidates
    from dualpipe_sim.schedules import registry

    allowed = {*PINS, *CHOSEN, "GPUs", "global batch", "memory", "model", "duplicate"}
    reasons = {r.pruned for r in tiny.rows if r.pruned}
    models = [ModelShape(heads=4, layers=4, experts=0), ModelShape(heads=6, kv_heads=2, layers=6, experts=6,
                                                                     expert_ffn=6),
              ModelShape(heads=4, layers=4, experts=4, expert_ffn=512, whole_experts="kernel model only")]  # fmt: skip
    for model in models:
        for choices in (Choices(), Choices(search_expert_tensor=True), Choices(expert_tensor=(2,), context=(1, 2, 3))):
            for c in enumerate_candidates(model, Request(12, 24, 4098, gpus_per_node=4), shapes(registry.families()),
                                          choices):  # fmt: skip
                if c.pruned:
                    reasons.add(c.pruned)
    heads = {r.split(": ")[0].split(" = ")[0] for r in reasons}
    assert heads <= allowed, heads - allowed
    # every rule of space.py fired at least once here (so the check above saw each wording)
    assert {"parallel.tensor", "parallel.context", "GPUs", "pipeline.stages", "parallel.expert",
            "parallel.expert_tensor", "global batch", "pipeline.chunks_per_rank", "pipeline.schedule",
            "memory.recompute", "parallel.zero"} <= heads  # fmt: skip
