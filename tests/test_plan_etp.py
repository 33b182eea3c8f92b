"""s18i: ``plan`` searches expert tensor parallelism (ETP) for an MoE model; s18i2: only when asked.

By default every candidate takes ETP 1 (experts whole, as every MoE validation run).  With
--search-expert-tensor (``search_expert_tensor=True``; Choices.search_expert_tensor) every MoE candidate takes
ETP 1 and ETP = TP (Megatron-core's default), one value where TP = 1, under model/derive.py's ETP rules (expert x ETP divides tensor x data x context; ETP divides the
experts' FFN width; ZeRO 3 at ETP 1 only); ``--set parallel.expert_tensor=N`` pins it; a dense model is as
before.  Counts below are worked by hand from the enumeration's rules (docs/plan.md).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from types import SimpleNamespace

import pytest

from dualpipe_sim import plan as ds_plan
from dualpipe_sim import simulation
from dualpipe_sim.inputs import scenario
from dualpipe_sim.plan import files
from dualpipe_sim.plan.estimate import FigureCache, memory_estimate, static_floor
from dualpipe_sim.plan.request import base_scenario, model_shape
from dualpipe_sim.plan.shapes import shapes
from dualpipe_sim.plan.space import Candidate, Choices, ModelShape, Request, enumerate_candidates

# A tiny Mixtral: 4 experts of FFN width 512, 4 heads, 4 layers (as tests/test_qa_s17m.py's).
TINY_MOE = {"model_type": "mixtral", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 512, "num_local_experts": 4, "num_experts_per_tok": 2,
            "vocab_size": 1000}  # fmt: skip
TINY_DENSE = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}  # fmt: skip

# one micro-batch size, policy and ZeRO stage, no context parallelism: one complete candidate per
# (tensor, pipeline, expert, ETP) with 1F1B; the ETP search on (--search-expert-tensor), as s18i built it
NARROW = Choices(context=(1,), micro_batch_size=(1,), recompute=("full",), zero=(1,), search_expert_tensor=True)
MOE = ModelShape(heads=4, layers=4, experts=4, expert_ffn=512)


def _complete(model: ModelShape, choices: Choices = NARROW) -> Counter:
    rows = enumerate_candidates(model, Request(4, 8, 2048), shapes(["1f1b"]), choices)
    return Counter((c.tensor, c.expert_tensor) for c in rows if not c.pruned)


# -- the enumeration, by hand --------------------------------------------------------------------------------------
def test_etp_values_per_tensor_degree_by_hand():
    # 4 GPUs, tensor 8 pruned (4 heads).  EP divides 4 experts and data x tensor; expert x ETP divides tensor x data.
    # TP1 (ETP 1 only): PP1 DP4 e1,2,4; PP2 DP2 e1,2; PP4 DP1 e1 -> 6.
    # TP2: PP1 DP2 (tensor x data 4): ETP1 e1,2,4 = 3, ETP2 e1,2 = 2; PP2 DP1 (2): ETP1 e1,2 = 2, ETP2 e1 = 1.
    # TP4: PP1 DP1 (4): ETP1 e1,2,4 = 3, ETP4 e1 = 1.
    assert _complete(MOE) == {(1, 1): 6, (2, 1): 5, (2, 2): 3, (4, 1): 3, (4, 4): 1}


def test_grid_and_ffn_rules_prune_by_name():
    rows = list(enumerate_candidates(MOE, Request(4, 8, 2048), shapes(["1f1b"]), NARROW))
    grid = [c for c in rows if c.pruned == "parallel.expert: parallel.expert x parallel.expert_tensor must divide parallel.tensor x parallel.data x parallel.context"]
    # TP2 PP1 e4 ETP2 (8 > 4), TP2 PP2 e2 ETP2 (4 > 2), TP4 e2 and e4 ETP4
    assert sorted((c.tensor, c.pipeline, c.expert, c.expert_tensor) for c in grid) == \
        [(2, 1, 4, 2), (2, 2, 2, 2), (4, 1, 2, 4), (4, 1, 4, 4)]
    # an expert FFN of 6 columns splits over 2 ranks, not 4: every TP4 ETP4 row goes, by name
    odd = ModelShape(heads=4, layers=4, experts=4, expert_ffn=6)
    assert _complete(odd) == {(1, 1): 6, (2, 1): 5, (2, 2): 3, (4, 1): 3}
    ffn = [c for c in enumerate_candidates(odd, Request(4, 8, 2048), shapes(["1f1b"]), NARROW)
           if c.pruned.startswith("parallel.expert_tensor:")]
    assert ffn and {(c.tensor, c.expert_tensor) for c in ffn} == {(4, 4)}
    assert ffn[0].pruned == "parallel.expert_tensor: must divide the experts' FFN hidden size 6"


def test_pin_and_whole_experts():
    # pinned ETP 2: expert x 2 divides tensor x data.  TP1: DP4 e1,2; DP2 e1 -> 3.  TP2: DP2 e1,2; DP1 e1 -> 3.
    # TP4: DP1 (4) e1,2 -> 2.
    pinned = replace_choices(expert_tensor=(2,), search_expert_tensor=False)  # the flag's default with a pin
    assert _complete(MOE, pinned) == {(1, 2): 3, (2, 2): 3, (4, 2): 2}
    rows = list(enumerate_candidates(MOE, Request(4, 8, 2048), shapes(["1f1b"]), pinned))
    assert {c.expert_tensor for c in rows} == {2}  # one value: every row says it, the pruned ones too
    # a base that costs ETP 1 only (hardware.efficiency, DeepSeek's runtime): 1 everywhere
    whole = ModelShape(heads=4, layers=4, experts=4, expert_ffn=512, whole_experts="kernel model only")
    assert _complete(whole) == {(1, 1): 6, (2, 1): 5, (4, 1): 3}
    rows = list(enumerate_candidates(whole, Request(4, 8, 2048), shapes(["1f1b"]), NARROW))
    assert {c.expert_tensor for c in rows} == {1}  # ETP > 1 not tried at all (no row, pruned or not)
    # pinned there anyway: every row is pruned by name, before any derivation
    rows = list(enumerate_candidates(whole, Request(4, 8, 2048), shapes(["1f1b"]), pinned))
    assert rows and not any(c.complete() for c in rows)
    assert {c.pruned for c in rows if c.expert is not None and not c.pruned.startswith("parallel.expert: ")} == \
        {"parallel.expert_tensor: kernel model only"}


def replace_choices(**kw) -> Choices:
    from dataclasses import replace

    return replace(NARROW, **kw)


def test_dense_model_unchanged():
    # TP1: PP 1, 2, 4; TP2: PP 1, 2; TP4: PP 1 -> 6 candidates, ETP 1 in every row, no ETP key in any
    dense = ModelShape(heads=4, layers=4, experts=0)
    rows = list(enumerate_candidates(dense, Request(4, 8, 2048), shapes(["1f1b"]), NARROW))
    assert _complete(dense) == {(1, 1): 3, (2, 1): 2, (4, 1): 1}
    assert {c.expert_tensor for c in rows} == {1}
    assert not any("expert_tensor" in o for c in rows if not c.pruned for o in c.overrides())


def test_rows_pruned_before_etp_leave_it_empty_when_several_were_to_be_tried():
    rows = list(enumerate_candidates(MOE, Request(4, 8, 2048), shapes(["1f1b"]), NARROW))
    heads = [c for c in rows if c.pruned.startswith("parallel.tensor:")]
    assert [(c.tensor, c.expert_tensor) for c in heads] == [(8, None)]  # 1 and 8 were to be tried


def test_candidate_sets_the_key_only_above_1():
    one = Candidate(tensor=2, context=1, pipeline=1, data=2, expert=2, micro_batch_size=1, microbatches=4,
                    schedule="1f1b", stages=1, recompute="full", zero=1)  # fmt: skip
    from dataclasses import replace

    assert not any(o.startswith("parallel.expert_tensor") for o in one.overrides())
    two = replace(one, expert_tensor=2)
    assert "parallel.expert_tensor=2" in two.overrides() and " EP2 ETP2 " in two.label()


# -- the figure cache keeps ETPs apart -----------------------------------------------------------------------------
def test_figures_do_not_depend_on_which_etp_came_first(tmp_path):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY_MOE))
    base = base_scenario(config, "H100", 2048, [])
    one = Candidate(tensor=2, context=1, pipeline=1, data=2, expert=1, micro_batch_size=1, microbatches=4,
                    schedule="1f1b", stages=1, recompute="full", zero=1)  # fmt: skip
    from dataclasses import replace

    two = replace(one, expert_tensor=2)
    shared = FigureCache(base)
    after = (static_floor(shared, one), memory_estimate(shared, one)) and (static_floor(shared, two),
                                                                          memory_estimate(shared, two))
    alone = FigureCache(base)
    assert after == (static_floor(alone, two), memory_estimate(alone, two))
    # experts split over 2 ranks: fewer static bytes than ETP 1's whole experts (the runtime allowance aside:
    # ETP 2 adds two NCCL communicators, the ETP group and the expert-data group of 2, as simulation.py counts)
    assert static_floor(alone, two) - alone.runtime(two) < static_floor(alone, one) - alone.runtime(one)
    from dualpipe_sim.model.memory import NCCL_GROUP, NCCL_PAIR_GROUP

    assert alone.runtime(two) - alone.runtime(one) == 2 * NCCL_PAIR_GROUP != 2 * NCCL_GROUP
    assert shared.figures(two).work != shared.figures(one).work  # ETP's collectives and split GEMMs cost time


# -- plan end to end -----------------------------------------------------------------------------------------------
def _plan(tmp_path, model: dict, overrides: list[str], top: int = 10, **options):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model))
    return ds_plan(config, 4, 8, 2048, hardware="H100", schedules=["1f1b"], jobs=1, overrides=overrides, top=top,
                   **options)


@pytest.fixture(scope="module")
def moe_plan(tmp_path_factory):
    return _plan(tmp_path_factory.mktemp("moe"), TINY_MOE, ["parallel.tensor=2"], top=40, search_expert_tensor=True)


def test_plan_csv_md_and_json_say_the_searched_etp(moe_plan, tmp_path):
    rows = list(csv.DictReader(files.plan_csv(moe_plan).splitlines()))
    ran = [r for r in rows if r["simulated"] == "yes"]
    assert {r["expert_tensor"] for r in ran} == {"1", "2"}  # TP 2: both tried, and simulated
    md = files.plan_md(moe_plan)
    assert "Expert tensor parallelism (parallel.expert_tensor): searched, 1 (experts whole) and the tensor degree" in md
    assert "ETP" in files.table(moe_plan)[0] and "| ETP |" in md
    tops = ds_plan.top_json(moe_plan, tmp_path)
    assert {t["expert_tensor"] for t in tops} == {1, 2}


def test_top_toml_round_trips_at_etp_2(moe_plan, tmp_path):
    out = tmp_path / "out"
    ds_plan.write(moe_plan, out)
    by_etp = {}
    for rank, row in enumerate(moe_plan.top, 1):
        by_etp.setdefault(row.candidate.expert_tensor, (rank, row))
    assert set(by_etp) == {1, 2}
    for etp, (rank, row) in by_etp.items():
        path = out / files.scenario_name(rank)
        text = path.read_text()
        assert ("expert_tensor = 2" in text) == (etp == 2)  # written only when it is not 1
        got = simulation.run(scenario.read(path)).metrics.scalars()  # the TOML as a user runs it
        assert got["step.total"] == pytest.approx(row.simulated["step.total"], rel=1e-12)
        assert got["memory.total"] == pytest.approx(row.simulated["memory.total"], rel=1e-12)


def test_pinned_etp_says_so(tmp_path):
    result = _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2"])
    md = files.plan_md(result)
    assert "Expert tensor parallelism (parallel.expert_tensor): 2 in every layout; plan does not search it " \
           "(pinned by parallel.expert_tensor)." in md
    assert {r["expert_tensor"] for r in files.records(result)} == {2}


@pytest.mark.parametrize("overrides,why", [
    (["hardware.efficiency=0.5"], "more than 1 is costed by the kernel model only"),
    (['model.fp8=true', 'model.fp8_gemm="deepgemm"', 'memory.recompute="deepseek"'], "DeepSeek's runtime"),
    (['model.fp8_gemm="deepgemm"', 'memory.recompute="deepseek"'], ""),  # BF16: not DeepSeek's runtime
    (['model.fp8=true', 'model.fp8_gemm="deepgemm"'], ""),  # recompute searched: not DeepSeek's runtime
])  # fmt: skip
def test_bases_that_cost_etp_1_only(tmp_path, overrides, why):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY_MOE))
    base = base_scenario(config, "H100", 2048, overrides)
    shape = model_shape(base)
    assert shape.whole_experts.startswith(why) and bool(shape.whole_experts) == bool(why)
    shown = files.etp_line(SimpleNamespace(base=base, experts=4, search_expert_tensor=True))
    assert ("1 in every layout; plan tries no more (" + why in shown) if why else ": searched, " in shown


def test_dense_plan_has_no_etp_column_or_line(tmp_path):
    result = _plan(tmp_path, TINY_DENSE, [])
    assert "Expert tensor parallelism" not in files.plan_md(result)
    assert "ETP" not in files.table(result)[0]
    assert {r["expert_tensor"] for r in csv.DictReader(files.plan_csv(result).splitlines())} == {"1"}


# -- s18i2: the search is opt-in ------------------------------------------------------------------------------------
DEFAULT = replace_choices(search_expert_tensor=False)


def test_default_tries_etp_1_only_by_hand():
    # the counts of test_etp_values_per_tensor_degree_by_hand less every ETP > 1 row: TP1 6, TP2 3 + 2, TP4 3
    assert _complete(MOE, DEFAULT) == {(1, 1): 6, (2, 1): 5, (4, 1): 3}
    rows = list(enumerate_candidates(MOE, Request(4, 8, 2048), shapes(["1f1b"]), DEFAULT))
    assert {c.expert_tensor for c in rows} == {1}  # every row says 1, the pruned ones too (one value tried)
    assert not any(c.pruned.startswith("parallel.expert_tensor:") for c in rows)
    assert Choices().search_expert_tensor is False  # the enumeration's own default is the plan's


def test_fsdp_count_with_and_without_the_search():
    # tests/test_plan.py's FSDP case (4 GPUs, 4 experts, 1F1B, every mbs/policy/ZeRO): 16 rows per policy
    # (none, full) = 32 at ETP 1.  With the search, ETP = tensor adds (tensor, pipeline, data) = (2, 1, 2) e2
    # ETP 2 (2 x 2 divides 2 x 2): 3 micro-batch sizes x 2 policies = 6 more, 38.
    def fsdp(choices):
        rows = enumerate_candidates(ModelShape(heads=4, layers=4, experts=4), Request(4, 8, 2048), shapes(["1f1b"]),
                                    choices)  # fmt: skip
        return [c for c in rows if c.pruned.startswith("parallel.zero: 3 (FSDP) with parallel.expert > 1")]

    assert len(fsdp(Choices())) == 32
    searched = fsdp(Choices(search_expert_tensor=True))
    assert len(searched) == 38
    assert Counter(c.expert_tensor for c in searched) == {1: 32, 2: 6}


def test_library_default_and_keyword(tmp_path):
    default = _plan(tmp_path, TINY_MOE, ["parallel.tensor=2"], top=40)
    assert {r["expert_tensor"] for r in files.records(default)} == {1}
    md = files.plan_md(default)
    assert ("Expert tensor parallelism (parallel.expert_tensor): 1 in every layout (experts whole, as every MoE "
            "validation run); the search-expert-tensor option also tries ETP = TP (Megatron-core's default), "
            "about twice the simulations on an MoE plan.") in md
    searched = _plan(tmp_path, TINY_MOE, ["parallel.tensor=2"], top=40, search_expert_tensor=True)
    complete = [r for r in files.records(searched) if not r["pruned"]]  # a row pruned above ETP leaves it empty
    assert {r["expert_tensor"] for r in complete} == {1, 2}
    # at TP 2 the search adds ETP 2 rows and keeps every ETP 1 row as it was
    ones = [r for r in complete if r["expert_tensor"] == 1]
    assert 0 < len(ones) == sum(not r["pruned"] for r in files.records(default)) < len(complete)


def test_library_refuses_the_search_with_a_pin_and_a_non_bool(tmp_path):
    with pytest.raises(ds_plan.PlanError, match=r"^search_expert_tensor: does not apply with parallel.expert_tensor "
                                                r"pinned to 2"):  # fmt: skip
        _plan(tmp_path, TINY_MOE, ["parallel.expert_tensor=2"], search_expert_tensor=True)
    with pytest.raises(ds_plan.PlanError, match=r"^search_expert_tensor: must be true or false, got 'yes'"):
        _plan(tmp_path, TINY_MOE, [], search_expert_tensor="yes")


def test_cli_flag_with_a_pin_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    from dualpipe_sim.cli import main

    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY_MOE))
    out = tmp_path / "out"
    code = main(["plan", str(config), "--gpus", "4", "--global-batch", "8", "--seq", "2048", "--hardware", "H100",
                 "--schedules", "1f1b", "--jobs", "1", "--out", str(out), "--search-expert-tensor",
                 "--set", "parallel.expert_tensor=2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip().splitlines() == ["error: --search-expert-tensor: does not apply with --set "
                                        "parallel.expert_tensor=2 (the pin fixes the expert tensor parallelism); "
                                        "drop one"]  # fmt: skip
    assert "Traceback" not in err


# -- s19d: ETP = tensor candidates that cannot reach the top table are not simulated -------------------------------
def test_compute_floor_by_hand():
    from dualpipe_sim.plan.estimate import compute_floor
    from dualpipe_sim.plan.step_estimate import StageCosts, built, replayed

    # test_plan_estimate.py's 2-stage 1F1B, F = (1, 2), B = (2, 4), 3 micro-batches: (1 + 2 + 2 + 4) x 3 = 27 ms of
    # compute on 2 ranks, at least 13.5 on the busier; the replay takes 21
    dense = StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0))
    assert compute_floor(dense, 3, 2) == 13.5 <= replayed(built("1f1b", 2, 3, None), dense, 0.0, False).makespan
    # an all-to-all inside F and B is left out (a pair may hide it): F = 1 + 0.5 and B = 2 + 1 on each of 2 stages,
    # 4 micro-batches on 2 ranks: (1 + 2) x 2 stages x 4 / 2 = 12
    moe = StageCosts((1.5, 1.5), (3.0, 3.0), (0.0, 0.0), (0.5, 0.5), (1.0, 1.0))
    assert compute_floor(moe, 4, 2) == 12.0
    # deferred output-layer wgrad: 2 micro-batches' backward 0.5 + 1.0 lighter on stage 1: 27 - 3 = 24, 12 a rank
    assert compute_floor(StageCosts((1.0, 2.0), (2.0, 4.0), (0.0, 0.0), deferred=(1, 2, 0.5, 1.0)), 3, 2) == 12.0


def _ran(i: int, step: float, fits=True, etp: int = 1, floor: float = 0.0):
    from dualpipe_sim.plan.estimate import Estimate
    from dualpipe_sim.plan.rank import Row

    row = Row(i, Candidate(tensor=2, expert_tensor=etp), Estimate(step, 0.0, 0.0, floor))
    row.simulated = {"status": "ok", "step.total": step, "fits": fits} if step else None
    return row


def test_beyond_top_by_hand():
    from dualpipe_sim.plan.rank import BEYOND_TOP, beyond_top, split_later

    # first: fitting steps 10, 12, 15 (and 9 that does not fit, 11 that failed): the top 2's slowest is 12
    first = [_ran(0, 10.0), _ran(1, 15.0), _ran(2, 9.0, fits=False), _ran(3, 12.0)]
    first.append(replace_row_failed(_ran(4, 11.0)))
    later = [_ran(5, 0, etp=2, floor=12.0), _ran(6, 0, etp=2, floor=12.5), _ran(7, 0, etp=2, floor=11.0)]
    kept = beyond_top(first, later, 2, True)
    assert [r.index for r in kept] == [5, 7]  # 12.0 is not above 12: it might tie, so it runs
    assert later[1].pruned.startswith(f"parallel.expert_tensor: {BEYOND_TOP} (its compute at least 12.500 ms")
    assert "top 2's slowest step 12.000 ms" in later[1].pruned
    assert beyond_top(first, later[:1], 4, True) == later[:1]  # 3 fitting rows: no top 4 to compare with
    assert beyond_top(first, [_ran(8, 0, etp=2, floor=99.0)], 2, False)[0].index == 8  # the floor does not hold
    rows = [_ran(0, 1.0), _ran(1, 0, etp=2), _ran(2, 0, etp=None)]
    assert [[r.index for r in part] for part in split_later(rows, True)] == [[0, 2], [1]]
    assert split_later(rows, False) == (rows, [])


def replace_row_failed(row):
    row.simulated = {"status": "error", "reason": "x", "step.total": 1.0}
    return row


@pytest.fixture(scope="module")
def pruned_or_not(tmp_path_factory):
    """The tiny Mixtral on 8 GPUs, global batch 16, 1F1B and DualPipeV, ETP searched: plans with the top 3 and 10,
    with and without beyond_top's pruning (its floor_holds said false)."""
    import sys

    config = tmp_path_factory.mktemp("beyond") / "moe.json"
    config.write_text(json.dumps(TINY_MOE))
    module = sys.modules["dualpipe_sim.plan"]
    out = {}
    for holds in (True, False):
        mp = pytest.MonkeyPatch()
        if not holds:
            mp.setattr(module, "floor_holds", lambda base: False)
        try:
            for top in (3, 10):
                out[holds, top] = ds_plan(config, 8, 16, 2048, hardware="H100", schedules=["1f1b", "dualpipev"],
                                          jobs=1, top=top, search_expert_tensor=True)  # fmt: skip
        finally:
            mp.undo()
    return out


@pytest.mark.parametrize("top", [3, 10])
def test_beyond_top_leaves_the_top_table_as_it_was(pruned_or_not, top):
    pruned, whole = pruned_or_not[True, top], pruned_or_not[False, top]
    left_out = [r for r in pruned.rows if "not simulated: its compute alone" in r.pruned]
    assert left_out and all(r.candidate.expert_tensor == r.candidate.tensor > 1 for r in left_out)  # it did prune
    assert not any("not simulated" in r.pruned for r in whole.rows)
    assert sum(r.ok for r in pruned.rows) == sum(r.ok for r in whole.rows) - len(left_out)
    assert len(pruned.top) == top
    assert [(r.candidate, r.simulated, r.tokens_per_second_per_gpu) for r in pruned.top] == \
        [(r.candidate, r.simulated, r.tokens_per_second_per_gpu) for r in whole.top]
    assert files.markdown_table(files.table(pruned)) == files.markdown_table(files.table(whole))
    # every candidate left out ran without the pruning, slower than the top table's slowest
    ran = {r.candidate: r for r in whole.rows if r.ok}
    slowest = whole.top[-1].simulated["step.total"]
    assert all(ran[r.candidate].simulated["step.total"] > slowest for r in left_out)


def test_compute_floor_bounds_every_simulated_step(pruned_or_not):
    rows = [r for r in pruned_or_not[False, 3].rows if r.ok]
    assert len(rows) > 100
    assert all(r.estimate.compute_floor <= r.simulated["step.total"] for r in rows)
    assert all(r.estimate.compute_floor > 0 for r in rows)
