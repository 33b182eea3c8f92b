"""Engine speed at scale: wall time against a plain linear pass, trace rows per second, peak RSS.

    python benchmarks/engine.py [--repeat N] [--tiny] [--cases a,b,...]
    python benchmarks/engine.py --targets [--tiny]      # issue 23's targets, best of 3
    python benchmarks/engine.py --parts [--tiny]        # where the first target's time goes

Cases (issues 8 and 13), each measured in a fresh subprocess so that peak RSS
(resource.getrusage ru_maxrss) is that case's alone:

* a        DualPipe, 16 ranks x 256 micro-batches, component model (4 MoE layers
           per chunk: scenarios/deepseek-v3.toml with pipeline.microbatches=256).
* a-simpy  a forced through the SimPy engine (validate() first, as run() does).
* dp-simple DualPipe 16 x 256 with simple costs (F, B, W, F&B, no P2P): the peer
           comparison (an existing pure-Python emulator: ~0.05 s).
* b        1F1B, 64 ranks x 1024 micro-batches, simple costs, no P2P (peer: ~3 s).
* b-p2p    the same with comm.p2p = 0.05: every activation and gradient crosses a link.
* b-simpy  b-p2p forced through the SimPy engine, for reference.

"auto" cases use simulation.simulate, the one place the engine is chosen.

Each case also runs at 1/8, 1/4 and 1/2 of its micro-batches (c): the op count
grows linearly, so time per op should stay flat.

Columns: ``run s`` is simulation.run end to end (build the schedule, validate,
simulate, metrics); ``sim s`` the simulation alone (proof that the schedule can
run, the replay and the trace arrays); ``loop s`` a plain linear pass over the
same ops (:func:`reference_loop`: start = max(rank free, inputs ready), no
trace, no link queues); ``sim/loop`` the ratio (issue 13's target for simple
costs: <= 5); ``cpu ratio`` the same in CPU seconds (time.process_time), which
other jobs on a shared machine do not inflate; ``us/op`` = CPU microseconds of
the simulation per op (an FB pair counts as two ops; issue 13's target for the
component model: < 15); ``rows/s`` = trace rows (compute
intervals, transfers, all-to-all phases) per second of sim; ``RSS MB`` = the
subprocess's peak resident memory.  Wall times are the best of --repeat runs (the machine is
shared, so the best run is the least disturbed one); RSS is the largest seen.
--tiny shrinks every case to a few hundred ops (the test suite runs it so the
script stays runnable).

``--targets`` measures issue 23's targets instead (CPU seconds, best of 3, in one
process, the simulation's runs and the longest-path pass's taken in turn; :func:`targets`):

* ``replay / longest path``: 1F1B 64 x 1024 with ``comm.p2p = 0.05``: the
  simulation (completeness scan, replay, trace arrays) plus metrics, against
  :func:`longest_path_pass`, a tight pure-Python longest-path pass over the
  same actions (the graph built beforehand, untimed): target within 4x.  Best
  of 3 rounds after 6 (a process past its heap's growth, as a plan search is),
  and in brackets the best of the process's first 3 rounds;
* ``components``: case a (DualPipe 16 x 256, ``[chunk]``) simulation plus
  metrics per op: target under 10 us;
* ``--trace``: writing the Chrome trace of the 1F1B case, per op (target under
  10 us) and its peak Python memory beyond the trace arrays (tracemalloc),
  a few blocks of rows whatever the ops per rank;
* ``size guard`` (:func:`size_guard_rows`): peak RSS (VmHWM) of ``dualpipe-sim
  run`` in a fresh process.  Per op: ``--plots none`` at 1/8 and full size of
  1F1B 64 x 1024 with P2P, ZB-H1 16 x 2048 and DualPipe 16 x 256 with
  ``[chunk]``; the growth per op against what ``limits.memory_for`` reserves
  over the same growth (3 S M ops at the scenario's trace rows per op).  Per
  box: ``--plots png`` over ``--plots none`` at 1F1B 64 x 128, whose Gantt
  chart draws its 16,384 actions as boxes, less ``limits.chart_bytes`` (the
  picture's pixels), against ``limits.BYTES_PER_BOX``.
  Target within 2x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK = ROOT / "scenarios" / "deepseek-v3.toml"
FRACTIONS = (8, 4, 2, 1)  # 1/8, 1/4, 1/2, full
SIMPLE = {"forward": 1.0, "backward": 2.0, "weight": 1.0, "overlapped": 2.5}

# name: (schedule, stages, micro-batches, tiny stages, tiny micro-batches, p2p, costs, engine)
CASES = {
    "a": ("dualpipe", 16, 256, 4, 64, None, "components", "auto"),
    "a-simpy": ("dualpipe", 16, 256, 4, 64, None, "components", "simpy"),
    "dp-simple": ("dualpipe", 16, 256, 4, 64, 0.0, "simple", "auto"),
    "b": ("1f1b", 64, 1024, 4, 64, 0.0, "simple", "auto"),
    "b-p2p": ("1f1b", 64, 1024, 4, 64, 0.05, "simple", "auto"),
    "b-simpy": ("1f1b", 64, 1024, 4, 64, 0.05, "simple", "simpy"),
}


def scenario_for(case: str, fraction: int, tiny: bool):
    from dualpipe_sim.inputs import scenario

    name, stages, mbs, tiny_stages, tiny_mbs, p2p, costs, _ = CASES[case]
    if tiny:
        stages, mbs = tiny_stages, tiny_mbs
    shape = {"schedule": name, "stages": stages, "microbatches": mbs // fraction}
    if costs == "components":
        raw = scenario.load_raw(DEEPSEEK)
        raw["pipeline"].update(shape)
        return scenario.from_dict(raw)
    return scenario.from_dict({"pipeline": shape, "costs": dict(SIMPLE), "comm": {"p2p": p2p}})


def reference_loop(schedule, costs) -> float:
    """A plain linear pass over the ops: each rank runs its actions in order, an action
    starting at max(the rank's previous end, each input's arrival); inputs named by plain
    tuples, lengths looked up once per kind of action, a crossing result arriving p2p later.
    No trace, no link queues, no checks: the floor a simulator of the same ops can be held to."""
    ranks = schedule.ranks
    n, last, p2p = len(ranks), schedule.stages - 1, costs.p2p
    where = schedule.placement()
    length: dict = {}
    for actions in ranks:
        for a in actions:
            sig = (a.forward.stage, a.backward.kind, a.backward.stage) if a.kind == "FB" else (a.kind, a.stage)
            if sig not in length:
                length[sig] = costs.timeline(a).length
    ready: dict = {}  # ("F"|"G"|"I", microbatch, stage, direction) -> time on its consumer's rank
    cursor, clock = [0] * n, [0.0] * n
    moved = True
    while moved:
        moved = False
        for r in range(n):
            actions, i, t = ranks[r], cursor[r], clock[r]
            while i < len(actions):
                a = actions[i]
                ops = (a.forward, a.backward) if a.kind == "FB" else (a,)
                start, blocked = t, False
                for kind, m, s, d in ops:
                    if kind == "F":
                        keys = (("F", m, s - 1, d),) if s else ()
                    elif kind == "W":
                        keys = (("I", m, s, d),)
                    else:
                        keys = (("F", m, s, d), ("G", m, s + 1, d)) if s < last else (("F", m, s, d),)
                    for key in keys:
                        at = ready.get(key)
                        if at is None:
                            blocked = True
                            break
                        if at > start:
                            start = at
                    if blocked:
                        break
                if blocked:
                    break
                sig = (a.forward.stage, a.backward.kind, a.backward.stage) if a.kind == "FB" else (a.kind, a.stage)
                t = start + length[sig]
                for kind, m, s, d in ops:
                    if kind == "F":
                        ready[("F", m, s, d)] = t if s == last or where[(d, s + 1)] == r else t + p2p
                    elif kind != "W":
                        ready[("G", m, s, d)] = t if s == 0 or where[(d, s - 1)] == r else t + p2p
                        if kind == "I":
                            ready[("I", m, s, d)] = t
                i += 1
                moved = True
            cursor[r], clock[r] = i, t
    return max(clock)


def action_graph(schedule, costs) -> tuple[list[int], list[float], list[tuple[tuple[int, float], ...]]]:
    """The actions as a graph for :func:`longest_path_pass`: a topological order, each action's
    length and its predecessors (previous action on its rank at 0, the producers of its inputs
    at 0 on the same rank, else at ``costs.p2p``).  Built with the rules' needs, untimed."""
    from dualpipe_sim.schedules.ir import ops_of
    from dualpipe_sim.schedules.rules import needs, produced

    node, rank_of, producer = [], [], {}
    for rank, actions in enumerate(schedule.ranks):
        for a in actions:
            for op in ops_of(a):
                for key in produced(*op):
                    producer[key] = len(node)
            node.append(a)
            rank_of.append(rank)
    length = [costs.timeline(a).length for a in node]
    preds, first = [], 0
    for rank, actions in enumerate(schedule.ranks):
        for i, a in enumerate(actions):
            me = first + i
            edges = [(me - 1, 0.0)] if i else []
            for op in ops_of(a):
                for key in needs(*op, schedule.stages):
                    p = producer[key]
                    edges.append((p, 0.0 if rank_of[p] == rank else costs.p2p))
            preds.append(tuple(edges))
        first += len(actions)
    indegree = [len(e) for e in preds]
    users = [[] for _ in node]
    for me, edges in enumerate(preds):
        for p, _ in edges:
            users[p].append(me)
    order = [i for i, d in enumerate(indegree) if d == 0]
    for i in order:  # Kahn: the list grows as nodes become ready
        for u in users[i]:
            indegree[u] -= 1
            if indegree[u] == 0:
                order.append(u)
    return order, length, preds


def longest_path_pass(order, length, preds) -> float:
    """end[i] = max over predecessors (end[p] + edge) + length[i], in topological order: the
    tightest pure-Python pass over the same actions (no trace, no link queues, no checks)."""
    end = [0.0] * len(length)
    for i in order:
        t = 0.0
        for p, w in preds[i]:
            v = end[p] + w
            if v > t:
                t = v
        end[i] = t + length[i]
    return max(end)


def _best_cpu(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def _best_cpu_interleaved(fns, repeat: int = 3, skip: int = 0) -> list[float]:
    """Best of ``repeat`` CPU times of each function after ``skip`` untimed rounds, their runs
    taken in turn (f, g, f, g, ...) so that a ratio of two of them compares runs made under the
    same load of a shared machine."""
    best = [float("inf")] * len(fns)
    for round_ in range(skip + repeat):
        for k, fn in enumerate(fns):
            c = time.process_time()
            fn()
            if round_ >= skip:
                best[k] = min(best[k], time.process_time() - c)
    return best


WARM_ROUNDS = 3  # untimed rounds (after 3 timed "first" ones) before the ratio's best of 3


def targets(tiny: bool) -> None:
    """Issue 23's targets (module docstring), printed as a table."""
    import os
    import tempfile
    import tracemalloc

    from dualpipe_sim import limits, simulation
    from dualpipe_sim.outputs.exports.chrome import write_chrome_trace
    from dualpipe_sim.readers.metrics import compute_metrics

    rows = []
    with simulation.gc_paused():
        for case, family in (("b-p2p", "1F1B"), ("a", "DualPipe")):
            result = simulation.run(scenario_for(case, 1, tiny))
            extra = ", p2p 0.05" if case == "b-p2p" else ", [chunk]"
            what = f"{family} {result.trace.ranks} x {result.trace.microbatches}{extra}"
            schedule, costs, ops = result.schedule, result.costs, result.schedule.num_ops()
            run = lambda: compute_metrics(simulation.simulate(schedule, costs))  # noqa: E731
            if case != "b-p2p":
                sim = _best_cpu(run)
            else:
                graph = action_graph(schedule, costs)
                assert longest_path_pass(*graph) == result.trace.compute["end"].max()  # the same makespan
                # The first rounds of a process pay for growing its heap (fresh pages, faulted in:
                # dear on this VM); a plan search runs thousands in one process, past that.
                cold, cold_floor = _best_cpu_interleaved([run, lambda: longest_path_pass(*graph)])
                sim, floor = _best_cpu_interleaved([run, lambda: longest_path_pass(*graph)], skip=WARM_ROUNDS)
                rows.append((f"replay + trace + metrics / longest path ({what}; its first 3 rounds)",
                             f"{sim / floor:.1f}x ({cold / cold_floor:.1f}x)", "<= 4x"))
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "trace.json")
                    write = _best_cpu(lambda: write_chrome_trace(result.trace, path))
                    tracemalloc.start()
                    write_chrome_trace(result.trace, path)
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    size = os.path.getsize(path)
                rows.append((f"--trace, per op ({what})", f"{1e6 * write / ops:.1f} us", "< 10 us"))
                # The writer works a block of rows at a time: its memory is a few blocks, whatever the ops.
                rows.append((f"--trace, peak Python memory while writing ({size / ops:.0f} B of JSON per op)",
                             f"{peak / 2**20:.2f} MB ({ops / result.trace.ranks:.0f} ops per rank)", "constant"))
            rows.append((f"replay + trace + metrics, per op ({what})", f"{1e6 * sim / ops:.2f} us", "< 10 us" if case == "a" else ""))
    rows += size_guard_rows(tiny)
    width = max(len(r[0]) for r in rows)
    print(f"{'target':<{width}}  {'measured':>34}  goal")
    for what, got, goal in rows:
        print(f"{what:<{width}}  {got:>34}  {goal}")


PARTS = ("reading the schedule into columns, proving it complete", "planning the loop (numpy)", "the loop",
         "the trace arrays", "metrics", "the longest-path pass (the floor)")


def parts(tiny: bool) -> None:
    """Where the time of ``--targets``' first row goes, per op of 1F1B 64 x 1024 with P2P: each
    stage's best of 7 CPU times in one process (the plan and the loop told apart by timing
    replay.plan and replay.replay, which replay.simulate calls one after the other)."""
    from dualpipe_sim import simulation
    from dualpipe_sim.engine import replay, validate
    from dualpipe_sim.readers.metrics import compute_metrics

    result = simulation.run(scenario_for("b-p2p", 1, tiny))
    schedule, costs, ops = result.schedule, result.costs, result.schedule.num_ops()
    spent: dict[str, float] = {}

    def timed(name, fn):
        def run(*args, **kwargs):
            c = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - c
        return run

    plan, run_replay = replay.plan, replay.replay
    replay.plan, replay.replay = timed("plan", plan), timed("replay", run_replay)
    best = dict.fromkeys(PARTS, float("inf"))
    try:
        with simulation.gc_paused():
            for _ in range(7):
                spent.clear()
                c0 = time.process_time()
                index = validate.index_ops(schedule)
                c1 = time.process_time()
                trace = replay.simulate(schedule, costs, index)
                c2 = time.process_time()
                compute_metrics(trace)
                c3 = time.process_time()
                # replay.simulate plans once, then hands the plan to replay (not nested since s16m's per-link hops)
                took = (c1 - c0, spent["plan"], spent["replay"], c2 - c1 - spent["plan"] - spent["replay"], c3 - c2)
                best.update({k: min(best[k], v) for k, v in zip(PARTS, took)})
            graph = action_graph(schedule, costs)
            best[PARTS[-1]] = _best_cpu(lambda: longest_path_pass(*graph), 7)
    finally:
        replay.plan, replay.replay = plan, run_replay
    width = max(map(len, PARTS))
    print(f"{'part (1F1B ' + str(schedule.stages) + ' x ' + str(schedule.microbatches) + ', p2p 0.05)':<{width}}  us per op")
    for name in PARTS:
        print(f"{name:<{width}}  {1e6 * best[name] / ops:.2f}")


# The size guard's cases: (name, scenario file, --set texts, stages, micro-batches at full size, tiny size).
GUARD_CASES = (
    ("1F1B, p2p 0.05", "quickstart.toml", ("pipeline.schedule=1f1b", "comm.p2p=0.05"), 64, 1024, (4, 64)),
    ("ZB-H1, p2p 0.05", "quickstart.toml", ("pipeline.schedule=zb-h1", "comm.p2p=0.05"), 16, 2048, (4, 64)),
    ("DualPipe, [chunk]", "deepseek-v3.toml", (), 16, 256, (4, 64)),
)


def peak_rss(toml: str, sets, plots: str) -> int:
    """Peak RSS (bytes) of ``dualpipe-sim run`` in a fresh process: VmHWM, not ru_maxrss (Linux
    carries ru_maxrss over from the forking parent)."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", "import sys; from dualpipe_sim.cli import main; main(sys.argv[1:]); "
               "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)",
               "run", str(ROOT / "scenarios" / toml), *[x for s in sets for x in ("--set", s)],
               "--plots", plots, "--out", out]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return int(done.stderr.split()[-1]) * 1024


def size_guard_rows(tiny: bool) -> list[tuple[str, str, str]]:
    """limits.py's estimate against peak RSS: per op, the growth from 1/8 to the full size without
    charts (what the guard reserves per op over the same growth: its 3 S M ops, the ops the run
    has, at the scenario's rows per op); per box, `--plots png` over `--plots none` at a size
    whose Gantt chart draws boxes."""
    from dualpipe_sim import limits, simulation
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim.inputs.resolve import resolve

    rows = []
    for what, toml, sets, stages, mbs, small in GUARD_CASES:
        if tiny:
            stages, mbs = small
        shape = [f"pipeline.stages={stages}"]
        rss, ops, reserve = [], [], []
        for m in (mbs // 8, mbs):
            full = [*sets, *shape, f"pipeline.microbatches={m}"]
            scn = scenario.read(str(ROOT / "scenarios" / toml), full)
            per_row = scenario.trace_rows_per_op(resolve(scn).costs)
            rss.append(peak_rss(toml, full, "none"))
            ops.append(simulation.build_schedule(scn).num_ops())
            reserve.append(limits.memory_for(limits.OPS_PER_STAGE_AND_MICROBATCH * stages * m, 0, per_row))
        grow, est = (rss[1] - rss[0]) / (ops[1] - ops[0]), (reserve[1] - reserve[0]) / (ops[1] - ops[0])
        rows.append((f"size guard, per op: {what} {stages} x {mbs // 8} -> {mbs} ({per_row:g} rows per op), "
                     f"`run --plots none` peak RSS {rss[0] / 2**20:.0f} -> {rss[1] / 2**20:.0f} MB",
                     f"{grow:.0f} B vs estimate {est:.0f} B ({est / grow:.1f}x)" if grow > 0 else "no growth",
                     "within 2x"))  # fmt: skip
    # Boxes: 1F1B 64 x 128 draws its 16,384 actions as boxes (256 per rank, under 366).
    stages, m = (4, 16) if tiny else (64, 128)
    sets = ("pipeline.schedule=1f1b", "comm.p2p=0.05", f"pipeline.stages={stages}", f"pipeline.microbatches={m}")
    none, png = peak_rss("quickstart.toml", sets, "none"), peak_rss("quickstart.toml", sets, "png")
    boxes = 2 * stages * m
    ops, need = limits.estimate(stages, m)
    beyond = png - none - limits.chart_bytes(stages)  # the picture's pixels counted apart
    rows.append((f"size guard, per box: 1F1B {stages} x {m} ({boxes:,} boxes), `--plots png` {png / 2**20:.0f} MB "
                 f"over `--plots none` {none / 2**20:.0f} MB, less the {limits.chart_bytes(stages) / 2**20:.0f} MB picture",
                 f"{beyond / boxes:.0f} B vs estimate {limits.BYTES_PER_BOX} B "
                 f"({limits.BYTES_PER_BOX * boxes / max(beyond, 1):.1f}x)", "within 2x"))  # fmt: skip
    rows.append((f"size guard, whole run: 1F1B {stages} x {m} with charts, peak RSS {png / 2**20:.0f} MB "
                 f"(about 55 MB of it any run's start)", f"estimate {need / 2**20:.0f} MB for {ops:,} ops "
                 f"({need / png:.1f}x the peak)", "within 2x"))  # fmt: skip
    return rows


def measure(case: str, fraction: int, tiny: bool) -> dict:
    """One case in this process: time run() end to end, the simulation alone, and the reference loop."""
    from dualpipe_sim import simulation
    from dualpipe_sim.engine import validate

    forced = CASES[case][-1] == "simpy"

    def simulate(schedule, costs):
        if forced:  # what simulation.simulate does when the SimPy engine is chosen
            from dualpipe_sim.engine import simpy_engine as engine

            validate.validate(schedule)  # the SimPy engine words a deadlock its own way: prove it first
            return engine.simulate(schedule, costs)
        return simulation.simulate(schedule, costs)

    if forced:
        simulation.simulate = simulate  # run() then takes the SimPy engine
    simulation.run(scenario_for(case, 8, True))  # warm-up: first-call imports are not per-run cost
    scn = scenario_for(case, fraction, tiny)
    t0 = time.perf_counter()
    result = simulation.run(scn)
    t1 = time.perf_counter()
    with simulation.gc_paused():  # as in run()
        c1 = time.process_time()
        simulate(result.schedule, result.costs)
        t2, c2 = time.perf_counter(), time.process_time()
        reference_loop(result.schedule, result.costs)
        t3, c3 = time.perf_counter(), time.process_time()
    trace = result.trace
    return {
        "case": case,
        "fraction": fraction,
        "engine": "simpy" if forced else "replay",
        "ranks": trace.ranks,
        "microbatches": trace.microbatches,
        "ops": result.schedule.num_ops(),
        "rows": len(trace.compute) + len(trace.comm),
        "run": t1 - t0,
        "sim": t2 - t1,
        "loop": t3 - t2,
        "sim_cpu": c2 - c1,  # CPU seconds: what a shared machine's load does not inflate
        "loop_cpu": c3 - c2,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "makespan": result.metrics.makespan,
        "simpy_loaded": "simpy" in sys.modules,
    }


def in_subprocess(case: str, fraction: int, tiny: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", case, str(fraction)] + (["--tiny"] if tiny else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best wall time is kept")
    parser.add_argument("--tiny", action="store_true", help="a few hundred ops per case (keeps the script tested)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "FRACTION"), help=argparse.SUPPRESS)
    parser.add_argument("--targets", action="store_true", help="issue 23's targets instead of the cases")
    parser.add_argument("--parts", action="store_true", help="where --targets' first row's time goes, per op")
    args = parser.parse_args()
    if args.targets:
        targets(args.tiny)
        return 0
    if args.parts:
        parts(args.tiny)
        return 0
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.tiny)))
        return 0

    header = f"{'case':<10} {'size':>4} {'engine':>6} {'ranks':>5} {'mbs':>5} {'ops':>7} {'rows':>7} " \
             f"{'run s':>7} {'sim s':>7} {'loop s':>7} {'sim/loop':>8} {'cpu ratio':>9} {'us/op':>6} {'rows/s':>9} {'RSS MB':>7} simpy"  # fmt: skip
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        per_op = []
        for fraction in FRACTIONS:
            runs = [in_subprocess(case, fraction, args.tiny) for _ in range(max(1, args.repeat))]
            best = min(runs, key=lambda r: r["run"])
            best["sim"] = min(r["sim"] for r in runs)
            best["loop"] = min(r["loop"] for r in runs)
            best["sim_cpu"] = min(r["sim_cpu"] for r in runs)
            best["loop_cpu"] = min(r["loop_cpu"] for r in runs)
            rss = max(r["rss_mb"] for r in runs)
            us = 1e6 * best["sim_cpu"] / best["ops"]
            per_op.append(us)
            size = "1" if fraction == 1 else f"1/{fraction}"
            print(
                f"{case:<10} {size:>4} {best['engine']:>6} {best['ranks']:>5} {best['microbatches']:>5} "
                f"{best['ops']:>7} {best['rows']:>7} {best['run']:>7.3f} {best['sim']:>7.3f} {best['loop']:>7.3f} "
                f"{best['sim'] / best['loop']:>8.2f} {best['sim_cpu'] / max(best['loop_cpu'], 1e-9):>9.2f} {us:>6.2f} "
                f"{best['rows'] / best['sim']:>9.0f} {rss:>7.0f} "
                f"{'yes' if best['simpy_loaded'] else 'no'}",
                flush=True,
            )
        print(f"{'':<10} time per op, largest / smallest over sizes: {max(per_op) / min(per_op):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
