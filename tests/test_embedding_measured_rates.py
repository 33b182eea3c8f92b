"""The embedding's forward kernels at their measured rates (s20q; docs/model.md, "The embedding's lookup and masked
zeroing at their measured rates (s20q)").

* The lookup, F.embedding = weight.index_select(0, ids): PyTorch's indexSelectLargeIndex moves one element a thread a
  step over at most 8 blocks of 128 threads an SM, far under HBM. Measured: Liger-Kernel's A100-SXM4-80GB benchmark
  of torch.nn.Embedding (tests/data/kernels/liger_a100_embedding.csv; 16,384 ids x 4,096 FP32: median 0.85587 ms over
  its eight vocabularies, 78.4e9 elements/s) and the H200 capture of s20j (131,072 x 4,096 BF16 at the inferred TP 4:
  6.455 ms, 83.2e9 elements/s).
* The masked zeroing, ``output_parallel[input_mask, :] = 0.0``: from PyTorch 1.10 (pytorch/pytorch#61612;
  aten/src/ATen/native/TensorAdvancedIndexingUtils.h canDispatchToMaskedFill) an index_put_ with one boolean mask and
  a CPU scalar runs as masked_fill_ with the mask unsqueezed to [tokens, 1] and broadcast: it reads and writes the whole
  [tokens, hidden] output, not only the masked rows (the capture shows one elementwise_kernel there and no nonzero).
  Megatron-LM of 2021 (``model.runtime = "megatron-lm-2021"``) keeps the masked rows only (the n21 rows' PyTorch
  predates 1.10).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import sections_only
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

LIGER = Path(__file__).parent / "data" / "kernels" / "liger_a100_embedding.csv"
TRACE = Path(__file__).parent / "data" / "kernels" / "distca_h200_llama8b_forward.csv"
FLOOR = PRESETS["A100"].floor


def liger_median(d: int) -> float:
    """The median over the vocabularies of Liger's per-vocabulary medians, seconds, at hidden size d."""
    return statistics.median(float(r["ms_median"]) for r in kernel_table(LIGER) if int(r["D"]) == d) * 1e-3


def trace_ms(role: str) -> float:
    return next(float(r["ms"]) for r in kernel_table(TRACE) if r["layer"] == "embedding" and r["role"] == role)


def embedding_rows(preset: str, tokens: int, hidden: int, tensor: int = 1, runtime: str = "megatron-core") -> dict:
    st = derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "intermediate_size": 4 * hidden, "vocab_size": 131072,
                  "tie_word_embeddings": False, "seq_length": tokens, "micro_batch_size": 1, "attention": "flash",
                  "runtime": runtime},
        "parallel": {"tensor": tensor, "sequence_parallel": tensor > 1},
        "hardware": {"preset": preset},
    }))  # fmt: skip
    return {k.name: k for k in kernels.embedding(st.cfg, st.rates, st.layout) if k.component == "mlp_forward"}


def test_the_rates_are_the_sources_figures():
    # A100: 16,384 x 4,096 = 67,108,864 elements in the eight rows' median, 0.855872 ms (0.786566 .. 1.008704 ms)
    assert liger_median(4096) == pytest.approx(0.855872e-3, rel=1e-5)
    assert PRESETS["A100"].index_select == pytest.approx(67_108_864 / liger_median(4096), rel=1e-4)
    # H200 (and H100 / H800: the same die): 536,870,912 elements in 6.455 ms; the fill 2,147,614,720 B in 2.524 ms
    for name in ("H100", "H200", "H800"):
        assert PRESETS[name].index_select == pytest.approx(536_870_912 / (trace_ms("embedding lookup") * 1e-3))
        fill = 2 * 536_870_912 * 2 + 131_072
        assert PRESETS[name].masked_fill_broadcast == pytest.approx(fill / (trace_ms("embedding masked rows zeroed") * 1e-3))
    for name in ("B200", "GB200", "GB300"):  # nothing measured on Blackwell: the HBM rate
        assert PRESETS[name].index_select is None and PRESETS[name].masked_fill_broadcast is None
    assert PRESETS["A100"].masked_fill_broadcast is None


def test_far_under_hbm():
    # 78.4e9 FP32 elements a second: 627 GB/s read and written on the A100's 2.04 TB/s (31%; pytorch/pytorch#145999:
    # "about 30% of the theoretical memory bandwidth"); 83.2e9 BF16 elements on H200: 333 GB/s of 4.8 TB/s (7%)
    assert 2 * 4 * PRESETS["A100"].index_select / 2.039e12 == pytest.approx(0.31, abs=0.01)
    assert 2 * 2 * PRESETS["H200"].index_select / 4.8e12 == pytest.approx(0.069, abs=0.002)


def test_the_other_liger_shape_from_the_first():
    # Independent of the rate's own rows: 16,384 ids x 768 (12,582,912 elements) predicted from the 4,096 rows' rate,
    # plus a kernel's floor: 0.1605 + 0.0025 = 0.163 ms against the measured median of medians 0.1667 ms (-2.2%)
    got = embedding_rows("A100", 16384, 768)["embedding lookup"].seconds
    assert got == pytest.approx(FLOOR + 12_582_912 / PRESETS["A100"].index_select, rel=1e-9)
    assert got == pytest.approx(liger_median(768), rel=0.03)


def test_one_kernel_two_gpus_one_rate():
    # The kernel's grid is set per SM, so its rate barely moves with the GPU: A100's measured 78.4e9 elements/s and the
    # H200 capture's 83.2e9 at TP 4 agree within 6%; at TP 8 (262,144 tokens) the capture would be 166e9, twice A100's.
    a100, h200 = PRESETS["A100"].index_select, PRESETS["H200"].index_select
    assert h200 / a100 == pytest.approx(1.06, abs=0.01)
    assert 2 * 536_870_912 / (trace_ms("embedding lookup") * 1e-3) / a100 > 2


def test_lookup_time_at_the_rows_sizes():
    # 8,192 tokens x 16,384 (Llama 3.1 405B's hidden) on H100: 134,217,728 elements / 83.2e9 = 1.614 ms (+ floor),
    # where HBM alone (268 MB at 3.35 TB/s x the preset's share) would take 0.08 ms
    row = embedding_rows("H100", 8192, 16384)["embedding lookup"]
    assert row.seconds == pytest.approx(FLOOR + 134_217_728 / PRESETS["H100"].index_select, rel=1e-9)
    assert row.seconds * 1e3 == pytest.approx(1.616, abs=0.002)
    assert row.bytes / PRESETS["H100"].hbm < 0.1 * row.seconds
    # B200: no measured rate, the bytes at the HBM rate
    b200 = embedding_rows("B200", 8192, 16384)["embedding lookup"]
    assert b200.seconds == pytest.approx(PRESETS["B200"].floor + (8192 * 16384 * 2 + 8192 * 8) / PRESETS["B200"].hbm)


def test_masked_fill_reads_and_writes_the_whole_output():
    # TP 4, 8,192 tokens x 4,096 BF16: masked_fill_ moves 8,192 + 2 x 8,192 x 4,096 x 2 = 134,225,920 B, all rows, on
    # H100 at the captured 851 GB/s (0.158 ms); on A100 (nothing measured) at its HBM rate. Megatron-LM 2021's
    # index_put_ writes the (t - 1) / t masked rows only: 8,192 + 50,331,648 = 50,339,840 B.
    h100 = embedding_rows("H100", 8192, 4096, tensor=4)["embedding masked rows zeroed"]
    assert h100.bytes == 134_225_920
    assert h100.seconds == pytest.approx(FLOOR + 134_225_920 / PRESETS["H100"].masked_fill_broadcast, rel=1e-9)
    a100 = embedding_rows("A100", 8192, 4096, tensor=4)["embedding masked rows zeroed"]
    assert a100.bytes == 134_225_920 and a100.seconds == pytest.approx(FLOOR + 134_225_920 / PRESETS["A100"].hbm)
    legacy = embedding_rows("A100", 8192, 4096, tensor=4, runtime="megatron-lm-2021")["embedding masked rows zeroed"]
    assert legacy.bytes == 50_339_840
    assert "embedding masked rows zeroed" not in embedding_rows("H100", 8192, 4096)  # TP 1: no mask
