"""What Megatron-core's DDP and PyTorch's dense embedding backward do to gradients every micro-batch (docs/step.md,
"Per micro-batch: the gradients no wgrad GEMM writes"), worked by hand.

* PyTorch's ``embedding_dense_backward`` returns a whole gradient of the weight's shape: ``at::zeros`` (one fill
  kernel, 2 B an element in bf16), then the token rows; every runtime, every micro-batch, on the embedding stage.
* Megatron-core DDP's hook on each parameter's AccumulateGrad: ``param.main_grad.add_(param.grad.data)`` then
  ``param.grad = None`` (distributed_data_parallel.py d339190 lines 462-466) for every parameter no fused wgrad GEMM
  writes: the word embedding, the norms, Qwen3's q / k norms, the routers.  Read the bf16 ``.grad`` (2), read and
  write ``main_grad`` (2 + 2 in bf16, 4 + 4 in fp32), one kernel a tensor."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import derive, kernels, params

VALIDATION = Path(__file__).resolve().parent.parent / "scenarios" / "validation"

# Llama 3.1 8B: vocabulary 128,256 x hidden 4,096 at TP 1, RoPE (no position table)
LLAMA8B_EMBEDDING = 128_256 * 4_096


def _setup(name, overrides=()):
    return load(VALIDATION / name, list(overrides)).derived().setup


def _rows(st, stage, name):
    return [k for k in derive.extra_kernels(st, st.stages[stage]) if k.name == name]


def _secs(st, nbytes, launches):
    return nbytes / st.rates.hbm + launches * st.rates.floor


def test_llama8b_embedding_zero_fill_and_main_grad_add_by_hand():
    st = _setup("mlperf51-llama8b-8b200.toml")
    assert LLAMA8B_EMBEDDING == 525_336_576 and st.grad_hook == "ddp"
    [fill] = _rows(st, 0, "embedding gradient zero-fill")
    assert fill.component == "mlp_backward_weight"
    assert fill.bytes == 1_050_673_152  # 525,336,576 x 2 B (bf16), written once
    assert fill.seconds == pytest.approx(_secs(st, 1_050_673_152, 1))
    # bf16 main_grad (the row's grad_reduce_in_fp32 unset: grads_dtype bf16): read 2 + 2, write 2
    [add] = _rows(st, 0, "embedding .grad hand-off")
    assert add.component == "mlp_backward_weight"
    assert add.bytes == 3_152_019_456  # 525,336,576 x 6
    assert add.seconds == pytest.approx(_secs(st, 3_152_019_456, 1))


def test_llama8b_fp32_main_grad_by_hand():
    # with fp32 main_grad (grad_reduce_in_fp32): read 2 + 4, write 4 = 10 B an element
    st = _setup("mlperf51-llama8b-8b200.toml", ['model.grads_dtype="fp32"'])
    [add] = _rows(st, 0, "embedding .grad hand-off")
    assert add.bytes == 5_253_365_760
    [fill] = _rows(st, 0, "embedding gradient zero-fill")
    assert fill.bytes == 1_050_673_152  # the zero-fill is the .grad's, bf16 either way


def test_llama8b_layer_norms_and_final_norm_by_hand():
    # two RMSNorm weights a layer (input_layernorm in linear_qkv, pre_mlp_layernorm in linear_fc1), 4,096 each,
    # 6 B an element: 24,576 B in one kernel in each block's weight gradient; the final norm the same
    st = _setup("mlperf51-llama8b-8b200.toml")
    rows = [k for k in kernels.layer(st.cfg, 3, st.rates, st.layout) if k.name.startswith("DDP main_grad add")]
    assert {k.component: k.bytes for k in rows} == {"attn_backward_weight": 24_576, "mlp_backward_weight": 24_576}
    assert all(k.seconds == pytest.approx(_secs(st, 24_576, 1)) for k in rows)
    [norm] = _rows(st, len(st.stages) - 1, "DDP main_grad add (final norm)")
    assert norm.bytes == 24_576


def test_qwen3_moe_layer_by_hand():
    # Qwen3-235B at TP 4, fp32 main_grad (10 B): attention block: input norm 4,096 + q and k norms 128 each = 4,352
    # elements, 3 kernels; MoE block: pre-MLP norm 4,096 + router 128 x 4,096 = 528,384, 2 kernels
    st = _setup("mz-qwen3-235b-tp4ep8pp8.toml")
    assert st.grad_copy == 2 + 4 + 4
    rows = {k.component: k for k in kernels.layer(st.cfg, 5, st.rates, st.layout)
            if k.name == "DDP main_grad add (norms, biases, router)"}  # fmt: skip
    assert rows["attn_backward_weight"].bytes == 43_520
    assert rows["attn_backward_weight"].seconds == pytest.approx(_secs(st, 43_520, 3))
    assert rows["mlp_backward_weight"].bytes == 5_283_840
    assert rows["mlp_backward_weight"].seconds == pytest.approx(_secs(st, 5_283_840, 2))
    # the embedding only on stage 0, the final norm only on the last stage
    assert _rows(st, 0, "embedding .grad hand-off") and not _rows(st, 1, "embedding .grad hand-off")
    last = len(st.stages) - 1
    assert _rows(st, last, "DDP main_grad add (final norm)") and not _rows(st, 0, "DDP main_grad add (final norm)")


def test_grad_tensors_are_the_whole_parameters_and_column_biases():
    """Invariant: what the hook adds in a layer is what a tensor rank holds of the parameters outside the fused
    wgrads: params.whole_on_tensor plus the column-parallel biases / TP (GPT-3 at TP 4: 6h + 3h / 4 + 4h / 4)."""
    st = _setup("mlperf31-gpt3-512.toml")
    h = 12_288
    sizes = kernels.autograd_grad_tensors(st.cfg, 5, 4)
    assert sum(map(sum, sizes.values())) == params.whole_on_tensor(st.cfg, 5) + 3 * h // 4 + 4 * h // 4 == 95_232
    qwen = _setup("mz-qwen3-235b-tp4ep8pp8.toml").cfg
    assert sum(map(sum, kernels.autograd_grad_tensors(qwen, 5, 4).values())) == params.whole_on_tensor(qwen, 5)


def test_bloom_zero_fill_word_table_only():
    # ALiBi: Megatron-DeepSpeed builds no position table; 250,880 x 14,336 / TP 4 = 899,153,920 elements x 2 B
    st = _setup("bloom-176b.toml")
    [fill] = _rows(st, 0, "embedding gradient zero-fill")
    assert fill.bytes == 1_798_307_840 and fill.seconds == pytest.approx(_secs(st, 1_798_307_840, 1))
    assert st.grad_hook == "" and not _rows(st, 0, "embedding .grad hand-off")  # DeepSpeed's accumulation instead


@pytest.mark.parametrize("name", ["n21-1.7b.toml", "bloom-176b.toml"])
def test_no_ddp_hook_off_megatron_core(name):
    """Megatron-LM 2021 and DeepSpeed add their gradients their own way (model.runtime's grad_accumulation)."""
    st = _setup(name)
    assert st.grad_copy == 0 and st.embedding_grad == 0
    names = {k.name for k in kernels.layer(st.cfg, 0, st.rates, st.layout)}
    assert not {n for n in names if n.startswith(("DDP", "apex"))}


def test_ddp_hook_without_a_step_table():
    """Megatron-core wraps the model in its DDP whatever the [step] says: a scenario without one (llama3-70b.toml,
    fp32 gradients by default) still adds the embedding's .grad into main_grad, 128,256 x 8,192 / TP 8 elements x
    (2 + 4 + 4) B; an all-zero [step] changes nothing (tests/test_step.py holds that for the shipped scenarios)."""
    st = load(Path(__file__).resolve().parent.parent / "scenarios" / "llama3-70b.toml").derived().setup
    assert (st.grad_hook, st.grad_copy) == ("ddp", 10)
    [add] = _rows(st, 0, "embedding .grad hand-off")
    assert add.bytes == 128_256 * 8_192 // 8 * 10 == 1_313_341_440
