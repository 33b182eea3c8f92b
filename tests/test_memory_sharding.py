"""ZeRO stage 2 by hand (Rajbhandari et al. 2020, Sec. 5: P_os+g partitions the optimizer states and
the gradients over the data-parallel ranks; the parameters stay whole on every rank)."""

from __future__ import annotations

from dualpipe_sim.model import memory


def test_zero_2_shards_gradients_and_optimizer_not_parameters():
    dense, routed = 1000, 800
    sh = memory.Sharding(tensor=2, expert=4, data=8, zero=2)
    # This rank's share before ZeRO: 1000 / 2 = 500 dense (tensor), 800 / 4 = 200 routed (expert).
    # Dense parts are replicated over data = 8 ranks; routed over 8 x 2 / 4 = 4 expert-data ranks.
    s2 = memory.stage_static(dense, routed, sh)
    assert s2.parameters == 2 * (500 + 200)  # BF16, whole
    assert s2.gradients == 4 * (500 / 8 + 200 / 4)  # fp32, sharded
    assert s2.optimizer == 12 * (500 / 8 + 200 / 4)  # master + two moments, sharded
    assert s2.total == 1400 + 450 + 1350


def test_total_is_the_sum_of_its_terms_on_deepseek_v3():
    # README's definition of per_rank[].memory.total: the static terms (parameters, gradients,
    # optimizer, fp8_weights) + sharding_buffers + dynamic_peak + runtime.  DeepSeek-V3 is FP8, so
    # every term is there (fp8_weights > 0).
    from pathlib import Path

    from dualpipe_sim import scenario, simulation

    path = Path(__file__).resolve().parent.parent / "scenarios" / "deepseek-v3.toml"
    res = simulation.run(scenario.load(path, ["pipeline.microbatches=32"]))
    for r in res.metrics.to_dict()["per_rank"]:
        m = r["memory"]
        assert m["fp8_weights"] > 0
        terms = (m["parameters"] + m["gradients"] + m["optimizer"] + m["fp8_weights"] + m["sharding_buffers"]
                 + m["dynamic_peak"] + m["runtime"])  # fmt: skip
        assert abs(m["total"] - terms) <= 1e-9 * terms, r["rank"]
