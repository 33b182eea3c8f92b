"""Chrome trace export: load the JSON and check it against the metrics and the schedule's rules."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.cli import main
from dualpipe_sim.outputs.exports import chrome
from dualpipe_sim.readers.metrics import compute_metrics
from dualpipe_sim.engine import trace as trace_mod
from dualpipe_sim.engine.trace import A2A, COMM_DTYPE, COMPUTE_DTYPE, MEMORY_DTYPE, P2P, Trace
from dualpipe_sim.inputs.costs import COMPONENTS

from helpers import run_uniform

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")


def load(trace) -> list[dict]:
    return json.loads(chrome.chrome_trace_json(trace))["traceEvents"]


def ns(value) -> int:
    """What Perfetto makes of a ts/dur in microseconds: int(value * 1000) nanoseconds."""
    return int(value * 1000) if isinstance(value, float) else value * 1000


def slices(events, cat=None):
    return [e for e in events if e["ph"] == "X" and (cat is None or e["cat"] == cat)]


@pytest.fixture(scope="module")
def dualpipe():
    # DualPipe with P2P costs: overlapped pairs, both directions, transfers that make ranks wait.
    return simulation.run(scenario.load(QUICK, ["pipeline.microbatches=16"]))


@pytest.fixture(scope="module", params=["1f1b", "zb-h1", "dualpipev"])
def other(request):
    return run_uniform(request.param, 4, 8, forward=1.0, backward=2.0, weight=0.7, p2p=0.3,
                       memory__activation=[1.0, 2.0, 3.0, 4.0])


def check_against_metrics(result):
    events, m = load(result.trace), result.metrics.to_dict()
    busy = defaultdict(float)
    for e in slices(events, "compute"):
        busy[e["pid"]] += e["dur"] / 1000  # us -> ms
    for r in m["per_rank"]:
        assert busy[r["rank"]] == pytest.approx(r["busy"], abs=1e-6)
    p2p = sum(e["dur"] for e in slices(events, "p2p")) / 1000
    a2a = sum(e["dur"] for e in slices(events, "a2a")) / 1000
    assert p2p == pytest.approx(m["comm"]["p2p_time"], abs=1e-6)
    assert a2a == pytest.approx(m["comm"]["a2a_time"], abs=1e-6)
    counters = defaultdict(list)
    for e in events:
        if e["ph"] == "C":
            counters[e["pid"]].append(e["args"])
    for r in m["per_rank"]:
        assert max(a["units"] for a in counters[r["rank"]]) == r["peak_activation"]
        assert max(a["bytes"] for a in counters[r["rank"]]) == pytest.approx(r["peak_activation_bytes"])
    return events


def check_structure(events, ranks):
    names = {(e["pid"], e["name"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {(r, "process_name"): f"rank {r}" for r in range(ranks)}
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    for r in range(ranks):
        assert {(r, "compute"), (r, "all-to-all"), (r, "P2P send")} <= threads
    # Slices on one thread must nest; ours never overlap, in Perfetto's integer nanoseconds.
    per_thread = defaultdict(list)
    for e in slices(events):
        assert e["dur"] >= 0
        per_thread[(e["pid"], e["tid"])].append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])))
    for spans in per_thread.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def check_flows(events):
    """Every flow start has one finish; the arrow runs from a send to the op that consumes it."""
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == sum(e["ph"] == "s" for e in events)  # ids unique
    assert starts.keys() == finishes.keys()
    assert all(e.get("bp") == "e" for e in finishes.values())

    def enclosing(e, cat):
        hits = [x for x in slices(events, cat) if x["pid"] == e["pid"] and x["tid"] == e["tid"]
                and ns(x["ts"]) <= ns(e["ts"]) <= ns(x["ts"]) + ns(x["dur"])]
        assert len(hits) == 1, (e, hits)
        return hits[0]

    for fid, s in starts.items():
        send, op = enclosing(s, "p2p"), enclosing(finishes[fid], "compute")
        a, b = send["args"], op["args"]
        assert op["pid"] == a["to"] != send["pid"]
        assert (b["microbatch"], b["direction"]) == (a["microbatch"], a["direction"])
        if a["kind"] == "activation":  # stage s's output feeds stage s+1's forward
            assert (b["kind"], b["stage"]) == ("F", a["stage"] + 1)
        else:  # stage s's input gradient feeds stage s-1's backward
            assert b["kind"] in ("B", "I") and b["stage"] == a["stage"] - 1
        assert ns(op["ts"]) >= ns(send["ts"]) + ns(send["dur"])  # data lands before it is used
    return len(starts)


def test_dualpipe_trace_matches_metrics_and_dependencies(dualpipe):
    events = check_against_metrics(dualpipe)
    check_structure(events, dualpipe.trace.ranks)
    flows = check_flows(events)
    # Every cross-rank transfer feeds an op on another rank, so every send gets an arrow.
    assert flows == len(slices(events, "p2p")) > 0
    assert len(slices(events, "compute")) == len(dualpipe.trace.compute)
    overlapped = [e for e in slices(events, "compute") if e["args"]["overlapped"]]
    assert overlapped and {e["args"]["kind"] for e in overlapped} == {"F", "B"}


def test_other_schedules(other):
    events = check_against_metrics(other)
    check_structure(events, other.trace.ranks)
    assert check_flows(events) == len(slices(events, "p2p"))


CHUNK = {"layers": 2, "attn_forward": 0.4, "mlp_forward": 0.5, "dispatch_forward": 0.6, "combine_forward": 0.7,
         "attn_backward_input": 0.8, "attn_backward_weight": 0.2, "mlp_backward_input": 0.5,
         "mlp_backward_weight": 0.3, "dispatch_backward": 0.6, "combine_backward": 0.5}


@pytest.mark.parametrize("schedule", ["dualpipe", "1f1b"])
def test_component_model_all_to_all(schedule):
    # The engine's all-to-all channel: A2A rows with component parts, exported from the trace alone.
    sc = scenario.from_dict({"pipeline": {"schedule": schedule, "stages": 4, "microbatches": 8},
                             "chunk": CHUNK, "comm": {"p2p": 0.1}})
    r = simulation.run(sc)
    assert (r.trace.comm["channel"] == A2A).any()
    events = check_against_metrics(r)
    check_structure(events, r.trace.ranks)
    assert check_flows(events) == len(slices(events, "p2p"))
    a2a = slices(events, "a2a")
    assert len(a2a) == int((r.trace.comm["channel"] == A2A).sum())
    assert {e["name"].split()[0] for e in a2a} == {"dispatch", "combine"}
    assert all(e["args"]["component"].startswith(e["name"].split()[0]) for e in a2a)


def test_hand_worked_two_stages_one_microbatch():
    # F=1, B=2, p2p=0.5 ms: rank 0 F [0,1), send [1,1.5), rank 1 F [1.5,2.5), B [2.5,4.5),
    # gradient send [4.5,5), rank 0 B [5,7).  In microseconds:
    r = run_uniform("1f1b", 2, 1, forward=1.0, backward=2.0, p2p=0.5)
    events = load(r.trace)
    got = sorted((e["pid"], e["name"], e["ts"], e["dur"]) for e in slices(events))
    assert got == [
        (0, "B0", 5000, 2000), (0, "F0", 0, 1000), (0, "activation 0 to rank 1", 1000, 500),
        (1, "B0", 2500, 2000), (1, "F0", 1500, 1000), (1, "gradient 0 to rank 0", 4500, 500),
    ]
    counters = [(e["pid"], e["ts"], e["args"]["units"]) for e in events if e["ph"] == "C"]
    # The level after each instant, from 0 at t=0: rank 0 allocates at once.
    assert counters == [(0, 0, 1), (0, 7000, 0), (1, 0, 0), (1, 1500, 1), (1, 4500, 0)]


def test_microsecond_values_survive_perfettos_truncation():
    # Perfetto reads a fractional ts as int(ts * 1000) ns; plain ns / 1000 would lose one for many values.
    for n in list(range(0, 20000, 7)) + [10**12 + 1, 123456789]:
        assert ns(json.loads(json.dumps(chrome._us(n)))) == n


def test_a2a_rows_and_overlaps_get_their_own_threads():
    # A hand-made trace as the all-to-all component model writes it: A2A rows on a rank,
    # two of which overlap, and two P2P sends from one rank at once (to both neighbours).
    compute = np.array([(1, 0, 0, 0, 0, 0.0, 1.0, 0, False, -1), (1, 1, 0, 0, 0, 3.0, 5.0, 1, False, -1)],
                       dtype=COMPUTE_DTYPE)
    comm = np.array(
        [
            (A2A, 1, 1, 0, 0, 0, 0, 0.5, 1.5, 0, 0),
            (A2A, 1, 1, 1, 0, 0, 0, 1.0, 2.0, 1, 1),  # overlaps the first
            (A2A, 1, 1, 1, 0, 0, 0, 2.0, 2.5, 1, 2),  # touches the second, fits on lane 0
            (P2P, 1, 0, 0, 0, 0, 0, 1.0, 1.2, -1, -1),
            (P2P, 1, 2, 0, 0, 0, 0, 1.0, 1.4, -1, -1),
        ],
        dtype=COMM_DTYPE,
    )
    memory = np.array([(0.0, 1, 1, 8.0), (5.0, 1, -1, -8.0)], dtype=MEMORY_DTYPE)
    trace = Trace("hand", 1, 1, 3, compute, comm, memory, [[], [0], []], [0.0, 1.0, 0.0])
    events = load(trace)
    m = compute_metrics(trace).to_dict()
    a2a = slices(events, "a2a")
    assert sum(e["dur"] for e in a2a) / 1000 == pytest.approx(m["comm"]["a2a_time"]) == 2.5
    assert len({e["tid"] for e in a2a}) == 2 and len({e["tid"] for e in slices(events, "p2p")}) == 2
    check_structure(events, 3)
    assert not [e for e in events if e["ph"] in "sf"]  # no consumer given: no arrows
    threads = {e["args"]["name"] for e in events if e["ph"] == "M" and e["pid"] == 1 and e["name"] == "thread_name"}
    assert threads == {"compute", "all-to-all", "all-to-all #2", "P2P send", "P2P send #2"}


def test_cli_writes_trace_with_the_other_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", QUICK, "--out", str(out), "--trace", str(out / "trace.json"),
                 "--set", "pipeline.microbatches=16"]) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "gantt.png", "memory.png", "trace.json"}
    doc = json.loads((out / "trace.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    busy = sum(e["dur"] for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "compute") / 1000
    assert busy == pytest.approx(sum(r["busy"] for r in metrics["per_rank"]))


@pytest.mark.parametrize("where", ["elsewhere/trace.json", "out", "out/metrics.json"])
def test_bad_trace_path_one_line_nothing_written(tmp_path, capsys, where):
    assert main(["run", QUICK, "--out", str(tmp_path / "out"), "--trace", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --trace: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_failing_trace_writer_leaves_nothing(tmp_path, monkeypatch, capsys):
    def boom(trace, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(chrome, "write_chrome_trace", boom)
    # One line naming the file, exit 2 (issue 25), not a traceback; still nothing written.
    assert main(["run", QUICK, "--out", str(tmp_path / "out"), "--trace", str(tmp_path / "out" / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: cannot write ") and "t.json: No space left on device" in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


STREAMED = [
    {"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "comm": {"p2p": 0.3},
     "costs": {"forward": 1 / 3, "backward": 0.7, "weight": 0.2, "overlapped": 0.9}},  # ts off whole microseconds
    {"pipeline": {"schedule": "zb-h1", "stages": 3, "microbatches": 6}, "comm": {"p2p": 0.5, "p2p_mode": "blocking"},
     "costs": {"forward": 1.0, "backward": 2.0, "weight": 1.0, "jitter": {"distribution": "lognormal", "cv": 0.3}},
     "step": {"grad_sync": 2.0, "optimizer": 1.0, "overlap_grad_sync": True}},
    {"pipeline": {"schedule": "dualpipe", "stages": 4, "microbatches": 8}, "comm": {"p2p": 0.1},
     "chunk": {"layers": 2, **{name: 0.25 + 0.5 * (i % 3) for i, name in enumerate(COMPONENTS)}},
     "step": {"cross_copy_sync": 1.5, "grad_sync": 1.0, "cross_copy_eager": True}},
]


@pytest.mark.parametrize("data", STREAMED, ids=["off-microsecond", "blocking-jitter-step", "components-step"])
def test_streamed_file_holds_the_documents_events(data, tmp_path):
    """write_chrome_trace streams column-wise; parsed, its file is chrome_trace()'s document, event for event."""
    trace = simulation.run(scenario.from_dict(data)).trace
    path = tmp_path / "t.json"
    chrome.write_chrome_trace(trace, path)
    assert json.loads(path.read_text()) == chrome.chrome_trace(trace)
    assert path.read_text() == chrome.chrome_trace_json(trace)


def test_streaming_does_not_dump_each_event(monkeypatch, tmp_path):
    """json.dumps runs per rank and per end-of-step row, not per op: 8x the micro-batches, as many calls."""
    calls = []
    real = json.dumps
    monkeypatch.setattr(chrome.json, "dumps", lambda *a, **k: calls.append(1) or real(*a, **k))
    counts = []
    for mbs in (8, 64):
        data = {"pipeline": {"schedule": "1f1b", "stages": 4, "microbatches": mbs}, "comm": {"p2p": 0.5},
                "costs": {"forward": 1.0, "backward": 2.0}}
        calls.clear()
        chrome.write_chrome_trace(simulation.run(scenario.from_dict(data)).trace, tmp_path / "t.json")
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("block, max_runs", [(3, 4096), (3, 2)], ids=["tiny-blocks", "too-many-runs"])
@pytest.mark.parametrize("data", STREAMED, ids=["off-microsecond", "blocking-jitter-step", "components-step"])
def test_streamed_in_tiny_blocks_is_the_document(data, block, max_runs, tmp_path, monkeypatch):
    """Blocks of 3 rows split ranks, sends and runs mid-way; past max_runs runs the writer falls back
    to the whole table as one segment: either way the text is chrome_trace()'s document."""
    trace = simulation.run(scenario.from_dict(data)).trace
    monkeypatch.setattr(chrome, "BLOCK", block)
    monkeypatch.setattr(chrome, "MAX_RUNS", max_runs)
    assert json.loads(chrome.chrome_trace_json(trace)) == chrome.chrome_trace(trace)


@pytest.mark.parametrize("data", STREAMED[::2], ids=["off-microsecond", "components-step"])
def test_rows_in_no_rank_order_stream_the_same_document(data):
    """Rows shuffled (a rank's rows in many runs): lanes, flow arrows (the first compute row of the
    action in row order) and memory levels still match chrome_trace()'s whole-table reading."""
    trace = simulation.run(scenario.from_dict(data)).trace
    rng = np.random.default_rng(7)
    shuffled = Trace(trace.schedule, trace.stages, trace.microbatches, trace.ranks,
                     trace.compute[rng.permutation(len(trace.compute))], trace.comm[rng.permutation(len(trace.comm))],
                     trace.memory, trace.stages_on_rank, trace.parameter_bytes, trace.meta, trace.step)  # fmt: skip
    assert chrome._segments(shuffled.compute, ("rank",)) == [(0, len(trace.compute))]
    streamed = json.loads(chrome.chrome_trace_json(shuffled))
    assert streamed == chrome.chrome_trace(shuffled)
    assert len([e for e in streamed["traceEvents"] if e["ph"] == "s"]) > 0  # arrows were matched


def _writing_peak(tmp_path, stages: int, microbatches: int) -> int:
    """Peak Python memory (tracemalloc) while writing the Chrome trace of a 1F1B run with P2P."""
    import tracemalloc

    data = {"pipeline": {"schedule": "1f1b", "stages": stages, "microbatches": microbatches}, "comm": {"p2p": 0.5},
            "costs": {"forward": 1.0, "backward": 2.0}}
    trace = simulation.run(scenario.from_dict(data)).trace
    chrome.write_chrome_trace(trace, tmp_path / "warm.json")  # first-call costs (imports, caches) out
    tracemalloc.start()
    try:
        chrome.write_chrome_trace(trace, tmp_path / "t.json")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writer_memory_is_one_ranks_share(tmp_path):
    """Peak Python memory while writing (tracemalloc) follows one rank's rows, not the trace's:
    1F1B with 8x the ranks at the same micro-batches (8x the ops, the same ops per rank) stays
    within 1.5x (a whole-trace writer, e.g. the one before issue 23, grows ~9x here)."""
    small, large = _writing_peak(tmp_path, 4, 256), _writing_peak(tmp_path, 32, 256)
    assert large < 1.5 * small, (small, large)


def test_flow_keys_too_wide_to_pack_match_the_same():
    """A compute row of action and micro-batch 2**31 - 1 makes the key ranges too wide for one int64:
    consumer_rows searches a dict instead, and the writer still streams chrome_trace()'s document."""
    trace = simulation.run(scenario.from_dict(STREAMED[0])).trace
    compute = trace.compute.copy()
    compute["action"][-1] = compute["microbatch"][-1] = 2**31 - 1
    wide = Trace(trace.schedule, trace.stages, trace.microbatches, trace.ranks, compute, trace.comm, trace.memory,
                 trace.stages_on_rank, trace.parameter_bytes, trace.meta, trace.step)  # fmt: skip
    rank = int(compute["rank"][-1])
    rows = compute[compute["rank"] == rank]
    keys = lambda t: [t["rank"] if "channel" not in t.dtype.names else t["peer"], t["action"], t["microbatch"]]
    assert trace_mod._pack(keys(rows), keys(trace.comm)) is None  # the unpacked path is the one tested
    streamed = json.loads(chrome.chrome_trace_json(wide))
    assert streamed == chrome.chrome_trace(wide)
    assert len([e for e in streamed["traceEvents"] if e["ph"] == "f" and e["pid"] == rank]) > 0


def test_writer_memory_is_constant_in_ops_per_rank(tmp_path, monkeypatch):
    """Peak Python memory while writing (tracemalloc) is a few blocks of rows, not one rank's rows:
    with blocks of 64 rows, 4 ranks x 512 micro-batches (1,024 rows per rank and table) stays within
    1.25x of 4 x 64 (128 per rank) and under 300 KB (the rank-by-rank writer before grew 2.1x here, 96 to 200 KB)."""
    monkeypatch.setattr(chrome, "BLOCK", 64)
    small, large = _writing_peak(tmp_path, 4, 64), _writing_peak(tmp_path, 4, 512)
    assert large < 1.25 * small and large < 300_000, (small, large)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1024])
def test_lanes_carried_block_to_block_are_lanes(block, monkeypatch):
    """Block-wise lanes (only the lanes' end times carried) give lanes()' answer on random
    start-sorted intervals with many equal starts (ties by end) and touching ends, in blocks of
    any size, splitting runs of equal starts or not."""
    monkeypatch.setattr(chrome, "BLOCK", block)
    rng = np.random.default_rng(block)
    for _ in range(60):
        n = int(rng.integers(1, 40))
        start = np.sort(rng.integers(0, 12, n)).astype(float)
        end = start + rng.integers(0, 5, n)
        rows = np.zeros(n, dtype=COMPUTE_DTYPE)
        rows["rank"], rows["start"], rows["end"] = 1, start, end
        want = 1 + chrome.lanes(chrome._ns(start), chrome._ns(end))
        counts = {}
        got = np.concatenate([t for _, _, t in chrome._tid_blocks(rows, 3, counts)])
        assert got.tolist() == want.tolist()
        assert counts == {(1, "compute"): int(want.max())}


def test_overlapping_compute_rows_take_lanes_and_arrows_find_them(monkeypatch):
    """A receiver whose compute rows overlap (four lanes, equal starts) in tiny blocks: the
    slices' threads and the arrows' ends are chrome_trace()'s, i.e. lanes() of the whole rank."""
    compute = np.array([(1, 0, m, 0, 0, float(s), float(e), m, False, -1)
                        for m, (s, e) in enumerate([(0, 4), (0, 2), (1, 3), (2, 5), (2, 3), (3, 6), (5, 6)])],
                       dtype=COMPUTE_DTYPE)  # fmt: skip
    comm = np.array([(P2P, 0, 1, 0, m, 0, 0, s - 0.5, s - 0.1, m, -1)
                     for m, s in enumerate([0.5, 0.5, 1, 2, 2, 3, 5])], dtype=COMM_DTYPE)  # fmt: skip
    memory = np.zeros(0, dtype=MEMORY_DTYPE)
    trace = Trace("hand", 1, 7, 2, compute, comm, memory, [[0], [0]], [0.0, 0.0])
    monkeypatch.setattr(chrome, "BLOCK", 2)
    streamed = json.loads(chrome.chrome_trace_json(trace))
    assert streamed == chrome.chrome_trace(trace)
    ends = {e["id"]: e["tid"] for e in streamed["traceEvents"] if e["ph"] == "f"}
    # By hand, greedy in (start, end) order: (0,2) lane 0, (0,4) 1, (1,3) 2, (2,3) 0, (2,5) 3, (3,6) 0, (5,6) 1.
    assert [ends[i] for i in range(7)] == [2, 1, 3, 4, 1, 1, 2]
    assert len(ends) == 7


@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_consumer_field_is_the_first_matching_compute_row(mode):
    """trace.consumer (added for the streamed writer) names, per P2P send, the receiver's first
    compute row of the action, micro-batch and direction it feeds (a forward for an activation),
    checked by a plain scan; the SimPy reference engine's trace carries the same array."""
    from dualpipe_sim.engine.simpy_engine import simulate as engine_simulate

    data = {"pipeline": {"schedule": "dualpipev", "stages": 4, "microbatches": 8},
            "comm": {"p2p": 0.5, "p2p_mode": mode}, "costs": {"forward": 1.0, "backward": 2.0}}  # fmt: skip
    res = simulation.run(scenario.from_dict(data))
    comp, comm = res.trace.compute, res.trace.comm
    for i, row in enumerate(comm):
        want = -1
        if row["channel"] == P2P and row["action"] >= 0:
            want = next(j for j, c in enumerate(comp) if (c["rank"], c["action"], c["microbatch"], c["direction"])
                        == (row["peer"], row["action"], row["microbatch"], row["direction"])
                        and (c["kind"] == 0) == (row["kind"] == 0))  # fmt: skip
        assert res.trace.consumer[i] == want
    assert (res.trace.consumer >= 0).sum() == ((comm["channel"] == P2P) & (comm["action"] >= 0)).sum() > 0
    assert res.trace.consumer.tolist() == engine_simulate(res.schedule, res.costs).consumer.tolist()
