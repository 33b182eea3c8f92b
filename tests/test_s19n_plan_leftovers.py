"""s19n: plan's leftovers from s19i's review.

1. A source TOML's [parallel]: the layout's degrees (LAYOUT_PARALLEL) are plan's to choose; the runtime's settings are
   kept; expert_tensor pins as ``--set parallel.expert_tensor`` does (and is refused beside the ETP search the same way).
2. The ETP search on a dense model changes nothing: plan.md and the terminal say so.
3. The memory floor and estimate count model.defer_embedding_wgrad's buffers (model/deferred_wgrad.py held_bytes) on
   the rank holding the output layer.
"""

from __future__ import annotations

import csv
import json

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim import simulation
from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.model.sections import ParallelSection
from dualpipe_sim.plan import files
from dualpipe_sim.plan.estimate import FigureCache, deferred_held, memory_estimate
from dualpipe_sim.plan.request import KEPT_PARALLEL, LAYOUT_PARALLEL, base_scenario, pinned_choices, source_pins
from dualpipe_sim.plan.space import Candidate

TINY_MOE = {"model_type": "mixtral", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 512, "num_local_experts": 4, "num_experts_per_tok": 2,
            "vocab_size": 1000}  # fmt: skip
TINY_DENSE = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip


def _source(tmp_path, model: dict, parallel: str) -> str:
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model))
    path = tmp_path / "source.toml"
    path.write_text(f'[model]\nconfig = "{config}"\n\n[hardware]\npreset = "H100"\n\n[parallel]\n{parallel}\n')
    return str(path)


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from dualpipe_sim.cli import main

    code = main(args)
    got = capsys.readouterr()
    return code, got.out, got.err


PLAN = ["--gpus", "4", "--global-batch", "8", "--seq", "2048", "--schedules", "1f1b", "--jobs", "1"]


# -- 1. a source's [parallel] ---------------------------------------------------------------------------------------
def test_every_parallel_key_is_kept_or_chosen():
    # a key added to [parallel] must be classified: kept from a source, or chosen by plan (docs/plan.md says which)
    assert not set(KEPT_PARALLEL) & set(LAYOUT_PARALLEL)
    assert set(KEPT_PARALLEL) | set(LAYOUT_PARALLEL) == set(ParallelSection.model_fields)


def test_source_parallel_keys_kept_pinned_or_dropped(tmp_path):
    src = _source(tmp_path, TINY_MOE, 'tensor = 2\nexpert = 4\ndata = 2\ncontext = 1\nzero = 1\nlayout = [2, 2]\n'
                                      'expert_tensor = 2\nrank_order = "tp-cp-ep-pp-dp"\ntp_max_ctas = 8\n'
                                      'sequence_parallel = false\ntp_overlap_sms = {qkv_dgrad = 8}')
    base = base_scenario(src, None, 2048, [])
    assert base["parallel"] == {"expert_tensor": 2, "rank_order": "tp-cp-ep-pp-dp", "tp_max_ctas": 8,
                                "sequence_parallel": False, "tp_overlap_sms": {"qkv_dgrad": 8}}  # fmt: skip
    assert source_pins(base) == ["parallel.expert_tensor=2"]
    assert pinned_choices(source_pins(base)).expert_tensor == (2,)
    # --unset takes the pin out before anything else: enumerated again (None: plan's default)
    unset = base_scenario(src, None, 2048, [], ["parallel.expert_tensor"])
    assert "expert_tensor" not in unset["parallel"] and pinned_choices(source_pins(unset)).expert_tensor is None


def test_source_etp_pin_is_every_layouts(tmp_path):
    # s19i's case: expert_tensor = 2 in the source and no flag gave every layout 1; now 2, as --set's pin gives
    src = _source(tmp_path, TINY_MOE, "expert_tensor = 2")
    got = ds_plan(src, 4, 8, 2048, schedules=["1f1b"], jobs=1, top=40)
    rows = list(csv.DictReader(files.plan_csv(got).splitlines()))
    complete = [r for r in rows if r["expert_tensor"]]
    assert complete and {r["expert_tensor"] for r in complete} == {"2"}
    assert any(r["simulated"] == "yes" for r in complete)
    assert files.etp_line(got) == ("Expert tensor parallelism (parallel.expert_tensor): 2 in every layout; plan does "
                                   "not search it (pinned by parallel.expert_tensor).")  # fmt: skip
    # top-01.toml reproduces it: the pin is in the scenario `run` is given
    assert "expert_tensor = 2" in files.scenario_toml(got, got.top[0], tmp_path)


def test_source_etp_pin_with_the_search_is_refused(tmp_path, capsys):
    src = _source(tmp_path, TINY_MOE, "expert_tensor = 1")
    with pytest.raises(ds_plan.PlanError) as err:
        ds_plan(src, 4, 8, 2048, schedules=["1f1b"], jobs=1, search_expert_tensor=True)
    assert err.value.field == "search_expert_tensor"
    out = tmp_path / "out"
    code, _, text = _cli(["plan", src, *PLAN, "--out", str(out), "--search-expert-tensor"], capsys)
    assert code == 2 and not out.exists() and "Traceback" not in text
    assert text.strip().splitlines() == [
        f"error: --search-expert-tensor: does not apply with parallel.expert_tensor = 1 in {src}, which pins it (the "
        f"pin fixes the expert tensor parallelism); drop one (unset parallel.expert_tensor to search it)"]


def test_unset_source_etp_searches_it(tmp_path):
    src = _source(tmp_path, TINY_MOE, "expert_tensor = 1")
    got = ds_plan(src, 4, 8, 2048, schedules=["1f1b"], jobs=1, top=40, unset=["parallel.expert_tensor"],
                  overrides=["parallel.tensor=2"], search_expert_tensor=True)  # fmt: skip
    rows = list(csv.DictReader(files.plan_csv(got).splitlines()))
    assert {r["expert_tensor"] for r in rows if r["expert_tensor"]} == {"1", "2"}  # TP 2: ETP 1 and 2


# -- 2. the ETP search on a dense model -------------------------------------------------------------------------------
def test_search_on_a_dense_model_says_it_changes_nothing(tmp_path, capsys):
    config = tmp_path / "dense.json"
    config.write_text(json.dumps(TINY_DENSE))
    out = tmp_path / "out"
    code, _, err = _cli(["plan", str(config), *PLAN, "--hardware", "H100", "--out", str(out), "--top", "2",
                         "--search-expert-tensor"], capsys)  # fmt: skip
    assert code == 0
    note = "note: --search-expert-tensor: the model has no experts, so it changes nothing (no layout has an ETP)"
    assert [line for line in err.splitlines() if line.startswith("note:")] == [note]
    md = (out / "plan.md").read_text()
    assert ("Expert tensor parallelism: the model has no experts, so the search-expert-tensor option changes nothing "
            "(no layout has an ETP).") in md.splitlines()
    # without the option: no line, no note (a dense plan has no ETP to speak of)
    out2 = tmp_path / "out2"
    code, _, err = _cli(["plan", str(config), *PLAN, "--hardware", "H100", "--out", str(out2), "--top", "2"], capsys)
    assert code == 0 and "note:" not in err and "Expert tensor" not in (out2 / "plan.md").read_text()


def test_search_on_a_whole_experts_base_notes_it_too(tmp_path):
    # hardware.efficiency: ETP > 1 is not costed, every layout keeps 1; the option changed nothing, and says so (the
    # CLI prints search_noop as the note above; plan.md's ETP line already gave the reason)
    from types import SimpleNamespace

    config = tmp_path / "moe.json"
    config.write_text(json.dumps(TINY_MOE))
    base = base_scenario(config, "H100", 2048, ["hardware.efficiency=0.5"])
    searched = SimpleNamespace(base=base, experts=4, search_expert_tensor=True)
    assert files.search_noop(searched) == (
        "the search-expert-tensor option changes nothing: every layout keeps ETP 1 (more than 1 is costed by the "
        "kernel model only (a hardware.preset and no hardware.efficiency))")
    assert files.search_noop(SimpleNamespace(base=base, experts=4, search_expert_tensor=False)) is None
    # a base that costs ETP > 1: the search ran, nothing to note
    costed = base_scenario(config, "H100", 2048, [])
    assert files.search_noop(SimpleNamespace(base=costed, experts=4, search_expert_tensor=True)) is None


# -- 3. model.defer_embedding_wgrad's buffers in the memory floor and estimate ----------------------------------------
# A 2-stage 1F1B on 2 GPUs, one micro-batch of 2048 tokens, 8 micro-batches, a vocabulary of 64,000 (its deferred
# buffers then outweigh the last stage's activations) and hidden 256, no tensor parallelism, BF16 activations.
BIG_VOCAB = {**TINY_DENSE, "num_hidden_layers": 8, "vocab_size": 64000}
TWO = Candidate(tensor=1, context=1, pipeline=2, data=1, expert=1, micro_batch_size=1, microbatches=8,
                schedule="1f1b", stages=2, recompute="full", zero=1)  # fmt: skip


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("s19n") / "big_vocab.json"
    path.write_text(json.dumps(BIG_VOCAB))
    return base_scenario(path, "H100", 2048, [])


def test_held_bytes_by_hand(big_vocab):
    # one deferred micro-batch keeps the output layer's input (2048 tokens x 256, whole without TP) and its output
    # gradient (2048 x 64,000), 2 bytes each: 2048 x 64,256 x 2 = 263,192,576; the key 8 on 8 micro-batches: 8 of them;
    # the key 12 is capped at the 8 micro-batches; held on stage 1, which holds the output layer
    for key in (8, 12):
        cache = FigureCache(apply_overrides(big_vocab, [f"model.defer_embedding_wgrad={key}"]))
        assert deferred_held(cache, TWO, cache.figures(TWO)) == (1, 8 * 263_192_576)
    cache = FigureCache(apply_overrides(big_vocab, ["model.defer_embedding_wgrad=4"]))
    assert deferred_held(cache, TWO, cache.figures(TWO)) == (1, 4 * 263_192_576)
    plain = FigureCache(big_vocab)
    assert deferred_held(plain, TWO, plain.figures(TWO)) is None


@pytest.mark.parametrize("layout", [[], ["parallel.layout=[7, 1]"]], ids=["even", "7-1"])
def test_floor_and_estimate_count_the_held_buffers(big_vocab, layout):
    # [7, 1]: rank 0 (the embedding and 7 layers) holds more static bytes than rank 1 (1 layer and the output layer),
    # so buffers counted on the wrong rank would show
    base = apply_overrides(big_vocab, layout)
    plain = FigureCache(base)
    deferred = FigureCache(apply_overrides(base, ["model.defer_embedding_wgrad=8"]))
    before, after = memory_estimate(plain, TWO), memory_estimate(deferred, TWO)
    act, static = plain.figures(TWO).activation, plain.figures(TWO).static
    assert act[1] > act[0]  # the last stage (its logits) is the fuller rank, and the floor's before
    if layout:
        assert static[0] > static[1]
    # the last rank: static + its micro-batch's activations before; static + the 8 buffers after, which are more
    held = 8 * 263_192_576
    assert held > act[1]
    assert after.memory_floor - before.memory_floor == pytest.approx(held - act[1], rel=1e-12)
    # the estimate: the closed form's 2 live activations of the smaller stage on each rank, or the buffers if more
    assert after.memory == after.memory_floor


@pytest.mark.parametrize("schedule,stages,virtual", [("1f1b", 2, None), ("gpipe", 2, None), ("zb-h1", 2, None),
                                                      ("dualpipev", 4, None), ("interleaved-1f1b", 4, 2)])
def test_floor_is_below_the_run_with_deferred_buffers(big_vocab, schedule, stages, virtual):
    # the floor stays a lower bound of the run's peak (model/buffers.py holds the buffers from each deferring
    # backward's end), under every schedule family's order of the last stage's backwards
    base = apply_overrides(big_vocab, ["model.defer_embedding_wgrad=8"])
    cand = Candidate(tensor=1, context=1, pipeline=2, data=1, expert=1, micro_batch_size=1, microbatches=8,
                     schedule=schedule, stages=stages, virtual=virtual, recompute="full", zero=1)  # fmt: skip
    est = memory_estimate(FigureCache(base), cand)
    run = simulation.run(sections_only(apply_overrides(base, cand.overrides())))
    assert est.memory_floor <= run.metrics.scalars()["memory.total"]
    plain = memory_estimate(FigureCache(big_vocab), cand)
    assert est.memory_floor > plain.memory_floor  # the buffers moved it


# -- 4. the compute floor with the fill and drain no schedule avoids ------------------------------------------------
def test_compute_floor_fill_and_drain_by_hand():
    from dualpipe_sim.plan.estimate import compute_floor
    from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed

    # test_plan_etp.py's 2-stage 1F1B, F = (1, 2), B = (2, 4), 3 micro-batches: 27 ms of compute on 2 ranks; rank 1
    # waits for stage 0's first forward (1) and, its backwards whole, stage 0's last backward runs after its last (2):
    # (27 + 1 + 2) / 2 = 15, the replay's 21 above it
    dense = StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0))
    one_each = (((0, 0),), ((0, 1),))
    assert compute_floor(dense, 3, 2, one_each, whole_backwards=True) == 15.0
    assert compute_floor(dense, 3, 2, one_each, whole_backwards=False) == 14.0  # a W may end a rank: no drain
    assert 15.0 <= replayed(built("1f1b", 2, 3, None), dense, 0.0, False).makespan
    # one micro-batch through 4 equal stages (F 1, B 2): work 12, fill 0 + 1 + 2 + 3, drain 0 + 2 + 4 + 6: 30 / 4
    four = StageCosts((1.0,) * 4, (2.0,) * 4, (0.0,) * 4)
    assert compute_floor(four, 1, 4, tuple(((0, s),) for s in range(4)), whole_backwards=True) == 7.5
    # a V placement (rank 0 holds stages 0 and 3, rank 1 stages 1 and 2): each rank's least stage counts, 0 and 1
    assert compute_floor(four, 1, 2, (((0, 0), (0, 3)), ((0, 1), (0, 2))), whole_backwards=True) == (12 + 1 + 2) / 2


SCHEDULES = [("1f1b", 2, None), ("gpipe", 2, None), ("zb-h1", 2, None), ("1f1b-overlap", 2, None),
             ("chimera", 2, None), ("dualpipe", 2, None), ("dualpipev", 4, None), ("interleaved-1f1b", 4, 2),
             ("zbv", 4, None), ("zb-h2", 2, None), ("interleaved-1f1b-overlap", 4, 2)]  # fmt: skip


@pytest.mark.parametrize("model", [TINY_DENSE, TINY_MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("schedule,stages,virtual", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_compute_floor_below_every_simulated_pipeline(tmp_path, model, schedule, stages, virtual):
    # the floor, with its fill and drain, under the run's pipeline (and so its step) on every family, a 2-rank
    # pipeline with uneven stages (the embedding and head on the ends), 4 micro-batches; MoE with expert parallelism 2
    config = tmp_path / "m.json"
    config.write_text(json.dumps({**model, "num_hidden_layers": 8}))
    base = base_scenario(config, "H100", 2048, [])
    moe = "num_local_experts" in model
    cand = Candidate(tensor=1, context=1, pipeline=2, data=2, expert=2 if moe else 1, micro_batch_size=1,
                     microbatches=4, schedule=schedule, stages=stages, virtual=virtual, recompute="none", zero=1)
    est = memory_estimate(FigureCache(base), cand)
    got = simulation.run(sections_only(apply_overrides(base, cand.overrides()))).metrics
    assert 0 < est.compute_floor <= got.makespan <= got.scalars()["step.total"]


def test_which_families_run_whole_backwards():
    # the zero-bubble families split each backward into I and W (Qi et al. 2023), and DualPipe / DualPipeV run their
    # cooldown's W apart (deepseek-ai/DualPipe); 1F1B, GPipe, the interleaved and overlap families and Chimera do not
    from dualpipe_sim.plan.estimate import whole_backwards

    whole = {"1f1b": (2, None), "gpipe": (2, None), "1f1b-overlap": (2, None), "chimera": (2, None),
             "interleaved-1f1b": (4, 2), "interleaved-1f1b-overlap": (4, 2)}  # fmt: skip
    split = {"zb-h1": (2, None), "zb-h2": (2, None), "zbv": (4, None), "dualpipe": (2, None), "dualpipev": (4, None)}
    assert all(whole_backwards(n, s, v) for n, (s, v) in whole.items())
    assert not any(whole_backwards(n, s, v) for n, (s, v) in split.items())
