"""Which model chunks Megatron-core's DDP fills into buckets by size (model/ddp_buckets.py fill_size), worked by hand.

DDP sets bucket_size = None on every pipeline rank but the first (distributed_data_parallel.py @ 1e05700 lines 186-187,
d339190 lines 124-125), get_model passes disable_bucketing=(model_chunk_idx > 0) or
overlap_param_gather_with_optimizer_step (training.py @ 1e05700 lines 1138-1139; the flag's own commit 4e38405): so
only stage 0 is filled by size, and not with that flag.  An unbucketed chunk is one bucket a buffer; a tied embedding
under the distributed optimizer still starts a bucket of its own (param_and_grad_buffer.py
_does_param_require_new_bucket, applied whatever bucket_size).

The layout: hidden 64, 4 layers as 4 stages, PP 2 interleaved (rank 0: stages 0 and 2, rank 1: 1 and 3), DP 2, TP 1,
buckets of 10,000 elements (the floor patched down from 40 M so this small model fills several).  A layer's tensors
in registration order: proj 64 x 64 = 4,096, its norm 64, qkv 64 x 192 = 12,288, the MLP's norm 64, fc1 2 x 64 x 128 =
16,384, fc2 64 x 128 = 8,192; the embedding 256 x 64 = 16,384 before layer 0; the final norm 64 and the untied output
layer 16,384 after layer 3."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario as scenario_mod
from dualpipe_sim.model import ddp_buckets, fp8_step_casts, grad_sync, nemo_optimizer, param_gather, shard_pieces

EIGHT_B = Path(__file__).resolve().parents[1] / "scenarios/validation/mlperf51-llama8b-64b200.toml"


@pytest.fixture(autouse=True)
def _small_buckets(monkeypatch):
    monkeypatch.setattr(ddp_buckets, "MIN_BUCKET", 10_000)
    monkeypatch.setattr(ddp_buckets, "PER_DATA_RANK", 1)


def _layout(split: bool, fp8: bool = True, tied: bool = False, size: int | None = None, zero: int = 1):
    raw = copy.deepcopy(tomllib.loads(EIGHT_B.read_text()))
    raw["parallel"]["zero"] = zero  # the file's 1: the distributed optimizer
    raw["model"].update(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=256, seq_length=128, fp8_params=fp8,
                        tie_word_embeddings=tied)
    raw["parallel"].update(data=2, context=1)
    raw["pipeline"].update(schedule="interleaved-1f1b", stages=4, chunks_per_rank=2, microbatches=4)
    raw["step"].update(grad_sync_buckets="derived", overlap_param_gather=True,
                       overlap_param_gather_with_optimizer_step=split)
    raw["step"].pop("ddp_bucket_size", None)  # the file's 134,217,728: the patched default here unless given
    if size is not None:
        raw["step"]["ddp_bucket_size"] = size
    sc = scenario_mod.read(raw)
    st = sc.derived().setup
    assert st.sharding.tensor == 1 and st.sharding.data == 2 and ddp_buckets.bucket_size(2) == 10_000
    assert [len(w.layers) for w in st.stages] == [1, 1, 1, 1] and st.stages[0].embedding and st.stages[3].head
    return sc, st


def _bounds(sc, st):
    """Per stage copy, each gradient buffer's buckets as (first element, elements)."""
    buckets = ddp_buckets.per_stage(sc)
    return [[b for *_, b in shard_pieces.buffers(sc, st, s, st.stages[s], buckets[s])] for s in range(4)]


def test_fp8_buckets_only_stage_zero_filled():
    sc, st = _layout(split=False)
    # stage 0, FP8 buffer (proj 4,096, qkv 12,288, fc1 16,384, fc2 8,192) walked back: fc2 8,192 < 10,000, + fc1 =
    # 24,576 closes (from fc1 at 4,096 + 12,288); qkv 12,288 closes alone; proj 4,096 is the last bucket.  16-bit
    # buffer (embedding 16,384, norms 64 + 64): 16,512 in one bucket
    fp8_zero = [(0, 4_096), (4_096, 12_288), (16_384, 24_576)]
    whole = [(0, 40_960)]
    assert _bounds(sc, st) == [[fp8_zero, [(0, 16_512)]],
                               [whole, [(0, 128)]],  # rank 1's first chunk: pipeline rank 1, not bucketed
                               [whole, [(0, 128)]],  # rank 0's second chunk
                               [whole, [(0, 16_576)]]]  # norms 128, final norm 64, output layer 16,384
    assert ddp_buckets.per_stage(sc) == (4, 2, 2, 2)
    # the FP8 grad sync's groups (partition_buckets case 3): stage 0's three, the 16-bit bucket with the forward's
    # first FP8 one (released last); the other copies one group each, so no shares
    shares = grad_sync.grad_sync_shares(sc)
    assert len(shares[0]) == 3 and shares[1:] == ((), (), ())


def test_fp8_buckets_none_filled_with_the_gather_in_the_optimizer_step():
    sc, st = _layout(split=True)
    assert _bounds(sc, st) == [[[(0, 40_960)], [(0, 16_512)]], [[(0, 40_960)], [(0, 128)]],
                               [[(0, 40_960)], [(0, 128)]], [[(0, 40_960)], [(0, 16_576)]]]
    assert ddp_buckets.per_stage(sc) == (2, 2, 2, 2)
    assert grad_sync.grad_sync_shares(sc) == ()


def test_one_buffer_buckets_either_side_of_the_rule():
    sc, st = _layout(split=False, fp8=False)
    # stage 0: embedding 16,384, proj 4,096, norm 64, qkv 12,288, norm 64, fc1 16,384, fc2 8,192, walked back:
    # fc2 + fc1 = 24,576 from 32,896; norm + qkv = 12,352 from 20,544; norm + proj + embedding = 20,544 from 0
    assert _bounds(sc, st) == [[[(0, 20_544), (20_544, 12_352), (32_896, 24_576)]], [[(0, 41_088)]],
                               [[(0, 41_088)]], [[(0, 57_536)]]]
    assert ddp_buckets.per_stage(sc) == (3, 1, 1, 1)
    sc, st = _layout(split=True, fp8=False)
    assert _bounds(sc, st) == [[[(0, 57_472)]], [[(0, 41_088)]], [[(0, 41_088)]], [[(0, 57_536)]]]
    assert ddp_buckets.per_stage(sc) == (1, 1, 1, 1)


def test_tied_embedding_alone_even_unbucketed():
    # tied: stage 0's embedding and the last stage's copy of it (its output layer's weight: Megatron's
    # setup_embeddings_and_output_layer keeps one there, a DDP parameter like any other, whose main_grad the tie's
    # all-reduce then reads) are both marked shared_embedding, and under the distributed optimizer each is a bucket
    # of its own with bucketing off too.  Stage 0: embedding 16,384 | layer 0's 41,088; stage 3, walked back: the
    # output weight 16,384 alone (registered last, reduced first), then layer 3's 41,088 + the final norm 64 = 41,152
    sc, st = _layout(split=True, fp8=False, tied=True)
    assert _bounds(sc, st) == [[[(0, 16_384), (16_384, 41_088)]], [[(0, 41_088)]], [[(0, 41_088)]],
                               [[(0, 41_152), (41_152, 16_384)]]]
    assert ddp_buckets.per_stage(sc) == (2, 1, 1, 2)


def test_tied_output_weight_alone_in_the_16bit_buffer():
    # FP8 parameters, tied, gather in the optimizer step: the last stage's uint8 buffer is layer 3's four linears
    # (40,960) in one bucket; its 16-bit buffer, the two norms 64 + 64 and the final norm 64 = 192 | the output
    # weight 16,384 (a ColumnParallelLinear: 16-bit) alone.  Stage 0 the same two buffers, the embedding alone
    sc, st = _layout(split=True, fp8=True, tied=True)
    assert _bounds(sc, st)[3] == [[(0, 40_960)], [(0, 192), (192, 16_384)]]
    assert _bounds(sc, st)[0] == [[(0, 40_960)], [(0, 16_384), (16_384, 128)]]
    assert ddp_buckets.per_stage(sc) == (3, 2, 2, 3)


def test_tied_output_weight_not_alone_without_the_distributed_optimizer():
    # _does_param_require_new_bucket needs use_distributed_optimizer: under ZeRO 0 the embedding fills stage 0's last
    # bucket with layer 0's proj and norm (as untied above: 20,544 | 12,352 | 24,576), and the last stage is one
    # bucket, its output weight counted in it: 41,152 + 16,384 = 57,536
    sc, st = _layout(split=False, fp8=False, tied=True, zero=0)
    assert st.sharding.zero == 0
    assert _bounds(sc, st)[0] == [[(0, 20_544), (20_544, 12_352), (32_896, 24_576)]]
    assert _bounds(sc, st)[3] == [[(0, 57_536)]]
    assert ddp_buckets.per_stage(sc) == (3, 1, 1, 1)


def test_given_bucket_size_fills_stage_zero_only():
    # step.ddp_bucket_size = 20,000 (over the patched 10,000): stage 0's FP8 buffer walked back: fc2 8,192 + fc1 =
    # 24,576 closes; qkv 12,288 + proj 4,096 = 16,384 stays open to the end; the other copies as before
    sc, st = _layout(split=False, size=20_000)
    assert _bounds(sc, st)[0] == [[(0, 16_384), (16_384, 24_576)], [(0, 16_512)]]
    assert ddp_buckets.per_stage(sc) == (3, 2, 2, 2)


def test_bucket_size_refused_with_a_given_count(tmp_path, capsys):
    from dualpipe_sim.cli import main
    out = tmp_path / "out"
    code = main(["run", str(EIGHT_B), "--set", "step.grad_sync_buckets=34", "--set", "step.ddp_bucket_size=200",
                 "--out", str(out), "--plots", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "step.ddp_bucket_size" in err and 'step.grad_sync_buckets = "derived"' in err


def test_unbucketed_fp8_first_chunk_gathers_two_buckets():
    # s13o: with the gather in the optimizer step the first chunk is unbucketed but still one bucket a buffer: FP8
    # parameters make two (uint8 and 16-bit), one group (partition_buckets case 1) whose start_param_sync issues one
    # all-gather a bucket in one coalescing manager (param_and_grad_buffer.py @ core_r0.11.0 lines 193-203, 788-800).
    # The v5.0 405B row at 8,192 GPUs (DP 8 over 8 nodes' NICs, one rank a node): two rings pay the ring's latency twice
    from dualpipe_sim.model import collectives

    sc = scenario_mod.load(EIGHT_B.parent / "mlperf50-llama405b-8192.toml")
    assert sc.step.overlap_param_gather_with_optimizer_step and sc.model.fp8_params
    assert ddp_buckets.per_stage(sc)[0] == 2
    derived = sc.derived()
    st = derived.setup
    first = nemo_optimizer.apex_stage(sc, st, st.stages[0], derived.stages[0])
    fp8 = fp8_step_casts.fp8_param_elements(st, st.stages[0])
    sh = st.sharding
    # the gather's bytes by hand: dense parameters / tensor at 2 bytes, the FP8 linear weights at 1
    nbytes = first.dense_params / sh.tensor * 2 - fp8[0]
    per_node = max(1, min(sh.data, st.rates.nvlink_domain // sh.tensor))
    one, two = (collectives.bucketed("all_gather", nbytes, sh.data, st.rates, per_node, b) * 1e3 for b in (1, 2))
    assert two > one  # one more ring latency
    wait = param_gather.step_start_ms(sc, derived) + param_gather.optimizer_overlap_ms(sc, derived)
    assert wait == pytest.approx(two, rel=1e-9) and wait != pytest.approx(one, rel=1e-9)
