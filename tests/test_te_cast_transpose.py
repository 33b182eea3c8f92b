"""Transformer Engine's cast-transpose against its own H100 timings (issue 21, s20a).

The model times every memory-bound kernel as the kernel floor + bytes / the achievable HBM row (2.5 us + bytes / 2.90
TB/s on H100: BabelStream's Mul, checked on Liger-Kernel's Triton kernels). TE's FP8 cast-transpose is TE's own CUDA
kernel, one read of a 16-bit matrix and two FP8 writes (the cast and its transpose: 2 + 1 + 1 bytes an element).
NVIDIA/TransformerEngine#101 times it on an H100 SXM at n x n, FP16 in, FP8 out
(tests/data/kernels/te101_h100_cast_transpose.csv). Held here: the transcription (the PR's own claims about its
columns), the model's time for each row and how far the two differ, and what that bounds for a validation row's
forward (docs/model.md, "Transformer Engine's cast-transpose against its own timings"). Nothing is fitted to it and no
constant moved: the timed kernel is TE v0.7-v1.6's (and the MLPerf v3.1 fork's), replaced by an NVRTC kernel in v1.7,
and no key tells the model a run's TE release."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table

TABLE = Path(__file__).parent / "data" / "kernels" / "te101_h100_cast_transpose.csv"
ROWS = {int(r["n"]): r for r in kernel_table(TABLE)}
VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
H100_L2 = 50e6  # bytes: the H100 SXM's L2 cache (NVIDIA H100 whitepaper), what the PR's larger rows outgrow
CAST_TRANSPOSE_BYTES = 2 + 1 + 1  # a 16-bit element read, its FP8 cast and the cast's transpose written


def _bytes(n: int) -> int:
    return CAST_TRANSPOSE_BYTES * n * n


def _measured(n: int, column: str = "time_heuristic_us") -> float:
    return float(ROWS[n][column]) * 1e-6


@pytest.fixture(scope="module")
def table() -> kernels.Table:
    st = derive.setup(scenario.load(VALIDATION / "mlperf31-gpt3-512.toml"))
    return kernels.Table(PRESETS["H100"], kernels.Layout(seq=2048, micro_batch=1, fp8=True), st.cfg)


def _model(table: kernels.Table, n: int) -> float:
    return table.memory("cast transpose", "attn_forward", _bytes(n))


def test_table_rows():
    assert sorted(ROWS) == [512, 768, 1024, 1536, 2048, 3072, 4096]


def test_transcription_against_the_prs_own_words():
    # "if the number of CTAs drops below the number of SMs ... reduce the vector size to 4B": the heuristic is faster
    # at the small sizes and "The runs for 2048 x 2048 and larger should all use the same kernel": within 1% there
    small = [n for n in ROWS if n <= 1536]
    assert all(_measured(n) < _measured(n, "time_8b_us") for n in small)
    for n in (2048, 3072, 4096):
        assert _measured(n) == pytest.approx(_measured(n, "time_8b_us"), rel=0.01)


def test_beyond_l2_the_kernel_streams_at_under_half_the_hbm_row():
    # 3072^2 and 4096^2 move 37.7 and 67.1 MB (the input alone 18.9 and 33.6 MB): 1.540 and 1.292 TB/s, 53% and 45%
    # of the model's 2.90 TB/s, well past the 10% that would be the rate's own spread
    rates = {n: _bytes(n) / _measured(n) for n in (3072, 4096)}
    assert rates[3072] == pytest.approx(1.540e12, rel=1e-3)
    assert rates[4096] == pytest.approx(1.292e12, rel=1e-3)
    assert _bytes(4096) > H100_L2
    assert all(r < 0.9 * PRESETS["H100"].hbm for r in rates.values())
    assert rates[4096] / PRESETS["H100"].hbm == pytest.approx(0.445, abs=0.005)


def test_model_against_the_rows(table):
    # floor + bytes / hbm: 15.52 us at 3072^2 (measured 24.51: the model 36.7% short) and 25.64 us at 4096^2
    # (51.95: 50.6% short); the 8-byte column the same within 0.5 point
    assert _model(table, 3072) == pytest.approx(2.5e-6 + _bytes(3072) / 2.90e12, rel=1e-9)
    error = {n: _model(table, n) / _measured(n) - 1 for n in ROWS}
    assert error[3072] == pytest.approx(-0.367, abs=0.005)
    assert error[4096] == pytest.approx(-0.506, abs=0.005)
    # below 17 MB (all of it fits the 50 MB L2 twice over) the kernel floor dominates and the model is within
    # -25% (512^2, 1 MB: 2.86 against 3.80 us) and +20% (2048^2, 16.8 MB: 8.29 against 6.93 us), exact at 1024^2
    for n in (512, 768, 1024, 1536, 2048):
        assert -0.25 <= error[n] <= 0.20
    assert error[512] == pytest.approx(-0.247, abs=0.005)
    assert error[1024] == pytest.approx(0.002, abs=0.005)
    assert error[2048] == pytest.approx(0.196, abs=0.005)


@pytest.mark.parametrize(("name", "all_share"), [
    ("mlperf30-gpt3-512", 0.055),
    ("mlperf31-gpt3-512", 0.065),
    ("mlperf40-gpt3-512", 0.066),
    ("mlperf50-llama405b-512", 0.086),
])
def test_the_evaluation_forward_runs_no_cast_transpose(name, all_share):
    # docs/validation.md's "Forward only" rows are evaluations, autograd off: TE casts without the transpose
    # (09ba842 cast_to_fp8; release_v2.8 columnwise_usage needs grad), so the kernel the PR times does not run there.
    # Even every memory-bound kernel of that forward (norms, the cast, activation, residual adds, copies) at the PR's
    # slowest rate would add 5.5-8.6% to the layer: short of the 7-30% the rows' forward misses by
    training = derive.setup(scenario.load(VALIDATION / f"{name}.toml"))
    forward = [k for k in derive.layer_kernels(replace(training, evaluation=True), 1) if k.component.endswith("_forward")]
    memory = [k for k in forward if k.kind == "memory"]
    cast = next(k for k in memory if k.name == "out_proj input cast")
    trained = next(k for k in derive.layer_kernels(training, 1) if k.name == "out_proj input cast")
    assert cast.bytes == trained.bytes * (2 + 1) / CAST_TRANSPOSE_BYTES  # one FP8 copy, no transpose
    assert not any("transpose" in k.name for k in memory)
    slowest = min(_bytes(n) / _measured(n) for n in (3072, 4096))
    added = sum(k.bytes / slowest + PRESETS["H100"].floor - k.seconds for k in memory)
    assert added / sum(k.seconds for k in forward) == pytest.approx(all_share, abs=0.003)


@pytest.mark.parametrize(("name", "share"), [
    ("mlperf30-gpt3-512", 0.0067),  # TE release_v0.8
    ("mlperf31-gpt3-512", 0.0074),  # TE @ 09ba842
    ("mlperf40-gpt3-512", 0.0080),  # TE 1.6
])
def test_what_the_timed_kernel_adds_to_a_layer_of_the_rows_that_ran_it(name, share):
    # The rows on TE before v1.7 ran the kernel the PR times: a layer's cast-transposes (Table.cast: the out_proj
    # input's forward, the qkv output gradient's backward, 2 + 1 + 1 B an element) at the PR's 4096^2 rate add
    # 0.67-0.80% to the layer's forward and backward: what a rate for that kernel kind would move those rows by
    # (TE release_v0.8, 09ba842 and v1.6rc1 all carry #101's kernel: get_n_tiles; the NVRTC one is not in them)
    rows = derive.layer_kernels(derive.setup(scenario.load(VALIDATION / f"{name}.toml")), 0)
    casts = [k for k in rows if k.name in ("out_proj input cast", "qkv grad cast")]
    assert len(casts) == 2
    assert all(k.bytes % CAST_TRANSPOSE_BYTES == 0 and k.bytes / CAST_TRANSPOSE_BYTES >= 512 * 512 for k in casts)
    rate = _bytes(4096) / _measured(4096)
    added = sum(k.bytes / rate + PRESETS["H100"].floor - k.seconds for k in casts)
    assert added / sum(k.seconds for k in rows) == pytest.approx(share, abs=0.0005)
