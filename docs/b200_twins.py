"""The B200 rows against their Hopper twins, component by component (docs/searches.md, "B200 against its Hopper
twins, by component (s18l)"), and every Blackwell row's step by pass against what its logs leave beyond the forward
("The B200 rows beyond the forward: where the miss is (s21a)"): analyses of the model's own figures, not part of the
model.  No constant is chosen from them.

    python docs/b200_twins.py             # the twins by component
    python docs/b200_twins.py --passes    # the rows by pass, beyond the forward

A twin is a Hopper row of the same code and layout as a B200 row.  Per pair: the measured and the predicted
B200 / Hopper tokens/s per GPU, and the extra gap f = predicted ratio / measured ratio (how much longer the B200
step would have to be, the Hopper prediction held).  Each predicted step is split on the rank that ends it:

* its pipeline work (the kernels of every chunk it holds, x the micro-batches) by kind: GEMMs by dtype, flash
  attention, memory-bound kernels (streaming and floor-bound), exposed tensor-parallel collectives (and TP's
  other exposed collectives), exposed context-parallel exchanges; GEMMs slowed beside NCCL stay GEMMs;
* idle in the pipeline (bubbles and waits on P2P hand-offs): its pipeline span minus its busy time;
* the step's end: data-parallel beyond the pipeline (the exposed grad sync and the compute it stretched: the
  optimizer's start minus the pipeline's end), then the optimizer's figure (Adam, casts, zero-fill, norm, the
  parameter all-gather's wait and the forward it slows).

Per component: its share of the B200 step; its model B200 / Hopper speed ratio (Hopper's time per token per GPU
over B200's); the datasheets' ratio for the rate it runs at; and the speed ratio it would need if it alone
absorbed the extra gap: t_B -> t_B + (f - 1) T_B, so ratio x t_B / (t_B + (f - 1) T_B).
"""

from __future__ import annotations

import csv
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "docs")]  # the package, and make_validation's evaluation figures beside this file

import make_validation  # noqa: E402

from dualpipe_sim import simulation  # noqa: E402
from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.model import derive, rates  # noqa: E402
from dualpipe_sim.schedules.components import Component, Kind  # noqa: E402

# (B200 row, its Hopper twin, measured tokens/s per GPU of each: docs/validation.md's B200 and Hopper tables)
PAIRS = (
    ("mlperf41-gpt3-64b200", "mlperf41-gpt3-256", 1808.7, 891.5),
    ("mlperf51-llama405b-256b200", "mlperf50-llama405b-512h200", 666.3, 368.5),
    ("mlperf51-llama8b-64b200", "mlperf51-llama8b-64h200", 21626.2, 11600.1),
)
KERNEL_KINDS = ("GEMM FP8", "GEMM BF16", "attention", "memory-bound", "TP collectives", "CP exchange", "host")
STEP_PARTS = ("bubble + PP P2P", "DP beyond the pipeline", "optimizer + param gather")  # a rank's step beyond its kernels
COMPONENTS = KERNEL_KINDS + STEP_PARTS
PASSES = {Kind.F: "forward", Kind.I: "input gradient", Kind.W: "weight gradient"}
# the s21a table's rows: every Blackwell row with a timed evaluation, and the Hopper twins (the GPT-3, 405B and 8B pairs'
# and NVIDIA's v5.0 H100 405B row, the GB200 405B rows' round)
BEYOND_FORWARD = (
    "mlperf41-gpt3-64b200", "mlperf41-gpt3-256", "mlperf51-llama405b-256b200", "mlperf51-llama405b-448b200",
    "mlperf50-llama405b-512h200", "mlperf50-llama405b-512", "mlperf50-llama405b-256gb200", "mlperf50-llama405b-512gb200",
    "mlperf51-llama8b-8b200", "mlperf51-llama8b-16b200", "mlperf51-llama8b-32b200", "mlperf51-llama8b-64b200",
    "mlperf51-llama8b-64b200-verda", "mlperf51-llama8b-128b200", "mlperf51-llama8b-256b200", "mlperf51-llama8b-64h200",
    "mlperf51-llama8b-72gb200", "mlperf51-llama8b-72gb300", "mlperf51-llama8b-8gb300-nvfp4",
    "mlperf51-llama405b-512gb300-nvfp4", "mlperf51-llama405b-2560gb200-nvfp4", "mlperf51-llama405b-5120gb200-nvfp4")
# Datasheet B200 / Hopper ratio of the rate each component runs at (hardware.py's peaks: dense FP8 4,500 / 1,978.9,
# BF16 2,250 / 989.4 (attention is BF16 tensor-core work); HBM 8 TB/s / 3.35 (H100) or 4.8 (H200); NVLink 5 / 4
# 900 / 450 GB/s a direction; the NIC 400 Gb/s both).  None: no one rate (a mix, or idle time).
DATASHEET = {"GEMM FP8": 4500 / 1978.9, "GEMM BF16": 2250 / 989.4, "attention": 2250 / 989.4,
             "TP collectives": 900 / 450, "CP exchange": 900 / 450}  # fmt: skip
KERNELS = ("GEMM FP8", "GEMM BF16", "attention", "memory-bound")  # what the GPU's own rates time
HBM_TBS = {"H100": 3.35, "H200": 4.8, "B200": 8.0}


def kind(k) -> str:
    """The component of one kernel row."""
    if k.kind == "gemm":
        return "GEMM FP8" if "fp8" in k.shape else "GEMM BF16"
    if k.kind == "attention":
        return "attention"
    if k.kind == "comm":
        return "CP exchange" if k.name.startswith("context-parallel") else "TP collectives"
    if k.kind == "memory":
        return "memory-bound"
    if k.kind == "host":
        return "host"
    raise ValueError(f"unclassified kernel {k.name!r} ({k.kind})")


def pass_of(k) -> str:
    """The pass of one kernel row: its [chunk] component's (schedules/components.py, `Component.grad`)."""
    return PASSES[Component[k.component].grad]


def stage_components(st, stage, classify=kind) -> dict[str, float]:
    """ms per component (or whatever ``classify`` names a kernel row by) of one chunk and one micro-batch (forward
    and backward)."""
    rows = [k for i in stage.layers for k in derive.layer_kernels(st, i)]
    rows += derive.extra_kernels(st, stage) + derive.chunk_kernels(st, stage)
    out: dict[str, float] = {}
    for k in rows:
        out[classify(k)] = out.get(classify(k), 0.0) + k.ms
    return out


def split(name: str, classify=kind, kinds=KERNEL_KINDS) -> tuple[dict[str, float], float, float]:
    """(ms per component averaged over the ranks, the step in ms, tokens per GPU a step).  Per rank the parts add up
    to the step: its busy kernels (by ``classify``, one of ``kinds``), its idle time (bubbles, P2P waits, and the wait
    for the last rank's end), data-parallel beyond its pipeline, its optimizer."""
    sc = scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml")
    d = sc.derived()
    res = simulation.run(sc)
    m = res.metrics.to_dict()
    step, mb = m["step"], m["microbatches"]
    chunks = [stage_components(d.setup, s, classify) for s in d.setup.stages]
    out = dict.fromkeys(tuple(kinds) + STEP_PARTS, 0.0)
    ranks = step["per_rank"]
    for r in ranks:
        held = res.trace.stages_on_rank[r["rank"]]
        busy = 0.0
        for s in held:
            for c, ms in chunks[s].items():
                out[c] += ms * mb / len(ranks)
                busy += ms * mb
        stage_sum = sum((d.stages[s].forward + d.stages[s].backward) * mb for s in held)
        assert abs(busy - stage_sum) < 1e-6 * stage_sum, (name, busy, stage_sum)  # every kernel classified once
        out["bubble + PP P2P"] += (r["pipeline_end"] - busy + step["total"] - r["end"]) / len(ranks)
        out["DP beyond the pipeline"] += (r["optimizer_start"] - r["pipeline_end"]) / len(ranks)
        out["optimizer + param gather"] += r["optimizer"] / len(ranks)
    assert abs(sum(out.values()) - step["total"]) < 1e-6 * step["total"], (name, sum(out.values()), step["total"])
    tp = m["throughput"]
    return out, step["total"], tp["tokens_per_step"] / tp["gpus"]


def hbm_ratio(hopper: str) -> float:
    return HBM_TBS["B200"] / HBM_TBS["H200" if "h200" in hopper else "H100"]


@contextmanager
def fp8_peak_scaled(preset: str, factor: float):
    """The check of a "needed alone" figure: ``preset``'s FP8 GEMM peak times ``factor`` while the block runs."""
    kept = rates.PRESETS[preset]
    rates.PRESETS[preset] = replace(kept, gemm_fp8=replace(kept.gemm_fp8, peak=kept.gemm_fp8.peak * factor))
    try:
        yield
    finally:
        rates.PRESETS[preset] = kept


def needed_alone(ratio: float, part_ms: float, extra_gap: float, step_ms: float) -> float:
    """The B200 / Hopper speed ratio a component would need if it alone took the extra gap: its B200 time grows by
    (f - 1) x the B200 step, its Hopper time stays."""
    return ratio * part_ms / (part_ms + (extra_gap - 1.0) * step_ms)


def speed_ratio(b200_ms: float, b200_tokens: float, hopper_ms: float, hopper_tokens: float) -> float:
    """Hopper's time per token per GPU over B200's: how many times faster the model has the B200 at it."""
    return (hopper_ms / hopper_tokens) / (b200_ms / b200_tokens)


def pair_table(b200: str, hopper: str, measured_b: float, measured_h: float) -> list[str]:
    pb, tb, nb = split(b200)
    ph, th, nh = split(hopper)
    model = (nb / tb) / (nh / th)
    measured = measured_b / measured_h
    f = model / measured
    lines = [f"**{b200}** against **{hopper}**: measured {measured:.3f}, model {model:.3f}, "
             f"extra gap f = {f:.3f} (the B200 step {tb:.1f} ms would be {tb * f:.1f}; the Hopper step {th:.1f} ms)",
             "",
             "| component | B200 ms (share) | Hopper ms (share) | model B200 / Hopper speed | datasheet | "
             "needed alone |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    sheet = dict(DATASHEET, **{"memory-bound": hbm_ratio(hopper)})
    rows = [(c, pb[c], ph[c], f"{sheet[c]:.2f}" if c in sheet else "-") for c in COMPONENTS]
    rows.append(("GPU kernels together (GEMMs, attention, memory-bound)", sum(pb[c] for c in KERNELS),
                 sum(ph[c] for c in KERNELS), "-"))  # fmt: skip
    for c, b, h, ds in rows:
        if b < 1e-9:
            continue
        ratio = speed_ratio(b, nb, h, nh)
        lines.append(f"| {c} | {b:.1f} ({b / tb:.1%}) | {h:.1f} ({h / th:.1%}) | {ratio:.2f} | {ds} | "
                     f"{needed_alone(ratio, b, f, tb):.2f} |")  # fmt: skip
    # the FP8 row's figure checked on the model: the B200 FP8 peak cut in the same proportion, the step run again
    cut = needed_alone(1.0, pb["GEMM FP8"], f, tb)
    with fp8_peak_scaled("B200", cut):
        _, slower, _ = split(b200)
    lines += ["", f"Check: the B200 preset's FP8 GEMM peak x {cut:.3f} gives a B200 step of {slower:.1f} ms "
                  f"(wanted {tb * f:.1f}: {slower / (tb * f) - 1:+.1%})."]  # fmt: skip
    return lines


def grown(part_ms: float, extra_ms: float) -> float:
    """How many times longer a part would have to be to hold ``extra_ms`` alone."""
    return (part_ms + extra_ms) / part_ms


def measured_step_ms(name: str) -> float:
    """The row's measured step in ms, as published.csv gives it ("0.1894 s per step (median of 1872)")."""
    with open(ROOT / "scenarios" / "validation" / "published.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["name"] == name)
    return float(row["published"].split(" s per step")[0]) * 1e3


def beyond_forward(name: str) -> dict[str, float]:
    """One row's model step by pass (ms per step, averaged over the ranks) and what the measured step leaves beyond
    the logs' forward: the forward's part of the miss is docs/validation.md's evaluation table's, M x (the measured
    evaluation per micro-batch - the model's forward-only pipeline); the rest is what the backward and the step's end
    must hold."""
    parts, step, _ = split(name, pass_of, PASSES.values())
    sc = scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml")
    m = sc.pipeline.microbatches
    rank, ring = make_validation.eval_model_ms(sc)
    forward_part = m * (make_validation.EVAL_STEP_S[name][0] * 1e3 / m - rank - ring)
    measured = measured_step_ms(name)
    rest = measured - step - forward_part
    backward = parts["input gradient"] + parts["weight gradient"]
    end = parts["DP beyond the pipeline"] + parts["optimizer + param gather"]
    return {**parts, "step": step, "measured": measured, "forward part": forward_part, "rest": rest,
            "backward x": grown(backward, rest), "end x": grown(end, rest)}  # fmt: skip


def passes_table(names=BEYOND_FORWARD) -> list[str]:
    """docs/searches.md's s21a table (without its GPU column): one line per row of ``names``."""
    lines = ["| row | model step | F | I + W | idle | DP beyond + optimizer | miss | forward's part | rest | backward x "
             "| end x |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name in names:
        r = beyond_forward(name)
        end = f"{r['end x']:.1f}" if r["rest"] > 0 else "-"  # nothing left beyond the forward to hold
        lines.append(f"| {name} | {r['step']:,.1f} | {r['forward']:,.1f} | "
                     f"{r['input gradient'] + r['weight gradient']:,.1f} | {r['bubble + PP P2P']:,.1f} | "
                     f"{r['DP beyond the pipeline'] + r['optimizer + param gather']:,.1f} | "
                     f"{r['measured'] - r['step']:,.1f} | {r['forward part']:,.1f} | {r['rest']:,.1f} | "
                     f"{r['backward x']:.3f} | {end} |")  # fmt: skip
    return lines


if __name__ == "__main__":
    if "--passes" in sys.argv[1:]:
        print("\n".join(passes_table()))
    else:
        for pair in PAIRS:
            print("\n".join(pair_table(*pair)))
            print()
