"""Megatron-core's --moe-router-force-load-balancing (model.moe_force_load_balancing), worked by hand.

moe/router.py (lines 449-451 @ 1e05700, 444-446 @ 6a6cd478) replaces the router's logits with
``apply_random_logits(logits)``; moe_utils.py ``RandomSTE.forward`` runs ``logits.clone().normal_(generator=...)``:
the clone reads and writes each of the n x E logits, normal_ writes it again (12 B a logit at 4 B), two kernels, and
its backward hands grad_output back untouched (no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import derive, host

VALIDATION = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
FLOOR = 2.04e-6  # the B200 preset's kernel floor and streaming bandwidth (NVIDIA/cccl#7391's B200 table, rates.py)
B200_HBM = 6.858e12


def _rows(name, overrides=()):
    st = derive.setup(load(VALIDATION / f"{name}.toml", list(overrides)))
    moe = next(i for i in range(st.cfg.num_layers) if st.cfg.is_moe_layer(i))
    return st, derive.layer_kernels(st, moe)


def test_qwen3_30b_on_b200_by_hand():
    # Qwen3-30B-A3B on 8 B200, EP 8, TP 1, sequence 4,096, micro-batch 1: n = 4,096 tokens, E = 128 experts;
    # 4,096 x 128 x 12 B = 6,291,456 B over 6.858 TB/s = 0.917 us, beside 2 floors of 2.04 us
    st, rows = _rows("mz7-qwen3-30b-a3b-b200")
    assert st.layout.force_balance and st.rates.hbm == B200_HBM and st.cfg.num_experts == 128
    got = [k for k in rows if k.name == "router random logits"]
    assert len(got) == 1 and got[0].component == "mlp_forward"  # once, in the forward; nothing in the backward
    assert got[0].bytes == 4096 * 128 * 12 == 6_291_456
    assert got[0].seconds == pytest.approx(6_291_456 / B200_HBM + 2 * FLOOR)
    assert got[0].seconds == pytest.approx(4.9974e-6, rel=1e-4)
    assert host.calls(got[0], 1, 1, 16) == 2  # two PyTorch calls for the host's share: clone, normal_
    # without the option the row is gone and nothing else changes
    _, off = _rows("mz7-qwen3-30b-a3b-b200", ["model.moe_force_load_balancing=false"])
    mine = {"router random logits", "host launches and syncs"}
    assert [k for k in rows if k.name not in mine] == [k for k in off if k.name not in mine]
    # and the host's share counts its two calls
    calls = [int(k.shape.split()[0]) for r in (rows, off) for k in r if k.name == "host launches and syncs"]
    assert calls[0] == calls[1] + 2


def test_recomputed_forward_reruns_it():
    """With the MoE layer in a full recompute its forward runs twice: the random logits too (a fresh draw)."""
    _, rows = _rows("mz7-qwen3-30b-a3b-b200", ["memory.recompute=full"])
    assert sorted(k.component for k in rows if k.name == "router random logits") == ["mlp_backward_input",
                                                                                      "mlp_forward"]


def test_dense_model_refuses_it(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", str(VALIDATION / "mlperf51-llama8b-64b200.toml"), "--set", "model.moe_force_load_balancing=true",
            "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists() and "Traceback" not in err and len(err.splitlines()) == 1
    assert "model.moe_force_load_balancing" in err and "MoE" in err


def test_a_string_is_not_a_bool(tmp_path, capsys):
    args = ["model", str(VALIDATION / "mz7-qwen3-30b-a3b-b200.toml"), "--set", 'model.moe_force_load_balancing="yes"']
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "model.moe_force_load_balancing" in err and len(err.splitlines()) == 1
