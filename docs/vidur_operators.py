"""Per-operator timings of a Llama layer's forward on A100 and H100 (microsoft/vidur's profiles) beside the
model's kernels for the same layer: a check, nothing fitted (docs/validation.md, "Per-operator timings: Vidur's
Llama-2 layer profiles (s19b)").

    python docs/vidur_operators.py            # prints the tables
    python docs/vidur_operators.py --write    # and puts them in docs/validation.md

The measured side (tests/data/kernels/vidur_llama_layer_ops.csv, transcribed from microsoft/vidur @ 7d47513
``data/profiling/compute/{a100,h100}/meta-llama/Llama-2-{7b,70b}-hf/mlp.csv`` and, A100 only,
``data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv``): Vidur's profiler runs one
sarathi-serve Llama block (RMSNorm, the QKV linear, rotary embedding, the output linear, RMSNorm, the gate+up
linear, SiLU-and-mul, the down linear, the residual add) 20 times over on one GPU, FP16 weights, under
``torch.inference_mode``, at a tensor-parallel rank's shapes (TP t: the linears' split dimension over t, no
collective run) and num_tokens tokens; each operator's time is the sum of the CUDA kernels launched inside its
``record_function`` in a Kineto trace (``vidur/profiling/utils/record_function_tracer.py``): GPU time, no launch gaps.
Each (TP, tokens) is profiled twice in the file; the figure here is the mean of the two rows' means.  Attention's
own profile (``attention.csv``) is stored as a Git LFS object and was not reached.

The model's side: ``derive.layer_kernels`` of the same layer (``model_type = "llama"``, one layer, seq_length =
num_tokens, micro-batch 1, TP t without sequence parallelism or overlap), its forward rows by name.  The model
times BF16 GEMMs; FP16 runs on the same tensor cores at the same rate on both GPUs.  Vidur's loop is short (a few ms
of kernels after one warm-up pass), so on H100 the GEMMs are also shown at XLA's short-run sm_90 fit
(``rates.H100_SHORT_RUNS``, as benchmarks/te_layer_profiles.py does); A100 has one rate table (Azure's sustained).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim.inputs.scenario import sections_only  # noqa: E402
from dualpipe_sim.model import derive, rates  # noqa: E402

DATA = ROOT / "tests" / "data" / "kernels" / "vidur_llama_layer_ops.csv"
DOC = ROOT / "docs" / "validation.md"
BEGIN, END = "<!-- vidur operators: docs/vidur_operators.py -->", "<!-- end of vidur operators -->"

# The two models as Vidur's rows give them (n_head, n_kv_head, n_embd, n_expanded_embd columns)
MODELS = {
    "Llama-2-7b-hf": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
                      "intermediate_size": 11008},
    "Llama-2-70b-hf": {"hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
                       "intermediate_size": 28672},
    "Meta-Llama-3-8B": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "intermediate_size": 14336},
}  # fmt: skip
PRESET = {"a100": "A100", "h100": "H100"}
# Vidur's operator -> the model's forward kernel of the same work (the model's layer has two residual adds; Vidur
# times the second, after the MLP: the first, after attention, is outside every timer in its block)
OPS = {
    "input_layernorm": "input norm",
    "attn_pre_proj": "qkv",
    "attn_rope": "rope",
    "attn_post_proj": "out_proj",
    "post_attention_layernorm": "pre-mlp norm",
    "mlp_up_proj": "fc1",
    "mlp_act": "swiglu",
    "mlp_down_proj": "fc2",
    "add": "residual add",
}
GEMMS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MEMORY = tuple(op for op in OPS if op not in GEMMS)


def published() -> dict[tuple[str, str, int, int], dict[str, float]]:
    """(gpu, model, tp, tokens) -> operator -> ms: the mean of the file's two profiling rows' means."""
    runs: dict[tuple, dict[str, list[float]]] = {}
    with open(DATA, newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            key = (row["gpu"], row["model"], int(row["tp"]), int(row["tokens"]))
            runs.setdefault(key, {}).setdefault(row["op"], []).append(float(row["mean_ms"]))
    return {key: {op: sum(v) / len(v) for op, v in ops.items()} for key, ops in runs.items()}


def model_kernels(gpu: str, model: str, tp: int, tokens: int, short_run: bool = False) -> dict:
    """The model's forward kernels of the same layer (``kernels.Kernel`` rows) by Vidur's operator name.
    ``short_run``: H100's GEMMs at XLA's short-run fit."""
    saved = rates.PRESETS["H100"]
    if short_run:
        rates.PRESETS["H100"] = rates.H100_SHORT_RUNS
    try:
        st = derive.setup(sections_only({
            "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
            "model": {"model_type": "llama", "num_hidden_layers": 1, "vocab_size": 32000, "seq_length": tokens,
                      "micro_batch_size": 1, "attention": "flash", **MODELS[model]},
            "parallel": {"tensor": tp, "sequence_parallel": False, "tp_comm_overlap": False},
            "hardware": {"preset": PRESET[gpu]},
        }))  # fmt: skip
        kernels = [k for k in derive.layer_kernels(st, 0) if k.component.endswith("forward")]
    finally:
        rates.PRESETS["H100"] = saved
    by_name: dict = {}
    for k in kernels:
        by_name.setdefault(k.name, k)  # the first residual add (after attention) is the one Vidur does not time
    return {op: by_name[name] for op, name in OPS.items()}


def model_ops(gpu: str, model: str, tp: int, tokens: int, short_run: bool = False) -> dict[str, float]:
    """The model's forward kernels of the same layer, ms by Vidur's operator name."""
    return {op: k.ms for op, k in model_kernels(gpu, model, tp, tokens, short_run).items()}


def err(model: float, measured: float) -> str:
    return f"{(model / measured - 1) * 100:+.0f}%"


def tables() -> str:
    pub = published()
    lines = ["Per layer forward (ms): the four GEMMs and the five memory-bound kernels, measured (Vidur) against the "
             "model; error = model / measured - 1 (negative: the model is too fast).", "",
             "| GPU | model | TP | tokens | GEMMs measured | model | error | H100 short-run fit | error "
             "| memory-bound measured | model | error | layer (9 operators) error |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    per_op: dict[tuple[str, str], list[float]] = {}
    tbs: dict[tuple[str, str], list[float]] = {}
    for key in sorted(pub, key=lambda k: (k[0], list(MODELS).index(k[1]), k[2], k[3])):
        gpu, model, tp, tokens = key
        meas, rows = pub[key], model_kernels(*key)
        mod = {op: k.ms for op, k in rows.items()}
        for op in OPS:
            per_op.setdefault((gpu, op), []).append(mod[op] / meas[op] - 1)
            tbs.setdefault((gpu, op), []).append(rows[op].bytes / meas[op] / 1e9)  # the model's bytes, TB/s
        g_meas, g_mod = sum(meas[o] for o in GEMMS), sum(mod[o] for o in GEMMS)
        m_meas, m_mod = sum(meas[o] for o in MEMORY), sum(mod[o] for o in MEMORY)
        if gpu == "h100":
            short = model_ops(*key, short_run=True)
            g_short = sum(short[o] for o in GEMMS)
            short_cells = f"{g_short:.3f} | {err(g_short, g_meas)}"
        else:
            short_cells = "- | -"
        lines.append(f"| {PRESET[gpu]} | {model.removesuffix('-hf').removeprefix('Meta-')} | {tp} | {tokens:,} | {g_meas:.3f} | {g_mod:.3f} "
                     f"| {err(g_mod, g_meas)} | {short_cells} | {m_meas:.3f} | {m_mod:.3f} | {err(m_mod, m_meas)} "
                     f"| {err(g_mod + m_mod, g_meas + m_meas)} |")  # fmt: skip
    counts = {gpu: len(per_op[(gpu, "add")]) for gpu in ("a100", "h100")}
    lines += ["", f"By operator over the {counts['a100']} A100 rows and {counts['h100']} H100 rows (the models above x "
              "TP 1, 2, 4, 8 x 2,048 and 4,096 tokens): the model's error, median and range (the model's presets as the runs use them); for a memory-bound kernel, "
              "the bytes the model moves over the measured time (median TB/s; the model streams at "
              f"{rates.PRESETS['A100'].hbm / 1e12:.2f} TB/s on A100, {rates.PRESETS['H100'].hbm / 1e12:.2f} on H100).", "",
              "| operator (Vidur) | the model's kernel | kind | A100 median | A100 range | A100 TB/s "
              "| H100 median | H100 range | H100 TB/s |",
              "| --- | --- | --- | ---: | --- | ---: | ---: | --- | ---: |"]  # fmt: skip
    for op, name in OPS.items():
        cells = []
        for gpu in ("a100", "h100"):
            e = per_op[(gpu, op)]
            bw = f"{statistics.median(tbs[(gpu, op)]):.2f}" if op in MEMORY else "-"
            cells.append(f"{statistics.median(e) * 100:+.0f}% | {min(e) * 100:+.0f}% to {max(e) * 100:+.0f}% | {bw}")
        kind = "GEMM" if op in GEMMS else "memory-bound"
        lines.append(f"| {op} | {name} | {kind} | {' | '.join(cells)} |")
    return "\n".join(lines)


def write(text: str) -> None:
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    out = tables()
    print(out)
    if "--write" in sys.argv[1:]:
        write(out)
