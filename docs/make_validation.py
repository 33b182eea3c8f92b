"""Predicted vs published throughput of the runs in scenarios/validation/ (docs/validation.md).

    python docs/make_validation.py           # print the table
    python docs/make_validation.py --write   # and rewrite the table in docs/validation.md

Each scenario is a published, measured training run's layout; scenarios/validation/published.csv
holds what was measured (tokens/s per GPU, from the paper's own figures) and where it is from.  The
prediction is `step.tokens_per_second / GPUs` of a normal run, no hardware.efficiency.  These rows
are for checking only: nothing in the cost model is fitted to them.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim import scenario, simulation  # noqa: E402

FOLDER = ROOT / "scenarios" / "validation"
DOC = ROOT / "docs" / "validation.md"
BEGIN, END = "<!-- validation table: docs/make_validation.py -->", "<!-- end of validation table -->"


def gpus(sc) -> int:
    p = sc.pipeline
    ranks = p.stages // (p.chunks_per_rank or 1) if p.schedule.startswith("interleaved") else p.stages
    par = sc.parallel
    return ranks * par.tensor * par.data * par.context


def rows() -> list[dict]:
    out = []
    with open(FOLDER / "published.csv") as fh:
        for row in csv.DictReader(fh):
            sc = scenario.load(FOLDER / row["scenario"])
            assert gpus(sc) == int(row["gpus"]), row["name"]
            m = simulation.run(sc).metrics
            predicted = m.step.tokens_per_second / int(row["gpus"])
            published = float(row["published_tokens_per_second_per_gpu"])
            out.append({**row, "predicted": predicted, "error": predicted / published - 1,
                        "bubble": m.bubble_ratio, "step_s": m.step.total / 1e3})
    return out


def table(data: list[dict]) -> str:
    lines = ["| run | GPUs | published | tokens/s/GPU published | predicted | error | step (s) | bubble |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data:
        lines.append(f"| {r['name']} | {r['gpus']} | {r['published']} | {float(r['published_tokens_per_second_per_gpu']):,.1f} "
                     f"| {r['predicted']:,.1f} | {r['error']:+.1%} | {r['step_s']:.2f} | {r['bubble']:.1%} |")
    errs = [abs(r["error"]) for r in data]
    lines.append("")
    lines.append(f"Mean |error| {sum(errs) / len(errs):.1%}, worst {max(errs):.1%} over {len(errs)} runs; "
                 f"mean signed error {sum(r['error'] for r in data) / len(data):+.1%}.")
    return "\n".join(lines)


if __name__ == "__main__":
    text = table(rows())
    print(text)
    if "--write" in sys.argv[1:]:
        doc = DOC.read_text()
        head, rest = doc.split(BEGIN)
        _, tail = rest.split(END)
        DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
