"""hardware.gpu_variability (s13j): every kernel at the pace of the slowest of the run's GPUs, whose
expected time is 1 + cv x e_N times a mean GPU's (model/gpu_spread.py; docs/model.md, "GPU-to-GPU spread").
Checked against closed forms of the largest of N standard normals, against hand-counted GPUs of a layout,
and kernel by kernel: every compute and memory kernel above the launch floor takes exactly the factor
longer, collectives not at all; bad values are one error line, exit 2, nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import cli_error

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gpu_spread
from dualpipe_sim.model.report import kernel_tables, summary

ROOT = Path(__file__).resolve().parent.parent
B200_64 = ROOT / "scenarios" / "validation" / "mlperf51-llama8b-64b200.toml"  # 1 stage, data 32 x context 2
LLAMA70 = ROOT / "scenarios" / "llama3-70b.toml"  # interleaved: 20 stages / 5 chunks = 4 ranks, tensor 8, data 64
ON = 'hardware.gpu_variability="lonestar6-a100"'


def load(path: Path, *sets: str):
    return scenario.from_dict(scenario.apply_overrides(scenario.load_raw(path), list(sets)))


def test_expected_largest_normal_matches_the_closed_forms():
    """E[max] of 1, 2, 3, 4 standard normals: 0, 1/sqrt(pi), 3/(2 sqrt(pi)), 6/pi^1.5 x atan(sqrt(2))."""
    e = gpu_spread.expected_max_normal
    assert e(1) == 0.0
    assert e(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)  # 0.5641896
    assert e(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-9)  # 0.8462844
    assert e(4) == pytest.approx(6 / math.pi**1.5 * math.atan(math.sqrt(2)), abs=1e-9)  # 1.0293754
    # it grows with N, and stays under Jensen's bound sqrt(2 ln N) of the maximum of N standard normals
    last = 0.0
    for n in (8, 64, 256, 2048, 10**6):
        assert last < e(n) < math.sqrt(2 * math.log(n))
        last = e(n)
    with pytest.raises(ValueError):
        e(0)


def test_factor_is_one_plus_cv_times_the_expected_largest():
    """One GPU is the mean GPU (factor 1 exactly); two: 1 + 0.02106 / sqrt(pi) = 1.011882."""
    assert gpu_spread.factor("lonestar6-a100", 1) == 1.0
    assert gpu_spread.factor("lonestar6-a100", 2) == pytest.approx(1 + 0.02106 / math.sqrt(math.pi), rel=1e-12)
    assert gpu_spread.factor("lonestar6-a100", 2) == pytest.approx(1.011882, abs=1e-6)


def test_the_gpus_counted_are_the_layouts():
    """llama3-70b: 20 interleaved stages of 5 chunks = 4 ranks, x tensor 8 x data 64 = 2048 GPUs; as DualPipeV
    (two stages a rank) the same 20 stages are 10 ranks: 5120; the B200 row: 1 x 32 x context 2 = 64."""
    assert derive.run_gpus(load(LLAMA70), 20) == 4 * 8 * 64
    assert derive.run_gpus(load(LLAMA70, 'pipeline.schedule="dualpipev"', "pipeline.microbatches=40"), 20) == 10 * 8 * 64
    assert derive.run_gpus(load(B200_64), 1) == 64
    hw = summary(load(B200_64, ON).derived())["hardware"]["gpu_variability"]
    assert hw["gpus"] == 64 and hw["spread"] == "lonestar6-a100"
    assert hw["factor"] == gpu_spread.factor("lonestar6-a100", 64)


def test_every_kernels_body_takes_the_factor_longer():
    """A kernel takes its launch floor plus its body (kernels.py, gemm.time); with the key on, the body of each
    GEMM, attention and memory-bound kernel of the row takes factor x as long and the floor stays (launches are
    the host's and the front end's); a transfer's time is its links' and does not move (the P2P of an activation)."""
    flat = ("parallel.context=1", "parallel.data=64")  # no context-parallel ring: its steps overlap a P2P
    off, on = load(B200_64, *flat).derived(), load(B200_64, *flat, ON).derived()
    slow = gpu_spread.factor("lonestar6-a100", 64)
    assert 1.04 < slow < 1.06  # 1 + 0.02106 x 2.3437
    r = off.setup.rates
    assert r.gemm_bf16.floor == r.gemm_fp8.floor  # the row's GEMMs are FP8 and BF16: one floor
    floor = {"gemm": r.gemm_bf16.floor * 1e3, "attention": r.floor * 1e3, "memory": r.floor * 1e3}
    seen = {"gemm": 0, "attention": 0, "memory": 0}
    for name, rows in kernel_tables(off).items():
        for a, b in zip(rows, kernel_tables(on)[name], strict=True):
            assert (a.name, a.kind) == (b.name, b.kind)
            if a.kind in floor:
                launches = int(a.shape.split("(")[1].split()[0]) if a.shape.endswith("kernels)") else 1
                fixed = launches * floor[a.kind]  # a backward GEMM's pass factor scales its math, not its floor (s21p)
                assert b.ms - fixed == pytest.approx((a.ms - fixed) * slow, rel=1e-9, abs=1e-12), a.name
                seen[a.kind] += 1
    assert all(seen.values()), seen
    assert on.p2p == off.p2p > 0


def test_off_by_default_changes_nothing():
    """Without the key nothing is scaled and the report has no gpu_variability entry."""
    st = load(B200_64).derived().setup
    assert st.gpu_spread is None
    assert "gpu_variability" not in summary(load(B200_64).derived())["hardware"]


@pytest.mark.parametrize("value, line", [
    ('"summit"', "error: hardware.gpu_variability: unknown GPU spread (known: lonestar6-a100), got 'summit'"),
    ("3", "error: hardware.gpu_variability: input should be a valid string, got 3"),
])
def test_a_bad_spread_is_one_line(tmp_path, value, line):
    assert cli_error(tmp_path, "run", str(B200_64), "--set", f"hardware.gpu_variability={value}") == line


def test_it_needs_kernel_level_costs_and_a_model(tmp_path):
    line = cli_error(tmp_path, "run", str(B200_64), "--set", ON, "--set", "hardware.efficiency=0.5")
    assert line == ("error: hardware.gpu_variability: needs the kernel-level costs (a hardware.preset and no "
                    "hardware.efficiency)")
    line = cli_error(tmp_path, "run", str(ROOT / "scenarios" / "quickstart.toml"), "--set", ON)
    assert line == ("error: hardware.gpu_variability: only applies with a [model] section (it slows the kernels "
                    "derived from it)")
