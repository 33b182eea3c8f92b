"""The last stage's loss under NeMo 1 (model/nemo_loss.py; docs/model.md, "NeMo 1's loss, micro-batch by micro-batch") and
the vocabulary cross-entropy's collectives over the tensor group (kernels.ce_tensor_collectives), worked by hand on
mlperf31-gpt3-512 (TP 4, DP 16: 2 ranks of the group a node, 8 nodes; the op-by-op cross-entropy) and mlperf41-gpt3-256
(TP 4, DP 8 on 4 nodes; the fused one). H100 preset: 2.5 us kernel floor; NCCL's LL model (collectives.py: ring base
6.6 us, tree base 6.8, 0.6 a step on NVLink, 1.0 a step's network overhead, 2.7 a ring's / 5.0 a tree's network step);
the host's 13.5 us a call and 6.95 us a sync (host.py)."""

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
