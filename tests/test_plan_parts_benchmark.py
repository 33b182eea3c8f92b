"""benchmarks/plan_parts.py stays runnable: a sparse Llama run prints its parts (nothing is timed here)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "plan_parts.py"


def test_plan_parts_runs_on_every_500th_step_time():
    out = subprocess.run([sys.executable, str(SCRIPT), "--case", "llama", "--every", "500"],
                         check=True, capture_output=True, text=True, timeout=600).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "--every 500" in lines[0]
    head = re.match(r"llama: memory pass [\d.]+ s CPU; (\d+) step times [\d.]+ s CPU .*hash ([0-9a-f]{16})$", lines[1])
    assert head, lines[1]
    # about 10,000 first-of-key candidates (docs/plan.md): every 500th of them is about 20
    assert 10 <= int(head.group(1)) <= 40
    parts = {line.split("  ")[1].strip() for line in lines[2:]}
    assert {"replay core (its loop)", "step.py's rows_of", "Scenario.step_costs"} <= parts


def test_plan_parts_refuses_every_below_one():
    run = subprocess.run([sys.executable, str(SCRIPT), "--every", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == "--every: must be a whole number >= 1" and not run.stdout
