"""Userbuffers overlaps launched with ``set_sm_margin: 0`` (``parallel.tp_overlap_not_told``), worked by hand.

Transformer Engine tells cuBLAS the SMs its communication kernel takes only with ``set_sm_margin`` 1
(comm_gemm_overlap: ``_math_sms = multiProcessorCount - num_comm_sm`` only then).  With 0 the GEMM is tiled for
the whole GPU while the communication kernel holds ``num_sm`` SMs: on held rates (KernelRates.held), but only
while that kernel runs; a persistent grid's blocks that found no SM start when it ends, so the GEMM takes
min(time on held rates, communication + time alone) (docs/model.md, "overlap").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, derive, gemm, kernels
from dualpipe_sim.model.config import ModelConfig
from dualpipe_sim.model.rates import PRESETS

H100 = PRESETS["H100"]
VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
# 3,072 x 2,816 x 8,192 BF16 on H100: 24 x 11 = 264 tiles of 128 x 256, 2 per block of a 132-block persistent
# grid; with 16 SMs held blocks 116-131 run [2, 4]: twice the body (tests/test_gemm_held_sms.py works the tiles)
M, N, K = 24 * 128, 11 * 256, 8192
TP = 4


def _table(not_told: tuple[str, ...]) -> kernels.Table:
    cfg = ModelConfig("gpt2", 12288, 1, 50257, 96, 96, 128, 128, 4 * 12288, ffn="gelu", norm="layernorm", bias=True)
    lay = kernels.Layout(seq=2048, micro_batch=1, tensor=TP, ub_sms=(("qkv_dgrad", 16),), ub_not_told=not_told)
    return kernels.Table(H100, lay, cfg)


def _by_hand(factor: float = 1.0):
    """The GEMM alone (T: floor + body) and beside 16 held SMs (floor + 2 x body), from the rate's formula; ``factor``:
    its pass's measured factor (a dgrad's: H100.gemm_bf16.dgrad, s21j), on the math, not the floor (s21p)."""
    r = H100.gemm_bf16
    body = 2.0 * M * N * K / (r.peak * K / (K + r.k_overhead)) * factor  # one full round of 264 tiles, 2 per SM
    return r.floor + body, r.floor + 2 * body


DGRAD = H100.gemm_bf16.dgrad  # "qkv dgrad" below: the input gradient's measured factor (tests/test_backward_gemm_passes.py)


def test_the_by_hand_figures_are_the_gemm_models():
    alone, held = _by_hand()
    assert gemm.time(M, N, K, H100.gemm_bf16, 132, H100.hbm, 2.0).seconds == pytest.approx(alone)
    assert gemm.time(M, N, K, H100.gemm_bf16, 132, H100.hbm, 2.0, held=16, schedule="persistent").seconds == \
        pytest.approx(held)  # fmt: skip


@pytest.mark.parametrize("gathered", [2e6, 4e8])
def test_bulk_gemm_not_told(gathered):
    """One bulk overlap (qkv dgrad beside its all-gather on 16 SMs): c < T gives T + c, c > T gives the held 2T."""
    alone, held = _by_hand(DGRAD)
    c = collectives.time("all_gather", gathered, TP, H100, "nvlink")
    tb = _table(("qkv_dgrad",))
    secs = tb.tp_linear("qkv dgrad", "attn_backward_input", M, N, K, "all_gather", gathered, "bulk", False, "qkv_dgrad")
    if gathered < 1e7:
        assert c < held - alone  # the communication kernel ends before the held blocks would
        assert secs == pytest.approx(alone + c)
    else:
        assert c > held - alone
        assert secs == pytest.approx(held)
    row = next(r for r in tb.rows if r.kind == "gemm")
    assert row.seconds == secs and "beside ub, 16 SMs held, not told" in row.shape
    assert row.flops == pytest.approx(2.0 * M * N * K)
    exposed = next(r for r in tb.rows if r.kind == "comm")
    assert exposed.seconds == pytest.approx(max(0.0, c - secs))


def test_bulk_gemm_told_is_retiled_for_the_sms_left():
    """set_sm_margin 1 (the default): the GEMM re-tiled for 132 - 16 SMs at 116 / 132 of the peak, as before."""
    tb = _table(())
    secs = tb.tp_linear("qkv dgrad", "attn_backward_input", M, N, K, "all_gather", 2e6, "bulk", False, "qkv_dgrad")
    told = replace(H100.gemm_bf16, peak=H100.gemm_bf16.peak * 116 / 132)
    assert secs == pytest.approx(gemm.time(M, N, K, told, 116, H100.hbm, 2.0, grad="dgrad").seconds)
    assert "not told" not in next(r for r in tb.rows if r.kind == "gemm").shape


def test_a_not_told_overlap_with_no_sms_is_the_gemm_alone():
    lay = replace(_table(("qkv_dgrad",)).lay, ub_sms=(("qkv_dgrad", 0),))
    tb = kernels.Table(H100, lay, _table(()).cfg)
    secs = tb.tp_linear("qkv dgrad", "attn_backward_input", M, N, K, "all_gather", 2e6, "bulk", False, "qkv_dgrad")
    assert secs == pytest.approx(_by_hand(DGRAD)[0])


def _rows(path: Path, overrides: list[str]) -> dict[str, kernels.Kernel]:
    st = derive.setup(scenario.load(path, overrides))
    return {(k.name, k.component): k for k in derive.layer_kernels(st, 0)}


UB_SCENARIOS = sorted(p for p in VALIDATION.glob("*.toml") if "tp_overlap_not_told" in p.read_text())


def test_the_validation_runs_name_their_yamls_set_sm_margin_0_overlaps():
    assert len(UB_SCENARIOS) == 27  # the MLPerf rows with userbuffers (two GB200 since s16a); ModelZoo: TE 2.x's default


BULK = {"qkv dgrad": "qkv_dgrad", "qkv wgrad": "qkv_wgrad", "fc1 dgrad": "fc1_dgrad", "fc1 wgrad": "fc1_wgrad"}
UB = {**BULK, "out_proj": "proj_fprop", "fc2": "fc2_fprop"}


def _gemm_args(row: kernels.Kernel, lay: kernels.Layout) -> dict:
    """The GEMM a row of Table.tp_linear timed, read back from its shape ("m x n x k fp8 (4 splits, ...)")."""
    m, _, n, _, k, dtype = row.shape.split()[:6]
    splits = int(row.shape.split("(")[1].split()[0]) if "splits" in row.shape else 1
    return dict(m=int(m), n=int(n), k=int(k), fp8=dtype == "fp8", splits=splits,
                out_bytes=lay.wgrad_out if row.name.endswith("wgrad") else 2.0)  # fmt: skip


@pytest.mark.parametrize("path", UB_SCENARIOS, ids=lambda p: p.stem)
def test_all_told_is_the_told_rule_and_not_told_moves_only_its_gemms(path):
    """Invariant: with every overlap told (the key empty) each bulk overlap's GEMM is the told rule's (Table.gemm
    with its SM margin: re-tiled for the SMs left); with the run's list, only the named overlaps' GEMMs (and the
    part of their collective left exposed) change, each between its time alone and its time on held rates."""
    told = _rows(path, ["parallel.tp_overlap_not_told=[]"])
    st = derive.setup(scenario.load(path, []))
    lay, cfg = st.layout, st.cfg
    assert lay.ub_not_told and set(lay.ub_not_told) <= set(UB.values())
    not_told = {(k.name, k.component): k for k in derive.layer_kernels(st, 0)}
    assert told.keys() == not_told.keys()
    moved = set()
    for key, row in told.items():
        other, ub = not_told[key], UB.get(key[0])
        if row.kind == "gemm" and key[0] in BULK:
            want = kernels.Table(st.rates, lay, cfg).gemm(row.name, "c", sm_margin=lay.ub_sm(ub), **_gemm_args(row, lay))
            assert row.seconds == pytest.approx(want), key
        if row.kind == "gemm" and ub in lay.ub_not_told and lay.ub_sm(ub) > 0:
            moved.add(ub)
            assert other.shape.split(" (")[0] == row.shape.split(" (")[0]  # the same GEMM
            held = lay.ub_sm(ub)
            assert f"beside ub, {held} SM{'s' if held != 1 else ''} held, not told" in other.shape
            args = _gemm_args(other, lay)
            alone = kernels.Table(st.rates, lay, cfg).gemm(row.name, "c", **args)
            held = kernels.Table(st.rates.held(lay.ub_sm(ub)), lay, cfg).gemm(row.name, "c", **args)
            assert alone * (1 - 1e-12) <= other.seconds <= held * (1 + 1e-12), key
        elif not (other.kind == "comm" and other.name.startswith("tp ")):  # a bulk collective's exposed part may move
            assert other == row, key
    assert moved == {ub for ub in lay.ub_not_told if lay.ub_sm(ub) > 0}


@pytest.mark.parametrize("override, words", [
    ('parallel.tp_overlap_not_told=["qkv_fprop"]', "qkv_dgrad"),  # a ring exchange takes no SMs here
    ("parallel.tp_overlap_not_told=\"qkv_dgrad\"", "list"),
])  # fmt: skip
def test_bad_not_told_names_the_key(tmp_path, capsys, override, words):
    from dualpipe_sim.cli import main

    out = tmp_path / "out"
    assert main(["run", str(VALIDATION / "mlperf31-gpt3-512.toml"), "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "parallel.tp_overlap_not_told" in err and words in err and "Traceback" not in err
    assert not out.exists()


def test_model_explain_says_which_gemms_were_not_told(capsys):
    from dualpipe_sim.cli import main

    assert main(["model", str(VALIDATION / "mlperf31-gpt3-512.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    for line in ("qkv dgrad", "qkv wgrad", "fc1 dgrad", "fc1 wgrad"):
        assert any(ln.lstrip().startswith(line) and "not told" in ln for ln in out.splitlines()), line
    assert not any(ln.lstrip().startswith(("fc2 ", "out_proj ")) and "not told" in ln for ln in out.splitlines())
