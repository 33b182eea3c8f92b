"""benchmarks/engine.py stays runnable: a tiny run prints its table (nothing is timed here)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "engine.py"


def test_engine_benchmark_runs_on_a_tiny_size():
    cases = {"a": "replay", "a-simpy": "simpy", "b": "replay", "b-simpy": "simpy"}  # components and simple costs, each engine
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--repeat", "1", "--cases", ",".join(cases)],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in cases]
    assert [(r[0], r[1]) for r in rows] == [(c, size) for c in cases for size in ("1/8", "1/4", "1/2", "1")]
    for row in rows:
        case, _, engine, ranks, mbs, ops, trace_rows = row[:7]
        assert engine == cases[case]
        assert int(ranks) == 4 and int(ops) > 0 and int(trace_rows) >= int(ops)
    assert out.count("time per op") == len(cases)


def test_cli_benchmark_runs_on_a_tiny_size():
    script = SCRIPT.parent / "cli.py"
    out = subprocess.run([sys.executable, str(script), "--tiny", "--repeat", "1", "--plots", "none"],
                         check=True, capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    assert out.startswith("machine: ")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert set(rows) == {"quickstart", "deepseek", "1f1b-64x1024"}
    assert all(float(r[1]) > 0 and r[-1] in ("met", "MISSED") for r in rows.values())
