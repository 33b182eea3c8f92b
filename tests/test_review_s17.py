"""s17i: a second reading of session 17's merged work (s17c, s17d, s17e, s17g), and its leftovers.

Every expected figure is worked by hand here from the code read (NVIDIA/Megatron-LM @ 1e05700
megatron/core/transformer/moe/token_dispatcher.py and experts.py; deepseek-ai/DeepEP csrc/deep_ep.cpp @ aae9fa9;
docs/model.md "Expert tensor parallelism", "The MoE backward on the host", "Host syncs in the MoE layer")."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import buffers, derive, host, host_backward, kernels
from dualpipe_sim.model.rates import PRESETS
from dualpipe_sim.schedules.components import Component

VALIDATION = Path(__file__).resolve().parents[1] / "scenarios" / "validation"
XT = VALIDATION / "xt-qwen3-235b-tp2ep8pp8.toml"  # Qwen3-235B, TP 2, EP 8, alltoall, H800
H800 = PRESETS["H800"]


def _small_cfg():
    """A made-up MoE layer: hidden 256, 8 experts of FFN 128, top-2 (Qwen3's attention otherwise)."""
    cfg = derive.setup(scenario.load(XT)).cfg
    return replace(cfg, hidden_size=256, moe_intermediate_size=128, num_experts=8, experts_per_token=2)


def _small_rows(**layout):
    tb = kernels.Table(H800, kernels.Layout(seq=1024, micro_batch=1, **layout), _small_cfg())
    kernels.moe_mlp_block(tb, recompute=False)
    return tb.rows


# -- (a) one ETP-2 MoE layer, by hand ----------------------------------------------------------------------------
def test_small_etp2_layer_shapes_and_bytes_by_hand():
    # TP 2: 1,024 / 2 = 512 tokens a rank, x top-2 = 1,024 rows received over EP 2; ETP 2 gathers its partner's:
    # 2,048 rows on 8 / 2 = 4 local experts, 512 an expert; each expert's FFN split 128 / 2 = 64 columns
    rows = {(k.name, k.component): k for k in _small_rows(tensor=2, expert=2, expert_tensor=2)}
    assert rows["experts fc1 (grouped)", "mlp_forward"].shape.startswith("4 x 512 x 128 x 256 bf16")  # 2 x 64 wide
    assert rows["experts fc2 (grouped)", "mlp_forward"].shape.startswith("4 x 512 x 256 x 64 bf16")
    assert rows["experts fc2 dgrad (grouped)", "mlp_backward_input"].shape.startswith("4 x 512 x 64 x 256 bf16")
    assert rows["experts fc1 wgrad (grouped)", "mlp_backward_weight"].shape.startswith("4 x 256 x 128 x 512 bf16")
    # the all-gather's output: 2,048 rows x 256 x 2 B; the probabilities 2,048 x 4 B
    assert rows["etp all-gather", "dispatch_forward"].bytes == 2_048 * 256 * 2 == 1_048_576
    assert rows["etp probs all-gather", "dispatch_forward"].bytes == 8_192
    # the reduce-scatter's input in fp32 (token_dispatcher.py 628-632): 2,048 x 256 x 4 B; its backward mirror
    assert rows["etp reduce-scatter", "combine_forward"].bytes == 2_048 * 256 * 4 == 2_097_152
    assert rows["etp all-gather", "combine_backward"].bytes == 2_097_152
    assert rows["etp reduce-scatter", "dispatch_backward"].bytes == 1_048_576
    # the casts: 2,048 x 256 read at 2 B, written at 4 B; the 1,024 reduced rows back
    assert rows["etp reduce-scatter cast to fp32", "mlp_forward"].bytes == 2_048 * 256 * 6 == 3_145_728
    assert rows["etp reduce-scatter cast back", "mlp_forward"].bytes == 1_024 * 256 * 6 == 1_572_864
    # 8 int64 counts from each of the ETP x EP = 4 ranks
    assert rows["token counts all-gather", "dispatch_forward"].bytes == 8 * 8 * 4 == 256


# -- (b) one DeepEP MoE layer's backward host calls, from docs/model.md's list -----------------------------------
def test_deepep_backward_calls_summed_from_the_docs_list():
    # TP 4, EP 8: 16 local experts; with TE's TP overlap on, as the count below has the ring's pieces (off on the row
    # since s21c)
    st = derive.setup(scenario.load(VALIDATION / "mz-qwen3-235b-tp4ep8pp8.toml", ["parallel.tp_comm_overlap=true"]))
    rows = derive.layer_kernels(st, 0)
    _, calls, syncs = host_backward.backward_excess([k for k in rows if k.kind != "host"], 13.5e-6, 4, 4, 16,
                                                    "deepep")  # fmt: skip
    grouped = 16 + 2 * 4  # a GEMM an expert and an event record + wait on each of TE's 4 streams
    # out_proj dgrad in 4 splits, the ring's 3 steps, flash, rope 2, q/k norms 2, qkv dgrad, bulk all-gather,
    # qkv wgrad, bulk reduce-scatter, input norm, out_proj wgrad, 3 main_grad adds
    attention = 4 + 3 + 1 + 2 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 3
    # unpermute, fc2 dgrad, swiglu 2, fc1 dgrad, permute (DeepEP's path regroups nothing by local expert, s21m), aux
    # loss 6, router 4, router dgrad 3, pre-mlp norm, fc1 / fc2 wgrad, router wgrad 2, 2 main_grad adds
    mlp = 1 + grouped + 2 + grouped + 1 + 6 + 4 + 3 + 1 + 2 * grouped + 2 + 2
    deepep = 2 * (2 + 1 + 1 + 2)  # each backward: stream wait in, cached notify, data kernel, stream wait back
    multihot = 4 + 2 + 1  # index backward (its nonzero syncs) and index_put; top-k's zeros + scatter; the expand's sum
    assert (calls, syncs) == (attention + mlp + deepep + multihot + 2, 1) == (160, 1)


# -- the forward's host replay: DeepEP's stream waits, the ETP collectives -----------------------------------------
def _forward_steps(name, dispatcher, overrides=()):
    st = derive.setup(scenario.load(VALIDATION / f"{name}.toml", list(overrides)))
    rows = [k for k in derive.layer_kernels(st, 0) if k.kind != "host"]
    local = st.cfg.num_experts // st.sharding.expert
    return rows, host.forward_steps(rows, st.sharding.tensor, st.layout.expert_streams, local, dispatcher)


def test_deepep_forward_counts_its_stream_waits_as_the_backward_does():
    _, steps = _forward_steps("mz-qwen3-235b-tp4ep8pp8", "deepep")
    ops = {s.label: s.ops for s in steps}
    # setup_metadata's topk; get_dispatch_layout: stream_wait in (event record + wait), its kernel, stream_wait back;
    # the dispatch's stream_wait in (deep_ep.cpp 228-271, 365-372); then its notify kernel, the counts row
    assert ops["deepep: top-k indices, dispatch layout, the dispatch's stream wait"] == 1 + (2 + 1 + 2) + 2
    assert ops["token counts all-gather"] == 1
    poll = next(i for i, s in enumerate(steps) if s.label == "deepep: the host polls the received counts")
    assert steps[poll].sync and steps[poll - 1].label == "token counts all-gather"
    # after the poll the dispatch kernel and the wait back; the combine: wait in, cached notify, kernel, wait back
    assert sorted(s.ops for s in steps if s.label == "all-to-all") == [1 + 2, 2 + 1 + 1 + 2]
    assert sum(s.sync for s in steps) == 4  # the poll and the multihot's three reads, as before


def test_etp_forward_replay_holds_the_gather_and_reduce_scatter():
    # the replay's GPU time is every forward row's, the ETP all-gathers and reduce-scatter included, once each
    rows, steps = _forward_steps("xt-qwen3-235b-tp2ep8pp8", "alltoall", ["parallel.expert_tensor=2"])
    forward = [k for k in rows if k.component in ("attn_forward", "mlp_forward", "dispatch_forward",
                                                   "combine_forward")]  # fmt: skip
    assert {"etp all-gather", "etp probs all-gather", "etp reduce-scatter"} <= {k.name for k in forward}
    assert sum(s.seconds for s in steps) == pytest.approx(sum(k.seconds for k in forward))
    labels = [s.label for s in steps]
    # the reduce-scatter runs before the combine's all-to-all (token_dispatcher.py 622-640)
    assert labels.index("etp reduce-scatter") == labels.index("all-to-all", labels.index("etp reduce-scatter")) - 1


# -- the all-to-all buffers at ETP > 1 ------------------------------------------------------------------------------
def _a2a(overrides):
    sizes = buffers.a2a_bytes(derive.setup(scenario.load(XT, overrides)))
    return {c.name: sizes[int(c)] for c in (Component.dispatch_forward, Component.combine_forward,
                                            Component.dispatch_backward, Component.combine_backward)}  # fmt: skip


def test_a2a_buffers_grow_with_the_gathered_rows():
    r = 4096 / 2 * 8 * 4096  # row elements a rank receives: 4,096 tokens / TP 2 x top-8 x hidden 4096
    assert _a2a([]) == {c: 2 * r * 2 for c in ("dispatch_forward", "combine_forward", "dispatch_backward",
                                                "combine_backward")}  # ETP 1: send + receive, bf16
    two = _a2a(["parallel.expert_tensor=2"])
    assert two["dispatch_forward"] == (2 + 2) * r * 2  # send, receive, the 2 r gathered
    # the experts' 2 r bf16 output, its fp32 copy (2 r x 4 B) and the reduce-scatter's fp32 r
    assert two["combine_forward"] == 2 * r * 2 + 2 * r * 4 + r * 4 == 16 * r
    assert two["dispatch_backward"] == 2 * r * 2 + r * 2  # the gathered gradient and its reduce-scattered r
    assert two["combine_backward"] == 2 * r * 4 + 2 * r * 2  # the fp32 gradient all-gathered, cast to bf16
    deepep = _a2a(["parallel.expert_tensor=2", "parallel.expert=4", 'model.moe_dispatcher="deepep"'])
    # s21r: rows, not (token, expert) copies: a rank's 2,048 tokens, and 2,048 x ETP 2 x the EP ranks a token's 8 of
    # 128 experts reach, 4 (1 - C(96, 8) / C(128, 8)), received (or the other way round)
    reached = 4 * (1 - math.prod(range(89, 97)) / math.prod(range(121, 129)))
    assert list(deepep.values()) == [pytest.approx((2048 + 2048 * 2 * reached) * 4096 * 2, rel=1e-12)] * 4


def test_gpt_oss_fc2_bias_over_each_etp_ranks_gathered_rows():
    # TEGroupedLinear keeps fc2's whole hidden-size bias on each ETP rank and _apply_bias adds t + b x p to that
    # rank's partial sums (NVIDIA/Megatron-LM @ d98e8a6 experts.py 345-379, 1039): 2,048 gathered rows x 256,
    # 6 passes of 2 B (GPT_OSS_FC2_BIAS), 2 kernels for each of the 4 local experts and the cat
    tb = kernels.Table(H800, kernels.Layout(seq=1024, micro_batch=1, tensor=2, expert=2, expert_tensor=2),
                       replace(_small_cfg(), expert_bias=True))  # fmt: skip
    kernels.moe_mlp_block(tb, recompute=False)
    bias = next(k for k in tb.rows if k.name == "experts fc2 bias x probs + add, cat")
    assert bias.bytes == 2_048 * 256 * 6 * 2 == 6_291_456 and "(9 kernels)" in bias.shape
