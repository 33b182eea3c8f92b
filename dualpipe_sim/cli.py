"""The ``dualpipe-sim`` command: parse, call the library, print, write files.

Bad input of any kind (scenario, override, schedule, constraints) ends with
one line ``error: ...`` on stderr and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NoReturn

from . import actions, compare, limits, repeat, simulation, units
from .schedules import registry
from .schedules.ir import Schedule, ScheduleError
from .readers.metrics import Metrics
from .model import validation_band
from .progress import each_file
from .outputs.files import OutputError, check_targets, metrics_json, write_all, write_text
from .outputs import text_table
from .inputs.scenario import ScenarioError, activation_bytes_given, oddities, parse_override
from .inputs.scenario import load as load_scenario
from .inputs.scenario import load_resolved
from .signals import stop_on_sigterm, stopped
from .errors import cut, shown

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
PLOTS = ("none", "png", "html", "all")  # --plots: which charts to draw (html = report.html)
RUN_FILES = ("metrics.json", "gantt.png", "memory.png")


class UsageError(ValueError):
    """Bad command-line input that argparse cannot see (e.g. a missing file)."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dualpipe-sim")  # the installed distribution's
    except Exception:  # noqa: BLE001 - run from a source tree without installing
        from . import __version__

        return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``error: ...`` line, as every other bad input (README, "Bad input"): the
    usage block argparse prints first is what --help is for."""

    def error(self, message: str):
        message = message.removeprefix("argument ")  # "argument --plots: invalid choice" -> "--plots: invalid ..."
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see {self.prog} --help\n")


def _add_unset(parser: argparse.ArgumentParser) -> None:
    """--unset, beside every --set: the file's keys taken out before the --set values go in."""
    parser.add_argument("--unset", action="append", default=[], metavar="KEY",
                        help="remove KEY (a section, or a key in one) from the scenario file before any --set, e.g. "
                             "--unset pipeline.chunks_per_rank --set pipeline.schedule=1f1b on an interleaved "
                             "scenario (repeatable); a key the file does not set is already unset: no error")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dualpipe-sim", description="Simulate pipeline-parallel training schedules.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate a scenario: summary table (with a [model] also tokens/s, tokens/s per "
                                     "GPU and MFU), metrics.json, gantt.png")
    run.add_argument("scenario", help="scenario TOML file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, e.g. --set pipeline.stages=8, --set parallel.zero=3 (FSDP), "
                          "--set memory.runtime=0 or memory.fp8_weight_cache=false, "
                          "--set step.overlap_param_gather_with_optimizer_step=true or step.fp32_embedding_grads=true (repeatable)")
    _add_unset(run)
    run.add_argument("--out", default="out", help="output folder (default: out)")
    run.add_argument("--json", action="store_true", help="print metrics.json to stdout instead of the table")
    run.add_argument("--schedule-file", help="replay this schedule instead of pipeline.schedule: the JSON or "
                                             "action-string form of `schedule --format json|actions`")
    run.add_argument("--trace", metavar="FILE", help="also write a Chrome/Perfetto trace, a file inside --out, "
                                                     "e.g. out/trace.json")
    run.add_argument("--repeat", type=int, metavar="N", help="run N seeds (seed, seed+1, ...): p50/p95/max makespan "
                     "and bubble ratio, printed and in repeat.json; metrics.json stays the first seed's")
    run.add_argument("--plots", choices=PLOTS, default="png",
                     help="charts to write: png (gantt.png, memory.png; the default), html (report.html, "
                          "interactive), all, or none (fastest, e.g. with --json)")
    run.add_argument("--pair-rank", type=int, metavar="R",
                     help="gantt.png's part-by-part view of one overlapped pair (runs with [chunk] components) "
                          "shows rank R's middle pair (default: the middle rank holding neither the first "
                          "nor the last stage; docs/charts.md)")

    sch = sub.add_parser("schedule", help="print a schedule's per-rank op lists")
    sch.add_argument("name")
    sch.add_argument("--stages", type=int, required=True)
    sch.add_argument("--microbatches", type=int, required=True)
    sch.add_argument("--chunks-per-rank", type=int, default=None, help="model chunks per rank (interleaved)")
    sch.add_argument("--microbatch-group", type=int, default=None,
                     help="micro-batches per virtual-stage group, in Megatron-core's order "
                          "(interleaved; default: torch's rounds)")
    sch.add_argument("--format", choices=("text", "json", "actions"), default="text",
                     help="actions: PyTorch pipelining action strings, one line per rank")

    sub.add_parser("schedules", help="list the registered schedules and their constraints")

    swp = sub.add_parser("sweep", help="run a scenario over a grid: results.csv, summary.md, charts")
    swp.add_argument("scenario", help="scenario TOML file (the base every grid point overrides)")
    swp.add_argument("--grid", action="append", required=True, metavar="KEY=VALUES",
                     help="a grid axis: KEY=a,b,c or KEY=start:stop:step (stop included), repeatable")
    swp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key for every point")
    _add_unset(swp)
    swp.add_argument("--out", default="sweep", help="output folder (default: sweep)")
    swp.add_argument("--jobs", type=int, default=None, help="local worker processes (default: all cores)")
    swp.add_argument("--memory-limit", metavar="BYTES", help="per-rank memory for summary.md, e.g. 80e9 or 80GiB")
    swp.add_argument("--resume", action="store_true", help="keep the rows in OUT/results.csv, run the rest")
    swp.add_argument("--dask-scheduler", metavar="ADDRESS", help="run on this Dask cluster, e.g. tcp://host:8786")
    swp.add_argument("--plots", choices=("none", "png"), default="png",
                     help="png: the sweep charts (default); none: results.csv and summary.md only")

    cmp_ = sub.add_parser("compare", help="run a scenario through several schedules: table, compare.md, compare.png")
    cmp_.add_argument("scenario", help="scenario TOML file")
    cmp_.add_argument("--schedules", default=",".join(compare.DEFAULT_SCHEDULES),
                      help="comma-separated schedule names (default: %(default)s); with B > F, chimera shows "
                           "the faster of direct concatenation and chimera-doubling, and says which")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a scenario key for every schedule (repeatable)")
    _add_unset(cmp_)
    cmp_.add_argument("--out", default="out", help="output folder (default: out)")
    cmp_.add_argument("--same-gpus", type=int, metavar="N",
                      help="run each schedule at the stage count that uses N GPUs (pipeline ranks x tensor x data "
                           "x context), so DualPipeV, ZB-V and interleaved schedules use as many GPUs as the rest; "
                           "default: every schedule at the scenario's stage count")
    cmp_.add_argument("--plots", choices=PLOTS, default="png",
                      help="png: compare.png (default); html: report.html with every schedule on one time "
                           "axis; all; none")
    cal = sub.add_parser("calibrate", help="read a PyTorch profiler trace of one overlapped pair: [chunk] figures, "
                                           "order, and the simulator's replay of it")
    cal.add_argument("trace", help="Kineto Chrome trace (.json or .json.gz) of one forward+backward pair")
    cal.add_argument("--map", dest="names", action="append", default=[], metavar="NAME=COMPONENT",
                     help="annotation name -> [chunk] component, over DeepSeek's names (attn(F), mlp(B), ...); "
                          "repeatable")
    cal.add_argument("--out", help="also write chunk.toml and calibration.md into this folder")
    cal.add_argument("--json", action="store_true", help="print the figures as JSON instead of the report")
    mdl = sub.add_parser("model", help="parameters, FLOPs, activation bytes and per-stage split of a model")
    mdl.add_argument("source", help="scenario TOML with a [model] section, or an HF config.json "
                                    "(then seq_length 4096, micro_batch_size 1, recompute none, 1 stage)")
    mdl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, e.g. --set model.seq_length=8192 or memory.recompute=full")
    _add_unset(mdl)
    mdl.add_argument("--json", action="store_true", help="print the figures as JSON (with step_end: the step's end "
                                                          "item by item, null without [step])")
    mdl.add_argument("--explain", action="store_true", help="also say how each derived number is obtained, "
                                                             "and the step's end item by item")
    pln = sub.add_parser("plan", help="the best layout and schedule for a model on N GPUs: table, plan.csv, "
                                      "plan.md, plan.png, top-K scenario TOMLs")
    pln.add_argument("source", help="HF config.json, or a scenario TOML with a [model] section")
    pln.add_argument("--gpus", type=int, required=True, help="GPUs to lay the model out on (exactly)")
    pln.add_argument("--hardware", help="GPU preset (H100, H800, ...); default: the TOML's [hardware]")
    pln.add_argument("--global-batch", type=int, required=True, help="sequences per training step")
    pln.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    pln.add_argument("--top", type=int, default=10, help="best layouts to show and write as TOMLs (default 10)")
    pln.add_argument("--schedules", help="comma-separated schedules to consider (default: every registered one)")
    pln.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key; parallel.tensor/context/expert/expert_tensor/zero, model.micro_batch_size, "
                          "memory.recompute and pipeline.chunks_per_rank pin that choice (repeatable)")
    _add_unset(pln)
    pln.add_argument("--search-expert-tensor", action="store_true",
                     help="MoE: try expert tensor parallelism = tensor beside 1 (Megatron-core's default; about twice "
                          "the simulations). Default: every layout keeps its experts whole (ETP 1)")
    pln.add_argument("--budget", type=int, default=200,
                     help="simulate at least this many candidates, best estimates first (default 200)")
    pln.add_argument("--out", default="plan", help="output folder (default: plan)")
    pln.add_argument("--jobs", type=int, default=None, help="local worker processes (default: all cores)")
    pln.add_argument("--dask-scheduler", metavar="ADDRESS",
                     help="simulate the candidates on this Dask cluster, e.g. tcp://host:8786")
    pln.add_argument("--resume", action="store_true",
                     help="continue an interrupted plan in --out: simulate only the candidates it did not finish")
    pln.add_argument("--json", action="store_true", help="print the ranked top K as JSON instead of the table")
    return p


def _dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--memory-limit -5GB`` -> ``--memory-limit=-5GB``: argparse takes a value that starts
    with '-' (and is not a plain negative number) for a flag and says "expected one argument";
    joined, the value reaches the check that names the rule."""
    takes_value, flags = set(), set()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for p in [parser, *(c for a in subs for c in a.choices.values())]:
        for action in p._actions:
            flags.update(action.option_strings)
            if action.option_strings and action.nargs is None and not isinstance(action, argparse._StoreConstAction):
                takes_value.update(action.option_strings)
    out, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] not in flags \
                and len(argv[i + 1]) > 1:
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(_dash_values(parser, sys.argv[1:] if argv is None else list(argv)))
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "schedule":
            return _cmd_schedule(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "calibrate":
            return _cmd_calibrate(args)
        if args.command == "model":
            return _cmd_model(args)
        if args.command == "plan":
            return _cmd_plan(args)
        return _cmd_schedules()
    except (ScenarioError, ScheduleError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM (signals.py): outputs are written all-or-nothing (outputs.write_all),
        # so stopping here leaves the output folder as it was; 130 / 143 = 128 + the signal.
        word, code = stopped(exc)
        print(word, file=sys.stderr)
        return code
    except BrokenPipeError:
        # `dualpipe-sim schedule ... | head`: the reader left; that is not an error.
        # Point stdout at devnull so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # any other file the OS refused (outputs.py words its own): one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _chart_files(plots: str, png_names) -> list[str]:
    """The chart files ``--plots`` writes, for the output check before any work."""
    return [*(png_names if plots in ("png", "all") else ()), *(["report.html"] if plots in ("html", "all") else [])]


def _refuse_unused_options(names: list[str], scenario) -> None:
    error = registry.unused_option(names, scenario.options())
    if error is not None:
        raise error


def read_schedule_file(path: str) -> Schedule:
    try:
        text = limits.read_text(path, limits.MAX_SCHEDULE_BYTES)
    except limits.TooBig as exc:
        raise UsageError(f"--schedule-file: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--schedule-file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ScheduleError(f"--schedule-file {path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    # JSON or action strings, told apart by content; parsed and validated (actions.py).
    return actions.read_schedule(text, f"--schedule-file {path}")


def _prepare_charts(plots: str) -> None:
    """Before the first PNG chart: matplotlib imported lean (plots/lean.py), in this process only."""
    if plots in ("png", "all"):
        from .outputs.plots import lean

        lean.import_matplotlib()


def check_plots(plots: str) -> None:
    """--plots html needs the optional plotly package: say so before any work starts."""
    import importlib.util

    if plots in ("html", "all") and importlib.util.find_spec("plotly") is None:
        raise UsageError(f"--plots {plots}: report.html needs plotly: pip install 'dualpipe-sim[html]'")


def _check_pair_rank(trace, rank: int) -> None:
    _prepare_charts("png")
    from .outputs.plots import pair

    try:
        pair.pick(trace, rank)
    except ValueError as exc:
        raise UsageError(f"--pair-rank: {exc}") from None


def _cmd_run(args) -> int:
    check_plots(args.plots)
    scenario, inputs = load_resolved(args.scenario, args.overrides, args.unset)
    schedule = read_schedule_file(args.schedule_file) if args.schedule_file else None
    if schedule is not None:
        simulation.check_size(scenario, schedule)  # before any output work starts
    else:
        registry.get(scenario.pipeline.schedule)  # a misspelt name is the error, not the options it "does not take"
        _refuse_unused_options([scenario.pipeline.schedule], scenario)
    from .outputs.exports.chrome import trace_name, write_chrome_trace

    try:
        trace_file = trace_name(args.trace, args.out, (*RUN_FILES, "report.html", "repeat.json")) if args.trace else None
    except ValueError as exc:
        raise UsageError(f"--trace: {exc}") from None
    problem = None if args.repeat is None else repeat.repeat_problem(args.repeat, scenario.seed)
    if problem:
        raise UsageError(f"--repeat: {problem}")
    if args.pair_rank is not None and args.plots not in ("png", "all"):
        raise UsageError(f"--pair-rank: the pair view is part of gantt.png, which --plots {args.plots} does not draw")
    check_targets(args.out, ["metrics.json", *_chart_files(args.plots, RUN_FILES[1:]),
                             *([trace_file] if trace_file else []), *(["repeat.json"] if args.repeat else [])])
    with progress_bar("run") as progress:
        result = simulation.run(scenario, schedule, inputs)
        metrics = result.metrics
        if args.pair_rank is not None:
            _check_pair_rank(result.trace, args.pair_rank)  # after the run (it knows the ranks), before any file
        repeats = None
        if args.repeat:
            repeats = repeat.repeat(scenario, args.repeat, schedule, first=result, progress=progress)

        writers = {"metrics.json": write_text(metrics_json(metrics))}
        if args.plots in ("png", "all"):
            _prepare_charts(args.plots)
            from .outputs.plots.gantt_file import save_gantt  # matplotlib only when we draw
            from .outputs.plots.memory import save_memory

            writers["gantt.png"] = lambda path: save_gantt(result.trace, metrics, path, args.pair_rank)
            writers["memory.png"] = lambda path: save_memory(result.trace, metrics, path,
                                                             deferred=getattr(result.costs, "deferred", None) is not None)
        if args.plots in ("html", "all"):
            from .outputs.plots.report import save_report

            writers["report.html"] = lambda path: save_report([result], path)
        if trace_file:
            writers[trace_file] = lambda path: write_chrome_trace(result.trace, path)
        if repeats:
            writers["repeat.json"] = write_text(metrics_json(repeats))
        written = write_all(args.out, each_file(writers, progress))
    if args.json:  # with --repeat, the percentiles too (metrics.json itself stays the first seed's)
        sys.stdout.write(metrics_json({**metrics.to_dict(), "repeat": repeats} if repeats else metrics))
    else:
        low = "fp4" if scenario.model is not None and scenario.model.fp4 != "none" else "fp8"
        print(summary_table(metrics, bytes_given=activation_bytes_given(scenario), low=low))
        if "recompute" not in scenario.memory.model_fields_set and scenario.recompute() != "none":
            print(f"memory.recompute {scenario.recompute()}: {metrics.schedule}'s default (as its source runs it); "
                  "--set memory.recompute=none to leave it out")
        if repeats:
            print("\n" + repeat_table(repeats))
        print("\nwrote " + ", ".join(str(f) for f in written))
    for warning in (memory_warning(metrics), layout_warning(metrics)):
        if warning:  # not an error: the run is still worth reading
            print(warning, file=sys.stderr)
    note = actions.ignored_note(schedule) if schedule is not None else None
    if note:  # after success, on stderr: never a second line beside an error, never in --json output
        print(f"note: --schedule-file {args.schedule_file}: {note}", file=sys.stderr)
    warnings = oddities(scenario)
    jitter = scenario.costs.jitter
    if args.repeat and args.repeat > 1 and (jitter is None or jitter.cv == 0):  # ranks.slowdown is not random
        warnings.append(f"--repeat {args.repeat}: the scenario has no costs.jitter (or its cv is 0), so every "
                        f"seed gives the same result")
    _warn(warnings)
    return 0


def _warn(lines: list[str]) -> None:
    """Physically odd but legal input: after success, on stderr, one line each."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def summary_table(m: Metrics, bytes_given: bool = True, low: str = "fp8") -> str:
    a, c, s = m.analytic, m.comm, m.scalars()
    num = units.number
    lines = [
        f"schedule {m.schedule}: {units.layout(m.stages, m.ranks, m.microbatches)}",
        f"makespan {units.duration(m.makespan)}   bubble ratio {m.bubble_ratio:.2%}   "
        f"span bubble rate {m.span_bubble_rate:.2%}",
        "",
        *rank_table(m, bytes_given),
    ]
    closed_peak = "-" if a.peak_activation is None else a.peak_activation
    lines.append(f"\npeak activation (max over ranks): {s['peak_activation']} measured, {closed_peak} closed form")
    if a.bubble is None and a.reason:  # say why the closed-form column is empty
        lines.append(f"closed-form bubble not given: {a.reason}")
    ratio = "n/a" if c.overlap_ratio is None else f"{c.overlap_ratio:.1%}"
    lines.append(
        f"communication (ms, summed over ranks): p2p {num(c.p2p_time)}, all-to-all {num(c.a2a_time)}, "
        f"exposed {num(c.exposed)}, hidden {num(c.hidden)}, overlap {ratio}"
    )
    if m.step is not None:
        lines.append(step_line(m.step))
    if m.throughput is not None:
        lines.append(throughput_line(m.throughput))
    if m.validation_band is not None:  # how far off published runs of its class were: beside it, never applied
        lines.append(validation_band.describe(m.validation_band))
    return "\n".join(lines + memory_lines(m, low))


def rank_table(m: Metrics, bytes_given: bool = True) -> list[str]:
    """Per rank: times (ms), peak activations (count and bytes), stage copies held; a legend below."""
    a, ranks = m.analytic, m.per_rank
    # The closed forms predict the time between ops (one value for every rank), so they share its decimals;
    # with [chunk] that is less than idle (an op's own exposed all-to-all is inside the op).
    gaps = units.aligned([r.between_ops for r in ranks] + ([] if a.bubble is None else [a.bubble]))
    formula = "-" if a.bubble is None else gaps.pop()
    div, unit = units.byte_scale(max(r.peak_activation_bytes for r in ranks))
    peak_bytes = (units.aligned([r.peak_activation_bytes / div for r in ranks], digits=3) if bytes_given
                  else ["n/a"] * len(ranks))  # fmt: skip
    lines = text_table.render([
        ("", "rank", [str(r.rank) for r in ranks]),
        ("busy", "ms", units.aligned([r.busy for r in ranks])),
        ("idle", "ms", units.aligned([r.idle for r in ranks])),
        ("between", "ops ms", gaps),
        ("closed", "form ms", [formula] * len(ranks)),
        ("peak", "acts", [str(r.peak_activation) for r in ranks]),
        ("peak", unit if bytes_given else "bytes", peak_bytes),
        ("param", "copies", [str(r.parameter_copies) for r in ranks]),  # stages held: not the parameter bytes
    ])
    lines += ["between ops: the rank's idle time between its ops (what the closed form predicts)",
              "peak: stage-activations held at once, and their bytes; param copies: stages whose parameters it holds"]
    if not bytes_given:
        lines.append("peak bytes n/a: no memory.activation (nor [model]) gives the bytes of an activation")
    return lines


def _wrap(name: str) -> tuple[str, str]:
    """A heading on two lines: its last word below, the rest above."""
    top, _, bottom = name.rpartition(" ")
    return top, bottom


def throughput_line(t) -> str:
    """With a [model]: tokens/s, per GPU and MFU of the step (the makespan alone without [step])."""
    step = (f"step {units.duration(t.step_time)}" if t.step_source == "step"
            else f"step = pipeline makespan only, {units.duration(t.step_time)}, no [step] work")  # fmt: skip
    mfu = "n/a (no [hardware] peak)" if t.mfu is None else units.percent(t.mfu)
    return (f"throughput ({step}): {units.number(t.tokens_per_second)} tokens/s, "
            f"{units.number(t.tokens_per_second_per_gpu)} tokens/s per GPU ({units.count(t.gpus)} GPUs), MFU {mfu}")


def memory_lines(m: Metrics, low: str = "fp8") -> list[str]:
    """Per-rank memory in GB (with a [model]) against the device's capacity; ``low``: what the low-precision weight
    copies are ("fp4" on a model.fp4 run: metrics.json's fp8_weights holds NVFP4 copies there, docs/model.md)."""
    if m.memory_total() is None:
        return []
    gb = lambda x: f"{x / 1e9:.2f}"  # noqa: E731 - decimal GB, as units.nbytes and the datasheets
    cap = "unknown" if not m.device_memory else f"{gb(m.device_memory)} GB"
    # "dyn peak": activations + P2P + all-to-all buffers (and model.defer_embedding_wgrad's) at their joint peak (total
    # adds that, not the three)
    names = ("params", f"{low} w", "grads", "optim", "zero buf", "act peak", "p2p buf", "a2a buf", "dyn peak",
             "runtime", "total")  # fmt: skip
    terms = [(mem.parameters, mem.fp8_weights, mem.gradients, mem.optimizer, mem.sharding_buffers,
              mem.activations_peak, mem.p2p_buffers, mem.a2a_buffers, mem.dynamic_peak, mem.runtime, mem.total)
             for mem in (r.memory for r in m.per_rank)]
    deepep = any(r.memory.deepep_buffers for r in m.per_rank)  # model.moe_dispatcher = "deepep": its column
    if deepep:
        names = (*names[:5], "deepep buf", *names[5:])
        terms = [(*t[:5], r.memory.deepep_buffers, *t[5:]) for t, r in zip(terms, m.per_rank)]
    over = ["over" if m.device_memory and t[-1] > m.device_memory else "" for t in terms]
    columns = [("", "rank", [str(r.rank) for r in m.per_rank])]
    columns += [(*_wrap(name), [gb(t[i]) for t in terms]) for i, name in enumerate(names)]
    lines = ["", f"memory per rank (GB; device {cap}):", *text_table.render(columns + [("", "", over)])]
    lines.append(f"total = params + {low} w + grads + optim + zero buf{' + deepep buf' if deepep else ''} + dyn peak + "
                 f"runtime (docs/model.md)")
    return lines


def memory_warning(m: Metrics) -> str | None:
    """One line for stderr when some rank needs more memory than the device has."""
    from .model.memory import over_capacity

    over = over_capacity(m)
    if not over:
        return None
    worst = max(over, key=lambda r: r.memory.total)
    return (f"warning: {len(over)} of {m.ranks} ranks exceed the device memory ({units.nbytes(m.device_memory)}): "
            f"rank {worst.rank} needs {units.nbytes(worst.memory.total)}")


UNEQUAL_RANKS = 1.25  # with a [model]: one rank's compute this many times another's is worth a warning


def layout_warning(m: Metrics, named: bool = False) -> str | None:
    """With a [model] (where parallel.layout places the layers): one line when the ranks' compute
    (busy time, all the stages each holds) is more than 25% apart; the busiest rank sets the pace.
    ``named``: say which schedule's ranks (compare: each schedule folds the stages its own way)."""
    if m.throughput is None and all(r.memory is None for r in m.per_rank):
        return None
    hi = max(m.per_rank, key=lambda r: r.busy)
    lo = min(m.per_rank, key=lambda r: r.busy)
    if not lo.busy > 0 or hi.busy <= UNEQUAL_RANKS * lo.busy:
        return None
    under = f"under {m.schedule}, " if named else ""
    return (f"warning: parallel.layout: {under}rank {hi.rank} computes {hi.busy / lo.busy:.2f}x what rank {lo.rank} does "
            f"(busy {units.duration(hi.busy)} on stages {hi.stages} against {units.duration(lo.busy)} on "
            f"{lo.stages}, more than 25% apart): the busiest rank sets the pipeline's pace; move layers with "
            f"parallel.layout (e.g. fewer on the stage with the head)")


def repeat_table(doc: dict) -> str:
    """The --repeat summary: p50 / p95 / max of makespan and bubble ratio."""
    runs = doc["runs"]
    lines = [
        f"repeat: {doc['repeats']} seeds ({runs[0]['seed']}..{runs[-1]['seed']})",
        f"{'':<13} {'p50':>10} {'p95':>10} {'max':>10}",
    ]
    for key, label, fmt in (("makespan", "makespan (ms)", units.number), ("bubble_ratio", "bubble ratio", "{:.2%}".format)):
        s = doc["summary"][key]
        lines.append(f"{label:<13} " + " ".join(f"{fmt(s[p]):>10}" for p in ("p50", "p95", "max")))
    return "\n".join(lines)


def step_line(st) -> str:
    """The [step] summary: the whole step and its parts (max over ranks; see docs/step.md)."""
    num, g, x = units.number, st.grad_sync, st.cross_copy_sync
    return (
        f"training step (ms): total {num(st.total)}, pipeline {num(st.pipeline)}; most on one rank: "
        f"grad sync {num(g.time)} (exposed {num(g.exposed)}), cross-copy sync {num(x.time)} "
        f"(exposed {num(x.exposed)}), optimizer {num(st.optimizer)}"
        + (f", compute slowed beside data-parallel collectives {num(st.slowed)}" if st.slowed is not None else "")
        + (f", deferred output-layer wgrad drain {num(st.drain)}" if st.drain is not None else "")
    )


def _cmd_schedule(args) -> int:
    family = registry.get(args.name)
    for option in ("chunks_per_rank", "microbatch_group"):
        if getattr(args, option) is not None and option not in family.options:
            takers = [n for n, f in registry.families().items() if option in f.options]
            raise UsageError(f"{flag_of(option)}: schedule {args.name} does not take it (only "
                             f"{', '.join(takers)} {'does' if len(takers) == 1 else 'do'})")
    if limits.size_problem(args.stages, args.microbatches, limits.DEFAULT_MAX_MEMORY):  # the guard run holds to
        ops, need = limits.estimate(args.stages, args.microbatches)
        raise UsageError(
            f"--stages {args.stages} x --microbatches {args.microbatches} is up to {units.count(ops)} ops, about "
            f"{units.nbytes(need)} to build, over the {units.nbytes(limits.DEFAULT_MAX_MEMORY)} every verb holds to "
            f"(limits.max_memory); use fewer stages or micro-batches"
        )
    schedule = registry.build(args.name, args.stages, args.microbatches, chunks_per_rank=args.chunks_per_rank,
                              microbatch_group=args.microbatch_group)
    if args.format == "json":
        print(json.dumps(schedule.to_json()))
    elif args.format == "actions":
        sys.stdout.write(actions.format_actions(schedule))
    else:
        print(schedule.to_text())
    return 0


def _cmd_schedules() -> int:
    families = registry.families()
    width = max(18, *(len(name) for name in families))  # the longest name still lines up
    for name, family in families.items():
        print(f"{name:<{width}} {family.description}")
        print(f"{'':<{width}} constraints: {family.constraints}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import PLOTS, RESULTS, SUMMARY, Interrupted, SweepError, run_sweep  # charts: only for sweeps

    if args.jobs is not None and args.dask_scheduler:
        raise UsageError("--jobs: does not apply with --dask-scheduler (the cluster's workers run the points)")
    if not args.resume and (Path(args.out) / RESULTS).exists():
        raise UsageError(f"--out {args.out}: {Path(args.out) / RESULTS} already exists; pass --resume to continue it, "
                         f"or use another --out")
    axes = parse_grid(args.grid)
    check_targets(args.out, [RESULTS, SUMMARY, *(PLOTS if args.plots == "png" else ())])
    _prepare_charts(args.plots)
    try:
        with progress_bar("sweep") as progress:
            report = run_sweep(args.scenario, axes, args.out, overrides=args.overrides, unset=args.unset, jobs=args.jobs,
                               memory_limit=args.memory_limit, resume=args.resume,
                               dask_scheduler=args.dask_scheduler, progress=progress, charts=args.plots == "png")
    except SweepError as exc:
        raise UsageError(f"{flag_of(exc.param)}: {exc.message}") from None
    except Interrupted as exc:
        word, code = stopped(exc.signal)
        print(f"{word}: {exc.finished} finished rows are in {exc.path}; "
              f"rerun with --resume to run the other {exc.left} points", file=sys.stderr)
        return code
    c = report.counts
    print(f"{report.points} points ({report.ran} run now on {report.executor}): "
          f"{c['ok']} ok, {c['skipped']} skipped, {c['error']} error")
    if report.other_rows:
        print(f"results.csv also keeps {report.other_rows} rows of earlier grids (after this grid's rows)")
    print("wrote " + ", ".join(str(f) for f in report.files))
    _warn([sweep_warning(o, report.points) for o in report.oddities])
    return 0


def sweep_warning(odd, total: int) -> str:
    """One grid-wide oddity: its line at the first point it holds for, and how many points."""
    if len(odd.points) == total:
        return f"{odd.text} (at every point)"
    return f"{odd.text} (at {len(odd.points)} of {total} points, e.g. {' '.join(odd.example.overrides)})"


# -- --grid syntax --------------------------------------------------------------------------
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*$")
_EXAMPLE = "e.g. pipeline.stages=4,8,16 or pipeline.microbatches=8:64:8"


def parse_axis(spec: str):
    """``--grid KEY=v1,v2,...`` or ``KEY=start:stop:step`` -> Axis.  Each value is read
    exactly like a ``--set`` value (TOML, else a bare string); a range's stop is
    included when the steps land on it (8:64:8 is 8, 16, ..., 64; 8:60:8 ends at 56)."""
    key, sep, body = spec.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise UsageError(f"--grid: expected KEY=VALUES with a dotted scenario key, got {shown(spec)}; {_EXAMPLE}")
    from .sweep.grid import Axis

    source = f"--grid {spec}"
    try:
        match = _RANGE.match(body)
        texts = _range_texts(*match.groups()) if match else _split_list(body)
    except UsageError as exc:  # field first, as every error line: the key, the rule, then the --grid it is in
        raise UsageError(f"{cut(key)}: {exc} (in {cut(source)})") from None
    return Axis(key, texts, tuple(parse_override(f"{key}={t}")[1] for t in texts), source)


def _range_texts(start: str, stop: str, step: str) -> tuple[str, ...]:
    try:
        a, b, s = Decimal(start), Decimal(stop), Decimal(step)
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise UsageError("start:stop:step must be numbers") from None
    if s <= 0:
        raise UsageError(f"the step of start:stop:step must be > 0, got {step}")
    if b < a:
        raise UsageError("start must be <= stop in start:stop:step")
    from .sweep.grid import MAX_POINTS

    count = int((b - a) / s) + 1  # exact decimal arithmetic: 0.1:0.5:0.1 has 5 values
    if count > MAX_POINTS:
        raise UsageError(f"{count} values, more than the {MAX_POINTS} a sweep takes")
    integral = all(re.fullmatch(r"[+-]?\d+", t) for t in (start, stop, step))
    values = [a + i * s for i in range(count)]
    # Integers stay integers (pipeline.stages must be whole); anything else becomes a float.
    return tuple(str(int(v)) if integral else repr(float(v)) for v in values)


def _split_list(body: str) -> tuple[str, ...]:
    """Split on commas that are not inside brackets, braces or quotes (TOML lists keep theirs)."""
    items, depth, quote, current = [], 0, None, []
    for ch in body:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    if depth != 0 or quote:
        raise UsageError("unbalanced brackets or quotes in the value list")
    if any(not item for item in items):
        raise UsageError(f"empty value in the list, {_EXAMPLE}")
    if ":" in body and len(items) == 1 and not body.strip().startswith(("[", "\"", "'")):
        raise UsageError(f"a range is start:stop:step with three numbers, {_EXAMPLE}")
    return tuple(items)


def parse_grid(specs: list[str]) -> list:
    """Every --grid as sweep axes, checked as a whole by the library (a key once, a value once, size)."""
    from .sweep.grid import make_axes

    return make_axes([parse_axis(s) for s in specs])


# compare's note on a schedule run on other GPUs than 1F1B names this flag to run them all on 1F1B's.
SAME_GPUS_FLAG = "--same-gpus {}"


def _cmd_compare(args) -> int:
    check_plots(args.plots)
    scenario = load_scenario(args.scenario, args.overrides, args.unset)
    # "1f1b, dualpipe,1f1b" -> ["1f1b", "dualpipe"]: order kept, repeats dropped.
    names = list(dict.fromkeys(n.strip() for n in args.schedules.split(",") if n.strip()))
    if not names:
        raise UsageError("--schedules: give at least one schedule name, e.g. 1f1b,dualpipe")
    _refuse_unused_options(names, scenario)
    if args.same_gpus is not None and not 1 <= args.same_gpus <= 1_000_000:
        raise UsageError(f"--same-gpus: must be a whole number of GPUs from 1 to 1,000,000, got {args.same_gpus}")
    check_targets(args.out, ["compare.md", *_chart_files(args.plots, ["compare.png"])])
    source = f"`{args.scenario}`" + "".join(f" `--unset {k}`" for k in args.unset) + \
        "".join(f" `--set {o}`" for o in args.overrides)
    _prepare_charts(args.plots)
    with progress_bar("compare") as progress:
        result, written = compare.run_and_write(scenario, names, args.out, source, plots=args.plots,
                                                progress=progress, same_gpus=args.same_gpus, rerun=SAME_GPUS_FLAG)
    print(compare.report(result, SAME_GPUS_FLAG))
    print("\nwrote " + ", ".join(str(f) for f in written))
    _warn(oddities(scenario))
    # One line, from the first schedule whose ranks are uneven, named: the stages a rank holds differ by schedule.
    layout = next((w for w in (layout_warning(r.metrics, named=True) for r in result.results) if w), None)
    if layout:
        print(layout, file=sys.stderr)
    return 0


# plan()'s keywords that `plan` takes as flags: a PlanError naming one is worded with the flag
PLAN_FLAGS = ("gpus", "global_batch", "seq", "hardware", "top", "budget", "jobs", "resume", "schedules",
              "search_expert_tensor")


def flag_of(keyword: str) -> str:
    """The flag of a library keyword (plan(), run_sweep(), a schedule option): global_batch -> --global-batch."""
    return "--" + keyword.replace("_", "-")


def _cmd_plan(args) -> int:
    from . import plan
    from .sweep.errors import SweepError

    names = None
    if args.schedules is not None:
        names = list(dict.fromkeys(n.strip() for n in args.schedules.split(",") if n.strip()))
        if not names:
            raise UsageError("--schedules: give at least one schedule name, e.g. 1f1b,dualpipe")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.jobs is not None and args.dask_scheduler:
        raise UsageError("--jobs: does not apply with --dask-scheduler (the cluster's workers run the candidates)")
    if not args.resume and (Path(args.out) / plan.JOURNAL).exists():
        raise UsageError(f"--out {args.out}: {Path(args.out) / plan.JOURNAL} holds the finished candidates of an "
                         f"interrupted plan; pass --resume to continue it, or use another --out")  # fmt: skip
    pin = next((o for o in args.overrides if o.partition("=")[0].strip() == "parallel.expert_tensor"), None)
    if args.search_expert_tensor and pin is not None:
        raise UsageError(f"--search-expert-tensor: does not apply with --set {pin} (the pin fixes the expert tensor "
                         f"parallelism); drop one")  # fmt: skip
    check_targets(args.out, [*plan.out_files(max(args.top, 1)), plan.JOURNAL])
    try:
        with progress_bar("plan") as progress:
            result = plan.plan(args.source, args.gpus, args.global_batch, args.seq, hardware=args.hardware,
                               top=args.top, schedules=names, overrides=args.overrides, unset=args.unset, jobs=args.jobs,
                               budget=args.budget, progress=progress, out=args.out, resume=args.resume,
                               dask_scheduler=args.dask_scheduler, search_expert_tensor=args.search_expert_tensor)
            _prepare_charts("png")
            written = plan.write(result, args.out, progress)
    except SweepError as exc:  # the Dask address, worded as sweep words it
        raise UsageError(f"{flag_of(exc.param)}: {exc.message}") from None
    except (plan.PlanError, ScheduleError) as exc:  # plan()'s keyword (global_batch): the flag typed (--global-batch)
        if exc.field in PLAN_FLAGS:
            raise UsageError(f"{flag_of(exc.field)}: {exc.rule}") from None
        raise
    except plan.Interrupted as exc:
        word, code = stopped(exc.signal)
        print(f"{word}: {exc.finished} finished candidates are in {exc.path}; "
              f"rerun with --resume to simulate the other {exc.left}", file=sys.stderr)
        return code
    dropped = plan.files.dropped_line(result)
    if args.json:
        if dropped:  # stdout is the JSON
            print(f"note: {dropped[0].lower()}{dropped[1:]}", file=sys.stderr)
        print(json.dumps(plan.top_json(result, args.out), indent=2))
        return 0
    if dropped:  # the header: what of the source plan did not keep, before what it chose
        print(dropped + "\n")
    print(plan.files.markdown_table(plan.files.table(result)))
    print(plan.files.band_line(result))  # beside the tokens/s, as plan.md has it: reported, never applied
    if plan.files.none_fits(result):
        print("\n" + plan.files.none_fits(result))
    print("\npruned: " + ", ".join(f"{k} ({v})" for k, v in result.pruned.items()))
    print("wrote " + ", ".join(str(f) for f in written[:3]) + f" and {len(written) - 3} scenario TOMLs")
    noop = plan.files.search_noop(result)
    if noop:  # after success, on stderr, as the other notes (plan.md's ETP line says it too)
        print(f"note: --search-expert-tensor: {noop.replace('the search-expert-tensor option', 'it')}", file=sys.stderr)
    return 0


def _cmd_calibrate(args) -> int:
    from . import calibrate
    from .inputs import kineto

    if args.out:
        check_targets(args.out, calibrate.OUT_FILES)  # before the trace is read
    try:
        cal = calibrate.calibrate(kineto.read(args.trace, kineto.parse_map(args.names)), args.trace)
    except kineto.TraceError as exc:
        raise UsageError(str(exc)) from None
    written = calibrate.write(cal, args.out) if args.out else []
    sys.stdout.write(calibrate.to_json(cal) if args.json else calibrate.report_text(cal) + "\n")
    if written and not args.json:
        print("\nwrote " + ", ".join(str(f) for f in written))
    return 0


@contextmanager
def progress_bar(desc: str):
    """A Progress (see progress.py) drawn as a tqdm bar on stderr, or None when stderr is
    not a terminal.  The bar shows only once the work has taken a second."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, file=sys.stderr, leave=False, delay=1.0, dynamic_ncols=True)

    def update(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(what, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _cmd_model(args) -> int:
    from .model import report
    from .inputs.scenario import apply_overrides, load_raw, sections_only

    if args.source.endswith(".json"):
        # A bare config: one stage, the verb's defaults; --set still applies to scenario keys.
        raw = {"pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1}, "model": {"config": args.source}}
    else:
        raw = load_raw(args.source)
    scenario = sections_only(apply_overrides(raw, args.overrides, args.unset))
    if scenario.model is None:
        raise UsageError(f"{args.source}: no [model] section to describe")
    # the schedule places the stages on ranks (the per-rank figures): one `run` would refuse is refused here too,
    # its family's constraints as it is built, then ZeRO 3 with weight gradients apart (simulation.check_fsdp)
    p = scenario.pipeline
    registry.get(p.schedule)  # a misspelt name is named before the options it would not take
    _refuse_unused_options([p.schedule], scenario)
    schedule = simulation.build_schedule(scenario)
    derived = scenario.derived()  # the model alone: this verb needs no costs (resolve.py)
    simulation.check_fsdp(schedule, derived)
    if args.json:
        print(json.dumps(report.summary(derived, scenario), indent=2, allow_nan=False))
    else:
        print(report.text(derived, explain=args.explain, typed=report.hand_typed(scenario), scenario=scenario))
    return 0


def leave(code: int) -> NoReturn:
    """End this command's process with ``code``, skipping the interpreter's teardown.

    A normal exit frees every object of ~500 imported modules one by one
    (numpy, pydantic, matplotlib): about 0.1 s of CPU, a tenth of a quickstart
    run, for memory the operating system takes back anyway.  The exit handlers a
    normal exit runs (``atexit``, and through it ``weakref.finalize``) still run,
    and both streams are flushed first.  With another thread still alive (a
    cluster client, say) it exits the usual way, which joins it.  Only the process
    entry points call this, never the library or the tests' in-process ``main``.
    """
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    stop_on_sigterm()
    leave(main())
