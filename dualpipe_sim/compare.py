"""Run one scenario through several schedules and tabulate the results.

Every schedule gets the same scenario (same model stages, micro-batches,
costs and memory); only ``pipeline.schedule`` changes.  Schedules place the
stages differently, so the number of devices differs (DualPipeV and ZB-V fold
S stages onto S/2 ranks): the table shows it next to the times.

A schedule is skipped, with the reason, when it is not registered or when the
scenario breaks one of its constraints (the family's own check, or a schedule
that cannot run to the end).  The speed-up column is 1F1B's makespan over
the schedule's; 1F1B is run for it even when it is not among the schedules
compared.  With [step] work (docs/step.md) the table gains a step column and
the speed-up compares whole training steps instead: what a user waits for.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedules import registry
from . import simulation, units
from .model import validation_band
from .schedules.closed_form import mean_costs
from .errors import InputError
from .schedules.ir import ScheduleError
from .inputs.scenario import Scenario, ScenarioError, activation_bytes_given

DEFAULT_SCHEDULES = ("1f1b", "zb-h1", "dualpipe", "dualpipev", "chimera")
BASELINE = "1f1b"


@dataclass
class Comparison:
    results: list[simulation.Result]  # in the order asked for
    skipped: list[tuple[str, InputError]]  # (schedule, why: the error, its line and its parts)
    baseline_makespan: float | None  # 1F1B on the same scenario
    baseline_step: float | None = None  # ... its whole training step, with [step] work
    notes: tuple[str, ...] = ()  # lines under the table (which Chimera variant is shown, and why)
    baseline_gpus: int | None = None  # the GPUs 1F1B runs on (pipeline ranks x tensor x data x context)

    @property
    def has_step(self) -> bool:
        return any(r.metrics.step is not None for r in self.results)


def with_schedule(scenario: Scenario, name: str) -> Scenario:
    return scenario.model_copy(update={"pipeline": scenario.pipeline.model_copy(update={"schedule": name})})


def at_gpus(scenario: Scenario, name: str, gpus: int) -> Scenario | str:
    """``scenario`` with the stage count that runs ``name`` on ``gpus`` GPUs (pipeline ranks x tensor x
    data x context): one stage per rank, two for the V-shaped families (DualPipeV, ZB-V), and
    ``pipeline.chunks_per_rank`` (default 2) for the interleaved ones; or why it cannot.  The model
    stays the same: a [model] is re-split by its layout; typed per-stage times and sizes are scaled by
    old stages / new stages (one value each only)."""
    from .plan.shapes import shape  # how many stages a family puts on a rank, read off its build

    par = scenario.parallel
    per_rank = par.tensor * par.data * par.context if par is not None else 1
    if gpus % per_rank:
        return f"{gpus} GPUs is not a multiple of tensor x data x context = {per_rank} GPUs per rank"
    sh = shape(name)
    stages = gpus // per_rank * ((scenario.pipeline.chunks_per_rank or 2) if sh.virtual else sh.stages_per_rank)
    update = {"pipeline": scenario.pipeline.model_copy(update={"schedule": name, "stages": stages})}
    if scenario.model is None:  # the same model cut into more or fewer stages: each stage's share scales
        if scenario.chunk is not None:
            return "needs a [model] to re-split a [chunk] scenario over another stage count"
        scale = scenario.pipeline.stages / stages
        costs, memory = scenario.costs, scenario.memory
        if any(isinstance(v, list) for v in (costs.forward, costs.backward, costs.weight, costs.overlapped,
                                             memory.activation, memory.parameters)):  # fmt: skip
            return "per-stage lists cannot be re-split over another stage count (give one value each, or a [model])"
        times = {k: v * scale for k in ("forward", "backward", "weight", "overlapped")
                 if (v := getattr(costs, k)) is not None}  # fmt: skip
        update["costs"] = costs.model_copy(update=times)
        sizes = {k: getattr(memory, k) * scale for k in ("activation", "parameters") if k in memory.model_fields_set}
        update["memory"] = memory.model_copy(update=sizes)
    return scenario.model_copy(update=update)


def _try_run(scenario: Scenario, name: str, same_gpus: int | None = None) -> simulation.Result | InputError:
    """The run, or why the schedule cannot take this scenario."""
    if name not in registry.families():
        return InputError("not registered (`dualpipe-sim schedules` lists the known ones)")
    if same_gpus is not None:
        scenario = at_gpus(scenario, name, same_gpus)
        if isinstance(scenario, str):
            return InputError(scenario)
        try:  # another stage count: per-stage lists or a layout written for the old one no longer fit
            return simulation.run(scenario)
        except ScheduleError as exc:
            return exc
        except ScenarioError as exc:
            return InputError(f"at {scenario.pipeline.stages} stages: {exc}")
    try:
        return simulation.run(with_schedule(scenario, name))
    except ScheduleError as exc:
        return exc


def compare(scenario: Scenario, names: list[str], progress=None, same_gpus: int | None = None) -> Comparison:
    """Run ``scenario`` through each schedule.  Raises ScenarioError when none can run it.
    ``progress`` is told of each schedule (progress.py).  ``same_gpus``: each schedule at the stage
    count that puts it on that many GPUs (at_gpus), instead of the scenario's stage count."""
    from .progress import report as tell

    results, skipped, notes = [], [], []
    for i, name in enumerate(names):
        tell(progress, i, len(names), name)
        outcome = _try_run(scenario, name, same_gpus)
        if name == "chimera" and "chimera-doubling" not in names and not isinstance(outcome, InputError):
            outcome = _better_chimera(scenario, outcome, notes)
        if isinstance(outcome, InputError):
            skipped.append((name, outcome))
        else:
            results.append(outcome)
    if not results:
        reasons = "; ".join(f"{n}: {said_once(n, why)}" for n, why in skipped)
        raise ScenarioError(field="pipeline.schedule", rule=f"none of the schedules can run this scenario ({reasons})")
    base = next((r for r in results if r.metrics.schedule == BASELINE), None)
    if base is None:
        outcome = _try_run(scenario, BASELINE, same_gpus)
        base = None if isinstance(outcome, InputError) else outcome
    return Comparison(results, skipped, base.metrics.makespan if base else None,
                      step_time(base.metrics) if base else None, tuple(notes),
                      gpus(base) if base else None)  # fmt: skip


def _better_chimera(scenario: Scenario, direct: simulation.Result, notes: list[str]) -> simulation.Result:
    """Chimera's two variants: with B > F forward doubling may beat direct concatenation, so
    the faster of the two takes chimera's row, and a note says which and by how much."""
    F, B, _, _ = mean_costs(direct.costs, direct.schedule.stages)
    if B <= F:
        return direct
    doubling = _try_run(scenario, "chimera-doubling")
    if isinstance(doubling, InputError):
        notes.append(f"chimera: direct concatenation shown; forward doubling cannot run this scenario ({doubling})")
        return direct
    a, b = step_time(direct.metrics), step_time(doubling.metrics)
    recompute = with_schedule(scenario, "chimera-doubling").recompute()
    given = "recompute" in scenario.memory.model_fields_set
    both = (f"direct concatenation {units.number(a)} ms, forward doubling {units.number(b)} ms "
            f"(memory.recompute {recompute}{'' if given else ', its default: the authors run it so'})")  # fmt: skip
    if b < a:
        notes.append(f"chimera: forward doubling shown (chimera-doubling), the faster variant here: {both}")
        return doubling
    notes.append(f"chimera: direct concatenation shown, the faster variant here: {both}")
    return direct


def gpus(result: simulation.Result) -> int:
    """The GPUs a run occupies: its schedule's pipeline ranks x tensor x data x context."""
    from .sweep.point import gpu_fields

    return gpu_fields(result.scenario, result.metrics.ranks, 0.0)["gpus"]


# How a note names the way to run every schedule on 1F1B's GPUs: the Python keyword here, the flag from the CLI.
SAME_GPUS = "same_gpus={}"


def devices_note(comparison: Comparison) -> list[str]:
    """With a [model] whose ranks are several GPUs each, a line saying so: the devices column counts pipeline
    ranks, and a user who laid out 16 GPUs should not read "2" as the GPUs their run took (docs/compare.md)."""
    per_rank = {gpus(r) // r.metrics.ranks for r in comparison.results}
    if not comparison.results or per_rank == {1}:
        return []
    par = comparison.results[0].scenario.parallel
    each = f"{per_rank.pop()} GPUs" if len(per_rank) == 1 else "several GPUs"
    runs = ", ".join(f"{r.metrics.schedule} {gpus(r)}" for r in comparison.results)
    return [f"devices counts pipeline ranks, each {each} here (tensor {par.tensor} x data {par.data} x context "
            f"{par.context}); GPUs: {runs}"]


def gpu_notes(comparison: Comparison, rerun: str = SAME_GPUS) -> list[str]:
    """A line for each schedule on other GPUs than 1F1B (DualPipeV folds two stages onto a rank, so it runs the
    same stages on half the GPUs): its speed-up is of time on unequal hardware, so say what it is per GPU."""
    base = comparison.baseline_gpus
    lines = []
    for result, row in zip(comparison.results, summary_rows(comparison)):
        n = gpus(result)
        if base and n != base and row["speedup"] is not None:
            lines.append(f"{row['schedule']} runs on {n} GPUs, 1F1B on {base}: speed-up per GPU "
                         f"{row['speedup'] * base / n:.2f}x (speed-up x {base} / {n}); compare tokens/s per GPU, "
                         f"or run with {rerun.format(base)}")  # fmt: skip
    return lines


def step_time(metrics) -> float:
    """A run's whole training step: [step]'s total, or the makespan without [step] work."""
    return metrics.step.total if metrics.step is not None else metrics.makespan


COLUMNS = (
    ("schedule", "schedule"),
    ("devices", "devices"),
    ("makespan", "makespan (ms)"),
    ("step", "step (ms)"),  # only with [step] work
    ("slowed", "compute slowed (ms)"),  # only where step.dp_comm_sms slows some schedule's compute
    ("speedup", "speed-up vs 1F1B"),
    ("bubble", "bubble ratio"),
    ("peak", "peak activation"),
    ("peak_bytes", "peak activation bytes"),
    ("params", "parameter copies"),
    ("exposed", "exposed comm, sum over ranks (ms)"),
)


def summary_rows(comparison: Comparison) -> list[dict]:
    """One row of numbers per schedule run (maxima are over ranks)."""
    rows = []
    for result in comparison.results:
        s = result.metrics.scalars()
        # With [step] work, the speed-up is of whole steps.
        base = comparison.baseline_step if comparison.has_step else comparison.baseline_makespan
        time = step_time(result.metrics) if comparison.has_step else s["makespan"]
        rows.append(
            {
                "schedule": result.metrics.schedule,
                "devices": s["ranks"],
                "makespan": s["makespan"],
                "step": step_time(result.metrics),
                "slowed": result.metrics.later_step_scalars()["step.slowed"],  # metrics.json's step.slowed
                "speedup": base / time if base and time > 0 else None,
                "bubble": s["bubble_ratio"],
                "peak": s["peak_activation"],
                # None (shown n/a) when no memory.activation or [model] gives an activation's bytes
                "peak_bytes": s["peak_activation_bytes"] if activation_bytes_given(result.scenario) else None,
                "params": s["parameter_copies"],
                "exposed": s["comm.exposed"],
                "memory": s["memory.total"],  # with a [model]: the fullest rank's total
                "fits": s["fits"],  # None when the total or the device memory is unknown
                "tokens_per_gpu": s["throughput.tokens_per_second_per_gpu"],  # with a [model]
                "mfu": s["throughput.mfu"],  # with a [model] and a [hardware] peak
            }
        )
    return rows


# Shown only when some schedule's total memory is known (a [model] scenario).
MEMORY_COLUMNS = (("memory", "memory per rank (max)"), ("fits", "fits device memory"))


# Shown only when some schedule has a throughput (a [model] scenario): of the step, or of
# the makespan alone without [step] work (compare.md says which).
THROUGHPUT_COLUMNS = (("tokens_per_gpu", "tokens/s per GPU"), ("mfu", "MFU"))


def _columns(rows: list[dict]) -> tuple:
    return (COLUMNS + (MEMORY_COLUMNS if any(r["memory"] is not None for r in rows) else ())
            + (THROUGHPUT_COLUMNS if any(r["tokens_per_gpu"] is not None for r in rows) else ()))  # fmt: skip


def _cells(row: dict, memory: bool = False, throughput: bool = False) -> list[str]:
    extra = [units.nbytes(row["memory"]) if row["memory"] is not None else "-",
             {True: "yes", False: "NO", None: "-"}[row["fits"]]] if memory else []  # fmt: skip
    if throughput:
        extra += ["-" if row["tokens_per_gpu"] is None else units.number(row["tokens_per_gpu"]),
                  "-" if row["mfu"] is None else units.percent(row["mfu"])]  # fmt: skip
    return [
        row["schedule"],
        str(row["devices"]),
        units.number(row["makespan"]),
        units.number(row["step"]),
        "-" if row["slowed"] is None else units.number(row["slowed"]),
        "-" if row["speedup"] is None else f"{row['speedup']:.2f}x",
        f"{row['bubble']:.1%}",
        str(row["peak"]),
        "n/a" if row["peak_bytes"] is None else units.nbytes(row["peak_bytes"]),
        str(row["params"]),
        units.number(row["exposed"]),
        *extra,
    ]


def table(comparison: Comparison) -> str:
    """The side-by-side table as an aligned Markdown table (reads in a terminal too)."""
    rows = summary_rows(comparison)
    columns = _columns(rows)
    shown = {"step": comparison.has_step, "slowed": any(r["slowed"] is not None for r in rows)}
    keep = [shown.get(key, True) for key, _ in columns]  # the step's columns only where some schedule has them
    memory, throughput = MEMORY_COLUMNS[0] in columns, THROUGHPUT_COLUMNS[0] in columns
    body = [[c for c, k in zip(_cells(r, memory, throughput), keep) if k] for r in rows]
    head = [title for (_, title), k in zip(columns, keep) if k]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def said_once(name: str, why: InputError) -> str:
    """A skip reason as shown after its schedule's name: the rule of ``name``'s own family
    (Family.error's ``pipeline.microbatches: dualpipe needs ...``) without the name again,
    ``pipeline.microbatches needs ...``; any other reason as its line."""
    if why.field is not None and why.by == name:
        return f"{why.field} {why.rule}"
    return str(why)


def skipped_lines(comparison: Comparison) -> list[str]:
    return [f"skipped {name}: {said_once(name, why)}" for name, why in comparison.skipped]


def band_lines(comparison: Comparison) -> list[str]:
    """With tokens/s in the table: the validation band of the schedules' class (model/validation_band.py), one line:
    every schedule runs the same GPU, model and [step]. Reported, never applied."""
    return validation_band.lines(r.metrics.validation_band for r in comparison.results)


def report(comparison: Comparison, rerun: str = SAME_GPUS) -> str:
    """What the terminal shows: the table, then one line per skipped schedule."""
    note = []
    if not comparison.has_step and any(r.metrics.throughput is not None for r in comparison.results):
        note = ["tokens/s per GPU and MFU are of the pipeline makespan alone (no [step] work: no grad sync, no optimizer)"]
    return "\n".join([table(comparison), *devices_note(comparison), *gpu_notes(comparison, rerun), *comparison.notes,
                      *note, *band_lines(comparison), *skipped_lines(comparison)])


def markdown(comparison: Comparison, source: str, png: str | None = "compare.png", rerun: str = SAME_GPUS) -> str:
    """compare.md: where the numbers come from, the table, the skips, the chart."""
    m = comparison.results[0].metrics
    lines = [
        "# Schedule comparison",
        "",
        f"Scenario {source}: {m.stages} model stages, {m.microbatches} micro-batches; "
        "every schedule runs the same stages, costs and memory sizes.",
        "",
        table(comparison),
        "",
        "Makespan and exposed communication in the scenario's time unit (ms); exposed communication is the "
        "sum over ranks of the time each rank waits on P2P or all-to-all, so it can exceed the makespan. "
        "Sizes are decimal (1 GB = 10^9 bytes). "
        + ("Step = the whole training step: the pipeline, then gradient sync, cross-copy sync and the optimizer "
           "([step], docs/step.md). Speed-up = 1F1B step / step on the same scenario"
           if comparison.has_step else "Speed-up = 1F1B makespan / makespan on the same scenario")
        + ("" if comparison.baseline_makespan else " (1F1B could not run it, so none is given)")
        + ". Peak activation is the most stage-activations alive at once on any one rank, and its bytes; "
        "parameter copies is the most model stages any one rank holds. Devices differ between schedules "
        "that fold several stages onto one rank."
        + (" Tokens/s per GPU and MFU (model FLOPs / GPUs x peak FLOP/s) are of the "
           + ("whole training step." if comparison.has_step
              else "pipeline makespan alone: there is no [step] work, so gradient sync and the optimizer are "
                   "left out and the figures are an upper bound.")
           if any(r.metrics.throughput is not None for r in comparison.results) else ""),
    ]
    notes = (*devices_note(comparison), *gpu_notes(comparison, rerun), *comparison.notes, *band_lines(comparison))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    if comparison.skipped:
        lines += ["", "Skipped:", ""] + [f"- `{n}`: {said_once(n, why)}" for n, why in comparison.skipped]
    if png:
        lines += ["", f"![Gantt charts on a shared time axis]({png})"]
    lines += [""]
    return "\n".join(lines)


def run_and_write(scenario: Scenario, names: list[str], out_dir, source: str, plots: str = "png",
                  progress=None, same_gpus: int | None = None, rerun: str = SAME_GPUS) -> tuple[Comparison, list]:
    """Compare, then write compare.md and the charts ``plots`` asks for (png: compare.png,
    html: report.html, all, none) into ``out_dir`` all-or-nothing."""
    from .outputs.files import write_all, write_text
    from .progress import each_file

    comparison = compare(scenario, names, progress, same_gpus)
    png = plots in ("png", "all")
    writers = {"compare.md": write_text(markdown(comparison, source, "compare.png" if png else None, rerun))}
    if png:
        from .outputs.plots.compare import save_compare  # matplotlib only when we draw

        writers["compare.png"] = lambda path: save_compare(comparison.results, path)
    if plots in ("html", "all"):
        from .outputs.plots.report import save_report

        writers["report.html"] = lambda path: save_report(comparison.results, path)
    files = write_all(out_dir, each_file(writers, progress))
    return comparison, files
