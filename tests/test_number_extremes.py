"""Numbers at the float limits print without raising (issue 25: forward = 5e-324 raised
ZeroDivisionError in units._engineering).  Truth: the exact decimal value of each float."""

from __future__ import annotations

import pytest

from dualpipe_sim import units
from dualpipe_sim.cli import main

from pathlib import Path

QUICK = str(Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml")


@pytest.mark.parametrize("x,text", [
    (5e-324, "4.941e-324"),  # the smallest subnormal is 4.9406564584124654e-324
    (-5e-324, "-4.941e-324"),
    (2.2250738585072014e-308, "22.25e-309"),  # the smallest normal float
    (1.7976931348623157e308, "179.8e306"),  # the largest float
    (1e-5, "10e-6"),
    (999.96e15, "1e18"),  # rounding carries into the next group
])  # fmt: skip
def test_engineering_at_the_limits(x, text):
    assert units.number(x) == text


def test_run_with_the_smallest_forward(tmp_path, capsys):
    args = ["run", QUICK, "--set", "pipeline.schedule=1f1b", "--set", "costs.forward=5e-324", "--set", "costs.overlapped=3",
            "--set", "comm.p2p=0", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    # 1F1B, 8 stages, 20 micro-batches, B = 2: the forwards add nothing the float can hold,
    # so the makespan is (M + S - 1) x B = 27 x 2 = 54 ms.
    assert "makespan 54 ms" in out
