"""Every row of a block's kernel table is named uniquely within its component (s21r): the model report lists them
by name, tests pick rows by name (helpers.kernel_table), and two rows of one name read as one kernel counted twice.

Over every bundled and validation scenario with a [model] and a GPU's rates: each table of ``dualpipe-sim model``
(model/report.py kernel_tables: a layer of each kind, the embedding, the head, an MTP module, per chunk) holds each
(component, name) once.  Renamed to meet it, times untouched: Megatron-DeepSpeed's tp-duplicated parameter syncs (one
all-reduce per tensor, now named by the tensor), and DeepSeek's mlp(B) scales transpose of the shared expert's fc2
output gradient (named as mlp(F)'s transpose of the fc2 input before).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import report

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
PATHS = sorted([*ROOT.glob("*.toml"), *ROOT.glob("validation/*.toml")])


def tables(path):
    sc = scenario.load(path)
    if sc.model is None:
        return {}
    d = sc.derived()
    return report.kernel_tables(d) if d.setup.rates is not None else {}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_each_component_names_a_row_once(path):
    for table, rows in tables(path).items():
        twice = [key for key, n in Counter((k.component, k.name) for k in rows).items() if n > 1]
        assert not twice, f"{path.name} {table}: {twice}"


def test_the_scenarios_hold_the_renamed_rows():
    """The cases the rule found: not vacuous, each renamed row is there with its own tensor's name."""
    names = {k.name for t in tables(ROOT / "validation" / "bloom-176b.toml").values() for k in t}
    assert {f"tp-duplicated parameter sync ({t})" for t in ("norm weight", "norm bias", "out_proj bias", "fc2 bias",
                                                             "embedding norm weight", "embedding norm bias")} <= names
    moe = tables(ROOT / "deepseek-v3-predicted.toml")["moe layer"]  # model.fp8_gemm = "deepgemm"
    [fc2_input] = [k for k in moe if k.name == "shared expert fc2 scales transpose"]
    [fc2_grad] = [k for k in moe if k.name == "shared expert fc2 output grad scales transpose"]
    assert (fc2_input.component, fc2_grad.component) == ("mlp_forward", "mlp_backward_input")
