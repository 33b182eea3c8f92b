"""The forward as the MLPerf logs' evaluations run it, and two kernels of the training forward, worked by hand
(issue 21, s11a; docs/model.md, "The forward with autograd off"; docs/validation.md, "Forward only").

What the run's code does (read in the trees the rows pin):
* Lightning runs the validation loop under ``torch.inference_mode`` / ``torch.no_grad`` (``_evaluation_context``), so
  Transformer Engine's modules see ``is_grad_enabled`` False: LayerNormLinear / LayerNormMLP turn their userbuffers
  all-gather overlap off (``ub_split_ag = False``, TE release_v0.8 to 08a85d3; release_v2.8 ``ub_overlap_ag_fprop and
  is_grad_enabled``) and gather the FP8 norm output with NCCL before one whole GEMM; the reduce-scatter overlaps
  stay; a cast writes no transpose (``cast_to_fp8``, not ``fp8_cast_transpose_fused``); delayed scaling neither
  reduces nor updates its amaxes (``fp8_autocast_exit``: ``torch.is_grad_enabled()``; 09ba842 ``prepare_forward``:
  ``self.training``).
* TE's flash-attn path (release_v0.8, 09ba842) copies the QKV GEMM's interleaved output into three contiguous
  tensors before flash-attn (``tex.fa_prepare_fwd``) and back in the backward (``fa_prepare_bwd``): head dim 128,
  s x b >= 512, as many key as query heads, no rotary embedding.
* Megatron's output layer is a plain ColumnParallelLinear: with sequence parallelism its forward all-gathers the
  final norm's output and waits for it, then one matmul (``LinearWithGradAccumulationAndAsyncCommunication``).

Preset figures the hand work uses (checked first): H100 HBM 2.90 TB/s, every kernel at least 2.5 us, NCCL on NVLink
25.5 us + bytes x (t - 1) / t / 321 GB/s."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, gemm, kernels
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "scenarios" / "validation"
GPT3_V31 = VAL / "mlperf31-gpt3-512.toml"  # TE 09ba842, flash-attn 2, TP 4 + SP, userbuffers, FP8 delayed scaling
GPT3_V41 = VAL / "mlperf41-gpt3-256.toml"  # TE 08a85d3, cuDNN attention
QWEN3_FLASH = VAL / "pai643-qwen3-30b-a3b-pp2ep8.toml"  # flash-attn 2, GQA with RoPE
HBM, FLOOR, LAT, BUS = 2.90e12, 2.5e-6, 25.5e-6, 321e9
# GPT-3 175B at TP 4, micro-batch 1 x 2,048: n tokens, hidden h, heads a rank a_t of d, FFN f a rank
N, H, A_T, D, F_T = 2048, 12288, 24, 128, 12288


def test_preset_figures_the_hand_work_uses():
    r = PRESETS["H100"]
    assert (r.hbm, r.floor, r.latency, r.nvlink_bus, r.nvlink_curve) == (HBM, FLOOR, LAT, BUS, ())


def _setup(path, evaluation=False):
    return replace(derive.setup(scenario.load(path)), evaluation=evaluation)


def _forward(rows):
    return [k for k in rows if k.component.endswith("_forward")]


def mem(nbytes):  # a memory-bound kernel: floor + bytes / HBM
    return FLOOR + nbytes / HBM


def all_gather(nbytes, t=4):
    return LAT + nbytes * (t - 1) / t / BUS


def test_qkv_prepare_rows_by_hand():
    # q, k and v of 2,048 tokens x 24 heads x 128, 2 bytes, each read and written once: 2 x 3 x 12.58 MB = 75.5 MB
    st = _setup(GPT3_V31)
    assert st.qkv_prepare
    rows = {(k.name, k.component): k for k in derive.layer_kernels(st, 1)}
    nbytes = 2 * 3 * N * A_T * D * 2
    assert nbytes == 75_497_472
    for name, comp in (("qkv prepare for flash-attn (fa_prepare_fwd)", "attn_forward"),
                       ("dqkv interleave (fa_prepare_bwd)", "attn_backward_input")):  # fmt: skip
        k = rows[(name, comp)]
        assert k.bytes == nbytes and k.seconds == pytest.approx(mem(nbytes), rel=1e-12)  # 28.0 us


@pytest.mark.parametrize("path", [GPT3_V41, QWEN3_FLASH], ids=["cudnn", "flash-gqa-rope"])
def test_no_qkv_prepare_where_te_copies_nothing(path):
    st = derive.setup(scenario.load(path))
    assert not st.qkv_prepare
    assert not [k for k in derive.layer_kernels(st, 1) if "fa_prepare" in k.name]


def test_qkv_prepare_conditions_one_at_a_time():
    # GPT-3 175B's attention (96 heads of 128, learned positions) on flash-attn 2 at 2,048 tokens copies; change one
    # thing at a time and it does not: cuDNN, fewer key heads, rotary, another head dim, under 512 tokens
    cfg = derive.setup(scenario.load(GPT3_V31)).cfg
    flash = SimpleNamespace(attention_kernel="flash-attn-2")
    assert derive.qkv_prepare(cfg, flash, 2048) and derive.qkv_prepare(cfg, SimpleNamespace(attention_kernel="flash-attn-1"), 512)
    assert not derive.qkv_prepare(cfg, SimpleNamespace(attention_kernel="cudnn"), 2048)
    assert not derive.qkv_prepare(replace(cfg, num_kv_heads=8), flash, 2048)
    assert not derive.qkv_prepare(replace(cfg, max_positions=0), flash, 2048)
    assert not derive.qkv_prepare(replace(cfg, qk_head_dim=64, v_head_dim=64), flash, 2048)
    assert not derive.qkv_prepare(cfg, flash, 511)


def test_head_all_gather_waited_for_by_hand():
    # The output layer's input, 2,048 tokens x 12,288 in 16 bits (50.3 MB), gathered over TP 4 before one matmul:
    # 25.5 us + 50.33 MB x 3/4 / 321 GB/s = 143.1 us exposed, whatever tp_comm_overlap says; the GEMM is whole
    st = _setup(GPT3_V31)
    rows = kernels.head(st.cfg, st.rates, st.layout)
    ag = next(k for k in rows if k.component == "mlp_forward" and k.kind == "comm")
    assert ag.name == "tp all-gather" and ag.seconds == pytest.approx(all_gather(N * H * 2), rel=1e-12)
    assert ag.seconds == pytest.approx(143.1e-6, abs=0.1e-6)
    out = next(k for k in rows if k.name == "output layer")
    v = -(-st.cfg.vocab_size // 4)
    assert out.seconds == pytest.approx(gemm.time(N, v, H, st.rates.gemm_bf16, 132, HBM, 2.0).seconds, rel=1e-12)


def test_evaluation_layer_forward_by_hand():
    # One GPT-3 v3.1 layer's forward with autograd off, row by row (H100; FP8 rates, 132 SMs; the reduce-scatter
    # overlaps as in training):
    #   input norm: 512 tokens x h, read 2 write 1 B                     mem(18.87 MB)
    #   tp all-gather of the FP8 norm output (NCCL, waited for)          all_gather(25.17 MB)
    #   qkv: one GEMM 2048 x 9216 x 12288 fp8 (no ring pieces)
    #   qkv prepare: 75.5 MB; flash attention as in training
    #   out_proj input cast: n x 3072 x (2 + 1) B, no transpose           mem(18.87 MB)
    #   out_proj + its reduce-scatter overlap, residual add: as in training
    #   pre-mlp norm, tp all-gather, fc1 whole (2048 x 12288 x 12288), gelu, fc2 + reduce-scatter, residual add
    st_t, st_e = _setup(GPT3_V31), _setup(GPT3_V31, evaluation=True)
    train = {k.name: k for k in _forward(derive.layer_kernels(st_t, 1))}
    ev = _forward(derive.layer_kernels(st_e, 1))
    by = {}
    for k in ev:
        by.setdefault(k.name, []).append(k)
    fp8 = st_e.rates.gemm_fp8
    whole = {n_out: gemm.time(N, n_out, H, fp8, 132, HBM, 1.0).seconds for n_out in (3 * H // 4, F_T)}
    expected = {
        "input norm": mem(N / 4 * H * 3),
        "tp all-gather": 2 * all_gather(N * H * 1),
        "qkv": whole[3 * H // 4],
        "qkv prepare for flash-attn (fa_prepare_fwd)": mem(2 * 3 * N * A_T * D * 2),
        "out_proj input cast": mem(N * A_T * D * 3),
        "pre-mlp norm": mem(N / 4 * H * 3),
        "fc1": whole[F_T],
        "gelu": mem(N * F_T * 3),
    }
    for name, secs in expected.items():
        assert sum(k.seconds for k in by[name]) == pytest.approx(secs, rel=1e-12), name
    same = ("flash attention", "out_proj", "fc2")  # kept as training times them
    for name in same:
        assert by[name][0].seconds == train[name].seconds
    rest = [k for k in ev if k.name not in expected and k.name not in same]
    assert sorted(k.name for k in rest) == ["residual add", "residual add", "tp reduce-scatter (pipeline overlap)",
                                            "tp reduce-scatter (pipeline overlap)"]  # fmt: skip
    total = sum(expected.values()) + sum(train[n].seconds for n in same) + sum(k.seconds for k in rest)
    assert sum(k.seconds for k in ev) == pytest.approx(total, rel=1e-12)
    # the pieces changed against training: qkv / fc1 whole (0.352 / 0.467 ms) where the ring ran 4 pieces of 512 rows
    # (0.484 ms each) and left 21 us of its gather exposed; the gathers now 84.3 us each, waited for
    assert train["qkv"].seconds > whole[3 * H // 4] and "4 splits" in train["qkv"].shape
    assert all_gather(N * H) == pytest.approx(84.3e-6, abs=0.1e-6)


def test_evaluation_reduces_and_updates_no_amaxes():
    st = _setup(GPT3_V31)
    stage = st.stages[3]
    assert derive.chunk_kernels(st, stage)  # training: the per-chunk amax all-reduce and update
    assert derive.chunk_kernels(replace(st, evaluation=True), stage) == []


def test_make_validation_takes_the_evaluation_forwards():
    # The forward-only table's slowest rank is the evaluation forwards summed over a rank's virtual stages (rank r
    # holds r, r + 8, ...: 12 of them on v3.1), not the training forwards, which differ (the head's, the casts' ...)
    import runpy

    script = runpy.run_path(str(ROOT / "docs" / "make_validation.py"), run_name="make_validation")
    sc = scenario.load(GPT3_V31)
    d = sc.derived()
    ev = derive.evaluation_forwards(d.setup)
    train = [s.forward for s in d.stages]
    assert len(ev) == 96 and ev != train
    rank = max(sum(ev[r::8]) for r in range(8))
    assert script["eval_model_ms"](sc) == pytest.approx((rank, 11 * d.p2p), rel=1e-12)
