"""The last stage's loss under NeMo 1 (model/nemo_loss.py; docs/model.md, "NeMo 1's loss, micro-batch by micro-batch") and
the vocabulary cross-entropy's collectives over the tensor group (kernels.ce_tensor_collectives), worked by hand on
mlperf31-gpt3-512 (TP 4, DP 16: 2 ranks of the group a node, 8 nodes; the op-by-op cross-entropy) and mlperf41-gpt3-256
(TP 4, DP 8 on 4 nodes; the fused one). H100 preset: 2.5 us kernel floor; NCCL's LL model (collectives.py: ring base
6.6 us, tree base 6.8, 0.6 a step on NVLink, 1.0 a step's network overhead, 2.7 a ring's / 5.0 a tree's network step);
the host's 13.5 us a call and 6.95 us a sync (host.py).
At the end: NeMo 2, pretrain_gpt.py and Pai-Megatron-Patch (s15l)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
V31, V41 = VAL / "mlperf31-gpt3-512.toml", VAL / "mlperf41-gpt3-256.toml"
US, FLOOR = 1e-6, 2.5e-6
P, W = 13.5e-6, 9.65e-6 - 2.7e-6
# an all-reduce of a few bytes over 4 GPUs of a node: ring 6.6 + 2 x 3 steps x 0.6 = 10.2 us (tree 6.8 + 2 x 3 x 0.6)
TP4 = 10.2 * US
# over DP 16 at 2 a node (8 nodes): tree 6.8 + 2 x (1 x 0.6 + 3 levels x 5.0) = 38.0 us (ring 6.6 + 14 x 1.0 + 16 x 2.7)
DP16 = 38.0 * US
DP8 = (6.8 + 2 * (0.6 + 2 * 5.0)) * US  # 4 nodes: 28.0 us (ring 6.6 + 6 x 1.0 + 8 x 2.7 = 34.2)


def _setup(path, overrides=(), evaluation=False):
    st = derive.setup(scenario.load(path, list(overrides)))
    return replace(st, evaluation=True) if evaluation else st


def _head(st):
    return {k.name: k for k in derive.extra_kernels(st, st.stages[-1])}


def test_cross_entropy_collectives_by_function():
    op_by_op = _head(_setup(V31))["cross-entropy tp collectives"]
    assert op_by_op.seconds == pytest.approx(3 * TP4) and op_by_op.shape.startswith("3 x all_reduce")
    assert op_by_op.bytes == 3 * 2048 * 4  # max, predicted logit, exp sum: one fp32 a token each
    fused = _head(_setup(V41))["cross-entropy tp collectives"]
    assert fused.seconds == pytest.approx(2 * TP4) and fused.bytes == 4096 * 4 * (1 + 2)
    assert fused.component == "mlp_forward"  # forward only: the backward runs none
    one = _setup(VAL / "mlperf51-llama8b-64h200.toml")  # TP 1: nothing to reduce
    assert "cross-entropy tp collectives" not in _head(one)


def test_training_loss_rows():
    rows = _head(_setup(V31))
    assert rows["loss: masked mean, data-parallel sum, / micro-batches"].seconds == pytest.approx(8 * FLOOR)
    assert rows["loss all-reduce (data-parallel)"].seconds == pytest.approx(DP16)
    assert "NeMo: validation loss reads" not in rows  # no host read in training
    assert _head(_setup(V41))["loss all-reduce (data-parallel)"].seconds == pytest.approx(DP8)


def test_evaluation_loss_reads_replayed_by_hand():
    # from the first read's return (one round trip W), mul and clone at p each; the scalar's read and the blocking
    # .cuda() each a call and a round trip on an idle GPU; clone, cat, all-reduce, divide (their 3 floors and R spread
    # over 4 calls, each shorter than p) and the next forward's launch: 3 W + 9 p, less the GPU's own 5 floors and R
    for path, reduce in ((V31, DP16), (V41, DP8)):
        rows = _head(_setup(path, evaluation=True))
        assert rows["loss: masked mean, data-parallel sum (validation)"].seconds == pytest.approx(11 * FLOOR)
        assert rows["loss all-reduce (data-parallel)"].bytes == 8  # the loss sum and the token count
        host = rows["NeMo: validation loss reads"]
        assert host.seconds == pytest.approx(3 * W + 9 * P - 5 * FLOOR - reduce)
        assert host.shape == "8 calls x 13.5 us, 3 syncs"


def test_only_the_last_stage_and_only_nemo_1():
    nemo, core = _setup(V31, evaluation=True), _setup(V31, ["model.training_loop=megatron-core"], evaluation=True)
    f_nemo, f_core = derive.evaluation_forwards(nemo), derive.evaluation_forwards(core)
    assert f_nemo[:-1] == f_core[:-1]  # the embedding's and the layers' stages untouched
    added = 11 * FLOOR + DP16 + (3 * W + 9 * P - 5 * FLOOR - DP16)
    assert f_nemo[-1] - f_core[-1] == pytest.approx(added * 1e3)
    train = derive.derive(_setup(V31)).stages[-1].forward
    train_core = derive.derive(_setup(V31, ["model.training_loop=megatron-core"])).stages[-1].forward
    assert train - train_core == pytest.approx((8 * FLOOR + DP16) * 1e3)


def test_nemo_1_bad_input(capsys):
    bloom = VAL / "bloom-176b.toml"
    assert main(["model", str(bloom), "--set", "model.training_loop=nemo-1"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "deepspeed-bf16" in err and "Traceback" not in err


# -- NeMo 2, Megatron-LM's pretrain_gpt.py, Pai-Megatron-Patch (s15l; docs/model.md, "The loss under NeMo 2,
# pretrain_gpt.py and Pai-Megatron-Patch"). From NCCL 2.23 a ring over one rank a node takes 2(nodes - 1) network
# steps at the tree's 5.0 us, its other steps at the 1.0 us network overhead.
L405 = VAL / "mlperf50-llama405b-512.toml"  # H100, TP 8, CP 2, DP 4 (NCCL 2.25.1), NeMo v2.2.0
MIXTRAL = VAL / "mz-mixtral-8x22b.toml"  # H100, TP 2, CP 1, DP 8: Megatron-LM's pretrain_gpt.py
PAI = VAL / "pai643-qwen3-30b-a3b-pp2ep8.toml"  # H800, TP 1, CP 1, DP 8 on one node: Pai-Megatron-Patch
F = FLOOR
# CP 2 at TP 8: the pair sits 8 apart, one a node: tree 6.8 + 2 x 5.0 = 16.8; ring 6.6 + 2 x (2 - 1) x 5.0 = 16.6
CP2 = 16.6 * US
# DP 4 (ranks 16 apart, one a node, 4 nodes): tree 6.8 + 2 x 2 levels x 5.0 = 26.8; ring 6.6 + 6 x 5.0 = 36.6
DP4 = 26.8 * US
# DP 8 on one node (TP 1): ring 6.6 + 14 x 0.6 = 15.0 (tree 6.8 + 2 x 7 x 0.6 = 15.2)
DP8_NODE = 15.0 * US


def test_nemo_2_per_micro_batch_by_hand():
    rows = _head(_setup(L405))
    # CP 2: the token count compared | mul, sum, div, clone, cat, divide, * cp, / micro-batches: 9 kernels
    assert rows["loss: NeMo 2: masked mean, data-parallel average"].seconds == pytest.approx(9 * F)
    assert rows["loss all-reduce (context-parallel)"].seconds == pytest.approx(CP2)
    dp = rows["loss all-reduce (data-parallel)"]
    assert dp.seconds == pytest.approx(DP4) and dp.shape == "all_reduce 4 B over 4 (nic)"  # data, not data x context
    # after the read returns (W, queue empty): 8 kernels and 2 all-reduces, 10 calls of P, each's GPU share under P;
    # then the next forward's launch: W + 11 P, less the GPU's own 8 F + CP2 + DP4
    host = rows["loss: host reads"]
    assert host.seconds == pytest.approx(W + 11 * P - 8 * F - CP2 - DP4)
    assert host.shape == "10 calls x 13.5 us, 1 syncs"
    assert _head(_setup(L405, evaluation=True)).keys() == rows.keys()  # val_drop_last True: evaluation the same


def test_nemo_2_adds_only_to_the_last_stage():
    new, core = _setup(L405), _setup(L405, ["model.training_loop=megatron-core"])
    f_new, f_core = derive.derive(new).stages, derive.derive(core).stages
    assert [s.forward for s in f_new[:-1]] == [s.forward for s in f_core[:-1]]
    added = 9 * F + CP2 + DP4 + (W + 11 * P - 8 * F - CP2 - DP4)  # = W + 11 P + F
    assert f_new[-1].forward - f_core[-1].forward == pytest.approx(added * 1e3)
    assert f_new[-1].backward == pytest.approx(f_core[-1].backward)


def test_nemo_2_at_cp_1_sums_the_mask_and_has_no_cp_reduce():
    rows = _head(_setup(MIXTRAL, ["model.training_loop=nemo-2"]))
    assert rows["loss: NeMo 2: masked mean, data-parallel average"].seconds == pytest.approx(10 * F)
    assert "loss all-reduce (context-parallel)" not in rows


def test_nemo_2_4_kernels_only():
    rows = _head(_setup(L405, ["model.training_loop=nemo-2.4"]))
    assert rows["loss: NeMo 2: loss sum and tokens, / tokens, / micro-batches"].seconds == pytest.approx(9 * F)
    assert not [k for k in rows.values() if k.name.startswith("loss") and k.kind in ("comm", "host")]


def test_pretrain_gpt_two_reads_by_hand():
    rows = _head(_setup(MIXTRAL))
    assert rows["loss: pretrain_gpt: loss sum, NaN / Inf checks, / tokens"].seconds == pytest.approx(11 * F)
    assert not [k for k in rows.values() if k.name.startswith("loss all-reduce")]  # reduced once a step only
    # isnan's read (W); isinf launched on an idle GPU (P, F) and read (W); 7 kernels of P each, the next launch:
    # 2 W + 9 P + F, less the GPU's own 8 F
    host = rows["loss: host reads"]
    assert host.seconds == pytest.approx(2 * W + 9 * P - 7 * F) and host.shape == "8 calls x 13.5 us, 2 syncs"


def test_pai_one_read_and_an_8_byte_average():
    rows = _head(_setup(PAI))
    assert rows["loss: Pai: loss and tokens, NaN check, data-parallel average"].seconds == pytest.approx(15 * F)
    dp = rows["loss all-reduce (data-parallel)"]
    assert dp.seconds == pytest.approx(DP8_NODE) and dp.bytes == 8 and "(nvlink)" in dp.shape
    # after the read: 9 kernels and the all-reduce (10 calls), the next launch: W + 11 P, less 9 F + DP8_NODE
    assert rows["loss: host reads"].seconds == pytest.approx(W + 11 * P - 9 * F - DP8_NODE)


def test_bad_training_loop(capsys):
    assert main(["model", str(L405), "--set", "model.training_loop=nemo-3"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "nemo-2.4" in err and "Traceback" not in err
    assert main(["model", str(VAL / "bloom-176b.toml"), "--set", "model.training_loop=pai-megatron-patch"]) == 2
    err = capsys.readouterr().err
    assert "model.training_loop" in err and "deepspeed-bf16" in err and len(err.strip().splitlines()) == 1
