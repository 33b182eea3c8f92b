"""Megatron-LM 2021/2022's schedules, micro-batch by micro-batch (model/megatron_lm.py, model/get_batch.py;
docs/model.md, "Megatron-LM 2021/2022, micro-batch by micro-batch"), worked by hand on n21-145b: micro-batch 2 x 2,048
tokens, TP 8, DP 24, 16 chunks (8 ranks x 2). Rates: the A100 preset's (1.61 TB/s streaming HBM, 2.5 us kernel
floor); the host's 13.5 us a call and 6.95 us a sync (host.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive

ROOT = Path(__file__).resolve().parents[1]
N21 = ROOT / "scenarios" / "validation" / "n21-145b.toml"
HBM, FLOOR = 1.61e12, 2.5e-6
P, W = 13.5e-6, 9.65e-6 - 2.7e-6  # a host call; a sync's round trip
N, S = 2 * 2048, 2048


def _setup(path=N21, overrides=()):
    return derive.setup(scenario.load(path, list(overrides)))


def _rows(st, stage):
    return derive.extra_kernels(st, st.stages[stage])


def _mem(nbytes, launches=1):
    return nbytes / HBM + launches * FLOOR


def _host(rows, comp):
    [k] = [k for k in rows if k.kind == "host" and k.component == comp]
    return k


def test_every_stage_loads_each_micro_batch():
    st = _setup()
    for stage in (0, 7, 15):  # first, a middle chunk, last: every chunk calls get_batch
        rows = {k.name: k for k in _rows(st, stage)}
        # ones (fp32 write 4), tril (read 4, write 4), < 0.5 (read 4, write 1): 17 bytes a mask element, 3 kernels
        assert rows["causal mask built (ones, tril, < 0.5)"].seconds == pytest.approx(_mem(17 * S * S, 3))
        assert rows["labels and tokens copies"].seconds == pytest.approx(_mem(2 * 2 * N * 8, 2))
        assert rows["loss mask and positions"].seconds == pytest.approx(_mem(4 * N + 8 * S, 2))
        assert rows["tokens broadcast (get_batch)"].component == "mlp_forward"
        assert "all_gather 0.0328 MB over 8" in rows["tokens broadcast (get_batch)"].shape  # 2 x 2,049 int64


def test_a_middle_chunk_host_by_hand():
    st = _setup()
    rows = _rows(st, 7)
    names = {k.name: k for k in rows}
    sizes = names["sizes broadcast (get_batch)"].seconds
    load = sum(names[n].seconds for n in ("tokens broadcast (get_batch)", "labels and tokens copies",
                                          "causal mask built (ones, tril, < 0.5)", "loss mask and positions"))
    # every share of GPU time a call is under a call's host time: the host sets the pace
    assert sizes / 2 < P and load / 8 < P
    # forward, stretch 1: two timers' syncs; the sizes' copy (1 call, a sync); broadcast + .cpu() (2 calls, the GPU
    # done half the broadcast after the second, a sync); tokens .cuda() (1 call, a sync); the 8 load calls (the GPU
    # done an eighth after the last); the batch-generator's stop (a sync); the layers' first launch
    one = 2 * W + (P + W) + (2 * P + sizes / 2 + W) + (P + W) + (8 * P + load / 8) + W + P
    # stretch 2: forward-compute stop, then the backward's launch: the interleaved steady state's P2P call follows
    # the forward-backward pair (schedules.py @ 6985e58 lines 277-338), not the forward
    two = W + P
    fwd = _host(rows, "mlp_forward")
    assert fwd.seconds == pytest.approx(one - sizes - load + two)
    assert "7 syncs" in fwd.shape and "12 calls" in fwd.shape
    # backward: backward-compute start, a launch; its stop and the pair's P2P call's two timers, a launch
    bwd = _host(rows, "mlp_backward_input")
    assert bwd.seconds == pytest.approx((W + P) + (3 * W + P))
    assert "4 syncs" in bwd.shape
    assert not [k for k in rows if "loss" in k.name and "mask" not in k.name]  # the loss only on the last


def test_first_and_last_stages():
    st = _setup()
    first, last = _rows(st, 0), _rows(st, 15)
    # the first chunk: the same 7 forward syncs, and the six vocabulary-mask calls after the load (6 calls more);
    # interleaved, the pair's call is timed on every chunk, the first's too: 4 backward syncs
    assert "7 syncs" in _host(first, "mlp_forward").shape and "18 calls" in _host(first, "mlp_forward").shape
    assert _host(first, "mlp_backward_input").seconds == pytest.approx((W + P) + (3 * W + P))
    # the last chunk sends nothing after its forward: 7 syncs; its backward still sends: 4
    assert "7 syncs" in _host(last, "mlp_forward").shape and "4 syncs" in _host(last, "mlp_backward_input").shape
    rows = {k.name: k for k in last}
    # the loss: mul, sum, sum, div; clone, cat, divide; / micro-batches: 8 floor-bound kernels
    assert rows["loss: masked mean, data-parallel average, / micro-batches"].seconds == pytest.approx(_mem(32, 8))
    assert rows["loss scaled (scale_loss)"].seconds == pytest.approx(_mem(8))
    # DP 24 at TP 8: one data-parallel rank a node, 24 nodes
    ar = rows["loss all-reduce (data-parallel average)"]
    assert ar.seconds == pytest.approx(collectives.small_all_reduce(24, 1, st.rates.nccl))
    assert ar.seconds != pytest.approx(collectives.small_all_reduce(24, 8, st.rates.nccl))
    assert "over 24 (nic)" in ar.shape and ar.component == "mlp_forward"


def test_one_f_one_b_one_call_a_pass():
    # n21-1t: 1F1B over 64 ranks; its steady state times a P2P call after each pass (schedules.py @ 6985e58 lines
    # 421-453): a middle stage 2 more forward syncs than interleaved (9), the first stage's backward none (2)
    st = _setup(ROOT / "scenarios" / "validation" / "n21-1t.toml")
    assert "9 syncs" in _host(_rows(st, 30), "mlp_forward").shape
    assert "4 syncs" in _host(_rows(st, 30), "mlp_backward_input").shape
    assert _host(_rows(st, 0), "mlp_backward_input").seconds == pytest.approx(2 * (W + P))
    assert "7 syncs" in _host(_rows(st, 63), "mlp_forward").shape


def test_pipeline_one_and_eight_per_node():
    # n21-1.7b: TP 1, DP 32, one stage: first and last, no P2P at all; 8 data-parallel ranks a node, 4 nodes
    st = _setup(ROOT / "scenarios" / "validation" / "n21-1.7b.toml")
    rows = _rows(st, 0)
    assert "7 syncs" in _host(rows, "mlp_forward").shape
    assert _host(rows, "mlp_backward_input").seconds == pytest.approx(2 * (W + P))
    [ar] = [k for k in rows if k.name == "loss all-reduce (data-parallel average)"]
    assert ar.seconds == pytest.approx(collectives.small_all_reduce(32, 8, st.rates.nccl))
    # TP 1: no tensor group to broadcast over, the syncs all the same
    assert not [k for k in rows if "broadcast" in k.name]


def test_only_megatron_lm_2021_runs_it():
    bloom = _setup(ROOT / "scenarios" / "validation" / "bloom-176b.toml")  # the same runtime on DeepSpeed's engine
    assert not [k for i in range(len(bloom.stages)) for k in _rows(bloom, i) if k.name.startswith("Megatron-LM")]
    quiet = _setup(overrides=["model.host_overhead_us=0"])
    assert not [k for k in _rows(quiet, 7) if k.kind == "host"]
    assert [k for k in _rows(quiet, 7) if k.name == "causal mask built (ones, tril, < 0.5)"]
    # model.training_loop: "derived" follows model.runtime; set, it overrides it either way
    core = _setup(overrides=["model.training_loop=megatron-core"])
    assert not [k for k in _rows(core, 7) if "get_batch" in k.name or k.name.startswith("Megatron-LM")]
    k22 = ROOT / "scenarios" / "validation" / "k22-175b-seqsel.toml"  # sets "megatron-lm-2021" on megatron-core kernels
    rows = _rows(_setup(k22), 5)
    assert "7 syncs" in _host(rows, "mlp_forward").shape and "4 syncs" in _host(rows, "mlp_backward_input").shape
    off = _setup(k22, ["model.training_loop=derived"])
    assert not [k for k in _rows(off, 5) if k.name.startswith("Megatron-LM")]
    # no data parallelism: no loss all-reduce on the last chunk, the loss's kernels still there
    last = {k.name for k in _rows(_setup(k22), 23)}
    assert "loss all-reduce (data-parallel average)" not in last
    assert "loss: masked mean, data-parallel average, / micro-batches" in last


def test_training_loop_bad_input(capsys):
    with pytest.raises(ScenarioError, match=r"model\.training_loop"):
        scenario.load(N21, ["model.training_loop=megatron-lm-2022"])
    assert main(["model", str(N21), "--set", "model.training_loop=old"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "Traceback" not in err
    bloom = ROOT / "scenarios" / "validation" / "bloom-176b.toml"
    assert main(["model", str(bloom), "--set", "model.training_loop=megatron-lm-2021"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "deepspeed-bf16" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
