"""NeMo v1.17.0_pt_23.04's step-end add of the embeddings' bf16 gradients into their fp32 copies
(step.fp32_embedding_grad_add; docs/step.md, "NeMo 1.x's fp32 embedding optimizer"), worked by hand.

nemo/core/optim/distributed_adam.py at that tag: ``_fp32_optim_grad_sync`` runs ``main_param.grad += model_param.grad``
for each embedding whose bf16 ``.grad`` autograd kept (read fp32 4, bf16 2, write fp32 4), and ``zero_grad`` zeroes that
``.grad`` (write 2): 12 B an element, 2 kernels a tensor, on the embedding stage only (the tied head's gradient goes
through gradient_accumulation_fusion into main_grad; its .grad is None)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import nemo_optimizer
from dualpipe_sim.model.derived_step import derived_sync

VALIDATION = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
H100_HBM = 2.90e12
FLOOR = 2.5e-6


def test_v30_stage_zero_by_hand():
    # GPT-3 175B, TP 4: the word embedding's shard 50,688 x 12,288 / 4 = 155,713,536 and the learned positions whole,
    # 2,048 x 12,288 = 25,165,824: 180,879,360 elements x 12 B = 2,170,552,320 B over 2.90 TB/s = 748.5 us, plus
    # 2 kernels x 2 tensors at 2.5 us
    sc = load(VALIDATION / "mlperf30-gpt3-512.toml")
    d = sc.derived()
    st = d.setup
    assert sc.step.fp32_embedding_grad_add and st.rates.hbm == H100_HBM
    elements = 50688 * 12288 // 4 + 2048 * 12288
    assert elements == 180_879_360
    want = elements * 12 / H100_HBM + 4 * FLOOR
    assert want == pytest.approx(0.75847e-3, rel=1e-4)
    got = [nemo_optimizer.fp32_grad_add_ms(st, w) for w in st.stages]
    assert got[0] == pytest.approx(want * 1e3) and not any(got[1:])
    # and it is what the optimizer figure gains, on stage 0 only
    off = load(VALIDATION / "mlperf30-gpt3-512.toml", ["step.fp32_embedding_grad_add=false"])
    on_fig, off_fig = derived_sync(sc, "optimizer", d), derived_sync(off, "optimizer")
    assert on_fig[0] - off_fig[0] == pytest.approx(want * 1e3)
    assert on_fig[1:] == pytest.approx(off_fig[1:])


def test_only_the_v30_rows_set_it():
    """bd0b818 (v3.1) adds in a hook every micro-batch and drops the .grad: not this key."""
    for path in VALIDATION.glob("mlperf3*-gpt3-*.toml"):
        assert load(path).step.fp32_embedding_grad_add is path.name.startswith("mlperf30"), path.name


@pytest.mark.parametrize("verb", [["run", "--plots", "none"], ["run", "--plots", "none", "--json"]])
def test_needs_the_fp32_optimizer(tmp_path, capsys, verb):
    out = tmp_path / "out"
    args = [verb[0], str(VALIDATION / "mlperf30-gpt3-512.toml"), *verb[1:], "--set", "step.fp32_embedding_optimizer=false",
            "--set", "step.grad_sync_held=[]"] + (["--out", str(out)] if verb[0] == "run" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists() and "Traceback" not in err and len(err.splitlines()) == 1
    assert "step.fp32_embedding_grad_add" in err and "step.fp32_embedding_optimizer" in err
