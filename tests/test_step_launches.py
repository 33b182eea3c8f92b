"""The host's launches at a Megatron-core step's end (model/step_launches.py), worked by hand from the code's loops:
Transformer Engine release_v2.8's multi_tensor_apply loop, the distributed optimizer's even split of each bucket,
and the launches each optimizer call makes (docs/validation.md, "What one 8B step runs beyond its forward")."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario as scenario_mod
from dualpipe_sim.model import ddp_buckets, shard_pieces, step_end, step_launches
from dualpipe_sim.model.step_launches import CHUNK, Launches, Piece, multi_tensor_launches, pieces

ROOT = Path(__file__).resolve().parents[1]
EIGHT_B = ROOT / "scenarios/validation/mlperf51-llama8b-64b200.toml"


def test_multi_tensor_launches_follow_te_loop():
    assert multi_tensor_launches([], 1) == 0
    assert multi_tensor_launches([1], 4) == 1
    # 320 chunks fill the blocks at the tensor's last chunk: one launch; one chunk more needs a second
    assert multi_tensor_launches([320 * CHUNK], 1) == 1
    assert multi_tensor_launches([320 * CHUNK + 1], 1) == 2
    # depth 1 takes 110 tensors a launch, depth 4 (Adam: grad, param, m, v) 36
    assert multi_tensor_launches([1] * 110, 1) == 1
    assert multi_tensor_launches([1] * 111, 1) == 2
    assert multi_tensor_launches([1] * 36, 4) == 1
    assert multi_tensor_launches([1] * 37, 4) == 2
    assert multi_tensor_launches([1] * 72, 4) == 2
    # 300 + 30 chunks: the blocks fill at the second tensor's 20th chunk, its last 10 go in a second launch
    assert multi_tensor_launches([300 * CHUNK, 30 * CHUNK], 1) == 2
    # a 640-chunk tensor: two full launches, nothing left over
    assert multi_tensor_launches([640 * CHUNK], 1) == 2
    # s13i: a tensor cut by a launch stays in the next list (TE keeps its addresses in slot 0, loc_tensor_info = 1):
    # 330 chunks fill 320 blocks (launch 1), its last 10 chunks plus 109 one-chunk tensors make 110 tensors (launch 2),
    # the 110th one-chunk tensor is launched alone at the end (launch 3); without the carried tensor, 2
    assert multi_tensor_launches([330 * CHUNK] + [1] * 110, 1) == 3
    assert multi_tensor_launches([330 * CHUNK] + [1] * 109, 1) == 2


def test_pieces_split_each_bucket_evenly():
    fp8, decay = [True, False, True], [True, False, True]
    # one bucket of 60 over 3 ranks: [0, 20) [20, 40) [40, 60) against tensors [0, 10) [10, 30) [30, 60)
    assert pieces([10, 20, 30], [(0, 60)], 3, 0, fp8, decay) == [Piece(10, True, True), Piece(10, False, False)]
    assert pieces([10, 20, 30], [(0, 60)], 3, 1, fp8, decay) == [Piece(10, False, False), Piece(10, True, True)]
    assert pieces([10, 20, 30], [(0, 60)], 3, 2, fp8, decay) == [Piece(20, True, True)]
    # two buckets, [0, 30) and [30, 60), over 2 ranks: [0, 15) [15, 30), then [30, 45) [45, 60)
    two = [(0, 30), (30, 30)]
    assert [p.size for p in pieces([10, 20, 30], two, 2, 0, fp8, decay)] == [10, 5, 15]
    assert [p.size for p in pieces([10, 20, 30], two, 2, 1, fp8, decay)] == [15, 15]
    # every element lands on exactly one rank
    for ranks in (1, 2, 3, 7):
        assert sum(p.size for r in range(ranks) for p in pieces([10, 20, 30], two, ranks, r, fp8, decay)) == 60


def _small(**step) -> scenario_mod.Scenario:
    """A 2-layer Llama (hidden 64, 2 heads of 32 with 2 KV heads, FFN 128, vocabulary 256) on the 8B row's runtime,
    data 2, context 1, 2 FP8 buckets."""
    raw = tomllib.loads(EIGHT_B.read_text())
    raw = copy.deepcopy(raw)
    raw["model"].update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=256, seq_length=128)
    raw["parallel"].update(data=2, context=1)
    raw["step"].pop("ddp_bucket_size", None)  # the file's size needs derived buckets; these give a count
    raw["step"].update({"grad_sync_buckets": 2, **step})
    return scenario_mod.read(raw)


def test_small_config_by_hand():
    sc = _small()
    d = sc.derived()
    st = d.setup
    # registration order (ddp_buckets): embedding, per layer proj, norm, qkv, norm, fc1, fc2; final norm, output
    proj, qkv, fc1, fc2, norm, table = 64 * 64, 64 * 64 + 2 * 64 * 64, 2 * 64 * 128, 128 * 64, 64, 256 * 64
    assert ddp_buckets.stage_zero_tensors(st.cfg, st.stages[0], 1) == (
        [table] + [proj, norm, qkv, norm, fc1, fc2] * 2 + [norm, table])
    assert ddp_buckets.stage_zero_decays(st.cfg, st.stages[0]) == (
        [True] + [True, False, True, False, True, True] * 2 + [False, True])
    # FP8 buffer: the 8 linears, 2 equal buckets of 40,960 = one layer's four each; rank 0 takes [0, 20480) of each:
    # proj, qkv and fc1's first 4,096 -> 3 pieces a bucket, 6 in all; rank 1 fc1's rest and fc2 -> 4
    # 16-bit buffer, one bucket: embedding 16,384, the 5 norms (320), output 16,384 = 33,088, halves of 16,544:
    # rank 0 the embedding and 160 norm elements (norms 1, 2 whole, 32 of norm 3) -> 4 pieces;
    # rank 1 the other 32 of norm 3, norm 4, the final norm and the output -> 4
    # after the loss read, rank 0: 10 copies, the norm's 7 fixed calls, 1 l2norm launch (10 one-chunk tensors)
    # after .item(): Adam 1 launch for the decay group (6 FP8 + embedding) and 1 for the norms = 2;
    # the cast: 6 pieces x 4 (bf16 copy, two amax kernels, cast) + zeros x 2 + 1 scale launch (8 weights) + all-reduce;
    # the 16-bit copies 4: 2 + 24 + 4 + 4 = 34.  Rank 1: 8 + 7 + 1 = 16 and 2 + 16 + 4 + 4 = 26, fewer.
    assert step_launches.count(sc, d) == Launches(after_loss=18, after_norm=34, pieces=10, fp8_pieces=6, adam=2,
                                                  norm=1)


def test_small_config_without_fp8_params():
    raw = tomllib.loads(EIGHT_B.read_text())
    raw["model"].update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=256, seq_length=128, fp8_params=False)
    raw["parallel"].update(data=2, context=1)
    raw["step"].pop("ddp_bucket_size", None)
    raw["step"].update(grad_sync_buckets=2)
    sc = scenario_mod.read(raw)
    # one buffer of all 15 tensors, 2 equal buckets of 57,504
    total = 2 * (256 * 64) + 5 * 64 + 2 * (64 * 64 + 3 * 64 * 64 + 2 * 64 * 128 + 128 * 64)
    assert total == 115008
    # buckets [0, 57504) and [57504, 115008); halves of 28,752.  Tensor starts: table 0, proj 16384, norm 20480,
    # qkv 20544, norm 32832, fc1 32896, fc2 49280, proj 57472, norm 61568, qkv 61632, norm 73920, fc1 73984,
    # fc2 90368, norm 98560, output 98624 (end 115008).
    # rank 0: [0, 28752) table, proj, norm, qkv; [57504, 86256) proj, norm, qkv, norm, fc1 -> 9 pieces
    # rank 1: [28752, 57504) qkv, norm, fc1, fc2, proj; [86256, 115008) fc1, fc2, norm, output -> 9 pieces
    # no FP8 weights: no cast; every piece is copied back: after the norm Adam 2 (each rank has norms) + 9
    got = step_launches.count(sc, sc.derived())
    assert got == Launches(after_loss=9 + 7 + 1, after_norm=2 + 9, pieces=9, fp8_pieces=0, adam=2, norm=1)


def test_counts_hold_their_parts_on_the_8b_row():
    sc = scenario_mod.load(EIGHT_B)
    d = sc.derived()
    got = step_launches.count(sc, d)
    assert got.after_loss == got.pieces + step_launches.NORM_FIXED + got.norm
    # 128 FP8 linears (32 layers x 4), current scaling: 2 zeros + ceil(128 / 48) = 3 scale launches + the all-reduce
    assert got.after_norm == got.adam + 4 * got.fp8_pieces + (2 + 3 + 1) + (got.pieces - got.fp8_pieces)
    # each of the 34 FP8 buckets puts at least one piece on every rank, and no rank holds more pieces than weights
    assert 34 <= got.fp8_pieces <= 128
    # the rank's shard is 8.03e9 / 64 elements: at least ceil(chunks / 320) l2norm launches
    shard = sum(ddp_buckets.stage_zero_tensors(d.setup.cfg, d.setup.stages[0], 1)) / 64
    assert got.norm >= -(-int(shard // CHUNK) // 320)
    summary = step_end.summary(sc, d)["host_launches"]
    assert summary["after_loss_read"] == got.after_loss and summary["costed"] is False


def test_more_ranks_fewer_norm_launches():
    """A bigger data-parallel group leaves each rank a smaller shard: fewer chunks, so no more l2norm launches."""
    counts = [step_launches.count(s, s.derived()) for s in (
        scenario_mod.load(ROOT / f"scenarios/validation/mlperf51-llama8b-{n}b200.toml") for n in (8, 64, 256))]
    assert counts[0].norm > counts[1].norm >= counts[2].norm


@pytest.mark.parametrize("name", ["mlperf41-gpt3-64b200.toml", "mz7-qwen3-30b-a3b-b200.toml"])
def test_not_counted_outside_megatron_core_dense(name):
    """apex's DistributedFusedAdam (the GPT-3 row) and MoE models (the experts' buffer) are not counted."""
    sc = scenario_mod.load(ROOT / "scenarios/validation" / name)
    d = sc.derived()
    assert step_launches.count(sc, d) is None
    assert step_end.summary(sc, d)["host_launches"] is None


def test_cast_counts_the_weights_with_a_piece_by_hand():
    """s12g: cast_master_weights_to_fp8 launches its per-weight kernels only for a weight with a piece on the rank
    (TE release_v2.8 tensor/utils.py: ``if master_weight is None: continue``).  The small config's rank 0 has pieces of
    proj, qkv, fc1 in each of the 2 FP8 buckets (test_small_config_by_hand): 6 of the 8 weights, rank 1 4."""
    from dualpipe_sim.model import fp8_step_casts

    sc = _small()
    d = sc.derived()
    st = d.setup
    assert shard_pieces.fp8_pieces(sc, d, [{0}]) == [6]
    # its cast: 6 x 4 kernels (bf16 copy, zero amax, amax, cast) + 2 zeros + 1 scale launch over the 8 weights; the
    # bytes over the rank's shard (8 linears' 81,920 elements / 2, 5 B each on B200), the amax all-reduce over 2
    fixed = fp8_step_casts.fp8_cast_fixed_launches("current", 8)
    assert fixed == 3
    floors = (6 * 4 + fixed) * st.rates.floor * 1e3
    shard = 2 * (64 * 64 + 3 * 64 * 64 + 2 * 64 * 128 + 128 * 64) / 2 * 5
    want = shard / st.rates.hbm * 1e3 + floors + fp8_step_casts.fp8_amax_all_reduce_ms(st, 8, 0)
    assert fp8_step_casts.fp8_master_cast_ms(sc, st, d) == pytest.approx([want])


def test_a_weight_cut_by_the_models_buckets_counts_once():
    """Megatron keeps a parameter in one bucket; the model's equal buckets (a given step.grad_sync_buckets) may cut one,
    giving a rank two ranges of it.  One bucket per half of the small config's fc1 would do that; the cast still
    counts each weight once: never more than the FP8 weights the copy holds."""
    from dualpipe_sim.model import fp8_step_casts

    for n in (2, 3, 7, 16):
        sc = _small(grad_sync_buckets=n)
        d = sc.derived()
        got = shard_pieces.fp8_pieces(sc, d, [{0}])
        assert got[0] <= sum(fp8_step_casts.fp8_param_tensors(d.setup, d.setup.stages[0])) == 8
    # 16 buckets of 5,120 over 2 ranks: each rank's ranges are 2,560 long with gaps of 2,560, shorter than the smallest
    # weight (proj, 4,096), so both ranks meet all 8 (and fc1, 16,384, three times: still one weight)
    sc = _small(grad_sync_buckets=16)
    assert shard_pieces.fp8_pieces(sc, sc.derived(), [{0}]) == [8]


def _interleaved(split: bool) -> scenario_mod.Scenario:
    """The small config with 4 layers as 4 stages, 2 a pipeline rank (rank 0: stages 0 and 2, rank 1: 1 and 3)."""
    raw = copy.deepcopy(tomllib.loads(EIGHT_B.read_text()))
    raw["model"].update(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=256, seq_length=128)
    raw["parallel"].update(data=2, context=1)
    raw["pipeline"].update(schedule="interleaved-1f1b", stages=4, chunks_per_rank=2, microbatches=4)
    raw["step"].pop("ddp_bucket_size", None)
    raw["step"].update(grad_sync_buckets=2, overlap_param_gather=True, overlap_param_gather_with_optimizer_step=split)
    return scenario_mod.read(raw)


def test_two_optimizers_with_the_param_gather_overlapped_by_hand():
    """s13i: overlap_param_gather_with_optimizer_step gives the first chunk its own optimizer (Megatron-core
    optimizer/__init__.py): one FusedAdam call per parameter group and one FP8 cast's fixed launches per optimizer.
    Stage 0 (embedding, layer 0) and stage 2 (layer 2) on pipeline rank 0.  Each copy's FP8 buffer: proj 4,096,
    qkv 12,288, fc1 16,384, fc2 8,192 in 2 equal buckets of 20,480, halves of 10,240: data rank 0 [0, 10240) proj,
    qkv; [20480, 30720) fc1 -> 3 pieces; rank 1 [10240, 20480) qkv, fc1; [30720, 40960) fc1, fc2 -> 4.  The 16-bit
    buffer, one bucket: stage 0 embedding 16,384 and 2 norms of 64 (halves of 8,256): rank 0 1 piece (embedding),
    rank 1 3 (embedding, norm, norm); stage 2 the 2 norms: 1 piece each.  Rank 1 has the most: 8 FP8 + 4 = 12."""
    assert [w.embedding for w in _interleaved(False).derived().setup.stages] == [True, False, False, False]
    fixed = step_launches.NORM_FIXED  # 7 fixed calls of the norm, 1 l2norm launch over 12 one-chunk pieces
    # the FP8 cast, current scaling: 2 zeros + 1 compute_scale launch (4 or 8 weights, under 48) + the amax all-reduce
    # = 4 per optimizer, then 4 kernels per FP8 piece; every 16-bit piece copied back
    one = Launches(after_loss=12 + fixed + 1, after_norm=2 + 4 + 8 * 4 + 4, pieces=12, fp8_pieces=8, adam=2, norm=1)
    # two optimizers: stage 0's (decay: 4 FP8 + embedding; no decay: 2 norms) and stage 2's (4 FP8; 1 norm): 4 Adam
    # launches, two casts' fixed launches
    two = Launches(after_loss=12 + fixed + 1, after_norm=4 + 2 * 4 + 8 * 4 + 4, pieces=12, fp8_pieces=8, adam=4,
                   norm=1)
    for split, want in ((False, one), (True, two)):
        sc = _interleaved(split)
        assert step_launches.count(sc, sc.derived()) == want


def test_only_the_first_chunk_is_filled_into_buckets():
    """s13i: Megatron-core's get_model builds each model chunk's DDP with disable_bucketing=(model_chunk_idx > 0):
    with derived buckets the first chunk fills buckets of bucket_size elements (8B: 40 M over 32 data ranks), every
    other chunk's buffer is one bucket.  (With overlap_param_gather_with_optimizer_step the first chunk is one bucket a
    buffer too, and DDP does not bucket pipeline ranks > 0: tests/test_ddp_bucket_chunks.py.)"""
    raw = tomllib.loads(EIGHT_B.read_text())
    raw["step"]["grad_sync_buckets"] = "derived"
    sc = scenario_mod.read(raw)
    st = sc.derived().setup
    first = shard_pieces.buffers(sc, st, 0, st.stages[0], 1)
    later = shard_pieces.buffers(sc, st, 1, st.stages[0], 1)
    assert len(first) == len(later) == 2  # FP8 parameters: the FP8 linears' buffer and the 16-bit one
    for (sizes, _, _, bounds), (sizes2, _, _, bounds2) in zip(first, later):
        assert sizes == sizes2 and bounds2 == [(0, sum(sizes))]
        # the fill rule's buckets tile the buffer
        assert bounds[0][0] == 0 and sum(n for _, n in bounds) == sum(sizes)
        assert all(a + n == b for (a, n), (b, _) in zip(bounds, bounds[1:]))
    # the 8B model's FP8 linears, 32 x 218 M = 6.98 G elements, in buckets closed at 40 M: one a layer or more
    assert len(first[0][3]) >= 32
