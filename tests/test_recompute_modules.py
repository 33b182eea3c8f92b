"""memory.recompute_modules: Megatron-core's --recompute-modules (model/recompute.py), worked by hand.

Activation bytes: a small Qwen3-MoE layer's saved tensors counted in the test's own arithmetic (16-bit, one
sequence of 128 tokens).  Times: what the modules add to the input gradient is their forward kernels again plus
CheckpointWithoutOutput's copy of the output back into its freed storage (read + write), nothing else.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import activations, config, derive, kernels

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"

# Qwen3-MoE, tiny: h 64, 4 query heads and 2 key/value heads of 16, 8 experts of 48 (top 2), layer 1 dense (96)
TINY = config.from_hf({
    "model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96,
    "moe_intermediate_size": 48, "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [1]})  # fmt: skip
S, H, K, FE, F = 128, 64, 2, 48, 96
# what any layer's attention keeps, 2 bytes a value: norm1 input, qkv input (norm1 output), q and k (6 heads),
# v (2 heads), the fp32 log-sum-exp (4 heads), o_proj input, norm2 input
ATTN = 2 * S * H + 2 * S * H + 2 * S * 6 * 16 + 2 * S * 2 * 16 + 4 * S * 4 + 2 * S * 4 * 16 + 2 * S * H
NORM2_OUT = 2 * S * H  # the MLP's input (the pre-MLP norm's output)
# MoE: router probabilities (fp32, 8 experts), k copies of each token, the SwiGLU input (2 x 48), its output (48)
MOE = 4 * S * 8 + 2 * K * S * H + 2 * K * S * 2 * FE
MOE_ACT_OUT = 2 * K * S * FE
DENSE = 2 * S * 2 * F + 2 * S * F  # SwiGLU input (gate, up), down input


def _saved(i, modules, tp=1, sp=True):
    return activations.layer_total(TINY, i, S, 1, "selective", 2.0, tp, sp, modules)


def test_moe_layer_bytes_with_layernorm_and_moe_act_by_hand():
    full_list = ATTN + NORM2_OUT + MOE + MOE_ACT_OUT
    assert _saved(0, ()) == full_list == 227_328
    # layernorm: the pre-MLP norm is a TENorm module of an MoE layer: its output is freed; the input norm is fused
    # into linear_qkv (IdentityOp), so the qkv input stays
    assert _saved(0, ("layernorm",)) == full_list - NORM2_OUT == 210_944
    # moe_act: the SwiGLU's output (fc2's input) is freed; its input stays (the checkpoint's saved argument)
    assert _saved(0, ("moe_act",)) == full_list - MOE_ACT_OUT == 202_752
    assert _saved(0, ("layernorm", "moe_act")) == full_list - NORM2_OUT - MOE_ACT_OUT == 186_368
    names = activations.layer(TINY, 0, S, 1, "selective", modules=("layernorm", "moe_act"))
    assert "mlp input (norm2 output)" not in names and "routed down inputs" not in names
    assert "qkv input (norm1 output)" in names and "routed SwiGLU inputs" in names


def test_tensor_split_of_the_freed_tensors():
    base = ATTN + NORM2_OUT + MOE + MOE_ACT_OUT
    # TP 2 with sequence parallelism: everything / 2
    assert _saved(0, ("layernorm",), tp=2) == (base - NORM2_OUT) / 2
    assert _saved(0, ("moe_act",), tp=2) == (base - MOE_ACT_OUT) / 2
    # without it the norm output sits outside the tensor-parallel region, whole on each rank: all of it is freed
    whole = _saved(0, (), tp=2, sp=False)
    assert whole - _saved(0, ("layernorm",), tp=2, sp=False) == NORM2_OUT
    assert whole - _saved(0, ("moe_act",), tp=2, sp=False) == MOE_ACT_OUT / 2


def test_dense_layer_layernorm_frees_nothing_and_mlp_keeps_only_its_input():
    dense = ATTN + NORM2_OUT + DENSE
    assert _saved(1, ()) == dense == 190_464
    assert _saved(1, ("layernorm", "moe_act")) == dense  # norms fused into the linears, no experts
    assert _saved(1, ("mlp",)) == dense - NORM2_OUT - DENSE == 100_352  # the norm2 input is the checkpoint's input
    assert _saved(0, ("mlp",)) == _saved(0, ())  # an MoE layer is not "mlp" (transformer_layer.py: not MoELayer)


def test_mla_input_norm_is_a_module_of_its_own():
    ds = replace(config.read(ROOT / "scenarios" / "models" / "deepseek-v3.json"), fp8=False)  # layernorm: 16-bit only
    i = ds.num_layers - 1
    before = activations.layer(ds, i, 256, 1, "selective", modules=())
    after = activations.layer(ds, i, 256, 1, "selective", modules=("layernorm",))
    assert before["q_a input (norm1 output)"] == 2 * 256 * ds.hidden_size
    assert set(before) - set(after) == {"q_a input (norm1 output)", "mlp input (norm2 output)"}


def _load(name, overrides=()):
    return derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))


def test_default_list_is_todays_selective():
    today = _load("k22-22b-seqsel")
    listed = _load("k22-22b-seqsel", ['memory.recompute_modules=["core_attn"]'])
    assert today.modules is None and listed.modules == ("core_attn",)
    assert derive.layer_kernels(today, 0) == derive.layer_kernels(listed, 0)
    assert derive.derive(today).stages == derive.derive(listed).stages
    # and the list is read: without core_attn the eager attention core is not rerun, its scores are kept
    bare = _load("k22-22b-seqsel", ["memory.recompute_modules=[]"])
    assert "attention scores QK^T (batched)" not in {k.name for k in derive.layer_kernels(bare, 0)
                                                     if k.component == "attn_backward_input"}
    assert derive.derive(bare).stages[0].activation_bytes > derive.derive(today).stages[0].activation_bytes


def test_added_input_gradient_is_the_modules_forward_kernels_and_the_copy_back():
    bare = _load("xt-qwen3-235b-tp2ep8pp8", ["memory.recompute_modules=[]"])
    both = _load("xt-qwen3-235b-tp2ep8pp8")  # the row: layernorm, moe_act
    assert both.modules == ("moe_act", "layernorm")
    kb, kn = derive.layer_kernels(bare, 0), derive.layer_kernels(both, 0)
    fwd = {k.name: k for k in kb if k.component == "mlp_forward"}
    r = both.rates
    n = 4096 // 2  # tokens per rank after the sequence split (TP 2)
    norm_out, act_out = n * 4096 * 2, n * 8 * 1536 * 2  # bf16 norm output; SwiGLU output of 8 copies x 1536
    copy = lambda b: r.floor + 2 * b / r.hbm  # noqa: E731 - untyped_storage().copy_: read + write
    added = fwd["pre-mlp norm"].seconds + fwd["experts swiglu"].seconds + copy(norm_out) + copy(act_out)
    cb, cn = kernels.by_component(kb), kernels.by_component(kn)
    assert cn["mlp_backward_input"] - cb["mlp_backward_input"] == pytest.approx(added * 1e3, rel=1e-9)
    assert {c: v for c, v in cn.items() if c != "mlp_backward_input"} == {
        c: v for c, v in cb.items() if c != "mlp_backward_input"}
    reruns = [k for k in kn if k.name.endswith(" (recompute)")]
    assert [(k.name, k.bytes, k.seconds) for k in reruns] == [
        (fwd[x].name + " (recompute)", fwd[x].bytes, fwd[x].seconds) for x in ("pre-mlp norm", "experts swiglu")]
    assert all(k.component == "mlp_backward_input" for k in reruns)


def test_dense_mlp_rerun_is_its_forward_without_the_residual_add():
    ds = _load("k22-22b-seqsel", ["memory.recompute_modules=[]"])
    mlp = _load("k22-22b-seqsel", ['memory.recompute_modules=["mlp"]'])
    kb, km = derive.layer_kernels(ds, 0), derive.layer_kernels(mlp, 0)
    fwd = sum(k.seconds for k in kb if k.component == "mlp_forward" and k.name != "residual add")
    cb, cm = kernels.by_component(kb), kernels.by_component(km)
    assert cm["mlp_backward_input"] - cb["mlp_backward_input"] == pytest.approx(fwd * 1e3, rel=1e-9)
    assert cm["mlp_forward"] == cb["mlp_forward"]


def _cli_error(tmp_path, capsys, overrides):
    args = ["run", str(VALIDATION / "xt-qwen3-235b-tp2ep8pp8.toml"), "--out", str(tmp_path / "out")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "out").exists() and "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize("overrides, words", [
    (['memory.recompute_modules=["layernorm", "norm"]'], ["memory.recompute_modules", "core_attn", "'norm'"]),
    (["memory.recompute=none"], ["memory.recompute_modules", '"selective"', '"none"']),
    (["memory.recompute=full"], ["memory.recompute_modules", '"selective"', '"full"']),
    (['memory.recompute_modules=["mla_up_proj"]'], ["memory.recompute_modules", '"mla_up_proj"',
                                                    "multi-latent attention"]),
    (["model.expert_gemm=sequential"], ["memory.recompute_modules", "moe_grouped_gemm"]),
    (["model.fp8=true"], ["memory.recompute_modules", "FP8"]),
])  # fmt: skip
def test_bad_lists_are_one_line_errors(tmp_path, capsys, overrides, words):
    err = _cli_error(tmp_path, capsys, overrides)
    for w in words:
        assert w in err, (w, err)


def test_explain_lists_the_recompute_rows(capsys):
    assert main(["model", str(VALIDATION / "mz-qwen3-235b-ep32pp8.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "pre-mlp norm (recompute)" in out and "experts swiglu (recompute)" in out
    assert "experts swiglu (recompute copy)" in out and "recompute selective (layernorm, moe_act)" in out


# -- s12g: model --json's recompute_modules; refused on Megatron-LM of 2021 ---------------------------------------------
def _json(capsys, name, overrides=()):
    import json

    args = ["model", str(VALIDATION / f"{name}.toml"), "--json"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, overrides, policy, want", [
    ("xt-qwen3-235b-tp2ep8pp8", [], "selective", ["moe_act", "layernorm"]),  # the row's own list, as given
    ("k22-22b-seqsel", [], "selective", ["core_attn"]),  # no list: Megatron-core's default
    ("k22-22b-seqsel", ["memory.recompute_modules=[]"], "selective", []),  # an empty list: none recomputed
    ("k22-22b-seqsel", ["memory.recompute=full"], "full", None),  # not "selective": no module list applies
])  # fmt: skip
def test_json_gives_the_modules_used(capsys, name, overrides, policy, want):
    out = _json(capsys, name, overrides)
    assert (out["recompute"], out["recompute_modules"]) == (policy, want)


@pytest.mark.parametrize("verb, modules", [(["model"], '["core_attn"]'), (["model", "--json"], '["core_attn"]'),
                                           (["run", "--plots", "none"], '["core_attn"]'), (["model"], "[]")])
def test_megatron_lm_2021_refuses_a_module_list(tmp_path, capsys, verb, modules):
    """Megatron-LM of 2021 (6985e58 arguments.py) had --checkpoint-activations only: a module list is refused in every
    verb, one line naming the key and the runtime, exit 2, nothing written."""
    out = tmp_path / "out"
    args = [verb[0], str(VALIDATION / "n21-1.7b.toml"), *verb[1:], "--set", "memory.recompute=selective",
            "--set", f"memory.recompute_modules={modules}"] + (["--out", str(out)] if verb[0] == "run" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists() and "Traceback" not in err and len(err.splitlines()) == 1
    assert "memory.recompute_modules" in err and "megatron-lm-2021" in err
    # without the list the same runtime and policy are accepted
    assert main(["model", str(VALIDATION / "n21-1.7b.toml"), "--set", "memory.recompute=selective"]) == 0
