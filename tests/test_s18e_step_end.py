"""s18e: model/step_end.py's item fields that no figure sums (planted bugs s18e-step-end-*): the bucket runs named in
the grad-sync rule, the tied embedding's bytes under tensor parallelism, and the host-launch counts' keys."""

from __future__ import annotations

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import step_end
from helpers import tiny_llama_toml
from test_step_launches import _small


def test_bucket_runs_name_each_stage_once():
    assert step_end._buckets((4, 4)) == "4 bucket(s) a stage"
    assert step_end._buckets((3, 3, 2, 2)) == "buckets by stage 0-1: 3, 2-3: 2"
    assert step_end._buckets((1, 2, 2, 3)) == "buckets by stage 0: 1, 1-2: 2, 3: 3"
    assert step_end._buckets((5, 6, 5)) == "buckets by stage 0: 5, 1: 6, 2: 5"


def test_tied_embedding_bytes_are_a_tensor_ranks_vocab_shard(tmp_path):
    """The tiny model (vocabulary 1,000, hidden 256, fp32 main gradients) with a tied head, tensor 2, data 2, two
    stages on one H100 node: each tensor rank all-reduces its half of the table, 1,000 x 256 / 2 x 4 B = 512,000 B,
    with its peer pipeline rank over NVLink: 25.5 us + 2 x (2 - 1) / 2 x 512,000 B / 321 GB/s = 25.5 + 1.595 =
    27.095 us.  The tensor-parallel all-reduce of the sequence-parallel norms: stage 0 two layers x two norms x 256
    x 4 B = 4,096 B, stage 1 the final norm besides, 5,120 B."""
    path = tiny_llama_toml(tmp_path, '[parallel]\ndata = 2\ntensor = 2\nzero = 1\n[hardware]\npreset = "H100"\n'
                                     '[step]\ngrad_sync = "derived"\n')
    sc = scenario.load(path, ["model.tie_word_embeddings=true"])
    items = {it["name"]: it for it in step_end.summary(sc, sc.derived())["items"]}
    tied = items["tied embedding gradient all-reduce"]
    assert tied["bytes"] == [512_000, 512_000]
    assert tied["ms"] == pytest.approx([0.025500 + 512_000 / 321e9 * 1e3] * 2, abs=1e-6)
    assert (tied["link"], tied["figure"]) == ("nvlink", "grad_sync_tail")
    assert items["tensor-parallel all-reduce of the whole-on-rank gradients"]["bytes"] == [4 * 256 * 4, 5 * 256 * 4]


def test_host_launches_keys_hold_their_counts():
    """tests/test_step_launches.py's small config, worked by hand there: after the loss read 18 launches, after the
    norm's .item() 34, 10 shard pieces of which 6 FP8, Adam 2 launches, the norm 1."""
    sc = _small()
    assert step_end.summary(sc, sc.derived())["host_launches"] == {
        "after_loss_read": 18, "after_norm_read": 34, "shard_pieces": 10, "fp8_pieces": 6, "adam_launches": 2,
        "norm_launches": 1, "costed": False}  # fmt: skip
