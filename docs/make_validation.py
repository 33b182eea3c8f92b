"""Predicted vs published throughput of the runs in scenarios/validation/ (docs/validation.md).

    python docs/make_validation.py           # print the table
    python docs/make_validation.py --write   # and rewrite the tables in docs/validation.md
    python docs/make_validation.py --set 'hardware.gpu_variability="lonestar6-a100"'   # every run with a key set
                                             # (printed only: the document's tables are the defaults')

Each scenario is a published, measured training run's layout; scenarios/validation/published.csv
holds what was measured (tokens/s per GPU, from the paper's own figures) and where it is from.  The
prediction is `step.tokens_per_second / GPUs` of a normal run, no hardware.efficiency.  These rows
are for checking only: nothing in the cost model is fitted to them.  The A100 runs, the Hopper
(H100 / H800 / H200) runs and the B200 (and GB200, GB300) runs are three tables, each with its own mean and worst: the GPU is
the scenario's `hardware.preset`.  Runs that users reported in issue threads or a third party's guide
(COMMUNITY) are a fourth table, whatever their GPU: their configs were not reviewed and some settings
come from the code's defaults (docs/validation.md, "Community runs").  The MLPerf rows' evaluations, which run the
forward only, are held against the model's forward in a table of their own (`eval_forward`, "Forward only").
The page's "At a glance" table (`glance`) is read back from those tables once they are written, and so is the
"GPU-to-GPU spread" table's default column (`spread`), beside the same tables made again with the spread on.
With --write it also writes dualpipe_sim/model/validation_band.json (`band`): per class of run, the GPU's family x
dense or MoE, the whole-run tables' runs, mean signed error and range as written, which `run`, `model` and `plan`
report beside a prediction (dualpipe_sim/model/validation_band.py).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim import simulation
from dualpipe_sim.model import derive, kernels, validation_band  # noqa: E402

FOLDER = ROOT / "scenarios" / "validation"
DOC = ROOT / "docs" / "validation.md"
OVERRIDES: list[str] = []  # --set KEY=VALUE: applied to every run's scenario (docs/validation.md, "GPU-to-GPU spread")


def gpus(sc) -> int:
    """The run's GPUs: its schedule's pipeline ranks (an interleaved or V-shaped schedule holds several stages a
    rank) x tensor x data x context, as the model counts them (derive.run_gpus)."""
    return derive.run_gpus(sc, sc.pipeline.stages)


HOPPER = ("H100", "H800", "H200")  # H200: the H100 preset's kernel rates with H200's HBM
# Blackwell's rates have other sources (XLA's sm_100 tables, a GB200 FP8 table): not averaged with Hopper's. GB200 (NVL72):
# the B200's GPU and rates with a 72-GPU NVLink domain (docs/model.md, "GB200 NVL72"), in the same table; GB300 (NVL72):
# GB200's rates but the NIC and NVFP4 (docs/model.md, "GB300 NVL72"), in the same table
BLACKWELL = ("B200", "GB200", "GB300", "B300")
# name prefixes of the community runs: Megatron-MoE-ModelZoo issue #7, Pai-Megatron-Patch issue #643, xtuner's guide
COMMUNITY = ("mz7-", "pai643-", "xt-")


def rows(presets: tuple[str, ...] | None, community: bool = False) -> list[dict]:
    """The runs in published.csv whose scenario runs on one of ``presets`` (None: any), predicted; the
    community runs only (``community``) or none of them."""
    out = []
    with open(FOLDER / "published.csv") as fh:
        for row in csv.DictReader(fh):
            if row["name"].startswith(COMMUNITY) != community:
                continue
            sc = scenario.load(FOLDER / row["scenario"], OVERRIDES)
            if presets is not None and sc.hardware.preset not in presets:
                continue
            assert gpus(sc) == int(row["gpus"]), row["name"]
            m = simulation.run(sc).metrics
            predicted = m.step.tokens_per_second / int(row["gpus"])
            published = float(row["published_tokens_per_second_per_gpu"])
            out.append({**row, "gpu": sc.hardware.preset, "predicted": predicted, "error": predicted / published - 1,
                        "bubble": m.bubble_ratio, "step_s": m.step.total / 1e3})
    return out


def table(data: list[dict], gpu: bool = False) -> str:
    """The rows as a markdown table, then their mean and worst |error|; ``gpu`` adds the GPU column."""
    col = " GPU |" if gpu else ""
    lines = [f"| run |{col} GPUs | published | tokens/s/GPU published | predicted | error | step (s) | bubble |",
             f"| --- |{' --- |' if gpu else ''} ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data:
        cell = f" {r['gpu']} |" if gpu else ""
        lines.append(f"| {r['name']} |{cell} {r['gpus']} | {r['published']} | {float(r['published_tokens_per_second_per_gpu']):,.1f} "
                     f"| {r['predicted']:,.1f} | {r['error']:+.1%} | {r['step_s']:.2f} | {r['bubble']:.1%} |")
    errs = [abs(r["error"]) for r in data]
    lines.append("")
    runs = f"{len(errs)} run" + ("s" if len(errs) != 1 else "")
    lines.append(f"Mean |error| {sum(errs) / len(errs):.1%}, worst {max(errs):.1%} over {runs}; "
                 f"mean signed error {sum(r['error'] for r in data) / len(data):+.1%}.")
    return "\n".join(lines)


# DeepSeek's profiled per-layer components (deepseek-ai/profile-data train.json, H800; the figures
# scenarios/deepseek-v3.toml's [chunk] types, tests/helpers.py), against the kernel model's.
PROFILE_MS = {"attn_forward": 4.37, "mlp_forward": 4.60, "dispatch_forward": 6.69, "combine_forward": 8.68,
              "combine_backward": 5.77, "mlp_backward_input": 5.31, "mlp_backward_weight": 5.06,
              "dispatch_backward": 7.49, "attn_backward_input": 9.34, "attn_backward_weight": 2.39}  # fmt: skip


def deepseek_components() -> str:
    sc = scenario.load(ROOT / "scenarios" / "deepseek-v3-predicted.toml")
    d = sc.derived()
    slow = d.comm_compute_slowdown
    lines = ["| component | profile (ms) | kernels, alone (ms) | beside the all-to-all (ms) | error |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, measured in PROFILE_MS.items():
        alone = getattr(d.moe_layer, name)
        beside = alone if name.startswith(("dispatch", "combine")) else alone * slow
        lines.append(f"| {name} | {measured:.2f} | {alone:.2f} | {beside:.2f} | {beside / measured - 1:+.0%} |")
    return "\n".join(lines)


# Korthikanti et al. 2022, Table 4: one transformer layer of their 22B model (h 6144, 64 heads, TP 8,
# micro-batch 4, s 2048) on A100, forward and backward time (ms), measured.
K22_LAYER = {("none", False): (7.7, 11.9), ("none", True): (7.2, 11.8), ("full", False): (7.7, 19.5),
             ("selective", False): (7.7, 13.2), ("selective", True): (7.2, 13.1)}  # fmt: skip


def k22_layer() -> str:
    lines = ["| recompute | sequence parallel | forward measured | predicted | backward measured | predicted |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for (policy, sp), (fwd, bwd) in K22_LAYER.items():
        sc = scenario.load(ROOT / "scenarios" / "validation" / "k22-22b-full.toml",
                           [f"memory.recompute={policy}", f"parallel.sequence_parallel={str(sp).lower()}"])
        rows = derive.layer_kernels(derive.setup(sc), 0)
        passes = dict(kernels.passes(rows))
        f, b = passes["forward"], passes["backward_input"] + passes["backward_weight"]
        lines.append(f"| {policy} | {'yes' if sp else 'no'} | {fwd} | {f:.2f} ({f / fwd - 1:+.0%}) | {bwd} | "
                     f"{b:.2f} ({b / bwd - 1:+.0%}) |")
    return "\n".join(lines)


# MLPerf evaluations, forward only (docs/validation.md, "Forward only: the logs' evaluations"): per row, the median over
# all its logs of one validation step's time, each evaluation's steps after its first (the first also holds the
# evaluation's start, 0.1-2.6 s), in s, and how many steps that is; read from the result logs each scenario cites.
# A validation step is one global batch (the evaluation set, 5,662 GPT-3 / 5,760 405B / 1,024 8B sequences, padded to
# whole global batches), so each data-parallel rank runs the scenario's micro-batches forward through the pipeline.
# What times a step depends on the code: v5.0 / v5.1 log `validation_step_time`, DeltaTimingCallback's time from one
# `on_validation_batch_end` to the next (the whole loop); v3.0, v3.1 and v4.1 (GPT-3) log NeMo's TimingCallback's
# `validation_step_timing`, from `on_validation_batch_start` to `on_validation_batch_end` on the host, with no CUDA sync
# in it (sync_cuda False): rank 0's host returns while its GPU still runs the step, and the stream sync that waits for
# it (PTL's `self.log` of that float, a blocking host-to-device copy) comes after the timer stops. Those rows' figure
# is therefore the spacing of consecutive steps' MLLOG `tracked_stats` events (`time_ms`, logged once a loop), which
# times the whole loop; the logged windows are kept beside them (EVAL_WINDOW_S).
EVAL_STEP_S = {
    "mlperf30-gpt3-512": (5.0040, 144), "mlperf30-gpt3-768": (5.0290, 74), "mlperf30-gpt3-768cw": (5.0610, 75),
    "mlperf30-gpt3-1536cw": (2.5840, 77), "mlperf30-gpt3-3584cw": (0.9830, 132),
    "mlperf31-gpt3-512": (4.2140, 144), "mlperf31-gpt3-768": (4.2200, 75), "mlperf31-gpt3-4096": (0.5270, 144),
    "mlperf31-gpt3-6144": (0.5260, 75), "mlperf31-gpt3-8192": (0.5280, 79), "mlperf31-gpt3-10240": (0.2650, 138),
    "mlperf31-gpt3-10752": (0.2650, 132),
    "mlperf41-gpt3-256": (6.6510, 146), "mlperf41-gpt3-512": (3.2760, 146), "mlperf41-gpt3-64b200": (16.3010, 144),
    "mlperf50-llama405b-512": (19.32579, 72), "mlperf50-llama405b-2048": (4.91839, 76),
    "mlperf50-llama405b-2432": (4.41518, 84), "mlperf50-llama405b-2560": (3.83744, 90),
    "mlperf50-llama405b-8192": (2.13141, 63), "mlperf50-llama405b-512h200": (16.58322, 72),
    "mlperf50-llama405b-1024h200": (8.30293, 72), "mlperf51-llama405b-256b200": (9.56610, 81),
    "mlperf51-llama405b-448b200": (9.62421, 35),
    "mlperf51-llama8b-8b200": (0.160088, 8190), "mlperf51-llama8b-16b200": (0.163484, 2480),
    "mlperf51-llama8b-32b200": (0.047443, 17451), "mlperf51-llama8b-64b200": (0.047518, 4464),
    "mlperf51-llama8b-128b200": (0.046874, 1380), "mlperf51-llama8b-256b200": (0.046623, 490),
    "mlperf51-llama8b-64b200-verda": (0.047226, 4650), "mlperf51-llama8b-64h200": (0.088416, 7502),
    # GB200 (s16a); the v5.0 Tyche logs have no eval_start: an evaluation is the run of validation steps before its
    # eval_stop
    "mlperf50-llama405b-256gb200": (6.55838, 216), "mlperf50-llama405b-512gb200": (6.35824, 108),
    "mlperf51-llama8b-72gb200": (0.046848, 4116),
    # GB300 (s17b), the same selection (each eval_start's first validation step left out), Theia's v5.1 logs
    "mlperf51-llama8b-72gb300": (0.040170, 4116), "mlperf51-llama8b-8gb300-nvfp4": (0.110287, 9198),
    "mlperf51-llama405b-512gb300-nvfp4": (4.412856, 44),
    # GB200 in NVFP4 (s17j), the same selection, Tyche-hsg's v5.1 logs
    "mlperf51-llama405b-2560gb200-nvfp4": (1.085455, 45), "mlperf51-llama405b-5120gb200-nvfp4": (0.754776, 28),
}  # fmt: skip
# the GPT-3 rows' logged `validation_step_timing` (TimingCallback's window, start to end of the batch on the host), the
# same median over the same steps: what the table used before; each is short of its row's loop above by a constant of
# the code (54 ms v3.0, 58 ms v3.1, 73-74 ms v4.1 H100, 37 ms v4.1 B200), whatever M is
EVAL_WINDOW_S = {
    "mlperf30-gpt3-512": 4.94974, "mlperf30-gpt3-768": 4.97423, "mlperf30-gpt3-768cw": 5.00862,
    "mlperf30-gpt3-1536cw": 2.53054, "mlperf30-gpt3-3584cw": 0.92916,
    "mlperf31-gpt3-512": 4.15601, "mlperf31-gpt3-768": 4.16154, "mlperf31-gpt3-4096": 0.46951,
    "mlperf31-gpt3-6144": 0.46792, "mlperf31-gpt3-8192": 0.46962, "mlperf31-gpt3-10240": 0.20750,
    "mlperf31-gpt3-10752": 0.20644,
    "mlperf41-gpt3-256": 6.57626, "mlperf41-gpt3-512": 3.20255, "mlperf41-gpt3-64b200": 16.26415,
}  # fmt: skip
# the MLPerf rows whose logs time no validation step (v4.0: LOG_METRICS=OFF, only whole evaluations, whose start is
# a third of a step at 6 micro-batches): left out of that table
EVAL_UNTIMED = ("mlperf40-gpt3-512", "mlperf40-gpt3-10752", "mlperf40-gpt3-11616")


def eval_model_ms(sc) -> tuple[float, float]:
    """The model's forward-only pipeline per micro-batch per rank in a validation step after an evaluation's first, in
    ms: the slowest rank's chunk forwards summed, and the P2P the schedule's ring leaves exposed. Megatron's forward-only
    interleaved schedule runs each chunk for PP micro-batches in a row, so rank 0 wants a group's first micro-batch back
    for its next chunk PP chunk forwards after it left, and the ring it travels holds PP chunk forwards and PP sends:
    each of the chunks - 1 returns waits PP sends, shared by the group's PP micro-batches, (chunks - 1) x P2P a
    micro-batch (Megatron-core df72712 `schedules.py` `get_model_chunk_id`, forward-only warm-up loop). Nothing
    syncs the pipeline's ranks between validation steps, so a step's fill runs while the later ranks finish the step
    before: only an evaluation's first step (left out of the measured figure) holds it. PP 1: the stage's forward.
    The stages' forwards are derived as an evaluation runs them, autograd off (derive.evaluation_forwards)."""
    d, p = sc.derived(), sc.pipeline
    chunks = (p.chunks_per_rank or 1) if p.schedule.startswith("interleaved") else 1
    return eval_pipeline_ms(derive.evaluation_forwards(d.setup), p.stages // chunks, chunks, d.p2p)


def eval_pipeline_ms(forward: list[float], ranks: int, chunks: int, p2p: float) -> tuple[float, float]:
    """eval_model_ms from the virtual stages' forwards (rank r holds stages r, r + ranks, ...) and one send's time."""
    rank = max(sum(forward[r::ranks]) for r in range(ranks))
    ring = (chunks - 1) * p2p if ranks > 1 else 0.0
    return rank, ring


def eval_forward(data: list[dict]) -> str:
    """The logs' evaluations against the model's forward: per MLPerf row of ``data`` (rows() output: the name, the GPU,
    the model's step and the whole-step error), measured ms per micro-batch per rank (a validation step's loop / M; for
    the GPT-3 rows also their logged window / M, which leaves out the end of the step), the model's, and how much of the
    step the model misses (measured - model step = model step x error, tokens/s being inverse to the step) its forward
    accounts for: M x (measured - model forward)."""
    lines = ["| run | GPU | micro-batches a step (M) | steps timed | measured: the loop (ms per micro-batch per rank) "
             "| logged window (ms per micro-batch) | model: slowest rank + ring P2P (ms) | forward error "
             "| whole-step error (tokens/s) | forward's share of the step the model misses |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    errs = []
    for r in data:
        if r["name"] not in EVAL_STEP_S:
            continue
        sc = scenario.load(FOLDER / r["scenario"], OVERRIDES)
        step_s, steps = EVAL_STEP_S[r["name"]]
        m = sc.pipeline.microbatches
        measured = step_s * 1e3 / m
        window = f"{EVAL_WINDOW_S[r['name']] * 1e3 / m:.1f}" if r["name"] in EVAL_WINDOW_S else "the loop"
        rank, ring = eval_model_ms(sc)
        err = (rank + ring) / measured - 1
        errs.append(err)
        missed = r["step_s"] * 1e3 * r["error"]
        share = m * (measured - rank - ring) / missed
        lines.append(f"| {r['name']} | {r['gpu']} | {m} | {steps:,} | {measured:.1f} | {window} "
                     f"| {rank:.1f} + {ring:.1f} | {err:+.1%} | {r['error']:+.1%} | {share:.0%} |")
    lines.append("")
    lines.append(f"Mean forward error {sum(errs) / len(errs):+.1%} over {len(errs)} runs (worst {min(errs):+.1%}, "
                 f"best {max(errs):+.1%}); not timed: {', '.join(EVAL_UNTIMED)}.")
    return "\n".join(lines)


SECTIONS = {"validation table": lambda: table(rows(("A100",))), "hopper table": lambda: table(rows(HOPPER)),
            "b200 table": lambda: table(rows(BLACKWELL)),
            "community table": lambda: table(rows(None, community=True), gpu=True),
            "deepseek components": deepseek_components, "k22 layer": k22_layer,
            "eval forward": lambda: eval_forward(rows(HOPPER) + rows(BLACKWELL))}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: docs/make_validation.py -->", f"<!-- end of {name} -->"


def replace(doc: str, name: str, text: str) -> str:
    begin, end = markers(name)
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{text}\n{end}{tail}"


def section(doc: str, name: str) -> str:
    """The text between ``name``'s markers in ``doc``."""
    begin, end = markers(name)
    return doc.split(begin)[1].split(end)[0]


# "At a glance", at the top of docs/validation.md: per table its label, its SECTIONS name, the anchor of the heading
# it sits under and the column holding its error.  Read back from the tables as written, so it cannot disagree with
# them and needs no second simulation.
GLANCE = (("A100", "validation table", "whole-training-runs", "error"),
          ("Hopper", "hopper table", "whole-training-runs-on-h100", "error"),
          ("B200", "b200 table", "whole-training-runs-on-b200", "error"),
          ("community MoE", "community table", "community-runs-moe-runs-reported-by-users-issue-21", "error"),
          ("forward only (time)", "eval forward", "forward-only-the-logs-evaluations", "forward error"))  # fmt: skip
GLANCE_SECTION = "at a glance"


def errors(text: str, column: str) -> list[tuple[str, float]]:
    """(run, error as a fraction) for each row of a generated markdown table, the error read from ``column``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    col = cells[0].index(column)
    return [(row[0], float(row[col].rstrip("%")) / 100) for row in cells[2:]]


def glance_row(text: str, column: str) -> tuple[int, str, str, str, list[tuple[str, float]]]:
    """One table's runs, mean |error|, worst |error| and signed mean (as its own summary line states them), and its
    three worst rows by |error| (the table's order among equals)."""
    rows = errors(text, column)
    stated = re.search(r"^Mean \|error\| ([0-9.]+%), worst ([0-9.]+%) over .*; mean signed error ([+-][0-9.]+%)\.",
                       text, re.M)
    if stated:
        mean, worst, signed = stated.groups()
    else:  # the forward table states its signed mean only
        signed = re.search(r"^Mean forward error ([+-][0-9.]+%) over", text, re.M).group(1)
        same_sign = all(e < 0 for _, e in rows) or all(e > 0 for _, e in rows)
        # one sign: |mean| is the mean |error|, and quoting it keeps the cells' rounding out
        mean = signed.lstrip("+-") if same_sign else f"{sum(abs(e) for _, e in rows) / len(rows):.1%}"
        worst = f"{max(abs(e) for _, e in rows):.1%}"
    worst3 = sorted(rows, key=lambda r: -abs(r[1]))[:3]
    return len(rows), mean, worst, signed, worst3


def glance(doc: str) -> str:
    """The "At a glance" table from the generated tables in ``doc``: per table its runs, mean and worst |error|, signed
    mean and three worst rows, each table's label a link to its section."""
    lines = ["| table | runs | mean \\|error\\| | worst \\|error\\| | mean signed error | three worst rows |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for label, name, anchor, column in GLANCE:
        runs, mean, worst, signed, worst3 = glance_row(section(doc, name), column)
        named = ", ".join(f"{run} {err:+.1%}" for run, err in worst3)
        lines.append(f"| [{label}](#{anchor}) | {runs} | {mean} | {worst} | {signed} | {named} |")
    return "\n".join(lines)


# docs/validation.md, "GPU-to-GPU spread": each whole-run table's mean / worst / signed error by default (read back from
# the table as written, like "At a glance") and with the measured spread on (the table made again, every run with SPREAD)
SPREAD = 'hardware.gpu_variability="lonestar6-a100"'
SPREAD_SECTION = "gpu spread"
SPREAD_TABLES = (("A100", "validation table"), ("Hopper (H100 / H200)", "hopper table"), ("B200", "b200 table"),
                 ("community (MoE)", "community table"))  # fmt: skip


def with_spread() -> dict[str, str]:
    """The SPREAD_TABLES as SECTIONS makes them, with SPREAD set on every run (after any --set)."""
    OVERRIDES.append(SPREAD)
    try:
        return {name: SECTIONS[name]() for _, name in SPREAD_TABLES}
    finally:
        OVERRIDES.pop()


def spread(doc: str, on: dict[str, str]) -> str:
    """The spread section's table: per SPREAD_TABLES entry its runs and "mean / worst / signed" as the page's table
    states them and as ``on`` (with_spread) does."""
    lines = ["| table | runs | default: mean / worst / signed | with the spread: mean / worst / signed |",
             "| --- | ---: | --- | --- |"]
    for label, name in SPREAD_TABLES:
        runs, mean, worst, signed, _ = glance_row(section(doc, name), "error")
        runs_on, *figures, _ = glance_row(on[name], "error")
        assert runs_on == runs, name
        lines.append(f"| {label} | {runs} | {mean} / {worst} / {signed} | {' / '.join(figures)} |")
    return "\n".join(lines)


# dualpipe_sim/model/validation_band.json: the whole-run tables of GLANCE (the forward-only table times no step), read
# back as written like "At a glance", each run put in its class by its scenario (validation_band.run_class): the GPU
# preset's family and whether the model has experts (the community table's MoE runs join their GPU's MoE class)
BAND_TABLES = GLANCE[:4]


def band(doc: str) -> str:
    """validation_band.json's text from the tables in ``doc``: per class its runs, mean signed error, min and max
    (fractions, the tables' 0.1% cells; no range under validation_band.MIN_RUNS runs), rows and tables."""
    with open(FOLDER / "published.csv") as fh:
        files = {row["name"]: row["scenario"] for row in csv.DictReader(fh)}
    runs: dict[str, list[tuple[str, float, str, str]]] = {name: [] for name in validation_band.CLASSES}
    for label, name, anchor, column in BAND_TABLES:
        for run, err in errors(section(doc, name), column):
            sc = scenario.load(FOLDER / files[run])
            cls, why = validation_band.run_class(sc.hardware, derive.model_config(sc.model).moe)
            assert cls is not None, (run, why)
            runs[cls].append((run, err, label, f"docs/validation.md#{anchor}"))
    out = {}
    for cls, rows in runs.items():
        errs = [err for _, err, _, _ in rows]
        ranged = len(rows) >= validation_band.MIN_RUNS
        tables = {(label, anchor): 0 for _, _, label, anchor in rows}
        for _, _, label, anchor in rows:
            tables[label, anchor] += 1
        out[cls] = {"runs": len(rows), "mean_error": round(sum(errs) / len(errs), 4) if errs else None,
                    "min_error": round(min(errs), 4) if ranged else None,
                    "max_error": round(max(errs), 4) if ranged else None,
                    "rows": [run for run, *_ in rows],
                    "tables": [{"table": label, "anchor": anchor, "runs": n} for (label, anchor), n in tables.items()],
                    "note": None if ranged else ("no published run" if not rows else
                                                 f"{len(rows)} run(s), fewer than {validation_band.MIN_RUNS}: no range")}
    about = {"written_by": "docs/make_validation.py --write, from docs/validation.md's whole-run tables",
             "error": "predicted / published tokens/s per GPU - 1 (positive: the model too fast); reported, never applied",
             "min_runs_for_a_range": validation_band.MIN_RUNS}  # fmt: skip
    return json.dumps({"about": about, "classes": out}, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    args = sys.argv[1:]
    OVERRIDES[:] = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
    if OVERRIDES and "--write" in args:
        sys.exit("make_validation.py: --set runs are printed, not written (docs/validation.md holds the defaults)")
    doc = DOC.read_text()
    for name, make in SECTIONS.items():
        text = make()
        print(text, end="\n\n")
        doc = replace(doc, name, text)
    text = glance(doc)
    print(text, end="\n\n")
    doc = replace(doc, GLANCE_SECTION, text)
    text = spread(doc, with_spread())
    print(text, end="\n\n")
    doc = replace(doc, SPREAD_SECTION, text)
    text = band(doc)
    print(text)
    if "--write" in args:
        DOC.write_text(doc)
        validation_band.DATA.write_text(text)
