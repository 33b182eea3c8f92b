"""The model package against independent truth: published parameter totals (worked out by hand
from each config's fields), Korthikanti et al.'s activation formula, Megatron's FLOPs formula,
DeepSeek's profiled per-layer times, and ZeRO's sharding arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.model import activations, config, derive, flops, layout, memory, params
from dualpipe_sim.model.config import ModelError

from helpers import DEEPSEEK_PROFILE_MS, tiny_llama_toml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "scenarios" / "models"
GPT2 = ROOT / "tests" / "data" / "gpt2-config.json"


def close(x, target, rel=0.005):
    return abs(x - target) <= rel * target


# -- parameter counts, by hand ---------------------------------------------------------
def test_deepseek_v3_671b_total_and_36_6b_activated():
    cfg = config.read(MODELS / "deepseek-v3.json")
    h, V, E, f_e, f_dense = 7168, 129280, 256, 2048, 18432
    # MLA: q_a (h x 1536) + its norm + q_b (1536 x 128 heads x (128 nope + 64 rope))
    #      + kv_a (h x (512 + 64)) + its norm + kv_b (512 x 128 x (128 + 128)) + o (128 x 128 x h)
    mla = h * 1536 + 1536 + 1536 * 128 * 192 + h * 576 + 512 + 512 * 128 * 256 + 128 * 128 * h
    assert mla == 187_107_328
    norms = 2 * h
    expert = 3 * h * f_e  # gate, up, down
    dense_layer = mla + norms + 3 * h * f_dense
    moe_layer = mla + norms + E * expert + 1 * expert + h * E + E  # routed, shared, router, its bias
    total = V * h + 3 * dense_layer + 58 * moe_layer + h + V * h  # embedding, layers, final norm, head
    assert total == 671_026_419_200
    t = params.totals(cfg)
    assert t.total == total and close(t.total, 671e9)
    # Activated: 8 routed of 256 per token; the embedding is a lookup, the head a matmul.
    # DeepSeek's README_WEIGHTS.md: 36.6B activated "including 0.9B for the output Head" (~37B).
    active = 3 * dense_layer + 58 * (moe_layer - E * expert + 8 * expert) + h + V * h
    assert t.activated == active and close(t.activated, 36.6e9) and round(t.activated / 1e9) == 37
    # MTP module (not in the 671B): enorm, hnorm, 2h -> h projection, one MoE layer, shared-head norm.
    assert t.mtp == 2 * h + 2 * h * h + moe_layer + h


@pytest.mark.parametrize(
    "name, h, layers, heads, kv, ffn, published",
    [("llama3-70b.json", 8192, 80, 64, 8, 28672, 70.6e9), ("llama3.1-405b.json", 16384, 126, 128, 8, 53248, 405.9e9)],
)
def test_llama3_totals(name, h, layers, heads, kv, ffn, published):
    V, d = 128256, 128
    layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * ffn + 2 * h
    total = V * h + layers * layer + h + V * h
    t = params.totals(config.read(MODELS / name))
    assert t.total == total and close(total, published)


def test_gpt2_small_is_124m_as_hf_counts_it():
    # GPT-2 small's published count in HF: 124,439,808 (tied head, learned positions, biases).
    assert params.totals(config.read(GPT2)).total == 124_439_808


# -- activations: Korthikanti et al. 2022 ------------------------------------------------
@pytest.mark.parametrize("s, b", [(1024, 1), (512, 4)])
def test_korthikanti_formulas_for_a_gpt2_config(s, b):
    cfg = config.read(GPT2)
    h, a = 768, 12
    assert cfg.dropout
    assert activations.layer_total(cfg, 0, s, b, "none") == s * b * h * (34 + 5 * a * s / h)
    assert activations.layer_total(cfg, 0, s, b, "selective") == 34 * s * b * h
    assert activations.layer_total(cfg, 0, s, b, "full") == 2 * s * b * h
    # Tensor parallelism with sequence parallelism divides everything by t (their Eq. 5).
    assert activations.layer_total(cfg, 0, s, b, "none", tp=4) == s * b * h * (34 + 5 * a * s / h) / 4


def test_modern_dense_layer_count_by_hand():
    """Llama 3 70B, flash attention, no dropout, SwiGLU, GQA (docs/model.md lists the tensors)."""
    cfg = config.read(MODELS / "llama3-70b.json")
    s, b, h, f, a, kv, d = 8192, 1, 8192, 28672, 64, 8, 128
    per_token = 2 * h + 2 * h + 2 * (a + kv) * d + 2 * kv * d + 4 * a + 2 * a * d + 2 * h + 2 * h + 4 * f + 2 * f
    assert activations.layer_total(cfg, 0, s, b, "none") == s * b * per_token
    # Flash attention keeps no scores: Megatron-core's selective (core_attn) checkpoints the flash core all the same,
    # which frees only its fp32 log-sum-exp (4 bytes a head); Megatron-LM's own flash path is not checkpointed
    assert activations.layer_total(cfg, 0, s, b, "selective") == s * b * (per_token - 4 * a)
    assert activations.layer_total(cfg, 0, s, b, "selective", legacy=True) == s * b * per_token


def test_deepseek_policy_moe_layer_by_hand():
    cfg = config.read(MODELS / "deepseek-v3.json")
    s, h = 4096, 7168
    fp8, e5m6 = 1 + 4 / 128, 1.5 + 4 / 128  # plus one fp32 scale per 128 values
    kept = (
        2 * h  # norm1 input (the norm is recomputed from it)
        + 2 * 1536 + 2 * 576  # q latent, kv latent + rope key: the up-projections' inputs
        + 4 * 128  # log-sum-exp per head
        + e5m6 * 128 * 128  # attention output in E5M6
        + 2 * h  # norm2 input
        + 4 * 256  # router probabilities, fp32
        + 8 * fp8 * (h + 2 * 2048)  # 8 routed copies: FP8 expert input and SwiGLU input
        + fp8 * 2 * 2048  # shared expert's FP8 SwiGLU input
    )
    assert activations.layer_total(cfg, 10, s, 1, "deepseek") == pytest.approx(s * kept, rel=1e-12)
    # docs/dualpipe.md's independent count of the same layer: 642 MB
    assert activations.layer_total(cfg, 10, s, 1, "deepseek") == pytest.approx(642e6, rel=0.005)


# -- FLOPs: Megatron's formula and 6N + attention ----------------------------------------
@pytest.mark.parametrize("s", [1024, 2048])
def test_megatron_flops_formula_for_gpt(s):
    raw = json.loads(GPT2.read_text())
    raw.update(n_positions=s)
    cfg = config.from_hf(raw)
    l, h, V, B = 12, 768, 50257, 8
    megatron = 72 * B * s * l * h**2 * (1 + s / (6 * h) + V / (12 * l * h))  # per iteration, no recompute
    assert flops.per_token(cfg, s).training * B * s == pytest.approx(megatron, rel=1e-12)


def test_six_n_plus_attention_for_llama():
    cfg = config.read(MODELS / "llama3-70b.json")
    s = 8192
    f = flops.per_token(cfg, s)
    t = params.totals(cfg)
    matmul = t.activated - t.by_kind["norms"] - 8192  # minus the final norm
    assert f.six_n == 6 * matmul
    assert f.attention == 12 * 80 * s * 8192  # 3 x (QK^T + AV) = 12 l s h
    assert f.training == f.six_n + f.attention


# -- layouts ------------------------------------------------------------------------------
def test_megatron_layout_string():
    stages = layout.parse("Et*3|(t*4|)*14t*2mL", 61, 16, 1)
    assert [len(s.layers) for s in stages] == [3] + [4] * 14 + [2]
    assert stages[0].embedding and stages[-1].head and stages[-1].mtp == 1
    assert stages[1].layers == (3, 4, 5, 6)
    assert layout.to_string(stages).startswith("Et*3|t*4|")


def test_default_and_list_layouts():
    assert [len(s.layers) for s in layout.parse(None, 10, 4)] == [2, 3, 3, 2]
    with pytest.raises(ModelError, match="parallel.layout: the stages hold 9 layers, the model has 10"):
        layout.parse([3, 3, 3], 10, 3)


# -- memory: ZeRO sharding -----------------------------------------------------------------
def test_zero_stages_by_hand():
    dense, routed = 1000, 800
    sh = lambda z: memory.Sharding(tensor=2, expert=4, data=8, zero=z)  # noqa: E731
    # per rank before ZeRO: 500 dense + 200 routed; expert-data-parallel group = 8 x 2 / 4 = 4
    s0 = memory.stage_static(dense, routed, sh(0))
    assert (s0.parameters, s0.gradients, s0.optimizer) == (2 * 700, 4 * 700, 12 * 700)
    s1 = memory.stage_static(dense, routed, sh(1))
    assert s1.optimizer == 12 * (500 / 8 + 200 / 4) and s1.gradients == 4 * 700
    s3 = memory.stage_static(dense, routed, sh(3))
    assert s3.parameters == 2 * (500 / 8 + 200 / 4)


# -- the model verb ------------------------------------------------------------------------
def test_model_verb_json_for_a_bare_config(capsys):
    assert main(["model", str(MODELS / "llama3-70b.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("parameters_total", "parameters_activated", "flops_per_token", "activation_bytes_per_layer", "stages"):
        assert key in out
    assert out["parameters_total"] == 70_553_706_496
    assert (out["seq_length"], out["micro_batch_size"], out["recompute"]) == (4096, 1, "none")
    assert len(out["stages"]) == 1 and out["stages"][0]["layers"] == 80
    assert sum(s["parameters"] for s in out["stages"]) == out["parameters_total"]


def test_model_verb_set_and_stage_split(capsys):
    args = ["model", str(GPT2), "--json", "--set", "model.seq_length=1024", "--set", "memory.recompute=selective",
            "--set", "pipeline.stages=3", "--set", "parallel.layout=[3,5,4]",
            "--set", "model.attention=eager"]  # fmt: skip (Korthikanti's count: eager attention)
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["activation_bytes_per_layer"] == [34 * 1024 * 768] * 12
    assert [s["layers"] for s in out["stages"]] == [3, 5, 4]
    # The embedding lives on the first stage, the (tied) head's copy on the last.
    assert out["stages"][0]["embedding"] and out["stages"][2]["head"]


def test_model_verb_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}))
    assert main(["model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "num_attention_heads: required key is missing" in err


# -- derived times against DeepSeek's profile ---------------------------------------------
DEEPSEEK_SECTIONS = {
    "pipeline": {"schedule": "dualpipe", "stages": 16, "microbatches": 32},
    "model": {"config": str(MODELS / "deepseek-v3.json"), "seq_length": 4096, "micro_batch_size": 1,
              "optimizer_dtype": "bf16", "moe_dispatcher": "deepep"},  # DeepSeek's all-to-all: a token once per node
    "parallel": {"expert": 64, "data": 128, "zero": 1, "layout": "Et*3|(t*4|)*14t*2mL"},
    "hardware": {"preset": "H800", "efficiency": 0.324, "a2a_overhead": 4.04},
    "memory": {"recompute": "deepseek"},
}  # fmt: skip


def test_h800_components_within_25_percent_of_the_profile():
    from dualpipe_sim.model import derive
    from dualpipe_sim.inputs.scenario import sections_only

    d = derive.derive(derive.setup(sections_only(DEEPSEEK_SECTIONS)))
    for name, measured in DEEPSEEK_PROFILE_MS.items():
        got = getattr(d.moe_layer, name)
        assert abs(got - measured) <= 0.25 * measured, (name, got, measured)


# -- memory per rank in run, compare, sweep ---------------------------------------------------
def tiny_toml(tmp_path, hbm: float) -> Path:
    """A 4-layer Llama-style model on 2 stages; every derived time and byte is small."""
    return tiny_llama_toml(tmp_path, f"[hardware]\nbf16_tflops = 1.0\np2p_bandwidth = 1.0\nhbm = {hbm}\n")


def test_run_prints_memory_and_warns_over_hbm(tmp_path, capsys):
    assert main(["run", str(tiny_toml(tmp_path, 1e6)), "--out", str(tmp_path / "o"), "--plots", "png"]) == 0
    out, err = capsys.readouterr()
    assert "memory per rank (GB; device 0.00 GB)" in out and "over" in out
    lines = out.splitlines()  # s14h: two-word headings wrapped, the second word below; every rank over 1 MB
    i = lines.index("memory per rank (GB; device 0.00 GB):")
    assert lines[i + 1].split() == ["fp8", "zero", "act", "p2p", "a2a", "dyn"]
    assert lines[i + 2].split() == ["rank", "params", "w", "grads", "optim", "buf", "peak", "buf", "buf", "peak",
                                    "runtime", "total"]  # fmt: skip
    assert [x.split()[-1] for x in lines[i + 3:i + 5]] == ["over", "over"]
    assert err.startswith("warning: 2 of 2 ranks exceed the device memory (1 MB)") and err.count("\n") == 1
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["device_memory"] == 1e6
    # By hand: stage 0 = embedding 1000 x 256 + 2 layers; per layer q,o 2 x 256^2, k,v 2 x 256^2
    # (4 kv heads = 4 heads), SwiGLU 3 x 256 x 512, two norms 2 x 256.
    layer = 4 * 256 * 256 + 3 * 256 * 512 + 2 * 256
    stage0 = 1000 * 256 + 2 * layer
    mem = doc["per_rank"][0]["memory"]
    assert mem["parameters"] == 2 * stage0 and mem["gradients"] == 4 * stage0 and mem["optimizer"] == 12 * stage0
    assert mem["activations_peak"] == doc["per_rank"][0]["peak_activation_bytes"]
    # runtime: CUDA context 0.5 GB + the pipeline's NCCL communicator of 2 ranks (544 MiB) + 32 MiB workspace
    assert mem["runtime"] == 0.5e9 + 544 * 2**20 + 32 * 2**20
    assert mem["total"] == pytest.approx(18 * stage0 + mem["dynamic_peak"] + mem["runtime"])
    assert (tmp_path / "o" / "memory.png").stat().st_size > 0


def test_no_warning_when_it_fits(tmp_path, capsys):
    assert main(["run", str(tiny_toml(tmp_path, 80e9)), "--out", str(tmp_path / "o"), "--plots", "none"]) == 0
    assert capsys.readouterr().err == ""


def test_compare_marks_what_does_not_fit(tmp_path, capsys):
    assert main(["compare", str(tiny_toml(tmp_path, 1e6)), "--schedules", "1f1b,gpipe", "--out",
                 str(tmp_path / "c"), "--plots", "none"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "fits device memory" in out and "NO" in out


def test_sweep_summary_uses_total_memory_and_device_capacity():
    from dualpipe_sim.sweep.summary import fastest_fitting

    row = lambda name, ms, total, cap: {"status": "ok", "pipeline.schedule": name, "makespan": ms,  # noqa: E731
                                        "peak_memory_bytes": "1", "memory.total": total, "device_memory": cap}
    rows = [row("a", "1", "90e9", "80e9"), row("b", "2", "70e9", "80e9")]
    best, over = fastest_fitting(rows, None)  # no --memory-limit: each point's device memory
    assert best["pipeline.schedule"] == "b" and [r["pipeline.schedule"] for r in over] == ["a"]
    best, _ = fastest_fitting(rows, 100e9)  # --memory-limit wins
    assert best["pipeline.schedule"] == "a"


def test_hand_typed_costs_override_the_derived(tmp_path):
    from dualpipe_sim.inputs import scenario

    base = scenario.load(tiny_toml(tmp_path, 80e9)).cost_model()
    typed = scenario.load(tiny_toml(tmp_path, 80e9), ["costs.forward=5.0", "comm.p2p=0.25"]).cost_model()
    assert typed.forward == (5.0, 5.0) and typed.backward == base.backward and typed.p2p == 0.25
    assert base.p2p == pytest.approx(2 * 128 * 256 / 1e9 * 1e3)  # BF16 boundary activation over 1 GB/s, ms
    held = scenario.load(tiny_toml(tmp_path, 80e9), ["memory.activation=7.0"]).cost_model()
    assert held.activation_bytes == (7.0, 7.0) and held.parameter_bytes == base.parameter_bytes


def test_llama_presets_load_and_70b_fits():
    from dualpipe_sim.inputs import scenario
    from dualpipe_sim import simulation

    m = simulation.run(scenario.load(ROOT / "scenarios" / "llama3-70b.toml")).metrics
    assert m.fits() is True and m.device_memory == 81559 * 2**20
    d405 = scenario.load(ROOT / "scenarios" / "llama3-405b.toml").derived()
    assert [len(st.layers) for st in d405.setup.stages] == [3] + [4] * 30 + [3]
    # every parameter on one stage, the norms (126 layers x 2h, the final h) counted on each of the 8 tensor ranks
    # (whole there: Megatron-core @ 1e05700 transformer_layer.py 309-314, 356-361)
    assert sum(st.dense_params for st in d405.stages) == 405_853_388_800 + 7 * (126 * 2 + 1) * 16_384


def test_explain_names_each_derivation(capsys):
    assert main(["model", str(ROOT / "scenarios" / "deepseek-v3.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "all-to-all = overhead 4.04 ms + bytes / 50 GB/s" in out
    assert "routed expert inputs (k copies)" in out and "efficiency 0.324" in out
    assert "ZeRO 1 shards optimizer over data (128)" in out
    assert "`run` uses the scenario's hand-typed [chunk], comm.p2p instead of the derived figures" in out


def test_mixtral_and_qwen_moe_counts():
    """Mixtral-8x7B (mistralai/Mixtral-8x7B-v0.1 config.json): 46.7B total, 12.9B active with the
    embedding (Mistral's announcement).  Qwen1.5-MoE-A2.7B (Qwen/Qwen1.5-MoE-A2.7B config.json):
    14.3B total, 2.7B activated with the embedding (Qwen's model card)."""
    mixtral = config.from_hf({
        "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False})  # fmt: skip
    expert = 3 * 4096 * 14336
    attn = 2 * 4096 * 4096 + 2 * 4096 * 1024
    layer = attn + 8 * expert + 4096 * 8 + 2 * 4096
    t = params.totals(mixtral)
    assert t.total == 32 * layer + 2 * 32000 * 4096 + 4096 and close(t.total, 46.7e9)
    assert t.activated + t.embedding == 32 * (layer - 6 * expert) + 2 * 32000 * 4096 + 4096
    assert close(t.activated + t.embedding, 12.9e9, rel=0.01)  # 12.88B
    qwen = config.from_hf({
        "model_type": "qwen2_moe", "hidden_size": 2048, "num_hidden_layers": 24, "vocab_size": 151936,
        "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
        "num_experts_per_tok": 4, "decoder_sparse_step": 1, "tie_word_embeddings": False})  # fmt: skip
    expert, shared = 3 * 2048 * 1408, 3 * 2048 * 5632
    layer = 4 * 2048 * 2048 + 3 * 2048 + 60 * expert + shared + 2048 + 2048 * 60 + 2 * 2048  # qkv biases, gate
    t = params.totals(qwen)
    assert t.total == 24 * layer + 2 * 151936 * 2048 + 2048 and close(t.total, 14.3e9)
    assert round((t.activated + t.embedding) / 1e8) / 10 == 2.7


@pytest.mark.parametrize("dispatcher", ["alltoall", "deepep"])
def test_efficiency_model_all_to_all_counts_copies_as_the_dispatcher_sends_them(tmp_path, dispatcher):
    """With hardware.efficiency the all-to-all crosses the NIC as in the kernel model: Megatron's NCCL
    all-to-all sends every (token, expert) copy bound for another node, DeepEP one per remote node reached."""
    from dualpipe_sim.inputs import scenario

    path = tmp_path / "ep16.toml"
    path.write_text(f"""
[pipeline]
schedule = "1f1b"
stages = 16
microbatches = 32
[model]
config = "{MODELS / 'deepseek-v3.json'}"
seq_length = 4096
micro_batch_size = 1
moe_dispatcher = "{dispatcher}"
[parallel]
expert = 16
data = 16
[hardware]
preset = "H800"
efficiency = 0.4
""")
    st = scenario.load(path).derived().setup
    # EP 16 on nodes of 8: 2 nodes. A token's 8 experts: each on the other node with probability 1/2.
    # NCCL: 8 x 1/2 = 4 copies over the NIC. DeepEP: the nodes reached, 2 (1 - 1/2^8) = 1.9921875, half remote.
    copies = 4.0 if dispatcher == "alltoall" else 2 * (1 - 0.5**8) / 2
    b = derive.a2a_bytes(st)
    assert b["combine_forward"] == pytest.approx(4096 * copies * 7168 * 2, rel=1e-12)  # BF16 combine
    t = derive.a2a_times(st)
    assert t["combine_forward"] == pytest.approx(st.a2a_overhead + b["combine_forward"] / 50e9 * 1e3, rel=1e-12)
