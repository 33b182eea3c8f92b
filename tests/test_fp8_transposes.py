"""FP8 casts and transposes as Transformer Engine writes them, on Hopper and on Blackwell (model.fp8_transpose;
docs/model.md, "FP8 transposes"), worked by hand.

What TE runs (read at release_v2.8 @ 40c69e7 and release_v0.8 / v1.6 / release_v1.14):
* Hopper's FP8 GEMMs take the TN layout only, so a wgrad / dgrad GEMM reads a transposed FP8 copy. A cast whose
  quantizer asks for column-wise data writes it in the same kernel (cast_transpose: read 2 B, write 1 + 1 B). With
  current scaling and no sequence-parallel gather, LayerNormLinear / LayerNormMLP ask for it at the norm output's
  cast (set_usage(rowwise=True, columnwise=backward_needs_input)), so the qkv and fc1 input casts write 4 bytes an
  element and no separate transpose runs. LayerNormMLP's fc2 input is cast row-wise only (its quantizer's usage is
  columnwise only for MXFP8 / block / NVFP4) and transposed in the backward (update_usage -> fp8_transpose).
* From TE v2.0 (casts) / v2.4 (update_usage) on Blackwell (nvte_is_non_tn_fp8_gemm_supported, sm_100) no transpose
  is made at all: every cast writes 1 byte an element, no transpose rows, no transposed weight copy.

Preset figures the hand work uses (checked in the first test): H200 4.00 TB/s, B200 6.858 TB/s, every kernel at least
2.5 us on H200, 2.04 us on B200 (NVIDIA/cccl#7391's B200 table, docs/model.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, fp8_step_casts, memory
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
H200_8B = VAL / "mlperf51-llama8b-64h200.toml"  # Llama 3.1 8B, current scaling, TP 1, CP 2, mb 1 x 8192: n = 4,096
B200_8B = VAL / "mlperf51-llama8b-16b200.toml"  # the same layer, CP 1, mb 2 x 8192: n = 16,384
B200_405B = VAL / "mlperf51-llama405b-256b200.toml"  # current scaling, TP 4 with SP, CP 2
B200_GPT3 = VAL / "mlperf41-gpt3-64b200.toml"  # delayed scaling, GeLU, TP 4 with SP; TE 1.x: fp8_transpose = "kept"
FLOOR, B200_FLOOR = 2.5e-6, 2.04e-6
B200_HBM = 6.858e12
# Llama 3.1 8B: h = 4,096, qkv out 6,144, f = 14,336 (SwiGLU up 28,672); its linear weights per layer
H, QKV, F, UP = 4096, 6144, 14336, 28672
LINEAR_PER_LAYER = H * QKV + H * H + H * UP + F * H  # 218,103,808


def test_preset_figures_the_hand_work_uses():
    assert (PRESETS["H200"].hbm, PRESETS["B200"].hbm) == (4.00e12, B200_HBM)
    assert (PRESETS["H200"].floor, PRESETS["B200"].floor) == (FLOOR, B200_FLOOR)
    assert LINEAR_PER_LAYER == 218_103_808


def _layer(path, overrides=()):
    st = derive.setup(scenario.load(path, list(overrides)))
    return st, derive.layer_kernels(st, 0)


def _casts(rows):
    """The FP8 cast and transpose rows (not the amax passes, not the weight refresh)."""
    return [k for k in rows if k.kind == "memory" and (k.name.endswith("cast") or "transpose" in k.name)]


def _launches(k) -> int:
    return int(k.shape.split("(")[1].split()[0]) if "kernels)" in k.shape else 1


def test_hopper_layer_casts_by_hand():
    # Bytes per token of each cast / transpose of one Llama 3.1 8B layer on H200, current scaling, TP 1:
    #   qkv input cast (norm output, columnwise asked: cast_transpose)  h x (2 + 1 + 1)      16,384  3 kernels
    #   out_proj input cast (cast_transpose)                           h x 4                16,384  1
    #   out_proj output-gradient cast (no SP: cast_transpose)          h x 4                16,384  1
    #   qkv gradient cast                                              6,144 x 4            24,576  1
    #   fc1 input cast (as qkv's)                                      h x 4                16,384  3
    #   fc2 input cast (row-wise only)                                 f x (2 + 1)          43,008  3
    #   fc2 output-gradient cast                                       h x 4                16,384  1
    #   fc2 input transpose (wgrad), from the FP8 activation           f x (1 + 1)          28,672  1
    #   fc1 gradient cast                                              28,672 x 4          114,688  1
    #                                                                                      292,864  15 kernels
    # Before (the norm outputs' casts row-wise, each FP8 output transposed apart): qkv and fc1 input casts 3 bytes,
    # plus "qkv input transpose (wgrad)" and "fc1 input transpose (wgrad)" of 2 bytes and one kernel each:
    # 292,864 - 2 x 4,096 + 2 x 8,192 = 301,056 bytes and 17 kernels: one byte an element and one floor too many.
    n = 4096
    st, rows = _layer(H200_8B)
    assert st.fp8_transpose and st.tokens == n
    casts = _casts(rows)
    by = {(k.name, k.component): k for k in casts}
    assert by[("qkv input cast", "attn_forward")].bytes == n * H * 4
    assert by[("fc1 input cast", "mlp_forward")].bytes == n * H * 4
    assert by[("fc2 input cast", "mlp_forward")].bytes == n * F * 3
    assert by[("fc2 input transpose (wgrad)", "mlp_backward_weight")].bytes == n * F * 2
    assert not [k for k in casts if k.name in ("qkv input transpose (wgrad)", "fc1 input transpose (wgrad)")]
    assert len(casts) == 9
    assert sum(k.bytes for k in casts) == 292_864 * n
    assert sum(_launches(k) for k in casts) == 15
    assert sum(k.seconds for k in casts) == pytest.approx(15 * FLOOR + 292_864 * n / 4.00e12)
    assert 292_864 - 2 * H + 2 * 2 * H == 301_056  # the before figure above, by its parts


def test_hopper_sequence_parallel_keeps_the_transpose_after_the_gather():
    # TP 4 with SP (the 405B row's layout, transposes kept as on Hopper): the norm output is cast row-wise on the
    # rank's 1,024 tokens (8,192 / CP 2 / TP 4), gathered in FP8, and transposed in the backward over the gathered
    # 4,096 tokens x 16,384 (update_usage(columnwise_usage=True) -> fp8_transpose): 3 and 2 bytes an element
    _, rows = _layer(B200_405B, ["model.fp8_transpose=kept"])
    by = {(k.name, k.component): k for k in rows}
    assert by[("qkv input cast", "attn_forward")].bytes == 1024 * 16384 * 3
    assert by[("qkv input transpose (wgrad)", "attn_backward_weight")].bytes == 4096 * 16384 * 2
    assert by[("fc1 input transpose (wgrad)", "mlp_backward_weight")].bytes == 4096 * 16384 * 2


def test_blackwell_layer_casts_by_hand():
    # The same 8B layer on B200 (TE release_v2.8: no transposes): every cast writes 1 byte, no transpose row.
    #   3 bytes x (h x 5 casts + 6,144 + 14,336 + 28,672) = 3 x 69,632 = 208,896 bytes a token, 14 kernels
    # (the 15 above without the fc2 input transpose). Against the Hopper rules on the same GPU
    # (model.fp8_transpose = "kept"): 292,864 - 208,896 = 83,968 bytes a token fewer, one kernel fewer.
    n = 16384
    st, rows = _layer(B200_8B)
    assert not st.fp8_transpose and st.tokens == n
    casts = _casts(rows)
    assert not [k for k in casts if "transpose" in k.name]
    assert len(casts) == 8
    assert sum(k.bytes for k in casts) == 3 * (5 * H + QKV + F + UP) * n == 208_896 * n
    assert sum(_launches(k) for k in casts) == 14
    assert sum(k.seconds for k in casts) == pytest.approx(14 * B200_FLOOR + 208_896 * n / B200_HBM)
    _, kept = _layer(B200_8B, ["model.fp8_transpose=kept"])
    kept_casts = _casts(kept)
    assert sum(k.bytes for k in kept_casts) == 292_864 * n
    assert sum(_launches(k) for k in kept_casts) == 15


def test_blackwell_delayed_gelu_layer():
    # GPT-3 on B200 with delayed scaling (v4.1's row, whose TE 1.x transposes: "kept"). With TE 2.x's rule
    # ("derived" on a B200): the fused dgelu + cast writes the gradient alone, 4,096 tokens x 12,288 (4h / TP 4)
    # x (2 + 2 + 1) bytes instead of (2 + 2 + 2), and the five wgrad transpose rows go (the gathered qkv and fc1
    # inputs, the GeLU output, the two gathered output gradients)
    n, up = 2048 * 2, 4 * 12288 // 4
    _, kept = _layer(B200_GPT3)
    _, none = _layer(B200_GPT3, ["model.fp8_transpose=derived"])
    k = {x.name: x for x in kept}
    x = {r.name: r for r in none}
    assert k["dgelu + grad cast (fused)"].bytes == n * up * 6
    assert x["dgelu + grad cast (fused)"].bytes == n * up * 5
    gone = sorted(r.name for r in kept if "transpose" in r.name)
    assert gone == ["fc1 input transpose (wgrad)", "fc2 input transpose (wgrad)", "grad transpose (wgrad)",
                    "grad transpose (wgrad)", "qkv input transpose (wgrad)"]  # fmt: skip
    assert not [r for r in none if "transpose" in r.name]


def test_fp8_weight_copies():
    # bytes per FP8-linear weight element kept beside the parameter: copy + transpose
    def copy(params, transpose):
        return memory.fp8_copy_bytes(memory.Sharding(fp8=True, fp8_params=params, fp8_transpose=transpose))

    assert (copy(False, True), copy(True, True), copy(False, False), copy(True, False)) == (2.0, 1.0, 1.0, 0.0)
    # the B200 8B row (FP8 parameters, no transposes) keeps none; the H200 row its transposes, 1 byte each
    for path, per in ((B200_8B, 0.0), (H200_8B, 1.0)):
        st = derive.setup(scenario.load(path))
        static, _ = derive.stage_memory(st, st.stages[0])
        assert static.fp8_weights == pytest.approx(per * 32 * LINEAR_PER_LAYER)


def test_fp8_weight_refresh_by_hand():
    # once per step, 32 layers x 218,103,808 linear weight elements: with FP8 parameters on Hopper only the
    # transpose is made from the FP8 weight (read 1, write 1): 6.98e9 x 2 / 4.00 TB/s = 3.490 ms; on B200 nothing;
    # B200 with 16-bit weights: read 2, write 1 (no transpose): 6.98e9 x 3 / 6.858 TB/s = 3.053 ms
    elements = 32 * LINEAR_PER_LAYER
    for path, extra, ms in ((H200_8B, [], elements * 2 / 4.00e12 * 1e3),
                            (B200_8B, [], 0.0),
                            (B200_8B, ["model.fp8_params=false"], elements * 3 / B200_HBM * 1e3),
                            (B200_8B, ["model.fp8_params=false", "model.fp8_transpose=kept"],
                             elements * 4 / B200_HBM * 1e3)):  # fmt: skip
        st = derive.setup(scenario.load(path, extra))
        assert fp8_step_casts.fp8_weight_cast_ms(st, st.stages[0]) == pytest.approx(ms, rel=1e-12)
    assert elements * 2 / 4.00e12 * 1e3 == pytest.approx(3.490, abs=1e-3)
    assert elements * 3 / B200_HBM * 1e3 == pytest.approx(3.053, abs=1e-3)


def test_derived_default_by_gpu():
    assert derive.setup(scenario.load(H200_8B)).fp8_transpose
    assert not derive.setup(scenario.load(B200_8B)).fp8_transpose
    assert derive.setup(scenario.load(B200_8B, ["hardware.preset=H100"])).fp8_transpose
    assert derive.setup(scenario.load(B200_GPT3)).fp8_transpose  # set "kept": TE 1.x


def test_explain_says_which(capsys):
    assert main(["model", str(B200_8B), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "no FP8 transposes" in out and "transpose (wgrad)" not in out
    assert main(["model", str(H200_8B), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "FP8 transposes kept" in out and "fc2 input transpose (wgrad)" in out
    assert "qkv input transpose" not in out and "fc1 input transpose" not in out


@pytest.mark.parametrize("value, words", [("none", "TN layout only"), ("yes", "kept")])
def test_bad_value_names_the_key(tmp_path, capsys, value, words):
    out = tmp_path / "out"
    assert main(["run", str(H200_8B), "--set", f"model.fp8_transpose={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.fp8_transpose" in err and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
