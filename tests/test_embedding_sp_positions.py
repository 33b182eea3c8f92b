"""The embedding with sequence parallelism and learned positions, and its own kernels (s12n).

With sequence parallelism and learned positions every runtime the rows pin (Megatron-LM 80389ef
``model/language_model.py`` lines 220-238, NeMo bd0b818 ``language_model.py`` lines 342-367, Megatron-core 1e05700
``language_model_embedding.py`` lines 48-53 and 135-139) all-reduces the word embedding's output in the forward,
blocking, adds the positions and slices the rank's part of the sequence (``scatter_to_sequence_parallel_region``),
whose backward all-gathers the gradient, blocking (80389ef ``mpu/mappings.py`` lines 200-213).  The model had
charged a reduce-scatter forward.

Around the lookup (80389ef ``mpu/layers.py`` lines 182-202, 1e05700 ``tensor_parallel/layers.py`` lines 252-272):
with TP > 1 the int64 ids' mask (``<``, ``>=``, ``|``: 9 + 9 + 3 B a token), ``input_.clone()`` (16 B), ``- start``
(16 B) and ``masked_input[input_mask] = 0`` (the mask read, 1 B, and 8 B for each id outside the shard): six kernels;
then ``output_parallel[input_mask, :] = 0.0``: under Megatron-LM 2021 (PyTorch 1.8, an index_put_) the mask read and
h x 2 B for each token outside the shard; from PyTorch 1.10 a masked_fill_ reading and writing the whole output (s20q,
tests/test_embedding_measured_rates.py).  Each token
is in exactly one rank's shard, so over the t ranks (t - 1) n tokens are outside: (t - 1) / t of them a rank.  The
[b s h] -> [s b h] ``transpose(0, 1).contiguous()`` copies (read + write) only at micro-batch > 1: a [1, s, h] tensor's
transpose is already contiguous.

Hand-worked, A100 preset (HBM 1.61e12 B/s, 2.5 us a kernel's floor; NVLink bus bandwidth from the measured
all_reduce_perf rows, linear in log2(bytes)):
* n21-3.6b (TP 2, micro-batch 16 x 2,048, h 3,072, fp16), run as Megatron-core with SP: the output is
  32,768 x 3,072 x 2 = 201,326,592 B (the figures of test_tp_grad_all_reduce: bus 197.397 GB/s, all-reduce
  1.0199 ms, all-gather half that, 0.5100 ms).  Ids' kernels 54 x 32,768 + 8 x 32,768 / 2 = 1,900,544 B:
  6 x 2.5 us + 1.18 us = 16.18 us; masked rows 32,768 + 201,326,592 / 2 = 100,696,064 B; transpose 402,653,184 B.
* k22-22b-seqsel (TP 8, SP, micro-batch 4 x 2,048, h 6,144, fp16): the output is 8,192 x 6,144 x 2 = 100,663,296 B
  = 96 MiB, between the rows at 64 MiB (166.63 GB/s) and 128 MiB (174.18): 166.63 + 7.55 x log2(1.5) = 171.0465 GB/s;
  all-reduce 2 x 7/8 x 100,663,296 / 171.0465e9 = 1.02990 ms, all-gather 7/8 x ... = 0.51495 ms.  Ids' kernels
  54 x 8,192 + 8 x 8,192 x 7/8 = 499,712 B; the masked rows zeroed by masked_fill_ (PyTorch 1.10 on; the k22 rows
  run Megatron-core's kernels, not Megatron-LM 2021's index_put_; s20q): the whole output read and written and the
  mask, 8,192 + 2 x 100,663,296 = 201,334,784 B.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels

from test_tp_grad_all_reduce import ALL_REDUCE, N21
from test_tp_grad_all_reduce import GRAD as OUT
from test_tp_grad_all_reduce import REDUCE_SCATTER as HALF

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = ROOT / "scenarios" / "validation"
HBM, FLOOR = 1.61e12, 2.5e-6

K22_OUT = 8192 * 6144 * 2
K22_BUS = (166.63 + (174.18 - 166.63) * math.log2(1.5)) * 1e9
K22_ALL_REDUCE = K22_OUT * 2 * 7 / 8 / K22_BUS
K22_ALL_GATHER = K22_OUT * 7 / 8 / K22_BUS


def _kernels(path, overrides=(), positions=True):
    st = derive.setup(scenario.load(path, list(overrides)))
    cfg = st.cfg if positions else replace(st.cfg, max_positions=0)  # rotary: no learned position table
    return st, {(k.name, k.component): k for k in kernels.embedding(cfg, st.rates, st.layout)}


def _comms(rows):
    return {key: k for key, k in rows.items() if k.kind == "comm"}


def test_hand_worked_figures():
    assert K22_OUT == 100_663_296 == 96 * 2**20 and K22_BUS == pytest.approx(171.0465e9, rel=1e-6)
    assert K22_ALL_REDUCE == pytest.approx(1.02990e-3, rel=1e-5) and K22_ALL_GATHER == pytest.approx(0.51495e-3, rel=1e-5)
    assert 54 * 32768 + 8 * 32768 // 2 == 1_900_544 and 54 * 8192 + 8 * 8192 * 7 // 8 == 499_712


def test_n21_sp_learned_positions_all_reduce_forward_all_gather_backward():
    st, rows = _kernels(N21, ["model.runtime=megatron-core", "parallel.sequence_parallel=true"])
    assert st.layout.sequence_parallel and st.layout.tensor == 2 and st.cfg.max_positions == 2048
    comms = _comms(rows)
    assert set(comms) == {("tp all-reduce", "mlp_forward"), ("tp all-gather (grad)", "mlp_backward_weight")}
    ar, ag = comms[("tp all-reduce", "mlp_forward")], comms[("tp all-gather (grad)", "mlp_backward_weight")]
    assert ar.bytes == ag.bytes == OUT
    assert ar.seconds == pytest.approx(ALL_REDUCE, rel=1e-9) and ag.seconds == pytest.approx(HALF, rel=1e-9)


def test_k22_seqsel_all_reduce_and_all_gather_and_the_mask_kernels():
    st, rows = _kernels(VALIDATION / "k22-22b-seqsel.toml")
    lay = st.layout
    assert (lay.tensor, lay.micro_batch, lay.tokens, st.cfg.hidden_size) == (8, 4, 8192, 6144)
    assert lay.sequence_parallel and st.cfg.max_positions == 2048
    comms = _comms(rows)
    assert set(comms) == {("tp all-reduce", "mlp_forward"), ("tp all-gather (grad)", "mlp_backward_weight")}
    assert comms[("tp all-reduce", "mlp_forward")].seconds == pytest.approx(K22_ALL_REDUCE, rel=1e-9)
    assert comms[("tp all-gather (grad)", "mlp_backward_weight")].seconds == pytest.approx(K22_ALL_GATHER, rel=1e-9)
    ids = rows[("vocab mask and shifted ids", "mlp_forward")]
    assert ids.bytes == 499_712 and ids.seconds == pytest.approx(6 * FLOOR + 499_712 / HBM, rel=1e-9)
    zeroed = rows[("embedding masked rows zeroed", "mlp_forward")]
    assert zeroed.bytes == 201_334_784 and zeroed.seconds == pytest.approx(FLOOR + 201_334_784 / HBM, rel=1e-9)
    assert rows[("embedding transpose [b s h] -> [s b h]", "mlp_forward")].bytes == 2 * K22_OUT


def test_n21_mask_kernels_and_transpose_bytes():
    st, rows = _kernels(N21)
    assert st.layout.tensor == 2 and st.layout.micro_batch == 16 and not st.layout.sequence_parallel
    ids = rows[("vocab mask and shifted ids", "mlp_forward")]
    assert ids.bytes == 1_900_544 and ids.seconds == pytest.approx(16.18e-6, abs=0.01e-6)
    assert rows[("embedding masked rows zeroed", "mlp_forward")].bytes == 32768 + OUT // 2 == 100_696_064
    transpose = rows[("embedding transpose [b s h] -> [s b h]", "mlp_forward")]
    assert transpose.bytes == 2 * OUT and transpose.seconds == pytest.approx(FLOOR + 2 * OUT / HBM, rel=1e-9)
    assert set(_comms(rows)) == {("tp all-reduce", "mlp_forward")}  # no SP: nothing in the backward (s12l)


def test_micro_batch_one_no_transpose_and_tp1_no_mask():
    _, rows = _kernels(VALIDATION / "k22-175b-seqsel.toml")  # micro-batch 1: [1, s, h] transposed is contiguous
    assert not [key for key in rows if "transpose" in key[0]] and ("vocab mask and shifted ids", "mlp_forward") in rows
    st, rows = _kernels(VALIDATION / "n21-1.7b.toml")  # TP 1: no mask, no masked zeroing, no collective
    assert st.layout.tensor == 1 and st.layout.micro_batch == 16
    assert set(rows) == {("embedding lookup", "mlp_forward"), ("embedding transpose [b s h] -> [s b h]", "mlp_forward"),
                         ("embedding gradient", "mlp_backward_weight"),
                         ("embedding gradient zero-fill", "mlp_backward_weight")}  # s12k: PyTorch's dense backward


def test_rotary_sp_reduce_scatter_and_scatter_output_clone():
    """Megatron-core without learned positions (since cbf8144): reduce-scatter, then clone_scatter_output_in_embedding
    copies the rank's n / t rows (read + write)."""
    st, rows = _kernels(N21, ["model.runtime=megatron-core", "parallel.sequence_parallel=true"], positions=False)
    assert set(_comms(rows)) == {("tp reduce-scatter", "mlp_forward"), ("tp all-gather (grad)", "mlp_backward_weight")}
    assert rows[("embedding scatter output clone", "mlp_forward")].bytes == 2 * OUT // 2
    _, rows = _kernels(N21, ["model.runtime=megatron-core", "parallel.sequence_parallel=true"])
    assert not [key for key in rows if "clone" in key[0]]  # learned positions: not charged (docs/model.md)
