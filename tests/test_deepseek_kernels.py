"""DeepSeek's runtime kernel list for one MoE layer of scenarios/deepseek-v3-predicted.toml, worked by hand.

The truth is DeepSeek's profile (deepseek-ai/profile-data train.json) read as a kernel LIST: which GEMMs run in
which annotated component (counted by hand from its kernel names, docs/validation.md "Which kernels DeepSeek's
step runs"), and a few kernels' bytes worked from the shapes of DeepSeek-V3's config.  No time from the profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.inputs.scenario import load
from dualpipe_sim.model import derive
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parent.parent
PREDICTED = ROOT / "scenarios" / "deepseek-v3-predicted.toml"
H800 = PRESETS["H800"]
HBM, FLOOR = H800.hbm, H800.floor
N, H, HEADS, V = 4096, 7168, 128, 128  # tokens per micro-batch, hidden, heads, value head dim


def _moe_rows(overrides=()):
    st = derive.setup(load(PREDICTED, list(overrides)))
    return st, derive.layer_kernels(st, 3)  # layer 3: the first MoE layer


def _gemm_kernels(rows, component):
    """GEMM launches of a component: a per-expert row counts one GEMM per expert, a grouped row one kernel."""
    count = 0
    for k in rows:
        if k.kind == "gemm" and k.component == component:
            count += int(k.shape.split(" x ")[0]) if "streams" in k.shape else 1
    return count


def test_gemm_launches_per_component_match_the_profile():
    # the profile, one layer (its 4 layers' counts / 4): attn(F) 5 FP8 linears + the BF16 router; mlp(F) the
    # shared expert's 2 + 2 grouped; attn(B) out_proj, q_up, kv_up, kv_down, q_down dgrads, the two recomputed
    # up-projections, the router's dgrad and wgrad (MatmulToFP32Backward, 2 BF16 GEMMs); mlp(B) 2 shared
    # dgrads + 2 grouped; mlp(W) 8 per-expert wgrads (4 experts x fc1, fc2) + 2 shared; attn(W) 5
    _, rows = _moe_rows()
    want = {"attn_forward": 6, "mlp_forward": 4, "attn_backward_input": 9, "mlp_backward_input": 4,
            "mlp_backward_weight": 10, "attn_backward_weight": 5}  # fmt: skip
    assert {c: _gemm_kernels(rows, c) for c in want} == want


def test_router_and_pre_mlp_norm_run_in_the_attention_components():
    _, rows = _moe_rows()
    where = {k.name: k.component for k in rows}
    for name in ("residual add + pre-mlp norm (fused)", "router", "router gating", "dispatch input cast"):
        assert where[name] == "attn_forward"
    for name in ("router gating backward", "router dgrad", "router wgrad", "pre-mlp norm backward"):
        assert where[name] == "attn_backward_input"
    # DeepEP sends the FP8 tokens as they are: no permute / unpermute kernels
    assert not any("permute" in k.name for k in rows)
    # its notify kernels beside the three all-to-alls that reuse the dispatch layout
    assert sorted(k.component for k in rows if k.name == "cached notify") == [
        "combine_backward", "combine_forward", "dispatch_backward"]  # fmt: skip


def test_casts_by_hand():
    _, rows = _moe_rows()
    ms = {k.name: k.seconds for k in rows}
    # q_down's per-token input cast (bf16 read, FP8 + one fp32 scale per 128 written) and its scales'
    # transpose: two launches
    assert ms["q_down input cast"] == pytest.approx(2 * FLOOR + N * H * (2 + 1 + 4 / 128) / HBM)
    # the attention output cached in 12 bits (E5M6) with per-128 scales: 4096 x 128 heads x 128
    assert ms["attention output cache cast (E5M6)"] == pytest.approx(FLOOR + N * HEADS * V * (2 + 1.5 + 4 / 128) / HBM)
    # out_proj's FP8 weight (7168 x 16384) transposed for its dgrad GEMM: 1 B read, 1 B written
    assert ms["out_proj weight transpose (dgrad)"] == pytest.approx(FLOOR + 2 * H * 16384 / HBM)


def test_expert_wgrads_one_gemm_per_expert_on_two_streams_by_hand():
    # 4 local experts' fc1 wgrad, 7168 x 4096 x 8192 each (8192 rows per expert: 4096 x 8 x 64 / 256), two at a
    # time. Two GEMMs as one kernel: 2 x 56 x 32 = 3584 128 x 128 tiles, ceil(3584 / 132) = 28 waves, useful
    # 3584 / 3696 (128 x 256 and 256 x 128 tiles: 1792 / 1848, the same; no split: > 2 x 132 tiles);
    # mainloop 8192 / (8192 + 434) (DeepGEMM's table); bytes 2 x (FP8 operands + an fp32 gradient read and
    # written) = 654 MB, under the compute time. Two rounds.
    _, rows = _moe_rows()
    row = next(k for k in rows if k.name == "experts fc1 wgrad (per expert)")
    rates = H800.gemm_fp8_deepgemm
    useful = 3584 / (28 * 132) * 8192 / (8192 + 434)
    one_round = rates.floor + 2 * (2 * 7168 * 4096 * 8192) / (rates.peak * useful)
    assert 2 * (7168 * 8192 + 8192 * 4096 + 7168 * 4096 * 8) / HBM < one_round - rates.floor
    assert row.seconds == pytest.approx(2 * one_round)
    assert row.bytes == pytest.approx(4 * (7168 * 8192 + 8192 * 4096 + 7168 * 4096 * 8))


def test_only_deepseek_s_runtime_takes_its_list():
    # cuBLAS FP8 (Transformer Engine) or another recompute policy: the Megatron-core list, unchanged
    for override in ("model.fp8_gemm=cublas", "memory.recompute=none"):
        st, rows = _moe_rows([override])
        assert not st.layout.deepseek
        assert ("permute", "mlp_forward") in {(k.name, k.component) for k in rows}
    st, rows = _moe_rows()
    assert st.layout.deepseek
    # dense layers keep the generic list (the profile holds MoE layers only)
    assert any(k.name == "pre-mlp norm" for k in derive.layer_kernels(st, 0))


def _dims(shape):
    """(m, n, k) of a GEMM row's shape text ("m x n x k fp8")."""
    return tuple(int(x) for x in shape.split()[0:5:2])


def test_linear_backward_gemm_shapes_are_the_transposes():
    # y = x W with x: m x k, W: k x n.  dgrad dX = dY W^T: m x k out, n inner; wgrad dW = X^T dY: k x n out, m
    # inner.  q_down: 4096 tokens, 7168 -> q_lora_rank 1536 (DeepSeek-V3 config.json); the shared expert's fc2:
    # moe_intermediate_size 2048 (one shared expert) -> 7168
    _, rows = _moe_rows()
    shape = {k.name: _dims(k.shape) for k in rows if k.kind == "gemm"}
    assert shape["q_down"] == (N, 1536, H)
    assert shape["q_down dgrad"] == (N, H, 1536)
    assert shape["q_down wgrad"] == (H, 1536, N)
    assert shape["shared expert fc2"] == (N, H, 2048)
    assert shape["shared expert fc2 dgrad"] == (N, 2048, H)
    assert shape["shared expert fc2 wgrad"] == (2048, H, N)


def test_router_gating_launches_the_profiles_small_kernels():
    # docs/model.md: 37 small PyTorch kernels in the gating's forward (attn(F)), 26 in its backward (attn(B)), each
    # the floor, the bytes (three fp32 passes over the 4096 x 256 scores) shared by them
    _, rows = _moe_rows()
    ms = {k.name: k.seconds for k in rows}
    body = N * 256 * 4 * 3 / HBM
    assert ms["router gating"] == pytest.approx(37 * FLOOR + body)
    assert ms["router gating backward"] == pytest.approx(26 * FLOOR + body)
