"""docs/vidur_operators.py: microsoft/vidur's per-operator timings of a Llama layer's forward (A100, H100) beside
the model's kernels for the same layer (docs/validation.md, "Per-operator timings: Vidur's Llama layer profiles
(s19b)").  The transcription checked by its own arithmetic and the datasheets' peaks, the published side worked by
hand from the file's rows, the model's side recomputed from its formulas at shapes worked by hand, and the table in
validation.md held to the script's output."""

from __future__ import annotations

import csv
import runpy
from collections import Counter
from pathlib import Path

import pytest

from dualpipe_sim.model import gemm
from dualpipe_sim.model.rates import H100_SHORT_RUNS, PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "docs" / "vidur_operators.py"), run_name="doc_script_under_test")
DATA = ROOT / "tests" / "data" / "kernels" / "vidur_llama_layer_ops.csv"
# Datasheet dense FP16 tensor-core peaks (TFLOP/s): A100 SXM 312, H100 SXM 989.4 (the PCIe / NVL parts are lower)
PEAK = {"a100": 312e12, "h100": 989.4e12}
SHAPES = {"Llama-2-7b-hf": (4096, 32, 32, 11008), "Llama-2-70b-hf": (8192, 64, 8, 28672),
          "Meta-Llama-3-8B": (4096, 32, 8, 14336)}


def _rows() -> list[dict]:
    with open(DATA, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def gemm_shapes(model: str, tp: int, tokens: int) -> dict[str, tuple[int, int, int]]:
    """M x N x K of the four linears at a TP rank, worked from the config (head dim 128)."""
    h, heads, kv, ffn = SHAPES[model]
    return {
        "attn_pre_proj": (tokens, (heads + 2 * kv) * 128 // tp, h),
        "attn_post_proj": (tokens, h, h // tp),
        "mlp_up_proj": (tokens, 2 * ffn // tp, h),
        "mlp_down_proj": (tokens, h, ffn // tp),
    }


def test_the_transcription_is_whole_and_each_mean_lies_between_its_min_and_max():
    rows = _rows()
    # (2 Llama-2 models on 2 GPUs + Llama 3 8B on A100) x TP x tokens x runs x operators
    assert len(rows) == (2 * 2 + 1) * 4 * 2 * 2 * 9
    configs = Counter((r["gpu"], r["model"], r["tp"], r["tokens"], r["op"]) for r in rows)
    assert set(configs.values()) == {2}
    for r in rows:
        assert float(r["min_ms"]) <= float(r["mean_ms"]) <= float(r["max_ms"]), r


def test_every_transcribed_gemm_runs_below_its_gpus_datasheet_peak():
    # a dropped digit or a swapped row would put a GEMM above the tensor cores' peak (or far below it)
    for r in _rows():
        if r["op"] not in SCRIPT["GEMMS"]:
            continue
        m, n, k = gemm_shapes(r["model"], int(r["tp"]), int(r["tokens"]))[r["op"]]
        rate = 2.0 * m * n * k / (float(r["min_ms"]) * 1e-3)
        assert 0.3 * PEAK[r["gpu"]] < rate < PEAK[r["gpu"]], r


def test_the_published_figure_is_the_mean_of_the_files_two_rows():
    pub = SCRIPT["published"]()
    # H100, Llama-2-7b, TP 1, 4,096 tokens: attn_pre_proj's two means 0.58455 and 0.5952 ms (the file's first two
    # rows); the QKV GEMM 4096 x 12288 x 4096 at their mean runs at 2 x 4096 x 12288 x 4096 / 0.589875 ms = 699 TFLOP/s
    qkv = pub[("h100", "Llama-2-7b-hf", 1, 4096)]["attn_pre_proj"]
    assert qkv == pytest.approx((0.58455 + 0.5952) / 2)
    assert 2 * 4096 * 12288 * 4096 / (qkv * 1e-3) == pytest.approx(698.9e12, rel=1e-3)
    assert len(pub) == 40 and all(len(ops) == 9 for ops in pub.values())
    assert {k[1] for k in pub if k[0] == "h100"} == {"Llama-2-7b-hf", "Llama-2-70b-hf"}


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_the_models_gemms_are_its_gemm_time_at_the_shapes_worked_by_hand(gpu):
    # Llama-2-70b at TP 8, 4,096 tokens: qkv 4096 x (64 + 16) x 128 / 8 = 1,280 x 8,192, out_proj 4096 x 8192 x 1024,
    # gate+up 4096 x 7,168 x 8,192, down 4096 x 8,192 x 3,584; BF16, whole GEMMs on every SM
    r = PRESETS[SCRIPT["PRESET"][gpu]]
    mod = SCRIPT["model_ops"](gpu, "Llama-2-70b-hf", 8, 4096)
    for op, (m, n, k) in gemm_shapes("Llama-2-70b-hf", 8, 4096).items():
        assert mod[op] == pytest.approx(gemm.time(m, n, k, r.gemm_bf16, r.sms, r.hbm, 2.0).seconds * 1e3), op


def test_h100s_short_run_column_is_xlas_short_run_fit_and_leaves_the_preset_alone():
    before = PRESETS["H100"]
    short = SCRIPT["model_ops"]("h100", "Llama-2-7b-hf", 2, 2048, short_run=True)
    assert PRESETS["H100"] is before
    m, n, k = gemm_shapes("Llama-2-7b-hf", 2, 2048)["mlp_up_proj"]
    r = H100_SHORT_RUNS
    assert short["mlp_up_proj"] == pytest.approx(gemm.time(m, n, k, r.gemm_bf16, r.sms, r.hbm, 2.0).seconds * 1e3)
    assert short["mlp_up_proj"] < SCRIPT["model_ops"]("h100", "Llama-2-7b-hf", 2, 2048)["mlp_up_proj"]


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_the_models_memory_bound_kernels_stream_the_bytes_worked_by_hand(gpu):
    # Llama-2-7b, TP 4, 4,096 tokens, 2-byte values; every token on the rank (no sequence parallelism):
    # each RMSNorm reads and writes 4096 x 4096; RoPE reads and writes q and k (8 heads of 128 each);
    # SwiGLU reads 4096 x 2 x 2,752 and writes 4096 x 2,752; the residual add reads two 4096 x 4096 and writes one
    r = PRESETS[SCRIPT["PRESET"][gpu]]
    t, h = 4096, 4096
    nbytes = {
        "input_layernorm": 2 * t * h * 2,
        "post_attention_layernorm": 2 * t * h * 2,
        "attn_rope": 2 * t * 2 * 1024 * 2,
        "mlp_act": 3 * t * 2752 * 2,
        "add": 3 * t * h * 2,
    }
    mod = SCRIPT["model_ops"](gpu, "Llama-2-7b-hf", 4, 4096)
    for op, b in nbytes.items():
        assert mod[op] == pytest.approx((r.floor + b / r.hbm) * 1e3), op


def test_validation_md_holds_the_scripts_tables():
    doc = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
    begin, end = SCRIPT["BEGIN"], SCRIPT["END"]
    block = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert block == "\n" + SCRIPT["tables"]() + "\n"


def test_the_findings_the_section_reads_hold_on_every_row():
    # validation.md's bullets: the GEMMs per layer within -12% .. +7% at the presets, the memory-bound kernels
    # 28-45% faster in the model on every row
    pub = SCRIPT["published"]()
    for key, meas in pub.items():
        mod = SCRIPT["model_ops"](*key)
        g = sum(mod[o] for o in SCRIPT["GEMMS"]) / sum(meas[o] for o in SCRIPT["GEMMS"]) - 1
        m = sum(mod[o] for o in SCRIPT["MEMORY"]) / sum(meas[o] for o in SCRIPT["MEMORY"]) - 1
        assert -0.13 < g < 0.08, key
        assert -0.46 < m < -0.27, key
