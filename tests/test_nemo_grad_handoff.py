"""What NeMo on apex's DistributedFusedAdam does to gradients every micro-batch (docs/step.md, "Per micro-batch:
the gradients no wgrad GEMM writes"), worked by hand on the MLPerf GPT-3 rows.

* the embedding stage's word embedding shard (50,688 x 12,288 / TP 4 = 155,713,536) and learned positions (whole,
  2,048 x 12,288 = 25,165,824): 180,879,360 elements, two tensors, each micro-batch:
  - v3.0 (NeMo v1.17.0_pt_23.04): autograd adds the new gradient into the kept bf16 ``.grad`` (read 2 + 2, write 2);
  - v3.1 (NeMo bd0b818): its hook ``param.main_grad += param.grad`` into the fp32 copy (read 2 + 4, write 4);
  - v4.x (NeMo 2, fp32 embedding grads): apex's ``_grad_copy`` into the fp32 bucket (read 2 + 4, write 4);
* every layer: apex's ``_grad_copy`` of the LayerNorms' and biases' bf16 ``.grad`` into the bf16 bucket (6 B), one
  kernel a tensor; the last stage's final norm too."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import derive, kernels

VALIDATION = Path(__file__).resolve().parent.parent / "scenarios" / "validation"
H100_HBM = 2.90e12
FLOOR = 2.5e-6
EMBEDDING_ELEMENTS = 50688 * 12288 // 4 + 2048 * 12288


def _setup(name):
    st = load(VALIDATION / name).derived().setup
    assert st.rates.hbm == H100_HBM and st.rates.floor == FLOOR
    return st


def _rows(st, stage, name):
    return [k for k in derive.extra_kernels(st, st.stages[stage]) if k.name == name]


@pytest.mark.parametrize("name, per_element", [
    ("mlperf30-gpt3-512.toml", 2 + 2 + 2),  # AccumulateGrad into the kept bf16 .grad
    ("mlperf31-gpt3-512.toml", 2 + 4 + 4),  # bd0b818's hook into the fp32 copy's main_grad
    ("mlperf41-gpt3-512.toml", 2 + 4 + 4),  # apex's add into the fp32 bucket
])
def test_embedding_handoff_by_hand(name, per_element):
    st = _setup(name)
    assert EMBEDDING_ELEMENTS == 180_879_360
    [row] = _rows(st, 0, "embedding .grad hand-off")
    assert row.component == "mlp_backward_weight"  # in the backward, on its stream
    assert row.bytes == EMBEDDING_ELEMENTS * per_element
    # v3.0: 1,085,276,160 B over 2.90 TB/s = 374.23 us, plus 2 kernels (word, positions) at 2.5 us
    assert row.seconds == pytest.approx(EMBEDDING_ELEMENTS * per_element / H100_HBM + 2 * FLOOR)
    if per_element == 6:
        assert row.seconds == pytest.approx(379.23e-6, rel=1e-4)
    # only the embedding stage: the tied head's gradient goes through gradient accumulation fusion
    last = len(st.stages) - 1
    assert st.stages[last].head and not _rows(st, last, "embedding .grad hand-off")


def test_layer_and_final_norm_copies_by_hand():
    # h 12,288, TP 4, LayerNorm with bias: attention block LN weight + bias (2 x 12,288), QKV bias 3 x 12,288 / 4 =
    # 9,216, out_proj bias 12,288 (whole): 46,080 elements, 4 kernels; MLP block LN (24,576), fc1 bias 49,152 / 4 =
    # 12,288, fc2 bias 12,288: 49,152 elements, 4 kernels; 6 B each (bf16 grad into a bf16 bucket)
    st = _setup("mlperf30-gpt3-512.toml")
    rows = [k for k in kernels.layer(st.cfg, 5, st.rates, st.layout) if k.name.startswith("apex grad copy")]
    got = {k.component: (k.bytes, k.seconds) for k in rows}
    assert got == {"attn_backward_weight": (46_080 * 6, pytest.approx(46_080 * 6 / H100_HBM + 4 * FLOOR)),
                   "mlp_backward_weight": (49_152 * 6, pytest.approx(49_152 * 6 / H100_HBM + 4 * FLOOR))}
    [norm] = _rows(st, len(st.stages) - 1, "apex grad copy (final norm)")
    assert norm.bytes == 2 * 12288 * 6 and norm.seconds == pytest.approx(2 * 12288 * 6 / H100_HBM + 2 * FLOOR)


def test_megatron_core_ddp_instead_of_apex():
    """Megatron-core's own DDP (step.param_gather default): its hook adds the same .grad into main_grad instead
    (fp32 here: read 2 + 4, write 4 = 10 B an element; tests/test_ddp_grad_hook.py works the Llama rows)."""
    sc = load(VALIDATION / "mlperf30-gpt3-512.toml",
              ['step.param_gather="megatron-core"', "step.grad_sync_held=[]", "step.fp32_embedding_optimizer=false",
               "step.fp32_embedding_grad_add=false", 'model.grads_dtype="fp32"'])
    st = sc.derived().setup
    assert (st.grad_hook, st.grad_copy, st.embedding_grad) == ("ddp", 10, 10)
    names = {k.name for k in derive.extra_kernels(st, st.stages[0]) + kernels.layer(st.cfg, 5, st.rates, st.layout)}
    assert not {n for n in names if "apex grad copy" in n}
    assert "DDP main_grad add (norms, biases)" in names and "embedding .grad hand-off" in names


def test_stage_zero_backward_grows_by_them():
    """The embedding stage's weight-gradient time is its rows' sum: the hand-off is on its critical path."""
    st = _setup("mlperf30-gpt3-512.toml")
    rows = derive.extra_kernels(st, st.stages[0])
    w = sum(k.seconds for k in rows if k.component == "mlp_backward_weight")
    [row] = [k for k in rows if k.name == "embedding .grad hand-off"]
    assert row.seconds > 0.3e-3 and w > row.seconds
