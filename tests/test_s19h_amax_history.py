"""model.fp8_amax_history (s19h): the length of Transformer Engine's delayed-scaling amax history, which the
per-chunk update kernel rolls (docs/model.md, "FP8 amax reduction").

The bytes are read off TE release_v1.14 ``common/recipe/delayed_scaling.cu`` ``kernel_bulk`` (lines 173-266): per
amax, one read of the reduced amax, the history's other L - 1 entries read and all L written back rolled, then the
scale and its inverse written, all fp32: (1 + (L - 1) + L + 2) x 4 B. The MLPerf v5.0 Llama 3.1 405B rows leave
FP8_AMAX_HISTORY unset (custom.yaml:110, NeMo's default 1); the GPT-3 rows export 1,024 (config_fp8.sh:4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
V30 = VAL / "mlperf30-gpt3-512.toml"  # one GPT-3 layer a chunk, TP 4, H100: 4 FP8 linears
HBM = 2.90e12  # the H100 preset's streaming bandwidth (Azure BabelStream Mul)
FLOOR = 2.5e-6  # the H100 preset's kernel floor


def _update_rows(path, overrides):
    st = derive.setup(scenario.load(path, overrides))
    rows = derive.chunk_kernels(st, st.stages[1])
    return {k.name: k for k in rows if k.name.startswith("fp8 amax + scale update")}


@pytest.mark.parametrize("history, per_amax", [
    (1, (1 + 0 + 1 + 2) * 4),  # the v5.0 rows: 16 B an amax
    (3, (1 + 2 + 3 + 2) * 4),  # 32 B
    (1024, (1 + 1023 + 1024 + 2) * 4),  # TE's default and the GPT-3 rows: 8,200 B
])  # fmt: skip
def test_update_bytes_by_hand(history, per_amax):
    # one GPT-3 layer a chunk: QKV, out_proj, fc1, fc2; 3 amaxes each forward (input, weight, output), 2 backward
    rows = _update_rows(V30, [f"model.fp8_amax_history={history}"])
    fwd, bwd = rows["fp8 amax + scale update (forward)"], rows["fp8 amax + scale update (backward)"]
    assert (fwd.bytes, bwd.bytes) == (12 * per_amax, 8 * per_amax)
    assert fwd.seconds == pytest.approx(FLOOR + 12 * per_amax / HBM)
    assert bwd.seconds == pytest.approx(FLOOR + 8 * per_amax / HBM)


def test_default_is_tes_1024():
    assert _update_rows(V30, [])["fp8 amax + scale update (forward)"].bytes == 12 * 8200
    assert kernels.amax_update_bytes(1, kernels.AMAX_HISTORY) == 8200


def test_the_key_moves_each_chunk_by_the_update_bytes_alone():
    # 1 against 1,024: the forward update moves 12 x (8,200 - 16) B less, the backward's 8 x; the weight gradient none
    def stage(history):
        return scenario.load(V30, [f"model.fp8_amax_history={history}"]).derived().stages[1]

    short, long = stage(1), stage(1024)
    assert long.forward - short.forward == pytest.approx(12 * 8184 / HBM * 1e3)  # ms
    assert long.backward - short.backward == pytest.approx(8 * 8184 / HBM * 1e3)  # B holds I + W
    assert long.weight == short.weight


def test_v50_rows_run_nemos_history_of_one():
    # every MLPerf v5.0 Llama 3.1 405B row (H100, H200, GB200): FP8_AMAX_HISTORY unset, custom.yaml's default 1
    rows = sorted(VAL.glob("mlperf50-llama405b-*.toml"))
    assert len(rows) == 9
    for path in rows:
        assert scenario.load(path, []).model.fp8_amax_history == 1, path.name
    # the 512-GPU row: 2 layers a chunk x 4 linears; 24 amaxes forward, 16 backward, 16 B each
    upd = _update_rows(VAL / "mlperf50-llama405b-512.toml", [])
    assert (upd["fp8 amax + scale update (forward)"].bytes, upd["fp8 amax + scale update (backward)"].bytes) == (384, 256)


BF16 = str(ROOT / "scenarios" / "llama3-70b.toml")  # no FP8 linears
DEEPGEMM = str(ROOT / "scenarios" / "deepseek-v3.toml")  # DeepGEMM's fine-grained scaling: no amax history
CURRENT = str(VAL / "mlperf51-llama8b-8b200.toml")  # FP8 current scaling
NVFP4 = str(VAL / "mlperf51-llama8b-8gb300-nvfp4.toml")


@pytest.mark.parametrize("path, value, message", [
    (str(V30), "0", "model.fp8_amax_history: input should be greater than or equal to 1"),
    (str(V30), "1.5", "model.fp8_amax_history: must be a whole number"),
    (str(V30), "true", "model.fp8_amax_history: must be a whole number"),
    (str(V30), '"2"', "model.fp8_amax_history: must be a whole number"),
    (BF16, "1", "model.fp8_amax_history: 1 is Transformer Engine's delayed scaling"),
    (DEEPGEMM, "16", "model.fp8_amax_history: 16 is Transformer Engine's delayed scaling"),
    (CURRENT, "1", 'model.fp8_amax_history: delayed scaling only; with model.fp8_recipe = "current"'),
    (NVFP4, "1", 'model.fp8_amax_history: must be left out with model.fp4 = "nvfp4"'),
])  # fmt: skip
def test_bad_values_one_line_exit_2_nothing_written(tmp_path, capsys, path, value, message):
    out = tmp_path / "out"
    assert main(["run", path, "--out", str(out), "--set", f"model.fp8_amax_history={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.fp8_amax_history:") and err.count("\n") == 1, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == []


def test_default_given_where_it_cannot_apply_is_accepted(tmp_path, capsys):
    assert main(["run", BF16, "--out", str(tmp_path / "o"), "--plots", "none",
                 "--set", "model.fp8_amax_history=1024"]) == 0  # fmt: skip
    assert "error" not in capsys.readouterr().err
