"""The model's transformer layer and GEMMs beside Transformer Engine's own published timings on Hopper.

    python benchmarks/te_layer_profiles.py

Three sources, each a timing of one layer's kernels in isolation (not a training run's tokens/s); their
figures are in tests/data/kernels/ with what each times:

1. TE's getting-started benchmark (``te_getting_started_h100.csv``): one GPT layer (hidden 4096, 32 heads,
   FFN 16384 GeLU, 16,384 tokens) forward + backward on "an NVIDIA H100 GPU", TE 2.x (Jan 2026), BF16
   and FP8.  The model's figure is the layer's kernel table (``derive.layer_kernels``, TP 1, H100
   preset, cuDNN attention, no FP8 weight cache: TE casts the weights in every forward here) plus what
   the benchmark loop itself runs around the layer (``harness_ms``).
2. TE's GEMM profiling guide (``te_gemm_profiling_h200nvl.csv``): the 12 GEMMs of one layer (hidden
   4096, intermediate 16384, 15,872 tokens) timed one by one on an H200 NVL, BF16 and pre-quantised
   FP8.  The model's figure is gemm.time of the same shapes at the H200 preset's rates (an H200 SXM:
   the NVL card is capped at 600 W, so its clocks under load are not the preset's).
3. nvFuser's Transformer Engine baseline (``fuser_te_gpt3_layer_h100.csv``): GPT-3's layer (hidden 12288,
   batch 1 x 2048 tokens, BF16) as te.TransformerLayer over 8 H100 SXM, tensor parallel with and without
   sequence parallelism, no overlap: the wall time of one forward or one backward call, and one
   forward's GEMM kernels from an nsys summary.  The model's figure is the same layer's kernel table
   (TP 8, ``parallel.tp_comm_overlap = false``; dropout, which TE's defaults keep at 0.1, not listed).

Prints each published figure beside the model's, by category; docs/validation.md ("One transformer
layer on Hopper") reads them.  Nothing here is fitted.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualpipe_sim.inputs.scenario import sections_only  # noqa: E402
from dualpipe_sim.model import derive, gemm  # noqa: E402
from dualpipe_sim.model.rates import H100_SHORT_RUNS, PRESETS  # noqa: E402

# The sources here time a few iterations: the model with XLA's short-run BF16 GEMM fit, like for like (the H100
# preset's BF16 peak is a sustained one; docs/model.md, the BF16 row; the tests do the same)
PRESETS["H100"] = H100_SHORT_RUNS

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "kernels"

# The getting-started layer (getting_started_pytorch.py @ a976740)
HIDDEN, HEADS, FFN, SEQ, BATCH = 4096, 32, 16384, 2048, 8
# Its parameters: the four linears' weights and biases, two LayerNorms' weight and bias
WEIGHTS = HIDDEN * 3 * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * FFN
PARAMS = WEIGHTS + 3 * HIDDEN + HIDDEN + FFN + HIDDEN + 4 * HIDDEN
PARAM_TENSORS = 4 + 4 + 4  # weights, biases, norm weights and biases


def rows(name: str) -> list[dict]:
    with open(DATA / name, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def layer_setup(fp8: bool):
    """The model's setup for the getting-started layer on one H100 (TP 1, no pipeline)."""
    return derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "gpt2", "n_embd": HIDDEN, "n_layer": 1, "n_head": HEADS, "n_inner": FFN,
                  "vocab_size": 50304, "n_positions": SEQ, "seq_length": SEQ, "micro_batch_size": BATCH,
                  "fp8": fp8, "attention": "flash"},
        "parallel": {"tensor": 1},
        "memory": {"fp8_weight_cache": False} if fp8 else {},  # FP8 weight copies only (BF16: refused)
        "hardware": {"preset": "H100"},
    }))  # fmt: skip


def layer_ms(fp8: bool) -> dict[str, float]:
    """The model's layer (forward + both backward passes), ms by kernel kind."""
    by_kind: dict[str, float] = {}
    for k in derive.layer_kernels(layer_setup(fp8), 0):
        by_kind[k.kind] = by_kind.get(k.kind, 0.0) + k.ms
    return by_kind


def memory_ms(nbytes: float, launches: int = 1) -> float:
    """A streaming kernel on the H100 preset, as the model times one (kernels.Table.memory)."""
    r = PRESETS["H100"]
    return (launches * r.floor + nbytes / r.hbm) * 1e3


def harness_ms(framework: str, dropout: float) -> dict[str, float]:
    """What the benchmark loop runs besides the layer's training kernels (ms per iteration):
    ``y.sum()`` (a read of the output) and its backward (the output gradient written out);
    in PyTorch, autograd adding each gradient into ``.grad`` (never zeroed: read 2 + 2, write 2 bytes
    a parameter); with dropout, PyTorch's two hidden dropouts (forward read 2, write 2 + a 1-byte mask;
    backward read 2 + 1, write 2).  cuDNN's attention dropout is not costed (no rate for it)."""
    act = SEQ * BATCH * HIDDEN * 2
    out = {"loss sum": memory_ms(act) * 2}
    if framework == "pytorch":
        out["grad accumulation"] = memory_ms(PARAMS * 6, PARAM_TENSORS)
    if dropout and framework == "pytorch":
        out["hidden dropouts"] = 2 * (memory_ms(act * 2.5) + memory_ms(act * 2.5))
    return out


GEMM_SHAPES = {  # gemm_profiling.rst's M x K x N per pass (M = 31 x 512 tokens)
    "fprop": [(15872, 4096, 12288), (15872, 4096, 4096), (15872, 4096, 16384), (15872, 16384, 4096)],
    "dgrad": [(15872, 12288, 4096), (15872, 4096, 4096), (15872, 16384, 4096), (15872, 4096, 16384)],
    "wgrad": [(4096, 15872, 12288), (4096, 15872, 4096), (4096, 15872, 16384), (16384, 15872, 4096)],
}


def gemm_pass_ms(precision: str, shapes) -> float:
    """The model's time for the listed GEMMs (M x K x N) on the H200 preset, ms."""
    r = PRESETS["H200"]
    fp8 = precision != "bf16"
    rates = r.gemm_fp8 if fp8 else r.gemm_bf16
    return sum(gemm.time(m, n, k, rates, r.sms, r.hbm, 1.0 if fp8 else 2.0).seconds for m, k, n in shapes) * 1e3


def gpt3_tp8_passes(sequence_parallel: bool) -> dict[str, float]:
    """The model's GPT-3 layer on 8 H100s, TP 8 without overlap (ms): forward, backward (I + W) and
    the forward's GEMMs."""
    st = derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "gpt2", "n_embd": 12288, "n_layer": 1, "n_head": 96, "vocab_size": 50304,
                  "n_positions": 2048, "seq_length": 2048, "micro_batch_size": 1, "attention": "flash"},
        "parallel": {"tensor": 8, "sequence_parallel": sequence_parallel, "tp_comm_overlap": False},
        "hardware": {"preset": "H100"},
    }))  # fmt: skip
    rows = derive.layer_kernels(st, 0)
    forward = [k for k in rows if k.component.endswith("forward")]
    return {"forward": sum(k.ms for k in forward), "backward": sum(k.ms for k in rows) - sum(k.ms for k in forward),
            "forward gemms": sum(k.ms for k in forward if k.kind == "gemm")}  # fmt: skip


def main() -> None:
    print("1. TE getting-started layer, one H100 (published: NVIDIA/TransformerEngine docs/getting_started @ a976740)")
    print(f"   {'framework':8s} {'implementation':34s} {'published':>9s} {'model':>7s} {'error':>7s}   model's parts (ms)")
    for row in rows("te_getting_started_h100.csv"):
        if row["attention"] != "te":
            continue
        fp8 = row["precision"] == "fp8"
        parts = {k: v for k, v in layer_ms(fp8).items()}
        parts.update(harness_ms(row["framework"], float(row["dropout"])))
        total, published = sum(parts.values()), float(row["ms"])
        detail = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        print(f"   {row['framework']:8s} {row['implementation']:34s} {published:9.2f} {total:7.2f} "
              f"{(total / published - 1) * 100:+6.1f}%   {detail}")  # fmt: skip
    print()
    print("2. TE GEMM profiling guide, one layer's 12 GEMMs on an H200 NVL (600 W); model: H200 preset (SXM rates)")
    print(f"   {'mode':12s} {'precision':12s} {'pass':6s} {'published':>9s} {'model':>7s} {'error':>7s} {'TFLOP/s pub.':>12s}")
    for row in rows("te_gemm_profiling_h200nvl.csv"):
        precision = row["precision"]
        if precision not in ("bf16", "fp8_current") or (precision == "fp8_current" and row["mode"] != "prequantized"):
            continue
        for pas, shapes in GEMM_SHAPES.items():
            published = float(row[pas])
            model = gemm_pass_ms(precision, shapes)
            flops = sum(2.0 * m * k * n for m, k, n in shapes)
            print(f"   {row['mode']:12s} {precision:12s} {pas:6s} {published:9.3f} {model:7.3f} "
                  f"{(model / published - 1) * 100:+6.1f}% {flops / published / 1e9:12.0f}")  # fmt: skip
    print()
    print("3. nvFuser's TE baseline: GPT-3 layer (BF16) over 8 H100 SXM, TP 8, no overlap; model: H100 preset")
    print(f"   {'source':18s} {'parallel':8s} {'pass':8s} {'stat':6s} {'published':>9s} {'model':>7s} {'error':>7s}")
    data = rows("fuser_te_gpt3_layer_h100.csv")
    for row in data:
        if row["kind"] != "layer":
            continue
        model = gpt3_tp8_passes(row["parallel"] == "sp")[row["pass"]]
        published = float(row["value"])
        print(f"   {row['source']:18s} {row['parallel']:8s} {row['pass']:8s} {row['stat']:6s} {published:9.3f} "
              f"{model:7.3f} {(model / published - 1) * 100:+6.1f}%")  # fmt: skip
    gemms = sum(float(r["value"]) for r in data if r["kind"] == "gemm") / 1e6
    model = gpt3_tp8_passes(False)["forward gemms"]
    print(f"   {'NVIDIA/Fuser#4844':18s} {'tp':8s} {'forward':8s} {'GEMMs':6s} {gemms:9.3f} {model:7.3f} "
          f"{(model / gemms - 1) * 100:+6.1f}%   (nsys: the 4 GEMM kernels of one forward)")  # fmt: skip


if __name__ == "__main__":
    main()
