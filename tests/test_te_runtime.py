"""What a Transformer Engine runtime runs as a run configures it, worked by hand: the FP8 amax reduction
(model.fp8_amax_reduction, kernels.amax_reduction) with NCCL's latency model for a tiny all-reduce
(collectives.small_all_reduce), the userbuffers overlaps' SMs and atomic GEMMs (parallel.tp_overlap_sms,
tp_overlap_atomic) and the flash attention library (model.attention_kernel).

The latency constants are NCCL's own (src/graph/tuning.cc @ 4365458, v2.18.5): LL protocol, base 6.8 us
(tree) / 6.6 us (ring), 0.6 us per NVLink hop, 5.0 / 2.7 us per network hop, 1 us per inter-node ring
step's launch; log2 is NCCL's integer log2i."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
V30 = ROOT / "scenarios" / "validation" / "mlperf30-gpt3-512.toml"  # TP 4, DP 16: an amax group of 64 ranks
H100 = PRESETS["H100"]


@pytest.mark.parametrize("ranks, per_node, us", [
    (448, 8, 6.8 + 2 * (7 * 0.6 + 5 * 5.0)),  # 56 nodes, log2i(56) = 5: tree (ring: 6.6 + 782 x 1 + 112 x 2.7)
    (64, 8, 6.8 + 2 * (7 * 0.6 + 3 * 5.0)),  # 8 nodes: tree 45.2 us
    (16, 8, 6.8 + 2 * (7 * 0.6 + 1 * 5.0)),  # 2 nodes: tree 25.2 us against ring 6.6 + 26 x 1 + 4 x 2.7 = 43.4
    (8, 8, 6.6 + 14 * 0.6),  # one node: ring 15.0 us against tree 6.8 + 2 x 7 x 0.6 = 15.2
    (4, 8, 6.6 + 6 * 0.6),  # a tensor-parallel group of 4: ring 10.2 us against tree 10.4
    (1, 8, 0.0),
])  # fmt: skip
def test_small_all_reduce_is_nccls_latency_model(ranks, per_node, us):
    assert collectives.small_all_reduce(ranks, per_node) == pytest.approx(us * 1e-6)


def test_amax_reduction_kernels_by_hand():
    # one GPT-3 layer per chunk at TP 4: QKV, out_proj, fc1, fc2 = 4 FP8 GEMM modules; forward 3 amaxes each
    # (input, weight, output), backward 2 (output and input gradients); fp32 amaxes
    st = derive.setup(scenario.load(V30, []))
    rows = derive.chunk_kernels(st, st.stages[1])
    by = {k.name: k for k in rows}
    fwd, bwd = by["fp8 amax all-reduce (forward)"], by["fp8 amax all-reduce (backward)"]
    assert (fwd.bytes, bwd.bytes) == (4 * 3 * 4, 4 * 2 * 4)
    assert fwd.seconds == bwd.seconds == pytest.approx(45.2e-6)  # 64 ranks on 8 nodes, as above
    assert (fwd.component, bwd.component) == ("mlp_forward", "attn_backward_input")
    # the update reads 1,023 past amaxes of each and writes all 1,024 rolled (TE's amax history, FP8_AMAX_HISTORY=1024),
    # reads the reduced amax and writes the scale and its inverse: (1 + 1,023 + 1,024 + 2) x 4 B = 8,200 B an amax
    update = by["fp8 amax + scale update (forward)"]
    assert update.bytes == 12 * 8200
    assert update.seconds == pytest.approx(2.5e-6 + 12 * 8200 / 2.90e12)


def _stage(overrides):
    d = scenario.load(V30, overrides).derived()
    return d.stages[1]


def test_the_key_moves_each_chunk_by_the_all_reduce():
    # "data" (tensor x data = 64 ranks, 8 nodes), "tensor" (4 ranks on NVLink), "hidden" (not waited for): the
    # forward and the input gradient of every stage differ by exactly the all-reduce; the weight gradient not at all
    data, tensor, hidden = (_stage([f"model.fp8_amax_reduction={v}"]) for v in ("data", "tensor", "hidden"))
    assert data.forward - hidden.forward == pytest.approx(45.2e-3)
    assert tensor.forward - hidden.forward == pytest.approx(10.2e-3)
    assert data.backward - hidden.backward == pytest.approx(45.2e-3)  # B holds I + W
    assert data.weight == hidden.weight


def test_deepgemm_fine_grained_scaling_has_no_amax_reduction():
    te = 'model.te_cast_transpose="nvrtc"'  # the row's TE cast-transpose kernel: refused without TE's FP8
    st = derive.setup(scenario.load(V30, ["model.fp8_gemm=deepgemm", te]))
    assert st.amax_group == 0 and derive.chunk_kernels(st, st.stages[1]) == []
    st = derive.setup(scenario.load(V30, ["model.fp8=false", te]))
    assert derive.chunk_kernels(st, st.stages[1]) == []


def test_amax_group_counts_context_ranks():
    lay = kernels.Layout(4096, 1, tensor=2, context=2, fp8=True, amax_group=2 * 2 * 8)
    cfg = derive.setup(scenario.load(V30, [])).cfg
    rows = kernels.amax_reduction(cfg, H100, lay, (0,))
    assert rows[0].seconds == pytest.approx(collectives.small_all_reduce(32, 8))
    st = derive.setup(scenario.load(V30, ["parallel.context=2", "parallel.data=8"]))
    assert st.amax_group == 4 * 8 * 2


def test_bad_value_names_the_key(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(V30), "--set", "model.fp8_amax_reduction=always", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.fp8_amax_reduction" in err and "hidden" in err and "Traceback" not in err
    assert not out.exists()


# -- Transformer Engine userbuffers as a run configures them (parallel.tp_overlap_sms, tp_overlap_atomic) ------
def _fp8_rates_on(sms: int):
    from dataclasses import replace

    return replace(H100.gemm_fp8, peak=H100.gemm_fp8.peak * sms / 132)


def test_overlap_sms_and_atomic_gemm_by_hand():
    from dualpipe_sim.model import collectives, gemm

    # v3.1: fc2_fprop's reduce-scatter kernel takes 4 SMs (set_sm_margin 1: the GEMM gets 128) and the GEMM is one
    # atomic GEMM of all 2,048 rows; v3.0: 20 SMs and 4 split GEMMs of 512 rows (TE release_v0.8)
    v31 = derive.setup(scenario.load(ROOT / "scenarios" / "validation" / "mlperf31-gpt3-512.toml", []))
    v30 = derive.setup(scenario.load(V30, []))
    rows31 = {k.name: k for k in derive.layer_kernels(v31, 0)}
    rows30 = {k.name: k for k in derive.layer_kernels(v30, 0)}
    want31 = gemm.time(2048, 12288, 12288, _fp8_rates_on(128), 128, H100.hbm, 1.0).seconds
    want30 = 4 * gemm.time(512, 12288, 12288, _fp8_rates_on(112), 112, H100.hbm, 1.0).seconds
    assert rows31["fc2"].seconds == pytest.approx(want31)
    assert rows30["fc2"].seconds == pytest.approx(want30)
    # out_proj (proj_fprop, 24 SMs in both); the bulk overlaps: qkv dgrad beside a 4-SM all-gather, fc1 wgrad 4
    assert rows31["out_proj"].seconds == pytest.approx(
        gemm.time(2048, 12288, 3072, _fp8_rates_on(108), 108, H100.hbm, 1.0).seconds)
    told = derive.setup(scenario.load(ROOT / "scenarios" / "validation" / "mlperf31-gpt3-512.toml",
                                      ["parallel.tp_overlap_not_told=[]"]))  # fmt: skip
    assert next(k for k in derive.layer_kernels(told, 0) if k.name == "qkv dgrad").seconds == pytest.approx(
        gemm.time(2048, 12288, 9216, _fp8_rates_on(128), 128, H100.hbm, 1.0, grad="dgrad").seconds)
    # as the run's yaml has it (set_sm_margin 0): the whole GPU's tiles, on 4 held SMs while the FP8 all-gather runs
    alone = gemm.time(2048, 12288, 9216, H100.gemm_fp8, 132, H100.hbm, 1.0, grad="dgrad").seconds
    held = gemm.time(2048, 12288, 9216, H100.gemm_fp8, 132, H100.hbm, 1.0, held=4, schedule="persistent",
                     grad="dgrad").seconds
    gather = collectives.time("all_gather", 2048 * 12288 * 1.0, 4, H100, "nvlink")
    assert rows31["qkv dgrad"].seconds == pytest.approx(min(held, gather + alone))
    # the atomic GEMM's reduce-scatter: its last quarter after the GEMM, the rest beside it
    full = collectives.time("reduce_scatter", 2048 * 12288 * 2, 4, H100, "nvlink")
    rs = next(k for k in derive.layer_kernels(v31, 0) if k.name.startswith("tp reduce-scatter (pipeline")
              and k.component == "mlp_forward")  # fmt: skip
    assert rs.seconds == pytest.approx(full / 4 + max(0.0, full * 3 / 4 - want31))


def test_default_overlaps_are_transformer_engines():
    # nothing given: every SM-using overlap takes TE's num_sm 16, and the reduce-scatter GEMMs are 4 splits
    st = derive.setup(scenario.load(V30, ["parallel.tp_overlap_sms={}"]))
    assert st.layout.ub_sm("fc1_wgrad") == 16 and st.layout.ub_atomic == ()
    from dualpipe_sim.model import gemm

    fc2 = next(k for k in derive.layer_kernels(st, 0) if k.name == "fc2")
    assert fc2.seconds == pytest.approx(4 * gemm.time(512, 12288, 12288, _fp8_rates_on(116), 116, H100.hbm, 1.0).seconds)


@pytest.mark.parametrize("override, words", [
    ("parallel.tp_overlap_sms={qkv=4}", "qkv_dgrad"),
    ("parallel.tp_overlap_sms={fc1_dgrad=100}", "64"),
    ("parallel.tp_overlap_atomic=[\"qkv_dgrad\"]", "proj_fprop"),
])  # fmt: skip
def test_bad_overlap_keys_name_the_key(tmp_path, capsys, override, words):
    out = tmp_path / "out"
    assert main(["run", str(V30), "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "parallel.tp_overlap" in err and words in err and "Traceback" not in err
    assert not out.exists()


# -- model.attention_kernel: whose flash attention ------------------------------------------------------------
def test_flash_attn_2_rates_by_hand():
    # GPT-3 at TP 4: 24 heads x 2,048^2 x 128, causal half: forward 4 s^2 h d / t / 2 FLOPs at flash-attn 2's H100 rate
    # (350 TFLOP/s x s / (s + 400)), backward 2.5x at 327 x s / (s + 580); each plus the 2.5 us kernel floor
    fa2 = derive.setup(scenario.load(V30, ["model.attention_kernel=flash-attn-2"]))
    rows = {(k.name, k.component): k for k in derive.layer_kernels(fa2, 0)}
    flops = 4 * 2048**2 * 12288 / 4 / 2
    fwd = rows[("flash attention", "attn_forward")]
    bwd = rows[("flash attention backward", "attn_backward_input")]
    assert fwd.seconds == pytest.approx(2.5e-6 + flops / (350e12 * 2048 / 2448))
    assert bwd.seconds == pytest.approx(2.5e-6 + 2.5 * flops / (327e12 * 2048 / 2628))
    cudnn = derive.setup(scenario.load(V30, ["model.attention_kernel=cudnn"]))
    core = next(k for k in derive.layer_kernels(cudnn, 0) if k.name == "flash attention")
    assert core.seconds == pytest.approx(2.5e-6 + flops / (562e12 * 2048 / 2438))
    # A100's table is flash-attn 2's already; B200 has its own (cudnn-frontend's benchmark, flash-attn 2.7.4):
    # 452 x s / (s + 1,020) forward, 397 x s / (s + 2,170) backward at free clock, 1,237 / 1,450 of that in the preset
    # (flashinfer#2899's sustained fraction, s15h)
    assert PRESETS["A100"].with_attention_kernel("flash-attn-2") is PRESETS["A100"]
    b200 = PRESETS["B200"].with_attention_kernel("flash-attn-2")
    assert b200.attention_rate(2048, False) == pytest.approx(452e12 * 1237 / 1450 * 2048 / 3068)
    assert b200.attention_rate(2048, True) == pytest.approx(397e12 * 1237 / 1450 * 2048 / 4218)
    # a table-less GPU refuses with one error naming the GPUs that have one
    with pytest.raises(ValueError, match="B200 and A100 only"):
        replace(PRESETS["B200"], name="X", attention_fa2=None).with_attention_kernel("flash-attn-2")


def test_flash_attn_1_rates_by_hand():
    # MLPerf v3.0 ran flash-attn 1.0.5 (TE release_v0.8): its scenario says so. GPT-3 at TP 4, 24 heads x 2,048^2 x 128,
    # causal half; forward and backward (2.5x the FLOPs) at flash-attn 1's H100 curve, 133 TFLOP/s x s / (s + 210),
    # each plus the 2.5 us kernel floor: 25.77 GFLOP in 0.2161 ms, 64.42 in 0.5366 ms
    sc = scenario.load(V30)
    assert sc.model.attention_kernel == "flash-attn-1"
    fa1 = derive.setup(sc)
    rows = {(k.name, k.component): k for k in derive.layer_kernels(fa1, 0)}
    flops = 4 * 2048**2 * 12288 / 4 / 2
    rate = 133e12 * 2048 / 2258
    assert rows[("flash attention", "attn_forward")].seconds == pytest.approx(2.5e-6 + flops / rate)
    assert rows[("flash attention backward", "attn_backward_input")].seconds == pytest.approx(2.5e-6 + 2.5 * flops / rate)
    assert rows[("flash attention", "attn_forward")].seconds == pytest.approx(0.2161e-3, rel=1e-3)
    # only the two attention kernels differ from flash-attn 2's layer
    fa2 = derive.setup(scenario.load(V30, ["model.attention_kernel=flash-attn-2"]))
    other = {(k.name, k.component): k.seconds for k in derive.layer_kernels(fa2, 0)}
    assert other.keys() == rows.keys()
    moved = {key for key in rows if rows[key].seconds != pytest.approx(other[key])}
    assert moved == {("flash attention", "attn_forward"), ("flash attention backward", "attn_backward_input")}


@pytest.mark.parametrize("overrides", [["hardware.preset=B200"], ["hardware.preset=A100", "model.fp8=false"]])
def test_flash_attn_1_without_a_table_is_refused(tmp_path, capsys, overrides):
    out = tmp_path / "out"
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["run", str(V30), *sets, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.attention_kernel" in err and "H100, H800, H200 only" in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_attention_kernel_names_the_key(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(V30), "--set", "model.attention_kernel=flash-attn-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "attention_kernel" in err and "flash-attn-1" in err and "Traceback" not in err
    assert not out.exists()
