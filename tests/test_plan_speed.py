"""s13f: the plan's estimate made cheaper without changing a bit.

* gemm.rounds and gemm.efficiency are kept per typed arguments: each kept value is what the
  function works out afresh (``__wrapped__``), and the persistent round count is worked by hand;
* a Setup's kernel Layout is worked out once per Setup: a Setup made with other sharding has its own;
* the FP8 amax reduction counts a layer's FP8 modules once per kind (MoE or dense): the count is
  the per-layer sum worked out in the test, on DeepSeek-V3's stages that mix the two;
* step.py's second pass maps a rank's P2P transfers to its stretched times all at once: each grad
  sync that shares the NIC takes its length in the time the stretched transfers leave free.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.inputs.scenario import apply_overrides, sections_only
from dualpipe_sim.model import derive, gemm, kernels
from dualpipe_sim.plan.request import base_scenario
from dualpipe_sim.plan.step_estimate import StageCosts, built

MODELS = Path(__file__).resolve().parents[1] / "scenarios" / "models"


def test_persistent_rounds_worked_by_hand():
    # 10 units on a grid of 4 blocks (3, 3, 2, 2 units each), 1 of 4 SMs held: three SMs take
    # 3, 3 and 2, the last block goes to the SM with 2: 4 rounds.  Free of held SMs, ceil(10 / 4) = 3.
    assert gemm.rounds(10, 4, 1, "persistent") == 4
    assert gemm.rounds(10, 4, 0, "persistent") == 3
    assert gemm.rounds(10, 4, 1, "dynamic") == 4  # ceil(10 / 3)


def test_kept_gemm_figures_are_the_functions_own():
    for units, sms, held, schedule in [(10, 4, 1, "persistent"), (1000, 132, 16, "persistent"), (7, 132, 24, "waves"),
                                       (264, 132, 20, "persistent"), (1000, 132, 16, "persistent")]:  # fmt: skip
        assert gemm.rounds(units, sms, held, schedule) == gemm.rounds.__wrapped__(units, sms, held, schedule)
    for args in [(4096, 7168, 2048, 132, 64.0, 1, 16, "persistent"), (8192, 1024, 512, 132, 64.0, 8, 0, "dynamic"),
                 (4096, 7168, 2048, 132, 64.0, 1, 16, "persistent"), (4096.0, 7168, 2048, 132, 64.0, 1, 16, "persistent")]:  # fmt: skip
        assert gemm.efficiency(*args) == gemm.efficiency.__wrapped__(*args)


def _deepseek_setup(sets):
    sc = sections_only(apply_overrides(base_scenario(MODELS / "deepseek-v3.json", "H800", 4096, []), sets))
    return derive.setup(sc)


def test_layout_is_each_setups_own():
    st = _deepseek_setup(["pipeline.stages=4", "pipeline.microbatches=8", "parallel.tensor=2", "parallel.expert=8",
                          "parallel.data=16"])  # fmt: skip
    first = st.layout
    assert st.layout is first  # worked out once
    other = replace(st, sharding=replace(st.sharding, tensor=4, expert=4))
    assert (other.layout.tensor, other.layout.expert) == (4, 4)
    assert (st.layout.tensor, st.layout.expert) == (2, 8)
    # and the groups placed for its degrees (placement.group: TP 4, EP 4)
    assert other.layout == replace(first, tensor=4, expert=4, places=other.kernel_places())
    assert dict(other.layout.places)["tp"].size == 4 and dict(other.layout.places)["ep"].size == 4


def test_amax_reduction_counts_each_layers_modules():
    st = _deepseek_setup(["pipeline.stages=4", "pipeline.microbatches=8", "parallel.tensor=2", "parallel.expert=8",
                          "parallel.data=16"])  # fmt: skip
    cfg, lay = st.cfg, st.layout
    layers = (0, 1, 2, 3, 4, 5)  # DeepSeek-V3: the first three dense, then MoE
    assert [cfg.is_moe_layer(i) for i in layers] == [False] * 3 + [True] * 3
    dense, moe = kernels.fp8_linears(cfg, 0, lay), kernels.fp8_linears(cfg, 3, lay)
    assert dense != moe
    rows = kernels.amax_reduction(cfg, st.rates, lay, layers)
    per_pass = [k.bytes for k in rows if k.kind == "comm"]
    # each pass all-reduces 4 bytes per amax: AMAXES[direction] per FP8 module, 3 dense and 3 MoE layers
    assert per_pass == [4.0 * (3 * dense + 3 * moe) * kernels.AMAXES[d] for d in ("forward", "backward")]


def _free_time(a: float, b: float, busy: np.ndarray) -> float:
    """Length of [a, b] outside the intervals ``busy`` (merged, in order)."""
    inside = sum(max(0.0, min(b, e) - max(a, s)) for s, e in busy.tolist())
    return (b - a) - inside


@pytest.mark.parametrize("name,stages,m,virtual", [("interleaved-1f1b", 8, 8, 2), ("1f1b", 4, 9, None),
                                                   ("dualpipev", 8, 10, None)])  # fmt: skip
def test_grad_sync_yields_to_the_stretched_p2p(name, stages, m, virtual):
    # With the NIC shared and compute slowed under the grad syncs, step.py's second pass moves each rank's
    # P2P transfers with its stretched compute (all of a rank's transfers mapped at once): each grad sync
    # row takes its length in time the stretched transfers leave free (step._yielding), worked out here.
    from dualpipe_sim.engine import step as step_py
    from dualpipe_sim.engine.trace import GRAD_SYNC, pipeline_ends
    from dualpipe_sim.plan.step_estimate import replayed, trace_of
    from dualpipe_sim.step_costs import StepCosts

    rng = np.random.default_rng(stages * m + 1)
    b = built(name, stages, m, virtual)
    f = tuple(rng.uniform(1.0, 2.0, stages))
    costs = StageCosts(f, tuple(2 * x for x in f), tuple(rng.uniform(0.3, 0.9, stages)))
    trace = trace_of(b, replayed(b, costs, 0.6, False))
    sync = tuple(rng.uniform(3.0, 9.0, stages))
    step = StepCosts(sync, (0.0,) * stages, tuple(rng.uniform(0.1, 1.0, stages)), overlap_grad_sync=True,
                     grad_sync_buckets=2, nic_shared=True, dp_comm_slowdown=(1.5,) * stages)  # fmt: skip
    rows = step_py.simulate_step(trace, step)
    first = step_py._step_rows(trace, step, pipeline_ends(trace), None)
    maps = step_py._stretch(trace, first, step.dp_comm_slowdown)
    moved = 0
    for r, stages_r in enumerate(trace.stages_on_rank):
        busy = step_py._p2p_busy(trace, r)
        stretched = np.array([[float(maps[r](x)) for x in pair] for pair in busy.tolist()]).reshape(-1, 2)
        moved += int(np.any(stretched != busy))
        mine = rows[(rows["kind"] == GRAD_SYNC) & (rows["rank"] == r)]
        free = sum(_free_time(a, e, stretched) for a, e in zip(mine["start"].tolist(), mine["end"].tolist()))
        assert free == pytest.approx(sum(sync[s] for s in stages_r), rel=1e-9)
    assert moved  # the stretch moves some rank's transfers
