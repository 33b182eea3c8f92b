"""The model's MoE layer and its parts against published H100 timings (issue 21, Qwen3 TP 4 + EP 8 pass).

Published figures in tests/data/kernels/ (each file names its source and what it times):
``marin3666_h100_moe_layer.csv`` (a Megatron-core MoELayer on 8 H100, TP 1, EP 8, forward + backward),
``te2045_h100_grouped_gemm.csv`` (Transformer Engine's multi-stream grouped GEMM on H100, TE 2.2 and 2.7) and
``tilescale40_h100_deepep_intranode.csv`` (DeepEP's intranode dispatch and combine on 8 H100).
docs/searches.md ("MoE parts against published H100 timings") reads them; benchmarks/moe_layer_sources.py prints
every row.  None agrees within a stated error, so each gap is held as the documented bound (the model fast or
slow by so much), and the model's own figure for each shape is worked by hand, so that a change which moves
either has to move the docs too.  Nothing here is fitted."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import sections_only
from dualpipe_sim.model import derive
from dualpipe_sim.model.rates import PRESETS
from helpers import kernel_table, short_run_h100

DATA = Path(__file__).parent / "data" / "kernels"
H100 = PRESETS["H100"]
FORWARD = {"mlp_forward", "dispatch_forward", "combine_forward"}
BACKWARD = {"mlp_backward_input", "mlp_backward_weight", "dispatch_backward", "combine_backward"}
NOT_IN_MOE_LAYER = {"pre-mlp norm", "pre-mlp norm backward", "residual add"}  # TransformerLayer's, not MoELayer's


def moe_rows(hidden: int, ffn: int, experts: int, topk: int, tokens: int, dispatcher: str):
    """One Qwen3-style MoE layer's kernel table on 8 H100s, TP 1, EP 8, bf16 weight gradients (no DDP)."""
    return derive.layer_kernels(derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "qwen3_moe", "hidden_size": hidden, "num_hidden_layers": 1,
                  "num_attention_heads": hidden // 128, "num_key_value_heads": 4, "head_dim": 128,
                  "intermediate_size": 4 * hidden, "moe_intermediate_size": ffn, "num_experts": experts,
                  "num_experts_per_tok": topk, "vocab_size": 151936, "tie_word_embeddings": False,
                  "seq_length": 4096, "micro_batch_size": tokens // 4096, "moe_aux_loss": True,
                  "moe_dispatcher": dispatcher, "grads_dtype": "bf16"},
        "parallel": {"tensor": 1, "data": 8, "expert": 8},
        "hardware": {"preset": "H100"},
    })), 0)  # fmt: skip


def moe_layer_ms(row: dict, dispatcher: str) -> float:
    """The model's MoELayer (router to combine), forward and both backward passes, ms."""
    shape = (int(row["hidden"]), int(row["moe_ffn"]), int(row["experts"]), int(row["topk"]), int(row["tokens"]))
    return sum(k.ms for k in moe_rows(*shape, dispatcher)
               if k.component in FORWARD | BACKWARD and k.name not in NOT_IN_MOE_LAYER)  # fmt: skip


# -- DeepEP's intranode kernels on 8 H100: 4,096 tokens of 7,168, top-8 of 32 experts, BF16 ----------------------------
def test_deepep_table_counts_a_token_once_per_destination_rank():
    """The source's bandwidth x time is the bytes a rank receives, a token once per rank that holds one of its
    experts (DeepEP's test_intranode.py).  Worked by hand: 8 ranks of 4 experts, a token's 8 experts drawn without
    replacement, so a rank holds none of them with probability C(28, 8) / C(32, 8) = 3,108,105 / 10,518,300 =
    0.295499; 8 x (1 - 0.295499) = 5.63601 ranks a token; 4,096 x 5.63601 x 7,168 x 2 bytes = 330.94 MB."""
    assert comb(28, 8) == 3108105 and comb(32, 8) == 10518300
    expected = 4096 * 8 * (1 - 3108105 / 10518300) * 7168 * 2
    assert expected == pytest.approx(330.94e6, rel=1e-4)
    for row in kernel_table(DATA / "tilescale40_h100_deepep_intranode.csv"):
        for what in ("dispatch", "combine"):
            moved = float(row[f"{what}_gbps"]) * 1e9 * float(row[f"{what}_ms"]) * 1e-3
            assert moved == pytest.approx(expected, rel=0.005), (row["impl"], what)


def test_deepep_intranode_model_fast_against_measured():
    """Known fast: inside a node the model sends DeepEP's rows as the source counts them, a token once to each
    rank it reaches (s21m; every (token, expert) copy before), the share that leaves the rank over NVLink at the
    bus rate of Megatron's all-to-all.  Worked by hand: 330.94 MB x 7/8 = 289.57 MB, 25.5 us + 289.57 MB /
    321 GB/s = 0.9276 ms against DeepEP's 1.0045 ms dispatch (0.92x) and 1.1552 ms combine (0.80x); every
    copy would be 411.04 MB, 1.3060 ms, 1.30x / 1.13x slow."""
    sent = 4096 * 8 * (1 - 3108105 / 10518300) * 7 / 8 * 7168 * 2
    assert sent == pytest.approx(289.57e6, rel=1e-4)
    by_hand = 25.5e-3 + sent / 321e9 * 1e3
    assert by_hand == pytest.approx(0.9276, abs=5e-4)
    a2a = {k.component: k.ms for k in moe_rows(7168, 2048, 32, 8, 4096, "deepep") if k.name == "all-to-all"}
    assert a2a["dispatch_forward"] == pytest.approx(by_hand, rel=1e-6)
    assert a2a["combine_forward"] == pytest.approx(by_hand, rel=1e-6)
    deepep = next(r for r in kernel_table(DATA / "tilescale40_h100_deepep_intranode.csv") if r["impl"] == "DeepEP")
    assert 0.88 < by_hand / float(deepep["dispatch_ms"]) < 0.96
    assert 0.76 < by_hand / float(deepep["combine_ms"]) < 0.84


# -- Transformer Engine's grouped GEMM (one cuBLAS GEMM per group on 4 streams), H100, BF16 --------------------------
def grouped_us(groups: int, m: int, n: int, k: int, rates=H100) -> float:
    """The model's expert GEMMs of one shape as it lays them out for TE's GroupedLinear (kernels.Table.experts)."""
    from dualpipe_sim.model import kernels

    lay = kernels.Layout(seq=m, micro_batch=1)
    return kernels.Table(rates, lay, None).experts("g", "mlp_forward", m, n, k, groups) * 1e6


def test_grouped_gemm_model_worked_by_hand():
    """8 x 4096 x 768 x 2048 on 4 streams: two rounds of 4 GEMMs, each round as one kernel of 4 x 96 tiles of
    128 x 256 on 132 SMs: 3 waves, useful 4 x 4096 x 768 / (3 x 132 x 128 x 256) = 0.96970, mainloop share
    2048 / (2048 + 103) = 0.95212; a round = 5.54 us + 51.54 GFLOP / (765 TFLOP/s x 0.92327) = 78.51 us (H100's
    sustained BF16 peak, docs/model.md)."""
    util = 4 * 4096 * 768 / (3 * 132 * 128 * 256) * 2048 / (2048 + 103)
    assert util == pytest.approx(0.92327, abs=1e-5)
    by_hand = 2 * (5.54 + 2 * 4 * 4096 * 768 * 2048 / (765e12 * util) * 1e6)
    assert grouped_us(8, 4096, 768, 2048) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(157.02, abs=0.01)


@pytest.mark.parametrize("te, low, high", [("2.2", 6.0, 8.0), ("2.7", 1.5, 3.0)])
def test_grouped_gemm_model_fast_by_a_gap_per_gemm(te, low, high, monkeypatch):
    """Known fast: TE's measured grouped GEMM takes longer than the model's at both shapes, by about the same time
    per GEMM within a release (TE 2.2: 7.25 and 6.42 us; TE 2.7 with CUDA 12.9: 2.44 and 1.90 us), so a cost per
    expert GEMM, not a rate, is what the model lacks here; whether it is the host's issue of each GEMM or the GPU's
    the source does not say (docs/searches.md). A benchmark of a few iterations: held to the short-run BF16 fit."""
    short = short_run_h100(monkeypatch)
    for row in kernel_table(DATA / "te2045_h100_grouped_gemm.csv"):
        if row["te"] != te:
            continue
        g, m, n, k = (int(row[x]) for x in ("groups", "m", "n", "k"))
        published_us = 2.0 * g * m * n * k / float(row["multistream_tflops"]) / 1e6
        model_us = grouped_us(g, m, n, k, short)
        assert model_us < published_us
        assert low < (published_us - model_us) / g < high, (te, g, m)


# -- A Megatron-core MoELayer on 8 H100 (TP 1, EP 8), forward + backward ----------------------------------------------
def test_moe_layer_model_below_every_measurement(monkeypatch):
    """Known fast: for every case of the sweep and both dispatchers the model takes less than the measured layer;
    closest at Qwen3-235B's shape with DeepEP (8.19 ms against 11.75, 0.70x; 9.71 before s21m's DeepEP inventory), the
    runs' own layer at TP 1. A benchmark harness's timing: the model with the short-run BF16 fit (with the sustained
    peak, 8.63 ms)."""
    short_run_h100(monkeypatch)
    rows = kernel_table(DATA / "marin3666_h100_moe_layer.csv")
    assert len(rows) == 12
    for row in rows:
        for dispatcher in ("deepep", "alltoall"):
            assert moe_layer_ms(row, dispatcher) < float(row[f"{dispatcher}_ms"]), (row["case"], dispatcher)
    anchor = next(r for r in rows if r["case"] == "qwen3_235b_a22b_anchor")
    assert 0.66 < moe_layer_ms(anchor, "deepep") / float(anchor["deepep_ms"]) < 0.74


def test_moe_layer_measurements_have_a_floor_the_model_lacks(monkeypatch):
    """The measured DeepEP layer does not follow its work: with 128 experts no case runs under 9.04 ms (top-2, whose
    work the model puts at 2.54 ms with the backward's host share, s17g, DeepEP's forward stream waits, s17i, and its
    inventory, s21m), while the model spans 2.54-11.15 ms over the same cases; the two cases with
    the most work (Qwen3-235B's shape, 4 x the tokens) are the only ones the model puts above 8 ms. Short-run fit."""
    short_run_h100(monkeypatch)
    rows = [r for r in kernel_table(DATA / "marin3666_h100_moe_layer.csv") if r["experts"] == "128"]
    measured = {r["case"]: float(r["deepep_ms"]) for r in rows}
    model = {r["case"]: moe_layer_ms(r, "deepep") for r in rows}
    assert min(measured.values()) == 9.04
    assert min(model.values()) == pytest.approx(2.54, abs=0.01)
    assert max(model.values()) == pytest.approx(11.15, abs=0.01)
    assert {c for c, ms in model.items() if ms > 8.0} == {"qwen3_235b_a22b_anchor", "qwen3_batch_mb4"}
