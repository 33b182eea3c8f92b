"""The A100-era loops' once-a-step work (model/loop_step.py; docs/model.md, "Once a step: the loops' timers, host
reads and loss reductions"): the warm-up's and cool-down's P2P calls counted by walking Megatron-LM's loops, and the
stretches' time worked by hand from the host's 13.5 us a call and 6.95 us a sync (host.py) and the A100's 2.5 us
kernel floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, loop_step, step_end
from dualpipe_sim.model import optimizer_step

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
P, W, F = 13.5e-6, 9.65e-6 - 2.7e-6, 2.5e-6  # a host call; a sync's round trip; a kernel floor


def _walk_1f1b(ranks: int, m: int, r: int) -> int:
    """Timed P2P calls of schedules.py @ 6985e58 forward_backward_pipelining_without_interleaving (lines 400-467),
    walked call by call: recv_forward / send_backward* untimed on the first rank, send_forward* / recv_backward on
    the last."""
    first, last = r == 0, r == ranks - 1
    w = min(ranks - r - 1, m)
    calls = 0
    for _ in range(w):
        calls += (not first) + (not last)  # recv_forward, send_forward
    if m - w > 0:
        calls += not first  # recv_forward
    for i in range(m - w):
        calls += not last  # send_forward_recv_backward
        calls += not first  # send_backward (last iteration) or send_backward_recv_forward
    for _ in range(w):
        calls += (not last) + (not first)  # recv_backward, send_backward
    return calls


@pytest.mark.parametrize("ranks,m", [(4, 8), (4, 2), (8, 48), (2, 12), (64, 512)])
def test_1f1b_phase_calls_walked(ranks, m):
    for r in range(ranks):
        # megatron_lm.rows times one call after each forward but the last rank's and each backward but the first's
        per_pass = m * (r != ranks - 1) + m * (r != 0)
        assert per_pass + loop_step.megatron_phase_calls(False, ranks, 1, m, r) == _walk_1f1b(ranks, m, r)


def test_phase_calls_by_hand():
    # 1F1B, 4 ranks, 8 micro-batches: rank 0 warms up 3 forwards (3 sends) and cools down 3 backwards (3 recvs);
    # rank 1: 2 forwards with a recv and a send each, the recv before the steady state, 2 backwards likewise
    assert [loop_step.megatron_phase_calls(False, 4, 1, 8, r) for r in range(4)] == [3, 2 + 1 + 2, 1 + 1 + 1, 1]
    # interleaved, 4 ranks, 2 chunks, 8 micro-batches (16 forwards a rank): warm-up (4 - r - 1) x 2 + 4, one
    # call each, and rank 0 has no first recv_forward: 10, 9, 7, 5
    assert [loop_step.megatron_phase_calls(True, 4, 2, 8, r) for r in range(4)] == [10, 8 + 1, 6 + 1, 4 + 1]
    # micro-batches = ranks: all 8 forwards in the warm-up, and the cool-down's recv_backward except on the last
    assert [loop_step.megatron_phase_calls(True, 4, 2, 4, r) for r in range(4)] == [9, 10, 10, 9]
    assert loop_step.megatron_phase_calls(False, 1, 1, 4, 0) == 0  # no pipeline: no P2P call


def _setup(path, overrides=()):
    sc = scenario.load(path, list(overrides))
    return sc, derive.setup(sc)


def test_n21_145b_phase_and_step_by_hand():
    sc, st = _setup(VAL / "n21-145b.toml")  # 8 ranks x 2 chunks, 48 micro-batches, TP 8, DP 24, fp16, local DDP
    phase, once = loop_step.per_stage_ms(sc, st, derive.stage_ranks(sc), optimizer_step.megatron_core_optimizer(sc))
    # rank 0: (8 - 1) x 2 + 8 = 22 warm-up calls, two syncs each, spread over its two chunks (stages 0 and 8)
    assert phase[0] == phase[8] == pytest.approx(22 * 2 * W / 2 * 1e3)
    assert phase[7] == pytest.approx((0 * 2 + 8 + 1) * 2 * W / 2 * 1e3)  # rank 7
    # a middle rank's step: timers 1, 2, 3, 2 (each stretch a launch after), found-inf and norm (2 calls, their
    # all-reduce over the model-parallel group of 64, a sync; the two timers after), the last two timers and the
    # loss scale's read (a call and a sync), then a launch
    r = collectives.small_all_reduce(64, 8, st.rates.nccl)
    assert r / 2 > P  # the second call is issued before the all-reduce's first half ends: the GPU sets the pace
    rank = (W + P) + (2 * W + P) + (3 * W + P) + (2 * W + P) + 2 * (P + r + 3 * W + P) + (3 * W + 2 * P)
    assert once[3] == pytest.approx(rank / 2 * 1e3)
    # the last rank: 48 adds, a divide and the log's add launched before the read: 50 calls more
    assert once[15] - once[3] == pytest.approx(50 * P / 2 * 1e3)


def test_k22_bf16_no_scaler_and_norm_elsewhere():
    sc, st = _setup(VAL / "k22-175b-seqsel.toml")  # bf16: no found-inf; the norm costed by Megatron-core's step end
    assert optimizer_step.megatron_core_optimizer(sc)
    segs = loop_step.megatron_segments(sc, st, 3, 8, True)
    labels = [s.label for seg in segs for s in seg]
    assert not [x for x in labels if "found-inf" in x or "norm" in x]
    assert sum(s.sync for seg in segs for s in seg) == 12 + 1  # 6 train_step timers, 6 optimizer timers, a read


def test_bloom_middle_rank_by_hand():
    sc, st = _setup(VAL / "bloom-176b.toml")  # 12 ranks, one stage each, DP 8, TP 4
    _, once = loop_step.per_stage_ms(sc, st, derive.stage_ranks(sc), optimizer_step.megatron_core_optimizer(sc))
    b = collectives.small_all_reduce(12, 1, st.rates.nccl)
    s = (b + 2 * F) / 3
    assert s > P  # the broadcast's thirds outlast the calls: the GPU sets the pace until the add
    # the zeros' copy (a call, a sync); broadcast and clones on the GPU; the add after it; the interval timer's stop
    # and start; the loss read and the new total's copy (a call and a sync each); the next launch
    assert once[5] == pytest.approx((5 * P + 5 * W + b + 3 * F) * 1e3)
    # the last rank adds four TensorBoard reads and its own aggregation, never less
    assert once[11] > once[5] + 4 * (P + W) * 1e3


def test_items_sum_into_the_optimizer_figure():
    for name in ("n21-145b", "bloom-176b", "n21-1.7b"):
        sc, _ = _setup(VAL / f"{name}.toml")
        d = sc.derived()
        items = [i for i in step_end.items(sc, d) if i.figure == "optimizer"]
        total = [sum(i.ms[s] for i in items) for s in range(len(d.setup.stages))]
        assert total == pytest.approx(list(sc.step_costs(d).optimizer))
        assert [i for i in items if "Megatron-LM's step" in i.name or "DeepSpeed's loss" in i.name]


def test_none_without_the_old_loops():
    sc, st = _setup(VAL / "n21-145b.toml", ["model.training_loop=megatron-core", "model.runtime=megatron-core"])
    got = loop_step.per_stage_ms(sc, st, derive.stage_ranks(sc), optimizer_step.megatron_core_optimizer(sc))
    assert got == ((0.0,) * 16, (0.0,) * 16)
