"""docs/b200_twins.py: the B200 rows against their Hopper twins, component by component (docs/searches.md, "B200
against its Hopper twins, by component (s18l)").  Its arithmetic on hand-worked numbers, its classification of
kernel rows, and its split of the 8B twins' steps against FLOP counts worked by hand and the run's own step."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from dualpipe_sim.model.kernels import Kernel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "docs" / "b200_twins.py"), run_name="doc_script_under_test")


def _row(kind: str, name: str = "k", shape: str = "") -> Kernel:
    return Kernel(name, "attn_forward", kind, shape, 0.0, 0.0, 1e-3, "compute")


def test_needed_alone_moves_the_whole_extra_gap_into_one_component():
    # a component of 50 ms in a 100 ms B200 step, the model 2.0x faster on it than on Hopper, the B200 step 10% too
    # short: the component takes 50 + 10 = 60 ms, so its ratio falls to 2.0 x 50 / 60
    assert SCRIPT["needed_alone"](2.0, 50.0, 1.1, 100.0) == pytest.approx(2.0 * 50 / 60)
    # no extra gap: the ratio stays
    assert SCRIPT["needed_alone"](2.3, 40.0, 1.0, 100.0) == pytest.approx(2.3)


def test_speed_ratio_is_per_token():
    # B200: 10 ms for 100 tokens (0.1 ms a token); Hopper: 30 ms for 200 tokens (0.15): 1.5x
    assert SCRIPT["speed_ratio"](10.0, 100.0, 30.0, 200.0) == pytest.approx(1.5)


def test_kernel_rows_are_classified_by_kind_dtype_and_name():
    kind = SCRIPT["kind"]
    assert kind(_row("gemm", shape="4096 x 6144 x 4096 fp8")) == "GEMM FP8"
    assert kind(_row("gemm", shape="4096 x 128256 x 4096 bf16")) == "GEMM BF16"
    assert kind(_row("attention")) == "attention"
    assert kind(_row("memory")) == "memory-bound"
    assert kind(_row("comm", "context-parallel K/V exchange (step 0)")) == "CP exchange"
    assert kind(_row("comm", "tp reduce-scatter")) == "TP collectives"
    assert kind(_row("host", "loss: host reads")) == "host"
    with pytest.raises(ValueError, match="unclassified"):
        kind(_row("a2a"))


def test_the_pairs_measured_figures_are_the_validation_tables():
    text = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
    for b200, hopper, measured_b, measured_h in SCRIPT["PAIRS"]:
        for name, value in ((b200, measured_b), (hopper, measured_h)):
            row = re.search(rf"^\| {re.escape(name)} \| \d+ \| [^|]+ \| ([\d,.]+) \|", text, re.M)
            assert row, name
            assert float(row.group(1).replace(",", "")) == value


@pytest.fixture(scope="module")
def llama8b():
    return {name: SCRIPT["split"](name) for name in ("mlperf51-llama8b-64b200", "mlperf51-llama8b-64h200")}


def test_the_8b_split_adds_up_to_the_run_s_step(llama8b):
    import dualpipe_sim as ds

    for name, (parts, step, tokens) in llama8b.items():
        total = ds.run(ROOT / "scenarios" / "validation" / f"{name}.toml").metrics.to_dict()["step"]["total"]
        assert sum(parts.values()) == pytest.approx(total, rel=1e-9)
        assert step == pytest.approx(total, rel=1e-12)
        assert tokens == 8192 * 32 / 64  # global batch 32 (DP 32, one micro-batch of 1) of 8,192 tokens on 64 GPUs


def test_the_8b_gemm_parts_against_their_flops(llama8b):
    # One micro-batch, one stage, 32 layers; each linear's GEMM three times (forward, dgrad, wgrad).  FP8 GEMMs per
    # layer: qkv 4096 x 6144, out_proj 4096 x 4096, fc1 4096 x 28672, fc2 14336 x 4096, over 8,192 / CP 2 = 4,096
    # tokens; the output layer in BF16: 4096 x 128256 over the same tokens.
    tokens, h = 4096, 4096
    fp8 = 3 * 32 * 2 * tokens * h * (6144 + 4096 + 28672 + 14336)
    bf16 = 3 * 2 * tokens * h * 128256
    # the presets' fitted FP8 / BF16 peaks (docs/model.md, "Kernel rates"): B200, and H100's carried by the H200
    peaks_of = {"mlperf51-llama8b-64b200": (2972e12, 1579e12), "mlperf51-llama8b-64h200": (1382e12, 765e12)}
    # each pass a third of the FLOPs; dgrad and wgrad at their measured pass factors (s21j: Blackwell's B300, Hopper's H200
    # NVL figures, tests/test_backward_gemm_passes.py)
    passes = {"mlperf51-llama8b-64b200": (1 + 1.0800 + 1.0732, 1 + 1.0331 + 1.0243),
              "mlperf51-llama8b-64h200": (1 + 1.0096 + 0.9812, 1 + 1.0116 + 0.9889)}  # fmt: skip
    for name, peaks in peaks_of.items():
        parts = llama8b[name][0]
        at_peak_fp8 = fp8 / 3 * passes[name][0] / peaks[0] * 1e3
        at_peak_bf16 = bf16 / 3 * passes[name][1] / peaks[1] * 1e3
        # never faster than the fitted peak; within 8% of it (tile / wave quantisation and the floor at these shapes)
        assert 1.0 <= parts["GEMM FP8"] / at_peak_fp8 < 1.08, name
        assert 1.0 <= parts["GEMM BF16"] / at_peak_bf16 < 1.08, name
        assert parts["TP collectives"] == 0.0 and parts["CP exchange"] == 0.0  # TP 1; the ring's P2P hides
        assert parts["bubble + PP P2P"] == pytest.approx(0.0, abs=1e-9)  # one stage, no pipeline


def test_the_8b_pair_table_reads_the_measured_ratio(llama8b):
    lines = SCRIPT["pair_table"](*SCRIPT["PAIRS"][2])
    # measured 21,626.2 / 11,600.1 = 1.8643
    assert "measured 1.864," in lines[0]
    fp8 = next(line for line in lines if line.startswith("| GEMM FP8 |"))
    cells = [c.strip() for c in fp8.strip("|").split("|")]
    (b, _, _), (h, _, _) = llama8b["mlperf51-llama8b-64b200"], llama8b["mlperf51-llama8b-64h200"]
    ratio = h["GEMM FP8"] / b["GEMM FP8"]  # the same 4,096 tokens a GPU a step on both
    assert cells[3] == f"{ratio:.2f}"
    assert cells[4] == f"{4500 / 1978.9:.2f}" == "2.27"
