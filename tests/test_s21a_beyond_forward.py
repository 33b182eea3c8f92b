"""docs/b200_twins.py --passes: every Blackwell row's model step by pass against what its logs leave beyond the
forward (docs/searches.md, "The B200 rows beyond the forward: where the miss is (s21a)").  Its arithmetic by hand,
its pass of a kernel row, and the 1-node 8B row's split against the derived stage's F / B / W and the figures the
logs published (transcribed here)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from dualpipe_sim.model.kernels import Kernel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "docs" / "b200_twins.py"), run_name="doc_script_under_test")
ROW = "mlperf51-llama8b-8b200"  # PP 1, one micro-batch a step, one node


def _row(component: str) -> Kernel:
    return Kernel("k", component, "gemm", "", 0.0, 0.0, 1e-3, "compute")


def test_grown_by_hand():
    # a 100 ms part holding 20 ms more is 1.2 times as long; a negative rest shortens it
    assert SCRIPT["grown"](100.0, 20.0) == pytest.approx(1.2)
    assert SCRIPT["grown"](50.0, -5.0) == pytest.approx(0.9)


def test_a_kernel_row_s_pass_is_its_component_s():
    pass_of = SCRIPT["pass_of"]
    assert pass_of(_row("attn_forward")) == pass_of(_row("dispatch_forward")) == "forward"
    assert pass_of(_row("mlp_backward_input")) == pass_of(_row("combine_backward")) == "input gradient"
    assert pass_of(_row("attn_backward_weight")) == pass_of(_row("mlp_backward_weight")) == "weight gradient"


def test_the_measured_step_is_published_csv_s():
    # "0.5444 s per step (median of 3250)", "0.1894 s per step (median of 1872)"
    assert SCRIPT["measured_step_ms"](ROW) == pytest.approx(544.4)
    assert SCRIPT["measured_step_ms"]("mlperf51-llama8b-64b200") == pytest.approx(189.4)


@pytest.fixture(scope="module")
def one_node():
    return SCRIPT["beyond_forward"](ROW)


def test_the_passes_are_the_derived_stage_s_and_add_up_to_the_step(one_node):
    r = one_node
    stage = scenario.load(ROOT / "scenarios" / "validation" / f"{ROW}.toml").derived().stages[0]
    # one stage, one micro-batch a step: the forward is the stage's F, the two backward passes its B, of which W
    assert r["forward"] == pytest.approx(stage.forward, rel=1e-9)
    assert r["input gradient"] + r["weight gradient"] == pytest.approx(stage.backward, rel=1e-9)
    assert r["weight gradient"] == pytest.approx(stage.weight, rel=1e-9)
    assert r["bubble + PP P2P"] == pytest.approx(0.0, abs=1e-9)  # no pipeline
    parts = ("forward", "input gradient", "weight gradient", "bubble + PP P2P", "DP beyond the pipeline",
             "optimizer + param gather")  # fmt: skip
    assert sum(r[p] for p in parts) == pytest.approx(r["step"], rel=1e-9)


def test_the_rest_beyond_the_forward_by_hand(one_node):
    r = one_node
    sc = scenario.load(ROOT / "scenarios" / "validation" / f"{ROW}.toml")
    model_forward = derive.evaluation_forwards(sc.derived().setup)[0]  # PP 1: the stage's forward, no ring
    # the logs' evaluation: 0.160088 s a validation step of one micro-batch a rank (docs/validation.md's table)
    assert r["forward part"] == pytest.approx(160.088 - model_forward, rel=1e-9)
    assert r["rest"] == pytest.approx(544.4 - r["step"] - (160.088 - model_forward), rel=1e-9)
    backward = r["input gradient"] + r["weight gradient"]
    assert r["backward x"] == pytest.approx((backward + r["rest"]) / backward, rel=1e-12)
