"""The MLPerf GPT-3 rows' runtime settings read from their code (issue 21, s10g; docs/step.md): the data-parallel
NCCL group's CTA cap, apex's buckets as NeMo opens them, NeMo's fp32 embedding gradients.  Each figure is worked by
hand from the code: apex 23.05-24.09 contrib/optimizers/distributed_fused_adam.py (bucket size, alignment,
init_params_bucket), NeMo v1.17.0 / bd0b818 / v2.0.0.rc0.beta / 24.09-alpha.rc0 megatron_gpt_model.py
(configure_optimizers) and distributed_adam.py, Megatron-core core_v0.7.0.beta / 24.09-alpha.rc0 parallel_state.py,
NCCL v2.21.5 / v2.22.3 graph/connect.cc."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import collectives, ddp_buckets, nemo_optimizer

FOLDER = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
H = 12288  # GPT-3 175B
V = 50688  # its padded vocabulary
# one layer's Transformer Engine linear weights on a TP 4 rank: QKV 3h^2, proj h^2, fc1 and fc2 4h^2 each, / 4
FP8_WEIGHTS = [3 * H * H // 4, H * H // 4, 4 * H * H // 4, 4 * H * H // 4]
# v3.x (bf16 weights): the same weights and the QKV and fc1 biases; the proj / fc2 biases and the LayerNorms carry
# sequence_parallel and are left out of the chunk's bucket (_disable_overlap_grad_sync)
BF16_OVERLAPPED = [3 * H * H // 4, 3 * H // 4, H * H // 4, 4 * H * H // 4, 4 * H // 4, 4 * H * H // 4]


def _load(name, overrides=()):
    return scenario.load(FOLDER / f"{name}.toml", list(overrides))


def test_apex_bucket_size_by_hand():
    # 200 MiB of bf16 = 104,857,600 elements; DP 16: shards of 6,553,600 (a multiple of 64 elements = 128 B)
    assert ddp_buckets.apex_bucket_elements(200, 16) == 104_857_600
    # DP 448: 104,857,600 / 448 = 234,057.1 -> 234,057 -> 234,048 (3,657 x 64), x 448
    assert ddp_buckets.apex_bucket_elements(200, 448) == 234_048 * 448 == 104_853_504
    # DP 484: 216,647.9 -> 216,647 -> 216,640 (3,385 x 64), x 484
    assert ddp_buckets.apex_bucket_elements(200, 484) == 216_640 * 484
    assert ddp_buckets.apex_bucket_elements(125, 8) == 65_536_000
    assert ddp_buckets.apex_bucket_elements(100, 16) == 52_428_800
    # fp32: 32 elements to the 128 B alignment; at least one alignment a shard
    assert ddp_buckets.apex_bucket_elements(1, 3, grad_bytes=4) == 87_360 * 3  # 262,144 / 3 = 87,381.3 -> 87,360
    assert ddp_buckets.apex_bucket_elements(1e-6, 2) == 64 * 2


def test_apex_buckets_by_hand():
    # a GPT-3 layer's FP8 weights, 452,984,832 elements: 4.32 buckets of 104,857,600 -> 5; of 65,536,000: 6.91 -> 7
    assert sum(FP8_WEIGHTS) == 452_984_832
    assert ddp_buckets.apex_buckets(FP8_WEIGHTS, 200, 16) == 5
    assert ddp_buckets.apex_buckets(FP8_WEIGHTS, 125, 8) == 7
    # a one-layer v3.x chunk: 453,006,336 elements in 52,428,800-element buckets: 8.64 -> 9
    assert sum(BF16_OVERLAPPED) == 453_006_336
    assert ddp_buckets.apex_buckets(BF16_OVERLAPPED, 100, 16) == 9
    # alignment: 256 B of bf16 with one rank is a 128-element bucket; two 1-element tensors sit at 0 and 64 (65
    # filled: one bucket); a 65-element tensor pushes the next to 128, so 128 + 63 = 191 elements: two buckets
    # (packed without the alignment, 65 + 63 = 128 would fill exactly one)
    cap = 256 / (1024 * 1024)
    assert ddp_buckets.apex_bucket_elements(cap, 1) == 128
    assert ddp_buckets.apex_buckets([1, 1], cap, 1) == 1
    assert ddp_buckets.apex_buckets([65, 63], cap, 1) == 2
    assert ddp_buckets.apex_buckets([], cap, 1) == 0


# scenario: (BUCKET_CAP_MB, layers a chunk, how NeMo calls init_params_bucket: "layer", once a layer with its FP8 weights
# (v4.0, NeMo v2.0.0.rc0.beta, with or without virtual pipelining); "chunk-fp8", once a model chunk with its FP8 weights
# (v4.1, NeMo 24.09-alpha.rc0 with virtual_pipeline_model_parallel_size set, megatron_gpt_model.py lines 637-640);
# "chunk", once a chunk with its overlapped parameters (v3.x, NeMo v1.17.0 / bd0b818))
APEX_ROWS = {
    "mlperf30-gpt3-512": (100, 1, "chunk"), "mlperf30-gpt3-3584cw": (100, 1, "chunk"),
    "mlperf31-gpt3-512": (100, 1, "chunk"), "mlperf31-gpt3-10752": (100, 1, "chunk"),
    "mlperf40-gpt3-512": (200, 3, "layer"), "mlperf40-gpt3-10752": (200, 2, "layer"), "mlperf40-gpt3-11616": (200, 2, "layer"),
    "mlperf41-gpt3-512": (200, 2, "chunk-fp8"), "mlperf41-gpt3-256": (125, 2, "chunk-fp8"),
    "mlperf41-gpt3-64b200": (200, 2, "chunk-fp8"),
}


@pytest.mark.parametrize("name", sorted(APEX_ROWS))
def test_scenario_buckets_are_apex_s_as_nemo_opens_them(name):
    cap, layers, calls = APEX_ROWS[name]
    sc = _load(name)
    data = sc.parallel.data
    assert sc.pipeline.stages * layers == 96
    if calls == "layer":  # one init_params_bucket a layer, of its FP8 weights
        expected = layers * ddp_buckets.apex_buckets(FP8_WEIGHTS, cap, data)
    elif calls == "chunk-fp8":  # one a chunk, of its layers' FP8 weights
        expected = ddp_buckets.apex_buckets(FP8_WEIGHTS * layers, cap, data)
    else:  # one a chunk, of its layers' overlapped parameters
        expected = ddp_buckets.apex_buckets(BF16_OVERLAPPED * layers, cap, data)
    assert sc.step.grad_sync_buckets == expected
    # 2 x 452,984,832 FP8 elements in buckets of 104,857,600 (200 MiB of bf16): 9 a chunk, 5 a layer (the last a third full)
    assert expected == {(100, 1, "chunk"): 9, (200, 3, "layer"): 15, (200, 2, "layer"): 10, (200, 2, "chunk-fp8"): 9,
                        (125, 2, "chunk-fp8"): 14}[(cap, layers, calls)]


@pytest.mark.parametrize("name, sms", [
    ("mlperf30-gpt3-512", 16),  # apex's parallel_state.py: no NCCL config, NCCL's own channels
    ("mlperf31-gpt3-512", 8),  # MEGATRON_CORE_DP_MAX_CTAS=8
    ("mlperf40-gpt3-512", 8), ("mlperf40-gpt3-10752", 8), ("mlperf40-gpt3-11616", 8),  # custom_communicator_cta.yaml
    ("mlperf41-gpt3-512", 8), ("mlperf41-gpt3-256", 8), ("mlperf41-gpt3-64b200", 8),
])
def test_dp_group_ctas_as_the_code_caps_them(name, sms):
    # NCCL (v2.21.5 / v2.22.3 graph/connect.cc) takes min(NCCL_MAX_NCHANNELS, channels found, config.maxCTAs) and
    # copies up to max(NCCL_MIN_NCHANNELS = 4, minCTAs = 1): 16 found on an 8-NIC node -> 8 with the YAML's max_ctas
    assert _load(name).step.dp_comm_sms == sms


def test_fp32_embedding_bytes_by_hand():
    sc = _load("mlperf41-gpt3-512")
    st = sc.derived().setup
    assert (st.sharding.tensor, st.sharding.grads_bytes, st.cfg.vocab_size, st.cfg.max_positions) == (4, 2.0, V, 2048)
    first, middle, last = st.stages[0], st.stages[1], st.stages[-1]
    assert first.embedding and last.head and not middle.embedding and not middle.head
    # stage 0: word (50,688 x 12,288) embedding / TP 4 and the position table (2,048 x 12,288), whole on every tensor
    # rank (Megatron-LM @ 1e05700 language_model_embedding.py lines 65-68), 2 B more each
    assert nemo_optimizer.fp32_embedding_extra_bytes(st, first) == (V / 4 + 2048) * H * 2 == 361_758_720
    # the tied head's own copy of the word embedding on the last stage
    assert nemo_optimizer.fp32_embedding_extra_bytes(st, last) == V * H / 4 * 2 == 311_427_072
    assert nemo_optimizer.fp32_embedding_extra_bytes(st, middle) == 0


def test_fp32_embedding_grad_sync_by_hand():
    # mlperf41-gpt3-512: TP 4, DP 16 (2 ranks of a group on each node, each on its NIC), 9 buckets a chunk
    # NeMo's held bucket group off (step.grad_sync_held, tests/test_nemo_held_grad_sync.py): the fp32 bytes alone
    on = _load("mlperf41-gpt3-512", ["step.grad_sync_held=[]"])
    off = _load("mlperf41-gpt3-512", ["step.fp32_embedding_grads=false", "step.grad_sync_held=[]"])
    d = on.derived()
    rates = d.setup.rates
    # a layer, with its two LayerNorms and proj / fc2 biases (6h) whole on each of the 4 tensor ranks (Megatron-core @
    # 1e05700 transformer_layer.py 309-314, 356-361; tensor_parallel/layers.py 1146): 3 x 6h more in the count
    layer = 12 * H * H + 13 * H + 3 * 6 * H
    assert d.stages[0].dense_params == (V + 4 * 2048) * H + 2 * layer  # the position table on each of TP 4 ranks
    stage0 = ((V / 4 + 2048) * H + 2 * layer / 4) * 2 + 361_758_720  # 2,535,837,696 B
    tied = collectives.time("all_reduce", V * H / 4 * 4, 2, rates, "nic")  # fp32 main_grad, first and last stage
    # apex's 9 buckets one NCCL group on the row's 8 channels (tests/test_nccl_group_plan.py)
    expected0 = collectives.bucketed("reduce_scatter", stage0, 16, rates, 2, 9, channels=8, grouped=True) * 1e3
    fig_on, fig_off = on.step_costs(d).grad_sync, off.step_costs().grad_sync
    assert fig_on[0] == pytest.approx(expected0, rel=1e-12)
    tied_bf16 = collectives.time("all_reduce", V * H / 4 * 2, 2, rates, "nic")
    assert fig_off[0] == pytest.approx(collectives.bucketed("reduce_scatter", stage0 - 361_758_720, 16, rates, 2, 9,
                                                            channels=8, grouped=True) * 1e3, rel=1e-12)  # fmt: skip
    # the tied all-reduce after the data-parallel sync (s12d), in the tail after the tensor-parallel one: fp32 or bf16
    tail_on, tail_off = on.step_costs(d).grad_sync_tail, off.step_costs().grad_sync_tail
    assert tail_on[0] - tail_off[0] == pytest.approx((tied - tied_bf16) * 1e3, rel=1e-9)
    assert stage0 == 2_535_616_512 + 2 * 3 * 6 * H / 4 * 2 == 2_535_837_696
    # the last stage: its layers, the final LayerNorm (whole on each of the 4 ranks) and its word embedding copy,
    # 311,427,072 B more
    last = (2 * layer + 4 * 2 * H + V * H) / 4 * 2
    assert fig_on[-1] == pytest.approx(collectives.bucketed("reduce_scatter", last + 311_427_072, 16, rates, 2, 9,
                                                            channels=8, grouped=True) * 1e3, rel=1e-12)  # fmt: skip
    assert fig_on[1:-1] == fig_off[1:-1]  # no embedding there


@pytest.mark.parametrize("sets, words", [
    (["step.param_gather=megatron-core"], 'step.param_gather = "apex"'),
    (["step.grad_sync=5"], 'step.grad_sync = "derived"'),
])
def test_fp32_embedding_grads_refused_off_apex(tmp_path, capsys, sets, words):
    out = tmp_path / "out"
    code = main(["run", str(FOLDER / "mlperf41-gpt3-512.toml"), *[a for s in sets for a in ("--set", s)],
                 "--out", str(out), "--plots", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "step.fp32_embedding_grads" in err and words in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_fp32_embedding_grads_must_be_a_bool(tmp_path, capsys):
    code = main(["run", str(FOLDER / "mlperf41-gpt3-512.toml"), "--set", "step.fp32_embedding_grads=maybe",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "step.fp32_embedding_grads" in err and "Traceback" not in err


def test_run_help_names_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "step.fp32_embedding_grads=true" in " ".join(capsys.readouterr().out.split())


def test_apex_adam_reads_fp32_embedding_gradients_by_hand():
    # apex 24.09 distributed_fused_adam.py: _local_step hands the fused kernel grads_bucket.grads_shard and
    # _local_grad_norm groups the shards by grad_sync_dtype, so an fp32 embedding bucket's shard element is read at
    # 4 B twice where a bf16 one is read at 2 B twice. mlperf41-gpt3-512: ZeRO over DP 16.
    on = _load("mlperf41-gpt3-512")
    off = _load("mlperf41-gpt3-512", ["step.fp32_embedding_grads=false"])
    d_on, d_off = on.derived(), off.derived()
    st = d_on.setup
    rates = st.rates

    def adam(sc, d, s):
        return nemo_optimizer.apex_adam_ms(sc, d.setup, d.setup.stages[s], d.stages[s], 1.0)

    # stage 0: (50,688 / TP 4 + 2,048 whole) x 12,288 = 180,879,360 elements, / DP 16 = 11,304,960 on the rank, 2 x 2 B more
    first = (V / 4 + 2048) * H / 16 * 2 * 2
    assert first == 45_219_840
    # the last stage: the tied head's copy, 50,688 x 12,288 / 4 / 16 = 9,732,096 elements
    last = V * H / 4 / 16 * 2 * 2
    assert last == 38_928_384
    for s, more in [(0, first), (len(st.stages) - 1, last), (1, 0.0)]:
        (b_on, ms_on), (b_off, ms_off) = adam(on, d_on, s), adam(off, d_off, s)
        assert b_on - b_off == pytest.approx(more, rel=1e-12)
        assert ms_on - ms_off == pytest.approx(more / rates.hbm * 1e3, rel=1e-9, abs=1e-12)
