"""s17g: the host's share of an MoE layer's backward (model/host_backward.py).  Call counts are summed here by hand
from the list in docs/model.md ("The MoE backward on the host"); the two bounds (host, GPU) worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, host, host_backward, kernels

VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
US = 1e-6


def _rows(name, overrides=()):
    return derive.layer_kernels(derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides))), 0)


def _k(name, comp, kind="memory", shape="1 MB", us=1.0):
    return kernels.Kernel(name, comp, kind, shape, 0.0, 0.0, us * US, "memory")


# a small MoE layer: 2 local experts on TE's 4 streams, tensor 1; its backward rows in table order
SMALL = [
    _k("flash attention backward", "attn_backward_input", "attention", us=50),
    _k("unpermute backward", "mlp_backward_input"),
    _k("experts fc2 dgrad (grouped)", "mlp_backward_input", "gemm", "2 x 8 x 8 x 8 bf16", 20),
    _k("experts swiglu backward", "mlp_backward_input"),
    _k("experts fc1 dgrad (grouped)", "mlp_backward_input", "gemm", "2 x 8 x 8 x 8 bf16", 20),
    _k("permute backward", "mlp_backward_input"),
    _k("router backward", "mlp_backward_input"),
    _k("router dgrad", "mlp_backward_input", "gemm", "8 x 8 x 8 bf16"),
    _k("pre-mlp norm backward", "mlp_backward_input"),
    _k("experts fc1 wgrad (grouped)", "mlp_backward_weight", "gemm", "2 x 8 x 8 x 8 bf16", 20),
    _k("experts fc2 wgrad (grouped)", "mlp_backward_weight", "gemm", "2 x 8 x 8 x 8 bf16", 20),
    _k("router wgrad", "mlp_backward_weight", "gemm", "8 x 8 x 8 bf16"),
    _k("DDP main_grad add (norms, biases, router)", "mlp_backward_weight", shape="1 MB (2 kernels)"),
    _k("all-to-all", "dispatch_backward", "comm", us=30),
    _k("all-to-all", "combine_backward", "comm", us=30),
    _k("experts fc1 (grouped)", "mlp_forward", "gemm", "2 x 8 x 8 x 8 bf16", 20),  # forward: not counted
    _k("permute (recompute)", "mlp_backward_input"),  # a rerun forward row: its syncs are the forward's
]


def _count(rows, dispatcher, tensor=1, local=2):
    steps = host_backward.backward_steps(rows, tensor, 4, local, dispatcher)
    return sum(s.ops for s in steps), sum(s.sync for s in steps), steps


# -- calls, by hand -----------------------------------------------------------------------------------------
def test_small_layer_calls_by_hand():
    grouped = 2 + 2 * 2  # GroupedLinear: a GEMM per expert, an event record + wait per stream used (2 of 4)
    rows = 1 + 1 + 1 + 4 + 3 + 1 + 2 + 2  # flash, unpermute, permute, router 4, router dgrad 3, norm, router wgrad 2, DDP 2
    swiglu, sums = 2, 2
    # all-to-all dispatcher: one NCCL call each way
    assert _count(SMALL, "alltoall")[:2] == (4 * grouped + rows + swiglu + sums + 2, 0)
    # DeepEP: cached notify + kernel + two event record / wait pairs each way; the multihot's backward (index,
    # new_zeros, nonzero | index_put) and the top-k's (zeros, scatter; no expand sum at tensor 1)
    deepep = 4 * grouped + rows + swiglu + sums + 2 * 6 + 4 + 2
    assert _count(SMALL, "deepep")[:2] == (deepep, 1)
    assert _count(SMALL, "deepep", tensor=2)[0] == deepep + 1  # the expand over the tensor ranks: a sum


def test_deepep_backward_starts_after_the_multihot_sync_with_the_expert_wgrads_before_it():
    _, _, steps = _count(SMALL, "deepep")
    assert steps[-1].sync and steps[0].label == "multihot backward: index_put (accumulate)"
    names = [s.label for s in steps]
    assert names.index("experts fc2 wgrad (grouped)") > names.index("gradient sums (residual stream)")  # before the sync
    assert names.index("router wgrad") < names.index("flash attention backward")


def test_qwen3_tp4ep8_layer_calls_by_hand():
    # mz-qwen3-235b-tp4ep8pp8 (TP 4, EP 8: 16 local experts, 4 streams, DeepEP), its backward rows (model --explain),
    # with TE's TP overlap on (the ring pieces counted below; the row itself runs without it since s21c)
    grouped = 16 + 2 * 4
    attn = 4 + 3 + 1 + 2 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 3  # out_proj dgrad 4 splits, ring 3, ..., DDP add 3 kernels
    # unpermute, fc2 dgrad, swiglu 2, fc1 dgrad, permute (no unsort or sort on DeepEP's path, s21m), aux 6, router 4,
    # dgrad 3, norm
    mlp_in = 1 + grouped + 2 + grouped + 1 + 6 + 4 + 3 + 1
    mlp_w = 2 * grouped + 2 + 2  # two wgrads, router wgrad 2, DDP add 2 kernels
    deepep = 2 * 6 + 4 + (2 + 1)  # both DeepEP calls; multihot; top-k + expand sum (TP 4)
    overlap = ["parallel.tp_comm_overlap=true"]
    rows = [k for k in _rows("mz-qwen3-235b-tp4ep8pp8", overlap) if k.kind != "host"]
    assert _count(rows, "deepep", tensor=4, local=16)[:2] == (attn + mlp_in + mlp_w + deepep + 2, 1)
    (row,) = [k for k in _rows("mz-qwen3-235b-tp4ep8pp8", overlap) if k.name == "host launches (backward)"]
    assert row.shape == "160 calls x 13.5 us, 1 syncs (deepep)" and row.component == "mlp_backward_input"
    assert 160 == attn + mlp_in + mlp_w + deepep + 2


# -- the bound: host or GPU ---------------------------------------------------------------------------------
def test_without_a_sync_the_gpu_bound_backward_costs_nothing():
    # 12 calls at 5 us (60 us) under 100 us of kernels: the host runs ahead, layer after layer
    steps = [host.Step("gemm", 2, 100 * US), host.Step("small", 10, 0.0)]
    assert host_backward.excess(steps, 5 * US) == 0.0


def test_without_a_sync_a_host_bound_backward_costs_what_the_calls_take_beyond_the_gpu():
    steps = [host.Step("gemm", 2, 100 * US), host.Step("small", 10, 0.0)]
    assert host_backward.excess(steps, 10 * US) == pytest.approx(120 * US - 100 * US)


def test_with_a_sync_the_replay_from_one_sync_to_the_next():
    # two calls share 10 us (issued at 5 and 10, run 5-10 and 10-15), then the nonzero issued at 15: the host
    # waits for the GPU (15) and the round trip (6.95): 21.95 us against 10 us of kernels
    steps = [host.Step("a", 2, 10 * US), host.Step("nonzero", 1, 0.0, sync=True)]
    assert host_backward.excess(steps, 5 * US) == pytest.approx((15 + 6.95 - 10) * US)


def test_zero_host_time_is_the_backward_without_it_exactly():
    on = _rows("mz-qwen3-235b-tp4ep8pp8")
    off = _rows("mz-qwen3-235b-tp4ep8pp8", ["model.host_overhead_us=0"])
    assert [k for k in on if k.kind != "host"] == off  # every kernel row the same, no host row at 0
    (row,) = [k for k in on if k.name == "host launches (backward)"]
    b_on, b_off = dict(kernels.passes(on))["backward_input"], dict(kernels.passes(off))["backward_input"]
    assert b_on - b_off == pytest.approx(row.ms)
    assert row.seconds > host.SYNC_WAIT  # the sync's round trip at least


def test_gpu_bound_alltoall_layer_has_a_zero_row():
    # xt-qwen3-235b-tp4ep8pp8vpp4 (H800, all-to-all, no sync in the backward): 141 calls x 13.5 us = 1.90 ms
    # against the layer's 3.99 ms of backward kernels
    rows = _rows("xt-qwen3-235b-tp4ep8pp8vpp4")
    (row,) = [k for k in rows if k.name == "host launches (backward)"]
    assert row.seconds == 0.0 and "0 syncs (alltoall)" in row.shape
    gpu = sum(k.seconds for k in rows if k.component in host_backward.BACKWARD and k.kind != "host")
    assert int(row.shape.split()[0]) * 13.5 * US < gpu


# -- W apart (s21n): each pass's calls against its own GPU time ----------------------------------------------
def test_apart_each_pass_against_its_own_gpu_time_by_hand():
    """SMALL, all-to-all dispatcher: W's rows are the two grouped wgrads (2 GEMMs + 2 event pairs each, 6 + 6 calls),
    the router wgrad (2) and the DDP add (2 kernels): 16 calls on 20 + 20 + 1 + 1 = 42 us; I's the other 45 - 16 = 29
    on 50 + 1 + 20 + 1 + 20 + 1 + 1 + 1 + 1 + 30 + 30 = 156 us (the rerun and the forward row left out).  At 5 us a
    call: I 145 < 156 us (0), W 80 - 42 = 38 us, together 225 - 198 = 27 us: run whole, I's GPU time hides W's calls;
    run apart it cannot.  At 10 us both passes are host-bound: 290 - 156 = 134 and 160 - 42 = 118, together 252."""
    rows = [k for k in SMALL if k.component != "mlp_forward"]
    assert host_backward.backward_excess(rows, 5 * US, 1, 4, 2, "alltoall")[:2] == (pytest.approx(27 * US), 45)
    assert host_backward.apart_excess(rows, 5 * US, 1, 4, 2, "alltoall") == pytest.approx((0.0, 38 * US))
    assert host_backward.apart_excess(rows, 10 * US, 1, 4, 2, "alltoall") == pytest.approx((134 * US, 118 * US))
    assert host_backward.backward_excess(rows, 10 * US, 1, 4, 2, "alltoall")[0] == pytest.approx(252 * US)


def test_a_lone_input_and_weight_gradient_carry_their_own_host_share():
    """CostModel.apart (a stage's host_apart): B keeps its figure, a lone I runs B - W less apart[0], a lone W runs W
    plus apart[1]: forward 1, B 10, W 4, apart (1.5, 2): F 1, B 10, I 4.5, W 6; without apart I 6, W 4."""
    from dualpipe_sim.schedules.ir import Op
    from dualpipe_sim.inputs.costs import CostModel
    from dualpipe_sim.schedules.rules import Kind

    costs = CostModel(forward=(1.0,), backward=(10.0,), weight=(4.0,), apart=((1.5, 2.0),))
    lengths = {k: costs.duration(Op(k, 0, 0)) for k in (Kind.F, Kind.B, Kind.I, Kind.W)}
    assert lengths == {Kind.F: 1.0, Kind.B: 10.0, Kind.I: 4.5, Kind.W: 6.0}
    plain = CostModel(forward=(1.0,), backward=(10.0,), weight=(4.0,))
    assert (plain.duration(Op(Kind.I, 0, 0)), plain.duration(Op(Kind.W, 0, 0))) == (6.0, 4.0)


def test_plans_estimate_is_the_run_with_the_host_share_apart():
    """plan's estimate replays the run's stage costs (docs/plan.md; tests/test_layout_fuzz.py on dense layouts): with
    an MoE host share apart (Qwen3-30B-A3B, TP 2, 2 stages, H100) it is the run's step to 1e-9 under zb-h1 as under
    1F1B, at EP 1 (F, B, W: CostModel.apart) and at EP 2 ([chunk] stages: Chunk.apart_host, plan's lone lengths
    kind_length's with the stage's host_apart), so it moves I and W as the run does."""
    from dualpipe_sim import run
    from dualpipe_sim.plan import estimate, request, space

    base = request.base_scenario(VALIDATION / "pai643-qwen3-30b-a3b-pp4ep4.toml", "H100", 1024, ["model.fp8=false"])
    for schedule, expert in (("zb-h1", 1), ("1f1b", 1), ("zb-h1", 2)):
        cand = space.Candidate(tensor=2, context=1, pipeline=2, data=1, expert=expert, micro_batch_size=1,
                               microbatches=2, schedule=schedule, virtual=None, stages=2, recompute="none", zero=0)
        sc = scenario.sections_only(scenario.apply_overrides(base, cand.overrides()))
        assert expert == 2 or schedule == "1f1b" or any(sc.cost_model().apart)
        step = run(sc).metrics.step.total
        assert estimate.step_time(estimate.FigureCache(base), cand) == pytest.approx(step, rel=1e-9)


def test_a_chunk_stages_lone_input_and_weight_gradient_carry_their_own_host_share():
    """[chunk] stages (an MoE model with EP > 1; s21n): two layers whose backward components are attn I 1, mlp I 3 (its
    host row, the whole backward's share, included), combine / dispatch backward 0.5 each, attn W 2, mlp W 4 (ms), no
    all-to-all beside compute, apart_host (1, 1.5) a layer.  A lone B: 2 x (1 + 3 + 0.5 + 0.5 + 2 + 4) = 22 ms, as
    without it; a lone I 2 x (1 + 3 - 1 + 1) = 8 (10 without); a lone W 2 x (2 + 4 + 1.5) = 15 (12 without)."""
    from dualpipe_sim.inputs.costs import Chunk, Component, _lay_out
    from dualpipe_sim.schedules.rules import Kind

    times = [0.0] * len(Component)
    for c, ms in ((Component.attn_backward_input, 1.0), (Component.mlp_backward_input, 3.0),
                  (Component.combine_backward, 0.5), (Component.dispatch_backward, 0.5),
                  (Component.attn_backward_weight, 2.0), (Component.mlp_backward_weight, 4.0)):
        times[c] = ms
    apart, plain = Chunk(2, tuple(times), apart_host=(1.0, 1.5)), Chunk(2, tuple(times))
    lengths = lambda chunk: [_lay_out(chunk, (k,)).length for k in (Kind.B, Kind.I, Kind.W)]  # noqa: E731
    assert lengths(apart) == pytest.approx([22.0, 8.0, 15.0])
    assert lengths(plain) == pytest.approx([22.0, 10.0, 12.0])
