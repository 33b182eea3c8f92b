"""plan's pruning never drops the best layout (issue 21, s20l).

A property test: hypothesis draws a small plan request (a small dense or MoE model, 8-64 GPUs, a preset, a
global batch, one or two schedules, sometimes a small device or the ETP search), plan runs with a budget that
simulates every survivor, and then *every* complete candidate it enumerated, the pruned ones included, is
simulated the way plan simulates its survivors (plan/simulate.py run_candidate on plan's base scenario).
Then, by each rule's own claim (docs/plan.md, "Pruning"):

* no pruned candidate that fits the device runs a shorter step than plan's winner (beyond 1e-9 relative);
* a memory prune really exceeds the device once simulated;
* a dominance prune's twin (ZeRO 1 for "nothing to shard", recompute none for selective) is no slower, and no
  heavier where the rule says so (equal for "nothing to shard"); a duplicate runs the step of the candidate it
  names;
* a rule of the model ("model: ...", FSDP with experts) is refused by the simulation too.

tests/conftest.py's ``suite`` profile keeps the default run to a few examples; ``HYPOTHESIS_PROFILE=explore``
draws hundreds.  Each failure found that way has a plain regression test in tests/test_plan.py: it found the
rules "parallel.zero: 0 never beats 1" and "1 never beats 2" unsound (s20l dropped both; docs/plan.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from dualpipe_sim import plan as ds_plan
from dualpipe_sim.model import derive
from dualpipe_sim.plan import PlanError
from dualpipe_sim.plan.simulate import run_candidate

TOL = 1e-9  # relative: the same figures added in other orders


def examples(n: int) -> int:
    """n examples in the suite's profile; the profile's own count (explore: 500) when hunting."""
    return n if os.environ.get("HYPOTHESIS_PROFILE", "suite") == "suite" else settings.default.max_examples


@st.composite
def dense(draw) -> dict:
    heads = draw(st.sampled_from((4, 8)))
    hidden = heads * draw(st.sampled_from((32, 64, 128, 256)))
    return {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": draw(st.sampled_from((2, 4, 8))),
            "num_attention_heads": heads, "num_key_value_heads": draw(st.sampled_from((heads, heads // 2))),
            "intermediate_size": hidden * draw(st.sampled_from((2, 4))), "vocab_size": draw(st.sampled_from((1000, 32000)))}


@st.composite
def moe(draw) -> dict:
    hidden = draw(st.sampled_from((256, 512)))
    experts = draw(st.sampled_from((4, 8, 16)))
    return {"model_type": "mixtral", "hidden_size": hidden, "num_hidden_layers": draw(st.sampled_from((2, 4))),
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000,
            "intermediate_size": draw(st.sampled_from((256, 432, 1024))), "num_local_experts": experts,
            "num_experts_per_tok": draw(st.sampled_from((1, 2))), "tie_word_embeddings": False}


@st.composite
def requests(draw) -> dict:
    model = draw(st.one_of(dense(), moe()))
    gpus = draw(st.sampled_from((8, 16, 32, 64)))
    schedules = draw(st.lists(st.sampled_from(("1f1b", "dualpipev", "interleaved-1f1b", "zb-h1", "gpipe", "zbv")),
                              min_size=1, max_size=2, unique=True))
    overrides = []
    if draw(st.booleans()):
        overrides.append("model.host_overhead_us=0")  # shorter MoE micro-batches: collectives that may not hide
    if draw(st.booleans()):
        overrides.append("step.dp_comm_sms=0")  # no compute slowed beside the data-parallel collectives
    if draw(st.integers(0, 3)) == 0:
        overrides.append("step.overlap_param_gather=false")  # ZeRO 1's all-gather after the optimizer
    if draw(st.integers(0, 3)) == 0:  # a device small enough to prune by memory
        overrides.append(f"hardware.hbm={draw(st.sampled_from((0.5e9, 1e9, 2e9)))}")
    return {"model": model, "gpus": gpus, "global_batch": gpus * draw(st.sampled_from((1, 2, 4))) // 2 or 1,
            "seq": draw(st.sampled_from((2048, 4096))), "hardware": draw(st.sampled_from(("H100", "A100", "B200", "GB200"))),
            "schedules": schedules, "overrides": overrides,
            "search_expert_tensor": "num_local_experts" in model and draw(st.booleans())}


def complete(row) -> bool:
    c = row.candidate
    return c.schedule is not None and c.recompute is not None and c.zero is not None and c.expert_tensor is not None


def check_plan(req: dict, tmp_path) -> None:
    config = tmp_path / "model.json"
    config.write_text(json.dumps(req["model"]))
    try:
        result = ds_plan(config, req["gpus"], req["global_batch"], req["seq"], hardware=req["hardware"],
                         schedules=req["schedules"], overrides=req["overrides"], jobs=1, budget=10**6,
                         search_expert_tensor=req["search_expert_tensor"])
    except PlanError:
        assume(False)  # no layout runs (a device too small, say): draw another
        return
    memo = derive.Memo()
    sims: dict[tuple, dict] = {}

    def sim(cand) -> dict:
        key = tuple(replace(cand, pruned="").overrides())
        if key not in sims:
            sims[key] = run_candidate(result.base, key, memo)
        return sims[key]

    for row in result.rows:  # plan's own figures for its simulated rows, the rest simulated here
        if row.simulated is not None:
            sims[tuple(row.candidate.overrides())] = row.simulated
    device = result.device_memory
    best = result.top[0].simulated["step.total"] if result.top else None
    by_index = {r.index: r for r in result.rows}
    for row in result.rows:
        if not row.pruned or not complete(row):
            continue
        cand, reason, got = row.candidate, row.pruned, sim(row.candidate)
        where = f"{cand.label()} pruned for {reason!r}"
        if reason.startswith("model: ") or reason.startswith("parallel.zero: 3 (FSDP)"):
            assert got["status"] == "error", where
        if got["status"] != "ok":  # refused by the model (whichever rule pruned it first): never the best
            continue
        step, memory = got["step.total"], got["memory.total"]
        if got["fits"] is not False:
            assert best is not None and step >= best * (1 - TOL), f"{where}: {step} ms < the winner's {best} ms"
        if reason.startswith("memory: "):
            assert device is not None and memory > device and got["fits"] is False, where
            continue
        twin, equal = None, False
        if reason.startswith("parallel.zero: 2 and 3 equal 1") or reason.startswith("parallel.zero: 0 equals 1"):
            twin, equal, heavier_ok = replace(cand, zero=1), True, False
        elif reason.startswith('memory.recompute: "selective"'):
            twin, heavier_ok = replace(cand, recompute="none"), True  # none keeps the log-sum-exp: a little heavier
        elif reason.startswith("duplicate: "):
            kept = by_index[int(reason.rsplit(" ", 1)[1])].simulated
            assert kept["status"] == "ok" and abs(kept["step.total"] - step) <= TOL * step, where
        if twin is not None:
            other = sim(twin)
            assert other["status"] == "ok", f"{where}: its twin {other['reason']}"
            assert other["step.total"] <= step * (1 + TOL), f"{where}: twin {other['step.total']} ms > {step} ms"
            assert heavier_ok or other["memory.total"] <= memory * (1 + TOL), where
            if equal:  # "equals": the same figures, not only no worse
                assert other["step.total"] >= step * (1 - TOL) and other["memory.total"] >= memory * (1 - TOL), where


TINIER = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 4, "intermediate_size": 256, "vocab_size": 1000}  # fmt: skip
WIDER = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 32000}  # fmt: skip
SMALL_MOE = {"model_type": "mixtral", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 1000, "intermediate_size": 432, "num_local_experts": 8,
             "num_experts_per_tok": 2, "tie_word_embeddings": False}  # fmt: skip


def request(model, gpus, batch, schedules, overrides=(), hardware="H100", search_expert_tensor=False) -> dict:
    return {"model": model, "gpus": gpus, "global_batch": batch, "seq": 2048, "hardware": hardware,
            "schedules": schedules, "overrides": list(overrides), "search_expert_tensor": search_expert_tensor}


# The counter-examples the explore profile found (tests/test_plan.py works each out), run in every profile:
# "ZeRO 0 never beats 1" lost the winner here, "1 never beats 2" a faster ZeRO 1 twin; and an MoE plan with the
# ETP search and a device small enough to prune by memory.
@example(req=request(TINIER, 8, 4, ["1f1b"]))
@example(req=request(WIDER, 16, 32, ["1f1b"], ["parallel.tensor=1", "parallel.context=1", "model.micro_batch_size=1",
                                               "memory.recompute=none"]))  # fmt: skip
@example(req=request(SMALL_MOE, 8, 8, ["1f1b", "dualpipev"], ["hardware.hbm=2e9"], search_expert_tensor=True))
@settings(max_examples=examples(3))
@given(req=requests())
def test_no_pruned_candidate_beats_plans_winner(req, tmp_path_factory):
    check_plan(req, tmp_path_factory.mktemp("prune"))
