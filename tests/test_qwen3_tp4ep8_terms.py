"""Issue 21 (Qwen3-235B, TP 4 + EP 8): what the runs' code does that the model did not cost.

* wgrad GEMMs accumulate into the fp32 ``main_grad`` (Megatron-core's ``--gradient-accumulation-fusion``
  hands Transformer Engine ``fuse_wgrad_accumulation``; TE v2.4 ``grouped_linear.py``: ``accumulate=``),
  so each output value is read and written in fp32: 8 bytes, not 2.  With 16 local experts of 512 tokens
  the expert wgrads (K = 512) become memory-bound;
* Qwen3's per-head q and k RMSNorms (``--qk-layernorm``, a TE norm over q and one over k): their GPU time.

Every expected figure is worked by hand from gemm.py's documented model (floor + max(compute, bytes / HBM))
and the H100 rates of docs/model.md ("Kernel rates")."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
H100 = PRESETS["H100"]
GEMM_FLOOR, MEM_FLOOR, HBM = 5.54e-6, 2.5e-6, 2.90e12  # docs/model.md, "Kernel rates" (H100)


def _load(name, overrides=()):
    return derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))


def _row(rows, name):
    (row,) = [k for k in rows if k.name == name]
    return row


def test_the_rates_this_file_works_with():
    assert (H100.gemm_bf16.floor, H100.floor, H100.hbm) == pytest.approx((GEMM_FLOOR, MEM_FLOOR, HBM))


# -- expert wgrads into the fp32 main_grad ------------------------------------------------------------------
def test_expert_fc1_wgrad_at_tp4_ep8_is_memory_bound_by_hand():
    # tp4ep8: 4,096 tokens / TP 4 = 1,024 per rank, top-8 over 8 EP ranks: 8,192 rows, 16 local experts of 512.
    # fc1 wgrad of one expert: (h = 4096) x (2 x 1536 = 3072) x (K = 512).  On TE's 4 streams: 4 rounds of
    # 4 GEMMs.  Bytes of a round: 4 x [(4096 x 512 + 512 x 3072) x 2 (bf16 inputs) + 4096 x 3072 x 8 (fp32
    # main_grad read and written)] = 432,013,312.  Compute of a round: 4 x 2 x 4096 x 3072 x 512 =
    # 51.5 GFLOP, at most 836 TFLOP/s: >= 61.6 us, while the bytes take 151.7 us: memory-bound.
    rows = derive.layer_kernels(_load("mz-qwen3-235b-tp4ep8pp8"), 0)
    row = _row(rows, "experts fc1 wgrad (grouped)")
    round_bytes = 4 * ((4096 * 512 + 512 * 3072) * 2 + 4096 * 3072 * 8)
    assert round_bytes == 432_013_312
    assert row.bytes == pytest.approx(4 * round_bytes)
    assert 4 * 2 * 4096 * 3072 * 512 / 836e12 < round_bytes / HBM  # memory-bound even at the full peak
    # the weight gradient's measured pass factor (s21j) scales the math alone (s21p), which stays under the bytes: none
    assert H100.gemm_bf16.wgrad * 4 * 2 * 4096 * 3072 * 512 / 836e12 < round_bytes / HBM
    assert row.seconds == pytest.approx(4 * (GEMM_FLOOR + round_bytes / HBM))
    assert row.bound == "memory"
    # fc2 wgrad: 1536 x 4096 x 512, the same fp32 output per value
    fc2 = _row(rows, "experts fc2 wgrad (grouped)")
    fc2_round = 4 * ((1536 * 512 + 512 * 4096) * 2 + 1536 * 4096 * 8)
    assert fc2.seconds == pytest.approx(4 * (GEMM_FLOOR + fc2_round / HBM))


def test_expert_wgrad_at_ep32_stays_compute_bound_and_unchanged():
    # ep32: 2,048 tokens per rank, 4 local experts of 4,096 rows: K = 4096, compute-bound, so the fp32
    # accumulation's bytes do not change its time: the same as the GEMM with a 16-bit output
    st = _load("mz-qwen3-235b-ep32pp8")
    row = _row(derive.layer_kernels(st, 0), "experts fc1 wgrad (grouped)")
    with8 = gemm.time(4096, 3072, 4096, H100.gemm_bf16, 132, HBM, 2.0, groups=4, out_bytes=8.0, grad="wgrad")
    with2 = gemm.time(4096, 3072, 4096, H100.gemm_bf16, 132, HBM, 2.0, groups=4, out_bytes=2.0, grad="wgrad")
    assert with8.bound == "compute" and with8.seconds == with2.seconds
    assert row.seconds == pytest.approx(with8.seconds)
    assert row.bytes == pytest.approx(4 * ((4096 * 4096 + 4096 * 3072) * 2 + 4096 * 3072 * 8))


def test_every_megatron_core_wgrad_accumulates_in_fp32_and_the_2021_runtime_does_not():
    lay = kernels.Layout(seq=4096, micro_batch=1)
    assert lay.wgrad_out == 8.0  # 4-byte main_grad, read and written
    # Megatron-LM 2021 writes a 16-bit .grad and adds it in a pass of its own (grad_accumulation)
    assert kernels.Layout(seq=4096, micro_batch=1, legacy=True, grad_accumulation=6.0).wgrad_out == 2.0
    rows = derive.layer_kernels(_load("mz-qwen3-235b-tp4ep8pp8"), 0)
    # out_proj wgrad (2048 x 4096 x K 4096): inputs 2 bytes, output 8
    assert _row(rows, "out_proj wgrad").bytes == pytest.approx((2048 * 4096 + 4096 * 4096) * 2 + 2048 * 4096 * 8)
    legacy = derive.layer_kernels(_load("n21-1.7b"), 0)
    (wgrad,) = [k for k in legacy if k.name == "out_proj wgrad"]
    m, n = (int(x) for x in wgrad.shape.split(" x ")[:2])
    k = int(wgrad.shape.split(" x ")[2].split()[0])
    assert wgrad.bytes == pytest.approx((m * k + k * n) * 2 + m * n * 2)


# -- Qwen3's q and k norms ----------------------------------------------------------------------------------
def test_qk_norms_at_tp4_by_hand():
    # TP 4: 64 / 4 = 16 query heads and max(1, 4 / 4) = 1 key head of 128 per rank, 4,096 tokens (the
    # attention input is gathered): 4096 x 17 x 128 = 8,912,896 values; forward reads and writes each
    # (2 + 2 bytes), backward reads the input and the output gradient and writes the input gradient
    # (3 x 2 bytes); two kernels (q, k) each pass
    rows = derive.layer_kernels(_load("mz-qwen3-235b-tp4ep8pp8"), 0)
    values = 4096 * 17 * 128
    fwd, bwd = _row(rows, "q / k norms"), _row(rows, "q / k norms backward")
    assert (fwd.component, bwd.component) == ("attn_forward", "attn_backward_input")
    assert fwd.bytes == values * 4 and bwd.bytes == values * 6
    assert fwd.seconds == pytest.approx(2 * MEM_FLOOR + values * 4 / HBM)
    assert bwd.seconds == pytest.approx(2 * MEM_FLOOR + values * 6 / HBM)
    # TP 2: 32 query heads and 2 key heads
    rows2 = derive.layer_kernels(_load("mz-qwen3-235b-ep32pp8"), 0)
    assert _row(rows2, "q / k norms").bytes == 4096 * 34 * 128 * 4


def test_qk_norms_only_where_the_model_has_them_and_rerun_under_full_recompute():
    assert not [k for k in derive.layer_kernels(_load("k22-22b-full"), 0) if "q / k" in k.name]
    rows = derive.layer_kernels(_load("mz-qwen3-235b-tp4ep8pp8", ["memory.recompute=full"]), 0)
    assert sorted(k.component for k in rows if k.name == "q / k norms") == ["attn_backward_input", "attn_forward"]


def test_the_wgrad_accumulation_reads_and_writes_the_main_grads_dtype():
    """fp32 main_grad: 4 + 4 bytes per output value; a bf16 buffer (apex's, the MLPerf GPT-3 rows'
    ``grads_dtype = "bf16"``): 2 + 2; Megatron-LM 2021's separate accumulation pass: the GEMM writes 16 bits."""
    assert kernels.Layout(2048, 1).wgrad_out == 8.0
    assert kernels.Layout(2048, 1, grad_bytes=2.0).wgrad_out == 4.0
    assert kernels.Layout(2048, 1, legacy=True, grad_bytes=4.0).wgrad_out == 2.0
    mlperf = derive.setup(scenario.load(VALIDATION / "mlperf31-gpt3-512.toml"))
    assert mlperf.layout.wgrad_out == 4.0  # its scenario says grads_dtype = "bf16"
    assert _load("mz-qwen3-235b-tp4ep8pp8").layout.wgrad_out == 8.0  # fp32 gradients (Megatron's bf16 default)
