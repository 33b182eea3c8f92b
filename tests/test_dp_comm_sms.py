"""step.dp_comm_sms: compute slowed while a data-parallel collective holds SMs (docs/step.md).

The hand-worked case times a stretched backward by hand; the GEMM case counts the waves of a GEMM's
tiles on the SMs a collective leaves; the rest are invariants and the key's bad values.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim import simulation
from dualpipe_sim.engine import step
from dualpipe_sim.engine.trace import GRAD_SYNC, OPTIMIZER
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import comm_slowdown, fp8_step_casts, gemm, param_gather
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
LLAMA8B_64 = ROOT / "scenarios" / "validation" / "mlperf51-llama8b-64b200.toml"


def tiny(**step_keys):
    """1F1B, one stage, one micro-batch: F [0, 1], B [1, 3] (B is the copy's last weight-gradient op)."""
    raw = {
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "costs": {"forward": 1.0, "backward": 2.0},
        "comm": {"p2p": 0.0},
        "step": {"grad_sync": 1.0, "grad_sync_buckets": 2, "overlap_grad_sync": True, "optimizer": 1.0, **step_keys},
    }
    sc = scenario.from_dict(raw)
    return simulation.run(sc).trace, sc.step_costs()


def spans(rows, kind) -> list[tuple[float, float]]:
    return [(float(r["start"]), float(r["end"])) for r in rows[rows["kind"] == kind]]


# Worked by hand.  Without contention: bucket 1 (0.5 ms) is ready halfway through B, at 2, and runs
# [2, 2.5]; bucket 2 at B's end, [3, 3.5]; the optimizer [3.5, 4.5].
# With the compute 1.5x slower under a collective: B's second half starts at 2 with bucket 1 running
# beside it; for 0.5 ms it advances at 1/1.5, doing 1/3 ms of work, and the remaining 2/3 ms runs alone:
# B ends at 2 + 0.5 + 2/3 = 3.1667.  The model counts the overlap on the unslowed timeline (0.5 ms of
# B under [2, 2.5]) and stretches it by (1.5 - 1) x 0.5 = 0.25: B ends at 3.25, bucket 2 runs [3.25, 3.75],
# the optimizer [3.75, 4.75].  The 0.083 ms between the two is the one pass's approximation (docs/step.md).
def test_backward_stretched_by_hand():
    trace, costs = tiny()
    assert costs.dp_comm_slowdown == ()  # typed costs: no kernels to slow
    plain = step.simulate_step(trace, costs)
    assert spans(plain, GRAD_SYNC) == [(2.0, 2.5), (3.0, 3.5)]
    assert spans(plain, OPTIMIZER) == [(3.5, 4.5)]
    slowed = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.5,)))
    assert spans(slowed, GRAD_SYNC) == [(2.0, 2.5), (3.25, 3.75)]
    assert spans(slowed, OPTIMIZER) == [(3.75, 4.75)]


def test_no_slowdown_is_todays_rows():
    trace, costs = tiny()
    same = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(1.0,)))
    assert step.simulate_step(trace, costs).tobytes() == same.tobytes()


@pytest.mark.parametrize("f", [1.05, 1.2, 2.0, 3.0])
def test_slower_compute_never_ends_the_step_earlier(f):
    trace, costs = tiny()
    a = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(f,)))
    b = step.simulate_step(trace, replace(costs, dp_comm_slowdown=(f + 0.5,)))
    assert 4.5 < a["end"].max() <= b["end"].max()
    # the stretch is what the first pass's 0.5 ms of overlap takes beyond itself
    assert a["end"].max() == pytest.approx(4.5 + (f - 1) * 0.5)


def test_gemm_waves_on_the_sms_left():
    """B200: 148 SMs; 16 to the collective leaves 132.  A 4736 x 512 output is 37 x 4 = 148 tiles of
    128 x 128: one full wave on 148 SMs; B200's GEMMs take their tiles dynamically (Cluster Launch Control),
    so beside the collective the 148 tiles run over 132 SMs in 2 rounds: a useful share of 148 / (2 x 148)."""
    b200 = PRESETS["B200"]
    left = comm_slowdown.fewer_sms(b200, 16)
    assert (left.sms, left.held_sms, left.gemm_schedule) == (148, 16, "dynamic")
    assert left.gemm_bf16.peak == b200.gemm_bf16.peak  # the whole GPU's peak: the SMs held cost rounds (gemm.py)
    assert left.attention_forward == pytest.approx(b200.attention_forward * 132 / 148)
    assert left.hbm == b200.hbm  # streaming kernels keep the HBM bandwidth
    assert gemm.utilisation(4736, 512, b200.sms) == pytest.approx(1.0)
    k = 1 << 30  # utilisation's K: the mainloop's share 1
    assert gemm.efficiency(4736, 512, k, b200.sms, 0.0, 1, 16, "dynamic") == pytest.approx(148 / 296)


def test_llama8b_stage_slowdown_bounds():
    """Llama 3.1 8B on B200 (FP8, CP 2): its GEMMs and attention run on 132 of 148 SMs under the
    collective, its memory-bound kernels as fast as alone: slower than alone, by less than the SM ratio
    plus a partial wave."""
    sc = scenario.load(LLAMA8B_64)
    (f,) = sc.step_costs().dp_comm_slowdown
    assert 1.0 < f < 148 / 132 * 1.05
    off = scenario.from_dict({**_raw(LLAMA8B_64), "step": {**_raw(LLAMA8B_64)["step"], "dp_comm_sms": 0}})
    assert off.step_costs().dp_comm_slowdown == ()


def _raw(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


def test_llama8b_step_longer_by_the_stretch():
    """The 64-GPU row: the step grows by (f - 1) x the backward's time under its syncs (the pipeline is
    one forward and one backward) plus the optimizer figure's share for the forward under the parameter
    all-gather; the first never more than (f - 1) x the whole sync time."""
    sc = scenario.load(LLAMA8B_64)
    off = scenario.from_dict({**_raw(LLAMA8B_64), "step": {**_raw(LLAMA8B_64)["step"], "dp_comm_sms": 0}})
    (f,) = sc.step_costs().dp_comm_slowdown
    on_m, off_m = simulation.run(sc).metrics.step, simulation.run(off).metrics.step
    assert on_m.pipeline == off_m.pipeline  # the pipeline's trace is not re-run
    gather = on_m.optimizer - off_m.optimizer
    grown = on_m.total - off_m.total - gather
    assert 0 < grown <= (f - 1) * off_m.grad_sync.time + 1e-9


@pytest.mark.parametrize("value, message", [(-1, "greater than or equal to 0"), (65, "less than or equal to 64"),
                                            (8.5, "whole number")])  # fmt: skip
def test_cli_bad_value_exit_2(tmp_path, value, message):
    out = subprocess.run(["dualpipe-sim", "run", str(LLAMA8B_64), "--set", f"step.dp_comm_sms={value}",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "step.dp_comm_sms" in out.stderr and message in out.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("gather, waited, forward, expected", [
    (20.0, 5.0, 100.0, 0.1 * 15.0),  # 15 ms of the gather beside the forward
    (20.0, 25.0, 100.0, 0.0),  # all of it waited for at the step's start: nothing beside the forward
    (20.0, 0.0, 10.0, 0.1 * 10.0),  # the forward is shorter than the gather: all of the forward slowed
])  # fmt: skip
def test_forward_under_gather_by_hand(gather, waited, forward, expected):
    assert param_gather.forward_under_gather_ms(gather, waited, forward, 1.1) == pytest.approx(expected)


def test_llama8b_gather_slows_the_forward_within_its_bound():
    """The 64-GPU row overlaps its FP8 parameter all-gather with the next forward: the optimizer figure
    grows by more than nothing and at most (f - 1) x the whole gather."""
    on = scenario.load(LLAMA8B_64)
    off = scenario.from_dict({**_raw(LLAMA8B_64), "step": {**_raw(LLAMA8B_64)["step"], "dp_comm_sms": 0}})
    (f,) = on.step_costs().dp_comm_slowdown
    d = on.derived()
    st, stage = d.setup, d.stages[0]
    gather = param_gather.param_gather_ms(st, stage, fp8_step_casts.fp8_param_elements(st, st.stages[0]))
    grown = on.step_costs().optimizer[0] - off.step_costs().optimizer[0]
    assert 0 < grown <= (f - 1) * gather + 1e-9


@pytest.mark.parametrize("name", ["validation/mlperf51-llama8b-64b200", "validation/mlperf31-gpt3-512",
                                  "validation/mz-qwen3-235b-ep32pp8", "deepseek-v3-predicted"])  # fmt: skip
def test_stage_compute_is_derives_sum(name):
    """The slowdown's denominator is the stage as derive() figured it; its numerator is the same sum
    (_stage_compute) on fewer SMs: at full SMs the two agree, stage by stage."""
    sc = scenario.load(ROOT / "scenarios" / f"{name}.toml")
    d = sc.derived()
    per_layer: dict = {}
    for where, fig in zip(d.setup.stages, d.stages):
        exposed = sum(fig.fsdp_exposed) if fig.fsdp_exposed else 0.0
        compute = comm_slowdown._stage_compute(d.setup, where, per_layer)
        assert compute == pytest.approx(fig.forward + fig.backward - exposed)


def test_a_shared_nic_yields_to_p2p_where_the_stretched_rank_sends_it():
    """grad_sync_shares_p2p with the slowdown, worked by hand.  1F1B, 2 stages, one micro-batch, P2P 0.5 ms:
    rank 1 runs F [1.5, 2.5] and B [2.5, 4.5], then sends the gradient back [4.5, 5.0].  Its bucket 1 (0.5 ms)
    is ready at 3.5 and runs [3.5, 4.0] beside B, which at 1.5x ends 0.25 later, at 4.75; the send leaves then,
    [4.75, 5.25], on the NIC bucket 2 needs: bucket 2, launched at 4.75, yields to it and runs 5.25-5.75 (its row
    [4.75, 5.75]; on the unstretched send, [4.5, 5.0], it would end at 5.5); the optimizer follows, [5.75, 6.75]."""
    raw = {
        "pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 1},
        "costs": {"forward": 1.0, "backward": 2.0},
        "comm": {"p2p": 0.5, "p2p_mode": "async"},
        "step": {"grad_sync": 1.0, "grad_sync_buckets": 2, "overlap_grad_sync": True, "optimizer": 1.0,
                 "grad_sync_shares_p2p": True},
    }
    sc = scenario.from_dict(raw)
    rows = step.simulate_step(simulation.run(sc).trace, replace(sc.step_costs(), dp_comm_slowdown=(1.5, 1.5)))
    rank1 = rows[rows["rank"] == 1]
    assert spans(rank1, GRAD_SYNC) == [(3.5, 4.0), (4.75, 5.75)]
    assert spans(rank1, OPTIMIZER) == [(5.75, 6.75)]


def test_mlperf_gpt3_scenarios_hold_the_ctas_their_code_asks():
    # MLPerf v3.1's config_common.sh caps the data-parallel group at MEGATRON_CORE_DP_MAX_CTAS=8 (Megatron-core
    # parallel_state.py @ df72712 passes it as the group's NCCL max_ctas); v3.0's apex parallel_state gives NCCL no
    # config, so its own 16 (docs/step.md); fewer SMs held never makes the step longer
    folder = ROOT / "scenarios" / "validation"
    for path in sorted(folder.glob("mlperf3[01]-gpt3-*.toml")):
        expected = 8 if path.name.startswith("mlperf31") else 16
        assert scenario.load(path).step.dp_comm_sms == expected, path.name
    v31 = folder / "mlperf31-gpt3-10240.toml"
    capped = simulation.run(scenario.load(v31)).metrics.step.total
    default = simulation.run(scenario.load(v31, ["step.dp_comm_sms=16"])).metrics.step.total
    assert capped < default
