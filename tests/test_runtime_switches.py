"""The runs' runtime switches as their configs set them (docs/model.md, "Runs' runtime switches, read from their
configs" and "Unfused RoPE"): NeMo 1's P2P default, the MLPerf GPT-3 rows' overlapped P2P, Nemotron-4's unfused RoPE,
and the kernels of Megatron-core's apply_rotary_pos_emb_bshd and its autograd backward (model/rope.py), hand-worked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dualpipe_sim.errors import ScenarioError
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive
from dualpipe_sim.model.config import ModelError

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "scenarios" / "validation"
HBM, FLOOR = 2.9e12, 2.5e-6  # the H100 preset's HBM rate and kernel floor (docs/model.md, "Kernel rates")


def _small(**model) -> dict:
    """A small Llama layer: 128 tokens, 4 query heads and 2 key-value heads of 64, TP 1, bf16."""
    return {"pipeline": {"schedule": "1f1b", "stages": 2, "microbatches": 4},
            "model": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1024, "seq_length": 128,
                      "micro_batch_size": 1, **model},
            "parallel": {"tensor": 1, "data": 1}, "hardware": {"preset": "H100"}}


def _rope_rows(sc) -> dict:
    return {r.name: r for r in derive.layer_kernels(derive.setup(sc), 0) if "rope" in r.name}


def test_unfused_rope_small_layer_whole_head():
    """q: E = 128 x 4 x 64 = 32,768 elements, all turned (E_r = E); k: 128 x 2 x 64 = 16,384; freqs F = 128 x 64 =
    8,192 fp32.  Forward over t: 6 kernels, (10 E_r + 2 E) x 2 bytes + cos_ and sin_ read once (2 F x 2):
    q 786,432 + 32,768 = 819,200; k 393,216 + 32,768 = 425,984.  cos, .to, sin, .to: 4 kernels, 2 x (8 + 6) x F =
    229,376 bytes a tensor.  Backward with the whole head turned: mul, neg, split's cat, mul, add (10 E), t_pass's
    zeros (E) and the add of the two gradients (3 E): 7 kernels, 14 E x 2 + 2 F x 2: q 950,272, k 491,520."""
    rows = _rope_rows(scenario.from_dict(_small(rope_fusion=False)))
    fwd = "rope (unfused: mul, neg, cat, mul, add, cat) "
    bwd = "rope backward (unfused, autograd) "
    expect = {fwd + "q": (819_200, 6), fwd + "k": (425_984, 6),
              "rope cos / sin of the freqs q": (229_376, 4), "rope cos / sin of the freqs k": (229_376, 4),
              bwd + "q": (950_272, 7), bwd + "k": (491_520, 7)}
    assert set(rows) == set(expect)
    for name, (nbytes, launches) in expect.items():
        assert rows[name].bytes == nbytes
        assert f"({launches} kernels)" in rows[name].shape
        assert rows[name].seconds == pytest.approx(launches * FLOOR + nbytes / HBM, rel=1e-12)
    assert {r.component for n, r in rows.items() if n.startswith(bwd)} == {"attn_backward_input"}


def test_fused_rope_is_the_default_and_one_pass():
    """rope_fusion true (default): one kernel reading and writing q and k, 128 x (4 + 2) x 64 x 2 x 2 = 196,608
    bytes; its backward row the same bytes, q's gradient and k's (Megatron-core applies RoPE to each apart, so
    each has its backward; until session 17 the row counted q alone, 131,072)."""
    rows = _rope_rows(scenario.from_dict(_small()))
    assert set(rows) == {"rope", "rope backward"}
    assert rows["rope"].bytes == 196_608 and rows["rope backward"].bytes == 196_608


def test_unfused_rope_nemotron_340b_half_of_each_head():
    """Nemotron-4 340B at TP 8: q 4,096 x 12 x 192 = 9,437,184 elements, half turned (rotary_percentage 0.5):
    E_r 4,718,592; k one head: 786,432 and 393,216; F = 4,096 x 96 = 393,216.  Forward q (10 E_r + 2 E) x 2 +
    2 F x 2 = 132,120,576 + 1,572,864 = 133,693,440; backward with a real slice: 10 kernels,
    (10 E_r + 7 E) x 2 + 2 F x 2 = 226,492,416 + 1,572,864 = 228,065,280; k forward 12,582,912, backward 20,447,232."""
    sc = scenario.load(VALIDATION / "nemotron4-340b-dp16.toml")
    rows = _rope_rows(sc)
    assert rows["rope (unfused: mul, neg, cat, mul, add, cat) q"].bytes == 133_693_440
    assert rows["rope (unfused: mul, neg, cat, mul, add, cat) k"].bytes == 12_582_912
    assert rows["rope backward (unfused, autograd) q"].bytes == 228_065_280
    assert rows["rope backward (unfused, autograd) k"].bytes == 20_447_232
    assert "(10 kernels)" in rows["rope backward (unfused, autograd) q"].shape
    assert rows["rope cos / sin of the freqs q"].bytes == 2 * (8 + 6) * 393_216


@pytest.mark.parametrize("dp", [16, 32, 64])
def test_nemotron_rows_run_rope_unfused_as_nemo_1s_default(dp):
    """nemotron_340b.yaml sets no apply_rope_fusion; NeMo 1 takes cfg.get('apply_rope_fusion', False)
    (megatron_base_model.py line 514) and rotary_percentage 0.5 (line 91)."""
    text = (VALIDATION / f"nemotron4-340b-dp{dp}.toml").read_text()
    sc = scenario.load(VALIDATION / f"nemotron4-340b-dp{dp}.toml")
    assert sc.model.rope_fusion is False
    assert derive.model_config(sc.model).rotary_fraction == 0.5
    assert "megatron_base_model.py line 514" in text and "rotary_percentage 0.5 (lines 90-91)" in text


def _interleaved(loop: str, runtime: str = "megatron-core") -> dict:
    d = _small(training_loop=loop, runtime=runtime)
    d["pipeline"] = {"schedule": "interleaved-1f1b", "stages": 4, "chunks_per_rank": 2, "microbatches": 4}
    d["model"]["num_hidden_layers"] = 4
    return d


@pytest.mark.parametrize("loop, mode", [("nemo-1", "blocking"), ("nemo-2", "async"), ("megatron-core", "async"),
                                        ("megatron-pretrain-gpt", "async")])
def test_derived_p2p_for_interleaved_by_training_loop(loop, mode):
    """NeMo 1 leaves overlap_p2p_comm to ModelParallelConfig's default False (batch_p2p_comm True, NeMo's
    batch_p2p_sync True): blocking; Megatron-LM's parser defaults to overlap (--no-overlap-p2p-communication)."""
    sc = scenario.from_dict(_interleaved(loop))
    assert sc.comm.p2p_mode == "derived"
    assert sc.p2p_mode() == mode


MLPERF_GPT3 = sorted(VALIDATION.glob("mlperf[34]*-gpt3-*.toml"))


def test_every_nemo_1_row_says_its_p2p_mode():
    """No NeMo 1 row leans on the derivation: each config set overlap_p2p_comm."""
    nemo1 = [p for p in VALIDATION.glob("*.toml") if scenario.load(p).model.training_loop == "nemo-1"]
    assert len(nemo1) == 21 and len(MLPERF_GPT3) == 18
    for p in nemo1:
        assert scenario.load(p).comm.p2p_mode != "derived", p.name


@pytest.mark.parametrize("path", MLPERF_GPT3, ids=lambda p: p.stem)
def test_mlperf_gpt3_rows_overlap_p2p_as_their_configs(path):
    """overlap_p2p_comm True, batch_p2p_comm False in each round's yaml (v3.0 megatron_gpt_config.yaml 94-95;
    v3.1 custom.yaml 76-77; v4.0 78-79; v4.1 79-80)."""
    lines = {"mlperf30": "lines 94-95", "mlperf31": "lines 76-77", "mlperf40": "lines 78-79", "mlperf41": "lines 79-80"}
    sc = scenario.load(path)
    assert sc.comm.p2p_mode == "async" and sc.p2p_mode() == "async"
    assert lines[path.stem[:8]] in path.read_text()


def test_rope_fusion_false_with_mla_is_an_error():
    d = _small(rope_fusion=False, model_type="deepseek_v3", q_lora_rank=0, kv_lora_rank=32, qk_rope_head_dim=16,
               qk_nope_head_dim=32, v_head_dim=32, n_routed_experts=4, num_experts_per_tok=2,
               moe_intermediate_size=64, first_k_dense_replace=1, n_shared_experts=1)
    rule = r"^model\.rope_fusion: false is costed for Megatron-core.s"
    with pytest.raises((ModelError, ScenarioError), match=rule):
        derive.setup(scenario.from_dict(d))


def test_cli_bad_rope_fusion_is_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "dualpipe_sim", "run", str(VALIDATION / "nemotron4-340b-dp16.toml"),
                          "--set", 'model.rope_fusion="maybe"', "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "model.rope_fusion" in err[0]
    assert not out.exists()
