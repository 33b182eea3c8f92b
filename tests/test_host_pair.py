"""The host's share of an MoE layer in an overlapped pair (model/host_pair.py), worked by hand."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs.costs import Chunk, CostModel
from dualpipe_sim.model import host, host_pair
from dualpipe_sim.model.kernels import Kernel
from dualpipe_sim.schedules.components import Component
from dualpipe_sim.schedules.ir import FB, Op

US = 1e-6


def rows(a2a_us: float) -> list[Kernel]:
    """A toy MoE layer: every row one PyTorch call (host.calls, host_backward.calls); compute 390 us over both halves."""
    def k(name, comp, us, kind="memory"):
        return Kernel(name, comp, kind, "", 0.0, 0.0, us * US, "memory")
    return [k("qkv", "attn_forward", 100, "gemm"), k("all-to-all", "dispatch_forward", a2a_us, "comm"),
            k("permute", "mlp_forward", 20), k("experts fc1", "mlp_forward", 50, "gemm"),
            k("all-to-all", "combine_forward", a2a_us, "comm"), k("residual add", "mlp_forward", 10),
            k("all-to-all", "combine_backward", a2a_us, "comm"), k("experts fc1 dgrad", "mlp_backward_input", 60, "gemm"),
            k("all-to-all", "dispatch_backward", a2a_us, "comm"), k("qkv dgrad", "attn_backward_input", 150, "gemm")]  # fmt: skip


def excess(per_op_us: float, a2a_us: float = 80.0) -> float:
    return host_pair.pair_excess(rows(a2a_us), per_op_us * US, 1, 0, 1, "alltoall")


def test_a_host_bound_pair_takes_both_halves_calls_and_the_sync():
    """Both halves' calls: the forward's 6 rows, 8 preprocess calls and 5 copies to the host (its one sync, all-to-all
    dispatcher), the backward's 4 rows and autograd's 2 residual sums: 25 calls. At 40 us a call the host issues them
    slower than the 390 us of compute they launch, so the pair's layer is 25 x 40 us + the sync's round trip."""
    calls = 6 + 8 + 5 + 4 + 2
    assert excess(40.0) == pytest.approx(calls * 40 * US + host.SYNC_WAIT - 390 * US, rel=1e-12)


def test_a_gpu_bound_pair_adds_the_first_launch_and_the_sync():
    """At 10 us a call the GPU leads: after the sync it idles for the first call's launch (10 us), then runs its
    390 us of compute with each launch ahead of it, and the sync's round trip follows the last kernel."""
    assert excess(10.0) == pytest.approx(10 * US + host.SYNC_WAIT, rel=1e-12)


@pytest.mark.parametrize("per_op_us", [10.0, 40.0])
def test_a_pairs_host_share_does_not_hang_on_its_all_to_all(per_op_us):
    """The all-to-alls run on the communication stream beside the other half's compute: their length moves
    neither the host's calls nor the compute they race, unlike a lone forward's replay, where they hide calls."""
    assert excess(per_op_us, a2a_us=0.0) == excess(per_op_us, a2a_us=500.0)
    lone = [host.forward_excess(rows(a2a), 40 * US, 1, 0, 1, "alltoall")[0] for a2a in (0.0, 500.0)]
    assert lone[1] < lone[0]  # why a pair cannot reuse the lone replay


def test_a_pair_carries_its_layer_pairs_host_share_in_place_of_its_halves():
    """No all-to-all, so the pair's parts run one after another on the compute channel: F = 1 + 2 ms (0.5 of it the
    forward's host row), B = 3 + 4 ms input gradient (0.3 the backward's host row) + 0.5 + 0.5 weight gradient;
    a pair of 2 layers with a layer pair's host share of 2.0 ms: 2 x (3 + 8 - 0.5 - 0.3 + 2.0) = 24.4 ms."""
    times = [0.0] * len(Component)
    for name, ms in (("attn_forward", 1.0), ("mlp_forward", 2.0), ("attn_backward_input", 3.0),
                     ("mlp_backward_input", 4.0), ("attn_backward_weight", 0.5), ("mlp_backward_weight", 0.5)):
        times[Component[name]] = ms
    plain = CostModel.from_chunk(1, Chunk(2, tuple(times)))
    hosted = CostModel.from_chunk(1, Chunk(2, tuple(times), pair_host=(0.5, 0.3, 2.0)))
    pair = FB(Op("F", 1, 0), Op("B", 0, 0))
    assert plain.pair_duration(pair) == pytest.approx(22.0, rel=1e-12)
    assert hosted.pair_duration(pair) == pytest.approx(24.4, rel=1e-12)
    assert hosted.forward == plain.forward and hosted.backward == plain.backward  # lone ops keep their own rows
    # a forward stage with no MoE layer (no share) beside that backward: the backward keeps its host row, 22.0 ms
    dense = Chunk(2, tuple(times))
    mixed = CostModel.from_chunk(2, (dense, Chunk(2, tuple(times), pair_host=(0.5, 0.3, 2.0))))
    assert mixed.pair_duration(FB(Op("F", 1, 0), Op("B", 0, 1))) == pytest.approx(22.0, rel=1e-12)


def test_plans_estimate_takes_a_pairs_host_share_as_the_run_does():
    """plan's replay (plan/step_estimate.py): with F = 3, B = 8 ms a stage and a stage's host rows 0.5 (forward) and 0.3
    (backward), a pair's share 2.0, no all-to-all: each overlapped pair 3 + 8 - 0.5 - 0.3 + 2.0 = 12.2 ms, the lone F and
    B 3 and 8 as the run's lone ops; the compute floor counts each F and B less its host rows (a pair may drop them)."""
    import numpy as np

    from dualpipe_sim.plan.estimate import compute_floor
    from dualpipe_sim.plan.step_estimate import StageCosts, built, lengths

    costs = StageCosts((3.0, 3.0), (8.0, 8.0), (1.0, 1.0), pair_host=((0.5, 0.3, 2.0),) * 2)
    b = built("1f1b-overlap", 2, 4, None)
    got = lengths(b, costs)
    assert (~b.lone).any() and np.allclose(got[~b.lone], 12.2)
    assert set(np.round(got[b.lone], 12)) <= {3.0, 8.0}
    # work: 4 micro-batches x 2 stages x (2.5 + 7.7); rank 1's first forward waits for stage 0's (2.5): / 2 ranks
    assert compute_floor(costs, 4, 2, (((0, 0),), ((0, 1),))) == pytest.approx((4 * 2 * 10.2 + 2.5) / 2, rel=1e-12)
