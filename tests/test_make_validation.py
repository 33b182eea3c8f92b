"""docs/make_validation.py and its inputs (docs/validation.md): published.csv agrees with each
scenario's layout and with the published step time (or TFLOP/s, through Megatron's own FLOPs formula)
it quotes, and the script splits the runs into an A100, a Hopper, a B200 and a community table, each with
its own mean and worst.  Only the newer runs are simulated here (their step's tokens)."""

from __future__ import annotations

import csv
import re
import runpy
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import bucket_fill

from dualpipe_sim.model import ddp_buckets

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "scenarios" / "validation"
SCRIPT = runpy.run_path(str(ROOT / "docs" / "make_validation.py"), run_name="doc_script_under_test")
ROWS = list(csv.DictReader(open(FOLDER / "published.csv")))
STEP = re.compile(r"^([0-9.]+) s per (?:step|iteration)")
TFLOPS = re.compile(r"^([0-9.]+) TFLOP/s per GPU \(Megatron's formula\)")


def load(row):
    return SCRIPT["scenario"].load(FOLDER / row["scenario"])


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_each_row_has_its_scenario_and_gpu_count(row):
    sc = load(row)
    assert SCRIPT["gpus"](sc) == int(row["gpus"])
    assert row["source"]


@pytest.mark.parametrize("schedule, microbatches, ranks", [
    ("1f1b", 16, 8),  # one stage a rank
    ("dualpipev", 16, 4),  # V shape: stages s and 7 - s on rank s, 8 stages on 4 ranks
    ("zbv", 16, 4),
    ("dualpipe", 16, 8),  # DualPipe: both directions' copies, 8 stages on 8 ranks
])
def test_gpu_count_is_ranks_not_stages(schedule, microbatches, ranks):
    # n21-39b: TP 8, DP 32, no context parallelism; as 8 stages: ranks x 8 x 32
    sc = SCRIPT["scenario"].load(FOLDER / "n21-39b.toml", [f'pipeline.schedule="{schedule}"', "pipeline.stages=8",
                                                          f"pipeline.microbatches={microbatches}"])
    assert (sc.parallel.tensor, sc.parallel.data, sc.parallel.context) == (8, 32, 1)
    assert SCRIPT["gpus"](sc) == ranks * 8 * 32


COMMUNITY = [r for r in ROWS if r["name"].startswith(SCRIPT["COMMUNITY"])]
HOPPER = [r for r in ROWS if load(r).hardware.preset in ("H100", "H800", "H200") and r not in COMMUNITY]
BLACKWELL = [r for r in ROWS if load(r).hardware.preset in ("B200", "GB200", "GB300") and r not in COMMUNITY]
NEWER = HOPPER + BLACKWELL + COMMUNITY  # the runs whose figure is checked against the scenario's own layout below
BY_STEP = [r for r in NEWER if STEP.match(r["published"])]
BY_TFLOPS = [r for r in NEWER if TFLOPS.match(r["published"])]


def test_hopper_rows_exist_and_cover_the_runs_the_doc_names():
    names = {r["name"] for r in HOPPER}
    assert len(HOPPER) >= 10
    assert {"mlperf30-gpt3-768", "mlperf31-gpt3-10752", "mz-qwen3-235b-ep32pp8", "mz-mixtral-8x22b"} <= names
    assert {r["name"] for r in COMMUNITY} >= {"mz7-qwen3-30b-a3b-b200", "pai643-qwen3-30b-a3b-pp2ep8",
                                              "xt-qwen3-235b-tp2ep32pp8vpp4-deepep"}
    assert len(BY_STEP) + len(BY_TFLOPS) == len(NEWER)  # every figure is a step time or a TFLOP/s


@pytest.mark.parametrize("row", BY_STEP, ids=[r["name"] for r in BY_STEP])
def test_hopper_tokens_per_gpu_is_the_global_batch_over_the_published_step(row):
    """tokens/s per GPU = micro-batches x micro-batch x data x sequence / step / GPUs: the CSV's
    figure against the step time it quotes and the scenario's own layout (a typo in either fails)."""
    sc = load(row)
    step = float(STEP.match(row["published"]).group(1))
    model = sc.model
    tokens = sc.pipeline.microbatches * model.micro_batch_size * sc.parallel.data * model.seq_length
    expected = tokens / step / int(row["gpus"])
    assert float(row["published_tokens_per_second_per_gpu"]) == pytest.approx(expected, rel=5e-5)


@pytest.mark.parametrize(
    "name, tp, pp, vp, dp, m, gbs",
    [  # the submissions' config_DGXH100_<nodes>x8x<minibs>x<tp>x<pp>_mbs1.sh and their logs' global batch
        ("mlperf30-gpt3-512", 4, 8, 12, 16, 128, 2048),
        ("mlperf30-gpt3-3584cw", 4, 8, 12, 112, 24, 2688),
        ("mlperf31-gpt3-10752", 4, 8, 12, 336, 8, 2688),
        ("mlperf40-gpt3-512", 4, 8, 4, 16, 72, 2304),  # micro-batch 2
        ("mlperf40-gpt3-11616", 4, 6, 8, 484, 6, 2904),
        # v4.1 (NGC 24.09): INTERLEAVED_PIPELINE=6, micro-batch 2; the logs' 128 and 64 accumulation steps
        ("mlperf41-gpt3-256", 4, 8, 6, 8, 128, 2048),
        ("mlperf41-gpt3-512", 4, 8, 6, 16, 64, 2048),
        # v5.0 Llama 3.1 405B: config_DGXH100_<nodes>x8x<minibs>xtp8pp8cp2.sh, INTERLEAVED_PIPELINE=8, MINIBS = the
        # logs' accumulation steps, DP = GPUs / (TP 8 x PP 8 x CP 2)
        ("mlperf50-llama405b-512", 8, 8, 8, 4, 288, 1152),
        ("mlperf50-llama405b-2432", 8, 8, 8, 19, 64, 1216),
        ("mlperf50-llama405b-8192", 8, 8, 8, 64, 24, 1536),
        # Nebius's H200 runs of that code: config_DGXH200_<nodes>x8x<minibs>xtp4pp8cp2.sh, DP = GPUs / (4 x 8 x 2)
        ("mlperf50-llama405b-512h200", 4, 8, 8, 8, 144, 1152),
        ("mlperf50-llama405b-1024h200", 4, 8, 8, 16, 72, 1152),
        # Megatron-MoE-ModelZoo's Qwen3 H100 table: TP, PP, VPP, DP, GA, GBS
        ("mz-qwen3-235b-ep32pp8", 2, 8, 4, 16, 128, 2048),
        ("mz-qwen3-235b-tp4ep8pp8", 4, 8, 4, 8, 256, 2048),
        # ModelZoo runtime.conf [Mixtral-8x22B]: TP 2, PP 8, VPP 7 on 16 nodes, GBS 256
        ("mz-mixtral-8x22b", 2, 8, 7, 8, 32, 256),
        # xtuner's H800 rows: tp, pp, vpp as named, DP = 256 / (TP x PP), GBS 2048
        ("xt-qwen3-235b-tp4ep8pp8vpp4", 4, 8, 4, 8, 256, 2048),
        ("xt-qwen3-235b-tp2ep32pp8vpp4", 2, 8, 4, 16, 128, 2048),
        ("xt-qwen3-235b-tp2ep32pp8vpp4-deepep", 2, 8, 4, 16, 128, 2048),
    ],
)
def test_layouts_as_published(name, tp, pp, vp, dp, m, gbs):
    sc = SCRIPT["scenario"].load(FOLDER / f"{name}.toml")
    p = sc.pipeline
    assert (sc.parallel.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, sc.parallel.data) == (tp, pp, vp, dp)
    assert p.microbatches == m and m * sc.model.micro_batch_size * dp == gbs
    assert sc.hardware.preset in ("H100", "H800", "H200") and sc.hardware.efficiency is None


@pytest.mark.parametrize("name, overlap", [
    # ModelZoo's sbatch_benchmarking.sh passes --tp-comm-overlap for PR=bf16 only from b09773a (2025-12-16); the Qwen3
    # rows were published in May 2025 (8017e11), with neither the sbatch nor the Qwen3 yaml passing it; the
    # Mixtral-8x22B yaml sets it itself (b06a6d8 onwards)
    ("mz-qwen3-235b-ep32pp8", False),
    ("mz-qwen3-235b-tp4ep8pp8", False),
    ("mz-mixtral-8x22b", True),
])  # fmt: skip
def test_modelzoo_rows_tp_overlap_as_their_scripts_of_the_time(name, overlap):
    assert SCRIPT["scenario"].load(FOLDER / f"{name}.toml").parallel.tp_comm_overlap is overlap


@pytest.mark.parametrize(
    "name, gpu, tp, pp, ep, dp, m, gbs, seq",
    [  # the reports' own figures: ModelZoo #7 (EP 8, GBS 64 on 8 B200), Pai-Megatron-Patch #643 (16 H800),
        # xtuner's guide (tp2, ep8, pp8 on 256 H800: DP 16)
        ("mz7-qwen3-30b-a3b-b200", "B200", 1, 1, 8, 8, 8, 64, 4096),
        ("pai643-qwen3-30b-a3b-pp2ep8", "H800", 1, 2, 8, 8, 16, 128, 8192),
        ("pai643-qwen3-30b-a3b-pp4ep4", "H800", 1, 4, 4, 4, 64, 256, 8192),
        ("xt-qwen3-235b-tp2ep8pp8", "H800", 2, 8, 8, 16, 128, 2048, 4096),
    ],
)
def test_community_layouts_as_published(name, gpu, tp, pp, ep, dp, m, gbs, seq):
    sc = SCRIPT["scenario"].load(FOLDER / f"{name}.toml")
    p, par = sc.pipeline, sc.parallel
    assert (par.tensor, p.stages, par.expert, par.data, p.microbatches) == (tp, pp, ep, dp, m)
    assert m * sc.model.micro_batch_size * dp == gbs and sc.model.seq_length == seq
    assert sc.hardware.preset == gpu and sc.hardware.efficiency is None


def megatron_flops_per_token(m) -> float:
    """Megatron-LM's num_floating_point_operations / (batch x sequence) for a GQA MoE model with SwiGLU and
    every layer MoE (megatron/training/training.py, causal attention halved since mid-2025): 3 passes x 2 FLOPs
    per multiply-add over the experts routed to, the QKV and output projections, the causal attention core
    and the logits. Written here from Megatron's code, not from the simulator's FLOPs counter."""
    h, s, kv = m["hidden_size"], m["seq_length"], m.get("head_dim", m["hidden_size"] // m["num_attention_heads"])
    q, k = kv * m["num_attention_heads"], kv * m["num_key_value_heads"]
    ffn = m.get("moe_intermediate_size") or m["intermediate_size"]  # Mixtral's experts are FFN-wide
    attention = 6 * (h * (q + 2 * k) + q * s / 2 * 2 + q * h)
    return 6 * h * ffn * m["num_experts_per_tok"] * 3 * m["num_hidden_layers"] + attention * m["num_hidden_layers"] \
        + 6 * h * m["vocab_size"]


def qwen3_235b(vocab):
    return {"hidden_size": 4096, "num_hidden_layers": 94, "num_attention_heads": 64, "num_key_value_heads": 4,
            "head_dim": 128, "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_experts_per_tok": 8,
            "vocab_size": vocab, "seq_length": 4096}


@pytest.mark.parametrize("tp, step, published_tf", [(2, 19.7, 245), (4, 29.0, 167)])
def test_megatron_formula_gives_the_modelzoo_tables_own_tflops(tp, step, published_tf):
    """The formula above, fed the ModelZoo Qwen3-235B rows' step times, gives the table's own "Per GPU TF"
    (their vocabulary padded to a multiple of 1187 x TP): 246.2 and 167.3 against 245 and 167; without the
    causal halving it would give 278 and 189.  So the TFLOP/s this page converts were counted this way."""
    vocab = -(-151936 // (1187 * tp)) * 1187 * tp
    tokens_per_gpu = 2048 * 4096 / step / 256
    assert megatron_flops_per_token(qwen3_235b(vocab)) * tokens_per_gpu / 1e12 == pytest.approx(published_tf, rel=6e-3)


def test_megatron_formula_by_hand_for_mixtral_8x22b():
    """Mixtral 8x22B at 4,096 tokens, by hand: experts 6 x 6144 x 16384 x 2 x 3 x 56 = 2.02937e11; attention
    6 x 6144 x (8192 + 4096 + 6144) x 56 = 3.80507e10; logits 6 x 6144 x 32000 = 1.17965e9."""
    m = tomllib.loads((FOLDER / "mz-mixtral-8x22b.toml").read_text())["model"]
    assert megatron_flops_per_token(m) == pytest.approx(2.02937e11 + 3.80507e10 + 1.17965e9, rel=1e-5)


@pytest.mark.parametrize("row", BY_TFLOPS, ids=[r["name"] for r in BY_TFLOPS])
def test_tokens_per_gpu_is_the_published_tflops_over_megatrons_flops_per_token(row):
    """A run published as TFLOP/s per GPU: the CSV's tokens/s per GPU = TFLOP/s / Megatron's FLOPs per token
    for the scenario's own model (a typo in the CSV or the scenario fails)."""
    m = tomllib.loads((FOLDER / row["scenario"]).read_text())["model"]
    tflops = float(TFLOPS.match(row["published"]).group(1))
    expected = tflops * 1e12 / megatron_flops_per_token(m)
    assert float(row["published_tokens_per_second_per_gpu"]) == pytest.approx(expected, rel=5e-5)


SIMULATED = BY_TFLOPS + [r for r in COMMUNITY if r not in BY_TFLOPS]


@pytest.mark.parametrize("row", SIMULATED, ids=[r["name"] for r in SIMULATED])
def test_new_moe_runs_simulate_their_global_batch(row):
    """Each community run and each run published as TFLOP/s simulates: the step's tokens are its global batch
    (micro-batches x micro-batch x data x sequence), and the predicted tokens/s per GPU is positive."""
    sc = load(row)
    step = SCRIPT["simulation"].run(sc).metrics.step
    tokens = sc.pipeline.microbatches * sc.model.micro_batch_size * sc.parallel.data * sc.model.seq_length
    assert step.tokens_per_second * step.total / 1e3 == pytest.approx(tokens, rel=1e-9)
    assert step.tokens_per_second / int(row["gpus"]) > 0


@pytest.mark.parametrize("gpus", [512, 2048, 2432, 2560, 8192])
def test_llama405b_rows_as_the_code_sets_them(gpus):
    sc = SCRIPT["scenario"].load(FOLDER / f"mlperf50-llama405b-{gpus}.toml")
    assert sc.parallel.context == 2 and sc.model.seq_length == 8192 and sc.model.micro_batch_size == 1
    # NeMo's get_vocab_size: 128,256 up to a multiple of 128 x TP 8 = 1,024: 126 x 1,024
    assert sc.model.vocab_size == 126 * 1024 and 125 * 1024 < 128256 <= 126 * 1024
    # ASYM_PP_EMBED / ASYM_PP_LOSS: 126 layers + the embedding + the loss = 128 over 64 virtual stages, 2 each
    from dualpipe_sim.model import layout

    stages = layout.parse(sc.parallel.layout, 126, sc.pipeline.stages)
    assert len(stages) == 64 and stages[0].embedding and stages[-1].head
    assert [len(st.layers) + st.embedding + st.head for st in stages] == [2] * 64


def test_b200_layout_as_published():
    # config_DGXB200_8x8x1024x4x8_mbs2_cg.sh: TP 4, PP 8, INTERLEAVED_PIPELINE=6, micro-batch 2, 8 nodes: DP
    # 64 / 32 = 2; MINIBS 1024 x DP 2 = the log's global batch 2,048, 2,048 / (2 x 2) = its 512 accumulation steps
    sc = SCRIPT["scenario"].load(FOLDER / "mlperf41-gpt3-64b200.toml")
    p = sc.pipeline
    assert (sc.parallel.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, sc.parallel.data) == (4, 8, 6, 2)
    assert p.microbatches == 512 and 512 * sc.model.micro_batch_size * 2 == 2048
    assert sc.hardware.preset == "B200" and sc.hardware.efficiency is None
    # a data-parallel group's two ranks share a node (tensor innermost, then data): no NIC shared with the P2P
    assert sc.parallel.tensor * sc.parallel.data == 8 and not sc.step.grad_sync_shares_p2p


@pytest.mark.parametrize("nodes, dp, gbs", [(32, 4, 576), (56, 7, 1008)])
def test_v51_b200_llama405b_layout_as_published(nodes, dp, gbs):
    # hpg.dgxb200x8/config_DGXB200_<nodes>x8x144xtp4pp8cp2_cg.sh: TP 4, PP 8, INTERLEAVED_PIPELINE=8, CP 2, MINIBS 144;
    # DP = nodes x 8 / (4 x 8 x 2); the logs' global_batch_size = 144 x DP and 144 accumulation steps
    sc = SCRIPT["scenario"].load(FOLDER / f"mlperf51-llama405b-{nodes * 8}b200.toml")
    p, par = sc.pipeline, sc.parallel
    assert (par.tensor, p.stages // p.chunks_per_rank, p.chunks_per_rank, par.context, par.data) == (4, 8, 8, 2, dp)
    assert nodes * 8 // (4 * 8 * 2) == dp and p.microbatches == 144 and 144 * sc.model.micro_batch_size * dp == gbs
    assert sc.hardware.preset == "B200" and sc.hardware.efficiency is None
    assert not par.tp_comm_overlap  # TP_COMM_OVERLAP=True is commented out in these configs
    # NeMo's get_vocab_size: 128,256 up to a multiple of 128 x TP 4 = 512: 251 x 512
    assert sc.model.vocab_size == 251 * 512 and 250 * 512 < 128256 <= 251 * 512


def test_v51_b200_buckets_by_hand():
    """Megatron-core's DDP fills a bucket with a chunk's parameters in reverse registration order and closes it once
    it holds bucket_size (134,217,728, custom.yaml's default) or more.  A layer registers proj, its norm, qkv, the
    MLP's norm, fc1, fc2 (dualpipe_sim/model/ddp_buckets.py).  Per TP-4 rank, a Llama 3.1 405B layer in reverse:
    fc2 (53,248 x 16,384 / 4 = 218.1 M: closes one), fc1 (2 x that: closes one), the norm (16,384, not split), qkv
    ((16,384 + 2 x 8 x 128) x 16,384 / 4 = 75.5 M), the norm, proj (16,384^2 / 4 = 67.1 M: 142.6 M, closes one):
    3 a layer, 6 a 2-layer chunk, nothing left over."""
    h, ffn, tp = 16384, 53248, 4
    layer = [h * h // tp, h, (h + 2 * 8 * 128) * h // tp, h, 2 * ffn * h // tp, ffn * h // tp]  # registration order
    buckets, fill = 0, 0
    for size in (layer + layer)[::-1]:
        fill += size
        if fill >= 134217728:
            buckets, fill = buckets + 1, 0
    assert buckets == 6 and fill == 0
    # s13m: only stage 0 (the embedding and layer 0) is filled, its FP8 buffer in 3 (one layer) and its 16-bit one
    # in 1; every other chunk one bucket a buffer (Megatron-core's DDP off past pipeline rank 0's first chunk)
    for nodes in (32, 56):
        sc = SCRIPT["scenario"].load(FOLDER / f"mlperf51-llama405b-{nodes * 8}b200.toml")
        assert sc.step.grad_sync_buckets == "derived" and sc.step.ddp_bucket_size == 134217728
        assert sc.derived().setup.stages[0].layers == (0,)
        assert ddp_buckets.per_stage(sc) == (3 + 1,) + (2,) * 63


@pytest.mark.parametrize("nodes, name, gpu, cp, dp, mbs, gbs", [
    (1, "8b200", "B200", 1, 8, 2, 16), (2, "16b200", "B200", 1, 16, 2, 32), (4, "32b200", "B200", 2, 16, 1, 16),
    (8, "64b200", "B200", 2, 32, 1, 32), (16, "128b200", "B200", 2, 64, 1, 64), (32, "256b200", "B200", 2, 128, 1, 128),
    (8, "64b200-verda", "B200", 2, 32, 1, 32),
    (8, "64h200", "H200", 2, 32, 1, 32),
])  # fmt: skip
def test_v51_llama8b_layout_as_published(nodes, name, gpu, cp, dp, mbs, gbs):
    # University of Florida hpg.dgxb200x8/config_DGXB200_<nodes>x8x<minibs>xtp1pp1cp<cp>_8b.sh (Verda's 8-node file is
    # the same), HPE config_XD670_8x8x1xtp1pp1cp2_8b.sh: TP 1, PP 1, MINIBS = MICRO_BATCH_SIZE; DP = nodes x 8 / CP; the logs'
    # global_batch_size = MINIBS x DP and 1 accumulation step
    sc = SCRIPT["scenario"].load(FOLDER / f"mlperf51-llama8b-{name}.toml")
    p, par = sc.pipeline, sc.parallel
    assert (par.tensor, p.stages, par.context, par.data, p.microbatches) == (1, 1, cp, dp, 1)
    assert nodes * 8 // cp == dp and sc.model.micro_batch_size == mbs and mbs * dp == gbs
    assert sc.hardware.preset == gpu and sc.hardware.efficiency is None
    assert sc.model.vocab_size == 128256 == 1002 * 128  # already a multiple of 128 x TP 1


def test_v51_b200_llama8b_buckets_by_hand():
    """Llama 3.1 8B on one rank (TP 1, one chunk, so stage 0 and filled by size): FP8 parameters (fp8_param_gather) put
    the Transformer Engine linear weights in a uint8 buffer and the rest in a 16-bit one, each filled on its own
    (distributed_data_parallel.py @ d339190 lines 163-176, the same at 4cd81e8), in reverse registration order, a
    bucket closed at the parameter that takes it to 134,217,728 (param_and_grad_buffer.py @ d339190 lines 636-664).
    A layer's linears: proj 16.8 M, qkv 25.2 M, fc1 117.4 M, fc2 58.7 M.  FP8 buffer in reverse: layer 31's fc2 and
    fc1 (176.2 M) close one; then layer k's qkv and proj (41.9 M) with layer k-1's fc2 and fc1 (218.1 M), 31 times;
    layer 0's qkv and proj stay open to the end: 33.  16-bit buffer (embedding 525.3 M, 65 norms of 4,096, the
    output layer 525.3 M, a Megatron ColumnParallelLinear) in reverse: the output layer alone, then the norms with the
    embedding: 2.  35 in all (s13o; was 34 equal buckets).  Padding (64-element starts, bucket ends to lcm(DP, 128,
    2^16)) moves no boundary: the nearest bucket to the size is 41.9 + 58.7 = 100.7 M, open, then 218.1 M."""
    h, ffn, kv, size = 4096, 14336, 8 * 128, 134217728
    proj, qkv, fc1, fc2 = h * h, (h + 2 * kv) * h, 2 * ffn * h, ffn * h
    assert (proj, qkv, fc1, fc2) == (16_777_216, 25_165_824, 117_440_512, 58_720_256)

    fp8 = bucket_fill([fc2, fc1, qkv, proj] * 32, size)
    assert fp8 == [fc2 + fc1] + [qkv + proj + fc2 + fc1] * 31 + [qkv + proj] and len(fp8) == 33
    assert bucket_fill([128256 * h, h] + [h] * 64 + [128256 * h], size) == [128256 * h, 65 * h + 128256 * h]
    for name in ("8b200", "16b200", "32b200", "64b200", "128b200", "256b200", "64b200-verda", "64h200"):
        sc = SCRIPT["scenario"].load(FOLDER / f"mlperf51-llama8b-{name}.toml")
        assert sc.step.grad_sync_buckets == "derived" and sc.step.ddp_bucket_size == size
        assert ddp_buckets.per_stage(sc) == (33 + 2,)
        st = sc.derived().setup
        groups = ddp_buckets.gather_groups(ddp_buckets.stage_zero_tensors(st.cfg, st.stages[0], 1),
                                           ddp_buckets.stage_zero_linears(st.cfg, st.stages[0]), None, size, True)
        # the groups as partition_buckets case 3 makes them (the 16-bit buckets with the forward's first FP8 one,
        # layer 0's attention), forward order: the FP8 elements as worked above, reversed
        assert [g[2] for g in groups] == fp8[::-1] and [g[3] for g in groups] == [3] + [1] * 32
        assert groups[0][1] == 2 * 128256 * h + 65 * h


@pytest.mark.parametrize("name, group", [
    # Megatron-LM 24.09-alpha.rc0 hands TE the tensor x context group: TP 4, CP 1 (v4.1 H100 and B200) ...
    ("mlperf41-gpt3-512", 4), ("mlperf41-gpt3-256", 4), ("mlperf41-gpt3-64b200", 4),
    # ... where core_v0.7.0 (v4.0) handed it tensor x data x context: 4 x 16
    ("mlperf40-gpt3-512", 64),
])  # fmt: skip
def test_v41_amax_reduction_group(name, group):
    from dualpipe_sim.model import derive

    assert derive.setup(SCRIPT["scenario"].load(FOLDER / f"{name}.toml")).amax_group == group


@pytest.mark.parametrize("name, tokens", [
    # MLPerf v4.1 GPT-3: the logs' global batch, 2,048 sequences of 2,048 tokens
    ("mlperf41-gpt3-256", 2048 * 2048), ("mlperf41-gpt3-512", 2048 * 2048), ("mlperf41-gpt3-64b200", 2048 * 2048),
    # MLPerf v5.0 Llama 3.1 405B: 1,152 and 1,536 sequences of 8,192 tokens
    ("mlperf50-llama405b-512", 1152 * 8192), ("mlperf50-llama405b-8192", 1536 * 8192),
    # Nebius's H200 runs (1,152 sequences) and the University of Florida's B200 runs (576 and 1,008)
    ("mlperf50-llama405b-512h200", 1152 * 8192), ("mlperf50-llama405b-1024h200", 1152 * 8192),
    ("mlperf51-llama405b-256b200", 576 * 8192), ("mlperf51-llama405b-448b200", 1008 * 8192),
    # the University of Florida's Llama 3.1 8B runs: 16 and 32 sequences
    ("mlperf51-llama8b-8b200", 16 * 8192), ("mlperf51-llama8b-64b200", 32 * 8192), ("mlperf51-llama8b-64h200", 32 * 8192),
    ("mlperf51-llama8b-64b200-verda", 32 * 8192),
])  # fmt: skip
def test_new_mlperf_rows_simulate_and_count_the_global_batch(name, tokens):
    """The rows run as the table runs them (a real simulation): each step trains the logs' global batch,
    so tokens/s x step time = the batch's tokens whatever the prediction."""
    sc = load(next(r for r in ROWS if r["name"] == name))
    m = SCRIPT["simulation"].run(sc).metrics
    assert m.step.tokens_per_second * m.step.total / 1e3 == pytest.approx(tokens, rel=1e-9)
    if sc.pipeline.stages == 1:  # the 8B rows: no pipeline, no bubble
        assert m.bubble_ratio == 0.0
    else:
        assert 0.0 < m.bubble_ratio < 0.5


def fake_run(sc):
    """A run whose tokens/s is 1000 per GPU on A100, 2000 on Hopper and 3000 on B200 (no simulation)."""
    per_gpu = {"A100": 1000.0, "B200": 3000.0, "GB200": 3000.0, "GB300": 3000.0}.get(sc.hardware.preset, 2000.0)
    step = SimpleNamespace(tokens_per_second=per_gpu * SCRIPT["gpus"](sc), total=1000.0)
    return SimpleNamespace(metrics=SimpleNamespace(step=step, bubble_ratio=0.0))


def test_rows_split_by_gpu_and_cover_the_csv(monkeypatch):
    monkeypatch.setattr(SCRIPT["simulation"], "run", fake_run)
    a100, hopper = SCRIPT["rows"](("A100",)), SCRIPT["rows"](SCRIPT["HOPPER"])
    b200 = SCRIPT["rows"](SCRIPT["BLACKWELL"])
    community = SCRIPT["rows"](None, community=True)
    names = [{r["name"] for r in t} for t in (a100, hopper, b200, community)]
    assert set().union(*names) == {r["name"] for r in ROWS}
    assert sum(len(n) for n in names) == len(ROWS)  # no run in two tables
    assert names[3] == {r["name"] for r in COMMUNITY}
    assert all(r["predicted"] == 1000.0 for r in a100) and all(r["predicted"] == 2000.0 for r in hopper)
    assert [r["name"] for r in b200] == ["mlperf41-gpt3-64b200", "mlperf51-llama405b-256b200",
                                         "mlperf51-llama405b-448b200", "mlperf51-llama8b-8b200", "mlperf51-llama8b-64b200",
                                         "mlperf51-llama8b-64b200-verda", "mlperf51-llama8b-16b200", "mlperf51-llama8b-32b200",
                                         "mlperf51-llama8b-128b200", "mlperf51-llama8b-256b200",
                                         "mlperf50-llama405b-256gb200", "mlperf50-llama405b-512gb200", "mlperf51-llama8b-72gb200",
                                         "mlperf51-llama8b-72gb300", "mlperf51-llama8b-8gb300-nvfp4",
                                         "mlperf51-llama405b-512gb300-nvfp4", "mlperf51-llama405b-2560gb200-nvfp4",
                                         "mlperf51-llama405b-5120gb200-nvfp4"]
    assert all(r["predicted"] == 3000.0 for r in b200)
    assert {"mlperf50-llama405b-512h200", "mlperf50-llama405b-1024h200", "mlperf51-llama8b-64h200"} <= {
        r["name"] for r in hopper}
    assert {r["gpu"] for r in community} == {"B200", "H800"}
    row = next(r for r in hopper if r["name"] == "mlperf30-gpt3-768")
    assert row["error"] == pytest.approx(2000.0 / 675.57 - 1)


def test_table_mean_and_worst_by_hand():
    data = [{"name": "a", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 110.0, "error": 0.10, "step_s": 1.0, "bubble": 0.0},
            {"name": "b", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 70.0, "error": -0.30, "step_s": 1.0, "bubble": 0.0}]  # fmt: skip
    last = SCRIPT["table"](data).splitlines()[-1]
    assert last == "Mean |error| 20.0%, worst 30.0% over 2 runs; mean signed error -10.0%."


def test_the_doc_has_both_tables_between_their_markers():
    doc = (ROOT / "docs" / "validation.md").read_text()
    for name in SCRIPT["SECTIONS"]:
        begin, end = f"<!-- {name}: docs/make_validation.py -->", f"<!-- end of {name} -->"
        assert doc.count(begin) == 1 and doc.count(end) == 1 and doc.index(begin) < doc.index(end)
    hopper = doc.split("<!-- hopper table: docs/make_validation.py -->")[1].split("<!-- end of hopper table -->")[0]
    assert f"over {len(HOPPER)} runs" in hopper
    a100 = doc.split("<!-- validation table: docs/make_validation.py -->")[1].split("<!-- end of validation table -->")[0]
    assert f"over {len(ROWS) - len(HOPPER) - len(BLACKWELL) - len(COMMUNITY)} runs" in a100
    b200 = doc.split("<!-- b200 table: docs/make_validation.py -->")[1].split("<!-- end of b200 table -->")[0]
    assert f"over {len(BLACKWELL)} run" in b200
    community = doc.split("<!-- community table: docs/make_validation.py -->")[1].split("<!-- end of community table -->")[0]
    assert f"over {len(COMMUNITY)} runs" in community and "| GPU |" in community


def test_table_says_run_for_one():
    row = {"name": "a", "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
           "predicted": 110.0, "error": 0.10, "step_s": 1.0, "bubble": 0.0}  # fmt: skip
    assert SCRIPT["table"]([row]).splitlines()[-1] == "Mean |error| 10.0%, worst 10.0% over 1 run; mean signed error +10.0%."


def test_readme_quotes_the_validation_tables_own_figures():
    """README's accuracy sentence repeats docs/validation.md's mean and worst of each table (the tables
    are regenerated by the script; a stale README figure fails here)."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    tables = re.findall(r"^Mean \|error\| ([0-9.]+)%, worst ([0-9.]+)% over (\d+) runs?", doc, re.M)
    assert len(tables) == 4
    readme = " ".join((ROOT / "README.md").read_text().split())
    (a_mean, a_worst, a_runs), (h_mean, h_worst, h_runs), (b_mean, b_worst, b_runs), (c_mean, c_worst, c_runs) = tables
    assert f"on {b_runs} B200 runs" in readme and f"8B) {b_mean}% too high on average and {b_worst}% at worst" in readme
    assert f"on {a_runs} A100 runs" in readme and f"{a_mean}% too high on average, {a_worst}% at worst" in readme
    worst = f"{float(h_worst):.0f}%" if float(h_worst) >= 100 else f"{h_worst}%"
    assert f"on {h_runs} H100 / H200 runs" in readme and f"{h_mean}% off on average and {worst} at worst" in readme
    worst = f"{float(c_worst):.0f}%" if float(c_worst) >= 100 else f"{c_worst}%"
    assert f"on {c_runs} community-reported MoE runs" in readme and f"{c_mean}% too high on average and {worst} at worst" in readme


def test_eval_forward_table_by_hand(monkeypatch):
    """The forward-only table's columns by hand for three rows: measured = the logs' validation step / M (EVAL_STEP_S;
    for a GPT-3 row its loop, with its logged window beside it, EVAL_WINDOW_S), the model's slowest rank + ring P2P
    (eval_model_ms), and the forward's share of the step the model misses, M x (measured - model) / (model step x
    whole-step error), here with a made-up step of 1 s and error +25%."""
    data = [{"name": n, "scenario": f"{n}.toml", "gpu": "X", "step_s": 1.0, "error": 0.25}
            for n in ("mlperf51-llama8b-64b200", "mlperf50-llama405b-512", "mlperf31-gpt3-10240", "n21-1.7b")]  # fmt: skip
    lines = SCRIPT["eval_forward"](data).splitlines()
    by_name = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("| ml")}
    assert set(by_name) == {"mlperf51-llama8b-64b200", "mlperf50-llama405b-512", "mlperf31-gpt3-10240"}  # timed rows only
    for name, m, step_s, window in (("mlperf51-llama8b-64b200", 1, 0.047518, "the loop"),
                                    ("mlperf50-llama405b-512", 288, 19.32579, "the loop"),
                                    ("mlperf31-gpt3-10240", 8, 0.2650, f"{207.50 / 8:.1f}")):  # fmt: skip
        measured = step_s * 1e3 / m  # 47.5, 67.1 and 33.1 ms
        rank, ring = SCRIPT["eval_model_ms"](load({"scenario": f"{name}.toml"}))
        cells = by_name[name]
        assert cells[2] == str(m) and cells[4] == f"{measured:.1f}" and cells[5] == window
        assert cells[6] == f"{rank:.1f} + {ring:.1f}"
        assert cells[7] == f"{(rank + ring) / measured - 1:+.1%}" and cells[8] == "+25.0%"
        assert cells[9] == f"{m * (measured - rank - ring) / 250.0:.0%}"
    assert lines[-1].startswith("Mean forward error ") and "over 3 runs" in lines[-1]
    assert lines[-1].endswith("not timed: mlperf40-gpt3-512, mlperf40-gpt3-10752, mlperf40-gpt3-11616.")


def test_readme_quotes_the_forward_tables_own_figures():
    """README's forward-only sentence repeats the table's summary line (mean, range, runs): a stale figure fails."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    mean, worst, sign, best, runs = re.search(r"^Mean forward error -([0-9.]+)% over (\d+) runs \(worst -([0-9.]+)%, "
                                              r"best ([-+])([0-9.]+)%\)", doc, re.M).group(1, 3, 4, 5, 2)
    readme = " ".join((ROOT / "README.md").read_text().split())
    if sign == "-":  # every run's forward too fast
        assert f"on the {runs} runs they time the model's forward is too fast on every one, {mean}% on average " \
               f"({best}-{worst}%)" in readme
    else:  # the best run's forward too slow (s17b: the GB300 8B row)
        assert f"on the {runs} runs they time the model's forward is {mean}% too fast on average (from {best}% too " \
               f"slow to {worst}% too fast)" in readme


def test_at_a_glance_matches_a_fresh_generation():
    """The page's "At a glance" table is what glance() makes of the tables as the page holds them now (rewritten by
    `--write` after them), sits before the first of them, and names every table's run count."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    begin, end = SCRIPT["markers"](SCRIPT["GLANCE_SECTION"])
    assert doc.count(begin) == 1 and doc.count(end) == 1
    assert doc.index(end) < doc.index(SCRIPT["markers"]("validation table")[0])
    block = SCRIPT["section"](doc, SCRIPT["GLANCE_SECTION"]).strip("\n")
    assert block == SCRIPT["glance"](doc)
    runs = [int(line.split("|")[2]) for line in block.splitlines()[2:]]
    a100 = len(ROWS) - len(HOPPER) - len(BLACKWELL) - len(COMMUNITY)
    assert runs[:4] == [a100, len(HOPPER), len(BLACKWELL), len(COMMUNITY)]


def glance_doc(whole: list[float], forward: list[float], forward_line: str) -> str:
    """A page whose four whole-run tables each hold runs a-d with errors ``whole`` (made by table()) and whose forward
    table holds runs f1-f3 with ``forward`` and the summary line ``forward_line``."""
    data = [{"name": n, "gpus": "8", "published": "1 s", "published_tokens_per_second_per_gpu": "100",
             "predicted": 100.0 * (1 + e), "error": e, "step_s": 1.0, "bubble": 0.0} for n, e in zip("abcd", whole)]
    fwd = "\n".join(["| run | forward error |", "| --- | ---: |"] + [f"| f{i + 1} | {e:+.1%} |" for i, e in
                                                                    enumerate(forward)] + ["", forward_line])
    parts = []
    for _, name, _, _ in SCRIPT["GLANCE"]:
        begin, end = SCRIPT["markers"](name)
        parts += [begin, fwd if name == "eval forward" else SCRIPT["table"](data), end]
    return "\n".join(parts)


def test_at_a_glance_by_hand():
    """Errors +10%, -30%, +4%, +20%: mean |error| 64 / 4 = 16.0%, worst 30.0%, signed 4 / 4 = +1.0% (the table's own
    line), worst three b, d, a.  A forward table of mixed sign, -20%, +10%, -6%: mean |error| 36 / 3 = 12.0% from the
    cells, worst 20.0%, the signed mean as its line states it; of one sign, -20%, -10%, -6%, the line's |mean|."""
    doc = glance_doc([0.10, -0.30, 0.04, 0.20], [-0.20, 0.10, -0.06], "Mean forward error -5.3% over 3 runs (...).")
    lines = SCRIPT["glance"](doc).splitlines()
    assert len(lines) == 2 + 5
    assert lines[2] == "| [A100](#whole-training-runs) | 4 | 16.0% | 30.0% | +1.0% | b -30.0%, d +20.0%, a +10.0% |"
    assert lines[3].startswith("| [Hopper](#whole-training-runs-on-h100) | 4 | 16.0% |")
    assert lines[6] == ("| [forward only (time)](#forward-only-the-logs-evaluations) | 3 | 12.0% | 20.0% | -5.3% "
                        "| f1 -20.0%, f2 +10.0%, f3 -6.0% |")
    doc = glance_doc([0.10, -0.30, 0.04, 0.20], [-0.20, -0.10, -0.06], "Mean forward error -12.1% over 3 runs (...).")
    assert SCRIPT["glance"](doc).splitlines()[6].split("|")[3:6] == [" 12.1% ", " 20.0% ", " -12.1% "]


def test_gpu_spread_default_column_is_the_tables_own():
    """docs/validation.md's "GPU-to-GPU spread" table sits between its markers, after the tables it reads, and its
    default column repeats each whole-run table's own summary line (mean / worst / signed, run count): regenerated
    by --write, so it cannot lag them."""
    doc = (ROOT / "docs" / "validation.md").read_text()
    begin, end = SCRIPT["markers"](SCRIPT["SPREAD_SECTION"])
    assert doc.count(begin) == 1 and doc.count(end) == 1
    assert doc.index(SCRIPT["markers"]("community table")[1]) < doc.index(begin)
    lines = SCRIPT["section"](doc, SCRIPT["SPREAD_SECTION"]).strip("\n").splitlines()
    assert len(lines) == 2 + 4
    for line, (label, name) in zip(lines[2:], SCRIPT["SPREAD_TABLES"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        stated = re.search(r"^Mean \|error\| ([0-9.]+%), worst ([0-9.]+%) over (\d+) runs?; mean signed error "
                           r"([+-][0-9.]+%)\.", SCRIPT["section"](doc, name), re.M).groups()
        assert cells[:3] == [label, stated[2], f"{stated[0]} / {stated[1]} / {stated[3]}"]


def test_gpu_spread_table_by_hand():
    """Default errors +10%, -30%, +4%, +20% in every table (mean |error| 16.0%, worst 30.0%, signed +1.0%); with the
    spread +5%, -35%, -1%, +15% (mean 56 / 4 = 14.0%, worst 35.0%, signed -16 / 4 = -4.0%)."""
    doc = glance_doc([0.10, -0.30, 0.04, 0.20], [-0.20, 0.10, -0.06], "Mean forward error -5.3% over 3 runs (...).")
    on = SCRIPT["section"](glance_doc([0.05, -0.35, -0.01, 0.15], [], ""), "validation table")
    lines = SCRIPT["spread"](doc, {name: on for _, name in SCRIPT["SPREAD_TABLES"]}).splitlines()
    assert lines[2] == "| A100 | 4 | 16.0% / 30.0% / +1.0% | 14.0% / 35.0% / -4.0% |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["A100", "Hopper (H100 / H200)", "B200",
                                                                    "community (MoE)"]
