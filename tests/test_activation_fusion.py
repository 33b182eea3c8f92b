"""Nemotron-4 340B's squared ReLU with ``bias_activation_fusion: False`` (docs/model.md "Unfused activation"): the
flag does not unfuse it.  Megatron-core (core_r0.7.0 / core_r0.8.0 ``transformer/mlp.py`` lines 99-125) then calls
``config.activation_func`` on fc1's output, and the function NeMo 1 passes for "squared-relu" is NeMo's own
``squared_relu``, ``@jit_fuser`` = ``torch.compile`` since NeMo d9f2077 (2024-04-23; in v2.0.0rc0, the nemo:24.05
container the launcher config pins): Inductor runs it as one kernel forward (reads x, writes x^2; saves x) and one
backward (reads x and the gradient, writes the input gradient).  That is the model's charge; these tests pin it by
hand-worked bytes and launches, and keep the three Nemotron rows on it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
HBM, FLOOR = 2.9e12, 2.5e-6  # the H100 preset's HBM rate and kernel floor (docs/model.md, "Kernel rates")


def _small() -> dict:
    """A small Nemotron layer: 128 tokens, hidden 256, squared-ReLU MLP of 1,024, TP 1, bf16."""
    return {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
            "model": {"model_type": "nemotron", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "intermediate_size": 1024, "vocab_size": 1024, "seq_length": 128,
                      "micro_batch_size": 1},
            "parallel": {"tensor": 1, "data": 1}, "hardware": {"preset": "H100"}}


def _act_rows(sc) -> dict:
    return {r.name: r for r in derive.layer_kernels(derive.setup(sc), 0) if r.name in ("relu2", "activation backward")}


def test_squared_relu_is_one_kernel_each_way_small_layer():
    """128 tokens x f 1,024 = 131,072 elements, 2 bytes each.  Forward, Inductor's cpp/triton_fused_pow_relu: read
    x, write relu(x)^2: 131,072 x (2 + 2) = 524,288 bytes, one launch.  Backward,
    fused_mul_pow_relu_threshold_backward: read the saved x and the output gradient, write x's gradient:
    131,072 x 3 x 2 = 786,432 bytes, one launch.  (The eager ops would be 2 forward kernels, relu and pow, and 4
    backward: pow_backward's pow(1), mul by 2, mul by the gradient, then threshold_backward.)"""
    rows = _act_rows(scenario.from_dict(_small()))
    assert set(rows) == {"relu2", "activation backward"}
    for name, nbytes, comp in (("relu2", 524_288, "mlp_forward"), ("activation backward", 786_432,
                                                                    "mlp_backward_input")):
        row = rows[name]
        assert row.bytes == nbytes and row.component == comp
        assert "kernels)" not in row.shape  # one launch: memory rows name a count only above one
        assert row.seconds == pytest.approx(FLOOR + nbytes / HBM, rel=1e-12)


@pytest.mark.parametrize("dp", [16, 32, 64])
def test_nemotron_rows_charge_the_compiled_squared_relu(dp):
    """Nemotron-4 340B at TP 8: f / t = 73,728 / 8 = 9,216, 4,096 tokens: 37,748,736 elements; forward 4 bytes an
    element = 150,994,944, backward 6 = 226,492,416, one launch each (2.5 us + bytes / 2.9 TB/s)."""
    sc = scenario.load(VALIDATION / f"nemotron4-340b-dp{dp}.toml")
    cfg = derive.model_config(sc.model)
    assert cfg.ffn == "relu2" and not cfg.bias  # launcher config: activation squared-relu (line 85), bias false (84)
    rows = _act_rows(sc)
    assert rows["relu2"].bytes == 150_994_944
    assert rows["activation backward"].bytes == 226_492_416
    for row in rows.values():
        assert row.seconds == pytest.approx(FLOOR + row.bytes / HBM, rel=1e-12)


def test_the_config_flag_is_not_a_key():
    """bias_activation_fusion False changes nothing the model costs for a bias-free squared ReLU (with True,
    Megatron-core raises "Only support fusion of gelu and swiglu"): there is no model.activation_fusion, and a
    scenario that sets one stops with one line naming it, exit 2, nothing written."""
    toml = "\n".join(f"[{sec}]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in body.items())
                     for sec, body in _small().items())
    toml = toml.replace("[model]\n", "[model]\nactivation_fusion = false\n")
    assert tomllib.loads(toml)["model"]["activation_fusion"] is False
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / "s.toml", Path(d) / "out"
        path.write_text(toml)
        proc = subprocess.run([sys.executable, "-m", "dualpipe_sim", "run", str(path), "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == ["error: model.activation_fusion: unknown key"]
        assert not out.exists()
