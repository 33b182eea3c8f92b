"""s18e: model/report.py's per-stage and per-kernel-table fields (planted bugs s18e-model-report-*): the time shares in
a kernel table's 'time bound by', the order of gpt-oss's two layer kinds, and stages[].first_layer."""

from __future__ import annotations

from pathlib import Path

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import config, report
from dualpipe_sim.model.kernels import Kernel
from helpers import tiny_llama_toml

ROOT = Path(__file__).resolve().parent.parent


def test_bound_shares_are_shares_of_time_not_of_kernels():
    """A 3 ms compute-bound GEMM and two 1 ms memory-bound kernels: compute 3 / 5 = 60%, memory 2 / 5 = 40% (by count
    it would be memory 67%, compute 33%); the forward pass 5 ms."""
    rows = [Kernel("gemm", "attn_forward", "gemm", "a x b", 1e9, 1e6, 0.003, "compute"),
            Kernel("norm", "attn_forward", "memory", "n", 0.0, 1e6, 0.001, "memory"),
            Kernel("add", "mlp_forward", "memory", "n", 0.0, 1e6, 0.001, "memory")]  # fmt: skip
    last = report.kernel_lines("dense layer", rows)[-1]
    assert last.endswith("; time bound by compute 60%, memory 40%")
    assert last.strip().startswith("forward 5 ms")


def test_gpt_oss_layer_kinds_sliding_window_first():
    """gpt-oss-120b alternates from a sliding-window layer (0, 2, ...; 128 keys) to a full one (1, 3, ...): both MoE,
    the sliding one listed first (the larger window ahead of none)."""
    cfg = config.read(ROOT / "tests" / "data" / "configs" / "gpt-oss-120b.json")
    assert report.layer_kinds(cfg) == [("moe layer (sliding window 128)", 0), ("moe layer (full attention)", 1)]


def test_first_layer_of_each_stage(tmp_path):
    """The tiny model's 4 layers on 2 stages, 2 each: stage 0 starts at layer 0 (with the embedding), stage 1 at 2."""
    sc = scenario.load(tiny_llama_toml(tmp_path, '[hardware]\npreset = "H100"\n'))
    stages = report.summary(sc.derived())["stages"]
    assert [(s["first_layer"], s["layers"], s["embedding"], s["head"]) for s in stages] == [
        (0, 2, True, False), (2, 2, False, True)]
