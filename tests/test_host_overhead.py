"""Issue 21 (host): the host's share of an MoE layer's forward (model/host.py).  The replay is worked by
hand on small cases; the call and sync counts are the ones docs/model.md lists from Megatron-core's code."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, host, kernels

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
US = 1e-6


def _load(name, overrides=()):
    return derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))


def _host_rows(st):  # the forward's (the backward's row: tests/test_host_backward.py)
    return [k for k in derive.layer_kernels(st, 0) if k.kind == "host" and k.name == "host launches and syncs"]


# -- the replay, by hand ----------------------------------------------------------------------------------
def test_host_bound_stretch_then_a_sync_by_hand():
    # two calls sharing 10 us of GPU work, then one call the host waits for; 5 us a call, 7 us a wait.
    # call 1 issued at 5, runs 5-10; call 2 issued at 10, runs 10-15; call 3 (no GPU work) issued at 15;
    # the host waits for the GPU (15) and the round trip: 22 us.
    steps = [host.Step("a", 2, 10 * US), host.Step("b", 1, 0.0, sync=True)]
    assert host.replay(steps, 5 * US, 7 * US) == pytest.approx(22 * US)


def test_gpu_bound_forward_costs_only_the_first_launch_and_the_wait():
    # one 100 us kernel issued at 5 us, then ten calls of no GPU work issued by 55 us: the GPU ends at 105,
    # the sync returns at 112.  Beyond the GPU's 100 us: the first launch (5) and the wait (7).
    steps = [host.Step("gemm", 1, 100 * US), host.Step("small", 10, 0.0, sync=True)]
    assert host.replay(steps, 5 * US, 7 * US) - 100 * US == pytest.approx(12 * US)


def test_gpu_idles_after_each_sync_until_the_host_has_launched_again():
    # the same 20 us kernel twice, a sync after each: every round is launch (5) + kernel (20) + wait (7)
    steps = [host.Step("k", 1, 20 * US, sync=True)] * 2
    assert host.replay(steps, 5 * US, 7 * US) == pytest.approx(2 * 32 * US)


def test_wait_is_the_measured_launch_and_sync_minus_the_launch():
    # CSCS ReFrame gpu_kernel_latency references on A100: 9.65 us synchronised, 2.7 us asynchronous
    assert host.SYNC_WAIT == pytest.approx(6.95 * US)


# -- calls per kernel row ---------------------------------------------------------------------------------
def test_grouped_linear_is_a_gemm_per_expert_and_two_event_calls_per_stream():
    row = kernels.Kernel("experts fc1 (grouped)", "mlp_forward", "gemm", "16 x 512 x 3072 x 4096 bf16", 0, 0, 0, "compute")
    assert host.calls(row, 4, 4, 16) == 16 + 2 * 4  # TE multi-stream: 16 GEMMs, 4 streams
    assert host.calls(row, 4, 4, 2) == 2 + 2 * 2  # fewer experts than streams: only their streams
    assert host.calls(row, 4, 1, 16) == 16  # SequentialMLP
    assert host.calls(row, 4, 0, 16) == 1  # one grouped kernel
    ring = kernels.Kernel("tp all-gather (ring overlap)", "attn_forward", "comm", "x", 0, 0, 0, "communication")
    assert host.calls(ring, 4, 4, 16) == 3
    qkv = kernels.Kernel("qkv", "attn_forward", "gemm", "4096 x 2304 x 4096 bf16 (4 splits, 132 SMs)", 0, 0, 0, "compute")
    assert host.calls(qkv, 4, 4, 16) == 4
    router = kernels.Kernel("router softmax + top-k", "mlp_forward", "memory", "x", 0, 0, 0, "latency")
    assert host.calls(router, 4, 4, 16) == 9


def test_forward_starts_after_the_last_sync_and_ends_on_one():
    st = _load("mz-qwen3-235b-tp4ep8pp8")
    rows = [k for k in derive.layer_kernels(st, 0) if k.kind != "host"]
    steps = host.forward_steps(rows, 4, 4, 16, "deepep")
    assert steps[-1].sync and not steps[0].sync
    assert sum(s.sync for s in steps) == 4  # DeepEP's count poll and three reads of a size (docs/model.md)
    assert sum(s.sync for s in host.forward_steps(rows, 4, 4, 16, "alltoall")) == 1
    gpu = sum(k.seconds for k in rows if k.component in ("attn_forward", "mlp_forward")
              or (k.component in ("dispatch_forward", "combine_forward")))  # fmt: skip
    assert sum(s.seconds for s in steps) == pytest.approx(gpu)  # every forward kernel, once


def test_all_host_bound_forward_is_calls_times_cost_plus_waits():
    # at 1 ms a call every kernel's GPU share is shorter than its launch: the forward takes
    # calls x 1 ms + syncs x wait, whatever the kernels
    st = _load("mz-qwen3-235b-tp4ep8pp8")
    rows = [k for k in derive.layer_kernels(st, 0) if k.kind != "host"]
    steps = host.forward_steps(rows, 4, 4, 16, "deepep")
    calls, syncs = sum(s.ops for s in steps), sum(s.sync for s in steps)
    longest_share = max(s.seconds / max(1, s.ops) for s in steps)
    assert longest_share < 1e-3
    gpu = sum(s.seconds for s in steps)
    excess, n, k = host.forward_excess(rows, 1e-3, 4, 4, 16, "deepep")
    # the last call's own GPU share runs after it is issued; so does DeepEP's notify kernel, which the host polls
    last = steps[-1].seconds / max(1, steps[-1].ops)
    notify = next(s.seconds for s in steps if s.label == "token counts all-gather")
    assert (n, k) == (calls, syncs)
    assert excess + gpu == pytest.approx(calls * 1e-3 + syncs * host.SYNC_WAIT + last + notify)


# -- in the layer's kernels, the scenario keys and the CLI --------------------------------------------------
def test_host_row_in_the_moe_forward_and_again_in_a_full_recompute():
    (row,) = _host_rows(_load("mz-qwen3-235b-tp4ep8pp8"))
    assert row.component == "mlp_forward" and row.bound == "host" and row.seconds > 4 * host.SYNC_WAIT
    assert "4 syncs (deepep)" in row.shape
    rows = _host_rows(_load("mz-qwen3-235b-tp4ep8pp8", ["memory.recompute=full"]))
    assert [k.component for k in rows] == ["mlp_forward", "mlp_backward_input"]


def test_zero_turns_it_off_and_dense_layers_have_none():
    assert _host_rows(_load("mz-qwen3-235b-tp4ep8pp8", ["model.host_overhead_us=0"])) == []
    assert _host_rows(_load("k22-22b-full")) == []
    # with hardware.efficiency (no kernel-level times) nothing is derived from kernels at all
    st = _load("mz-qwen3-235b-tp4ep8pp8", ["hardware.efficiency=0.4", "step.optimizer=0", "step.grad_sync=0"])
    assert st.host_op == 0.0


def test_fewer_calls_fewer_syncs_less_host_time():
    deepep = _host_rows(_load("mz-qwen3-235b-tp4ep8pp8"))[0].seconds
    alltoall = _host_rows(_load("mz-qwen3-235b-tp4ep8pp8", ["model.moe_dispatcher=alltoall"]))[0].seconds
    cheaper = _host_rows(_load("mz-qwen3-235b-tp4ep8pp8", ["model.host_overhead_us=8"]))[0].seconds
    assert alltoall < deepep and cheaper < deepep


@pytest.mark.parametrize("line, words", [
    ("host_overhead_us = -1", ("model.host_overhead_us", "greater than or equal to 0")),
    ('host_overhead_us = "13.5"', ("model.host_overhead_us", "microseconds")),
    ('moe_dispatcher = "allgather"', ("model.moe_dispatcher", "deepep")),
])  # fmt: skip
def test_bad_host_keys_are_one_clear_error(tmp_path, capsys, line, words):
    path = tmp_path / "s.toml"
    text = (VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml").read_text().replace('moe_dispatcher = "deepep"', "")
    path.write_text(text.replace("micro_batch_size = 1", f"micro_batch_size = 1\n{line}"))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_explain_shows_the_host_row_and_json_its_kind(capsys):
    overlap = ["--set", "parallel.tp_comm_overlap=true"]  # the count below has TE's ring pieces (off on the row since s21c)
    assert main(["model", str(VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml"), "--explain", *overlap]) == 0
    out = capsys.readouterr().out
    # 116 calls before the permute's row-id map (two Triton kernels, s11c) was counted; 130 before s21m dropped the
    # sort and unsort by local expert, which DeepEP's path does not run
    assert "host launches and syncs" in out and "128 calls x 13.5 us, 4 syncs (deepep)" in out
    assert "host 13.5 us per PyTorch call, deepep dispatcher's syncs (model.host_overhead_us" in out
    assert main(["model", str(VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml"), "--json"]) == 0
    assert '"kind": "host"' in capsys.readouterr().out
