"""The plan's outputs as text: plan.csv, plan.md, the top-K scenario TOMLs, the --json list.

Every figure in them is from a full simulation; a candidate only estimated
says so (``simulated`` = estimate) and leaves the simulated columns empty.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .. import units
from ..model import validation_band
from ..sweep.grid import toml_text
from ..sweep.results import format_value  # one cell format for plan.csv and results.csv
from .rank import Row

# plan.csv's columns: the layout, then what the simulation gave, then how the row was treated.
LAYOUT = ("tensor", "pipeline", "virtual", "context", "expert", "data", "micro_batch_size", "microbatches",
          "recompute", "zero", "schedule", "stages")  # fmt: skip
FIGURES = ("tokens_per_second_per_gpu", "step_time", "mfu", "bubble_ratio", "exposed_comm", "peak_memory",
           "device_memory", "fits")  # fmt: skip
# expert_tensor: the candidate's parallel.expert_tensor (ETP; 1 unless pinned or searched), then the validation band
# of the layouts' class (the same in every row); added after pruned, so that every earlier column keeps its position
COLUMNS = ("rank", *LAYOUT, *FIGURES, "estimated_step_time", "estimated_memory", "simulated", "pruned",
           "expert_tensor", *validation_band.COLUMNS)


def record(row: Row, rank: int | None, device: float | None, band: validation_band.Band | None = None) -> dict:
    """One candidate as plan.csv's and --json's keys (None where a figure does not apply)."""
    c, sim = row.candidate, (row.simulated if row.ok else {})
    out = {"rank": rank, **{k: getattr(c, k) for k in LAYOUT}}
    out.update(
        tokens_per_second_per_gpu=row.tokens_per_second_per_gpu,
        step_time=sim.get("step.total"),
        mfu=row.mfu,
        bubble_ratio=sim.get("bubble_ratio"),
        exposed_comm=sim.get("comm.exposed"),
        peak_memory=sim.get("memory.total"),
        device_memory=device,
        fits=sim.get("fits"),
        estimated_step_time=row.estimate.step_time if row.estimate else None,
        estimated_memory=row.estimate.memory if row.estimate else None,
        simulated="yes" if row.ok else ("error" if row.simulated else ("estimate" if row.estimate and not row.pruned else "no")),
        pruned=row.pruned or (row.simulated or {}).get("reason", ""),
        expert_tensor=c.expert_tensor,
        **validation_band.cells(band),
    )  # fmt: skip
    return out


def records(plan) -> list[dict]:
    """Every row in rank order; ``rank`` numbers the simulated candidates that fit (1 = best)."""
    out, n, the_band = [], 0, band(plan)
    for row in plan.rows:
        ranked = row.ok and row.fits is not False
        n += ranked
        out.append(record(row, n if ranked else None, plan.device_memory, the_band))
    return out


def plan_csv(plan) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rec in records(plan):
        writer.writerow([format_value(rec[k]) for k in COLUMNS])
    return buf.getvalue()


def scenario_name(rank: int) -> str:
    return f"top-{rank:02d}.toml"


def scenario_toml(plan, row: Row, out_dir: Path) -> str:
    """A ready scenario: the plan's base with the candidate's keys; ``run`` gives the plan's metrics."""
    from ..inputs.scenario import apply_overrides

    data = apply_overrides(plan.base, row.candidate.overrides())
    config = data["model"].get("config")
    if isinstance(config, str):
        data["model"]["config"] = config_path(config, out_dir)
    lines = [f"# dualpipe-sim plan: {row.candidate.label()} on {plan.gpus} GPUs, global batch "
             f"{plan.global_batch} x {plan.seq} tokens"]  # fmt: skip
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {toml_text(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        lines += ["", f"[{name}]", *(f"{k} = {toml_text(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def config_path(config: str, out_dir: Path) -> str:
    """``model.config`` as a top-NN.toml in ``out_dir`` names it: relative (to the TOML, as load_raw
    reads it back) when the config is inside ``out_dir``, so the folder moves with its config; else
    absolute, so moving the folder does not break it."""
    config, out = Path(os.path.abspath(config)), out_dir.resolve()
    return os.path.relpath(config, out) if config.is_relative_to(out) else str(config)


def table(plan, rows: list[Row] | None = None) -> list[list[str]]:
    """The top-K table: header row, then one row per candidate (text for people)."""
    rows = plan.top if rows is None else rows
    etp = ["ETP"] if plan.experts else []  # an MoE plan searches it: each layout's (dense: none)
    head = ["#", "schedule", "TP", "PP", "v", "CP", "EP", *etp, "DP", "mbs", "M", "recompute", "zero", "step",
            "tok/s/GPU", "MFU", "bubble", "exposed comm", "peak mem / device"]  # fmt: skip
    out = [head]
    for i, r in enumerate(rows, 1):
        c, sim = r.candidate, r.simulated
        out.append([str(i), c.schedule, str(c.tensor), str(c.pipeline), str(c.virtual or "-"), str(c.context),
                    str(c.expert), *([str(c.expert_tensor)] if etp else []), str(c.data), str(c.micro_batch_size), str(c.microbatches), c.recompute,
                    str(c.zero), units.duration(sim["step.total"]), units.number(r.tokens_per_second_per_gpu),
                    units.percent(r.mfu) if r.mfu is not None else "-", units.percent(sim["bubble_ratio"]),
                    units.duration(sim["comm.exposed"]),
                    f"{units.nbytes(sim['memory.total'])} / {units.nbytes(plan.device_memory or 0)}"])  # fmt: skip
    return out


def none_fits(plan) -> str | None:
    """Why the top-K table is empty (None when it is not): a bare header would read as a failure."""
    if plan.top:
        return None
    done = [r for r in plan.rows if r.ok]
    if not done:
        return "No layout could be simulated: every candidate was pruned or failed (plan.csv says why)."
    least = min(r.peak_memory for r in done)
    return (f"No simulated layout fits the device: the {len(done)} simulated peak at {units.nbytes(least)} or more "
            f"per GPU against {units.nbytes(plan.device_memory or 0)}. Simulate more of the layouts estimated to "
            f"fit (a larger budget), or pin one that needs less (e.g. memory.recompute = \"full\"); plan.csv has "
            f"every row.")


def markdown_table(rows: list[list[str]]) -> str:
    """An aligned Markdown table (reads in a terminal too): text columns left, numbers right."""
    head, *body = rows
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    left = {head.index("schedule"), head.index("recompute")}

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # fmt: skip

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i in left else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def plan_md(plan) -> str:
    recs = records(plan)
    simulated = sum(r["simulated"] in ("yes", "error") for r in recs)
    estimated = sum(r["simulated"] == "estimate" for r in recs)
    lines = [
        f"# Plan: {plan.gpus} GPUs, global batch {plan.global_batch} x {plan.seq} tokens",
        "",
        f"{len(recs)} candidate rows: {simulated} simulated, {estimated} estimated only (their estimate was "
        f"outside the simulated best: docs/plan.md), {sum(bool(r['pruned']) for r in recs)} pruned.",
        "",
        precision_line(plan),
        "",
        *([dropped_line(plan), ""] if dropped_line(plan) else []),
        band_line(plan),
        "",
        *([etp_line(plan), ""] if etp_line(plan) else []),
        "## Best layouts (simulated, fitting the device)",
        "",
        markdown_table(table(plan)),
        "",
        *([none_fits(plan), ""] if none_fits(plan) else []),
        "## Pruned, by reason",
        "",
        "| reason | rows |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in plan.pruned.items()),
        "",
    ]
    if plan.top:
        lines += ["## Why the winner wins", "", *why(plan), ""]
    return "\n".join(lines)


def precision_line(plan) -> str:
    """The linears' precision every layout runs: the base scenario's model.fp4 / model.fp8 / model.fp8_recipe."""
    from ..model.derive import precision
    from ..model.sections import ModelSection
    from .request import model_config

    run = precision(ModelSection.model_validate(plan.base["model"]), model_config(plan.base))
    return (f"Precision (model.fp4, model.fp8, model.fp8_recipe): {run} in every layout; plan does not search it "
            f"(the base scenario sets it).")


def dropped_line(plan) -> str | None:
    """The source scenario's layout keys plan searched over instead of keeping (docs/plan.md, section 1), one line;
    None when it stated none (or a config.json was the source)."""
    if not plan.dropped:
        return None
    said = ", ".join(f"{k} = " + (f'"{v}"' if isinstance(v, str) else f"{v}") for k, v in plan.dropped.items())
    return (f"From the source: {said} searched over, not kept (plan chooses the layout; an override of "
            f"parallel.tensor, context, expert or zero pins one).")


def band(plan) -> validation_band.Band:
    """How far off the tokens/s was on published runs of the layouts' class (model/validation_band.py): the base
    scenario's GPU and whether the model has experts, which every layout shares. Reported, never applied."""
    from ..model.sections import HardwareSection

    return validation_band.lookup(HardwareSection.model_validate(plan.base["hardware"]), plan.experts > 0)


def band_line(plan) -> str:
    """plan.md's line of the layouts' band."""
    line = validation_band.describe(band(plan))
    return line[0].upper() + line[1:]


def etp_line(plan) -> str | None:
    """For an MoE model, the expert tensor parallelism plan searched (--search-expert-tensor), kept at 1 or was given
    (plan.csv's ``expert_tensor``)."""
    from .request import model_config, whole_experts

    if not plan.experts:
        if plan.search_expert_tensor:
            return f"Expert tensor parallelism: {search_noop(plan)}."
        return None
    pinned = plan.base.get("parallel", {}).get("expert_tensor")
    if pinned is not None:
        return (f"Expert tensor parallelism (parallel.expert_tensor): {pinned} in every layout; plan does not search "
                f"it (pinned by parallel.expert_tensor).")  # fmt: skip
    whole = whole_experts(plan.base, model_config(plan.base))
    if whole:
        return f"Expert tensor parallelism (parallel.expert_tensor): 1 in every layout; plan tries no more ({whole})."
    if not plan.search_expert_tensor:
        # the option named as neither flag nor keyword: this line serves the CLI and the library alike
        return ("Expert tensor parallelism (parallel.expert_tensor): 1 in every layout (experts whole, as every MoE "
                "validation run); the search-expert-tensor option also tries ETP = TP (Megatron-core's default), "
                "about twice the simulations on an MoE plan.")  # fmt: skip
    return ("Expert tensor parallelism (parallel.expert_tensor): searched, 1 (experts whole) and the tensor degree "
            "(Megatron-core's default) for each layout; plan.csv's expert_tensor column gives each one's.")


def search_noop(plan) -> str | None:
    """Why the search-expert-tensor option changed nothing in this plan (None when it searched, or was not given): the
    model has no experts, or the base costs ETP 1 only (request.whole_experts).  plan.md's ETP line and the CLI's note
    say it (a pin beside the option is refused before, so it is not one of these)."""
    from .request import model_config, whole_experts

    if plan.search_expert_tensor is not True:  # (plan() took a bool only)
        return None
    if plan.experts == 0:
        return "the model has no experts, so the search-expert-tensor option changes nothing (no layout has an ETP)"
    whole = whole_experts(plan.base, model_config(plan.base))
    return f"the search-expert-tensor option changes nothing: every layout keeps ETP 1 ({whole})" if whole else None


def why(plan) -> list[str]:
    """The best candidate against the best of each other schedule: step, bubble, exposed comm, memory."""
    best = plan.top[0]
    seen, lines = {best.candidate.schedule}, []
    b = best.simulated
    lines.append(f"- **{best.candidate.label()}**: step {units.duration(b['step.total'])}, bubble "
                 f"{units.percent(b['bubble_ratio'])}, exposed communication {units.duration(b['comm.exposed'])}, "
                 f"peak memory {units.nbytes(b['memory.total'])}.")  # fmt: skip
    for r in plan.rows:
        if not r.ok or r.fits is False or r.candidate.schedule in seen:
            continue
        seen.add(r.candidate.schedule)
        s = r.simulated
        lines.append(f"- best {r.candidate.schedule}: {r.candidate.label()}: step "
                     f"{units.duration(s['step.total'])} ({(s['step.total'] / b['step.total'] - 1) * 100:+.1f}%), "
                     f"bubble {units.percent(s['bubble_ratio'])}, exposed communication "
                     f"{units.duration(s['comm.exposed'])}, peak memory {units.nbytes(s['memory.total'])}.")  # fmt: skip
    return lines
