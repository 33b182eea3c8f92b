"""Predicted vs published throughput of the runs in scenarios/validation/ (docs/validation.md).

    python docs/make_validation.py           # print the table
    python docs/make_validation.py --write   # and rewrite the tables in docs/validation.md

Each scenario is a published, measured training run's layout; scenarios/validation/published.csv
holds what was measured (tokens/s per GPU, from the paper's own figures) and where it is from.  The
prediction is `step.tokens_per_second / GPUs` of a normal run, no hardware.efficiency.  These rows
are for checking only: nothing in the cost model is fitted to them.  The A100 runs, the Hopper
(H100 / H800 / H200) runs and the B200 runs are three tables, each with its own mean and worst: the GPU is
the scenario's `hardware.preset`.  Runs that users reported in issue threads or a third party's guide
(COMMUNITY) are a fourth table, whatever their GPU: their configs were not reviewed and some settings
come from the code's defaults (docs/validation.md, "Community runs").
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim import simulation
from dualpipe_sim.model import derive, kernels  # noqa: E402

FOLDER = ROOT / "scenarios" / "validation"
DOC = ROOT / "docs" / "validation.md"


def gpus(sc) -> int:
    p = sc.pipeline
    ranks = p.stages // (p.chunks_per_rank or 1) if p.schedule.startswith("interleaved") else p.stages
    par = sc.parallel
    return ranks * par.tensor * par.data * par.context


HOPPER = ("H100", "H800", "H200")  # H200: the H100 preset's kernel rates with H200's HBM
BLACKWELL = ("B200",)  # its rates have other sources (XLA's sm_100 tables, a GB200 FP8 table): not averaged with Hopper's
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
            sc = scenario.load(FOLDER / row["scenario"])
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


SECTIONS = {"validation table": lambda: table(rows(("A100",))), "hopper table": lambda: table(rows(HOPPER)),
            "b200 table": lambda: table(rows(BLACKWELL)),
            "community table": lambda: table(rows(None, community=True), gpu=True),
            "deepseek components": deepseek_components, "k22 layer": k22_layer}


def replace(doc: str, name: str, text: str) -> str:
    begin, end = f"<!-- {name}: docs/make_validation.py -->", f"<!-- end of {name} -->"
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{text}\n{end}{tail}"


if __name__ == "__main__":
    doc = DOC.read_text()
    for name, make in SECTIONS.items():
        text = make()
        print(text, end="\n\n")
        doc = replace(doc, name, text)
    if "--write" in sys.argv[1:]:
        DOC.write_text(doc)
