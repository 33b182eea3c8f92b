"""Expert tensor parallelism (``parallel.expert_tensor``, Megatron-core's --expert-tensor-parallel-size; docs/model.md
"Expert tensor parallelism").  Every expected figure is worked by hand from Qwen3-235B-A22B's config (hidden 4096,
moe_intermediate_size 1536, 128 experts, top-8, sequence 4096) and the code read at NVIDIA/Megatron-LM @ 1e05700:

- the alltoall dispatcher all-gathers the rows a rank received over the ETP group after the all-to-all and
  reduce-scatters fc2's partial sums (in the probabilities' fp32) before the combine (token_dispatcher.py lines
  525-535, 622-632); the token counts go round the ETP x EP group (lines 403-408);
- TEGroupedLinear divides fc1's output and fc2's input by ETP (transformer_engine.py lines 934-938);
- the expert grid numbers ETP innermost, then EP (parallel_state.py lines 731-739), so an EP group spans ETP x EP
  consecutive ranks;
- the routed experts' parameters are split over EP x ETP ranks, their optimizer over the expert-data group
  tensor x data / (EP x ETP) (parallel_state.py lines 721-724)."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pytest

from helpers import cli_error, tiny_llama_toml
from dualpipe_sim.inputs import scenario
from dualpipe_sim.model import derive, kernels, placement
from dualpipe_sim.model.rates import PRESETS

ROOT = Path(__file__).resolve().parents[1]
XT = ROOT / "scenarios" / "validation" / "xt-qwen3-235b-tp2ep8pp8.toml"  # TP 2, EP 8, DP 16, alltoall, H800
H800 = PRESETS["H800"]
H, FE, E, K = 4096, 1536, 128, 8


def _cfg():
    return derive.setup(scenario.load(XT)).cfg


def _rows(**layout) -> list[kernels.Kernel]:
    tb = kernels.Table(H800, kernels.Layout(seq=4096, micro_batch=1, **layout), _cfg())
    kernels.moe_mlp_block(tb, recompute=False)
    return tb.rows


def _by_name(rows, name: str) -> dict[str, kernels.Kernel]:
    return {k.component: k for k in rows if k.name == name}


def test_config_is_the_one_worked_by_hand():
    cfg = _cfg()
    assert (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.experts_per_token) == (H, FE, E, K)


def test_expert_gemms_at_etp_2_against_etp_1():
    # TP 2: 4096 / 2 = 2,048 tokens a rank, x 8 copies = 16,384 rows received over EP 8 (16 local experts):
    # 1,024 rows an expert at ETP 1; ETP 2 gathers its partner's rows too: 2,048 rows an expert, on 1536 / 2 = 768
    # of each expert's FFN columns (fc1 2 x 768 = 1,536 wide, fc2 768 deep)
    one = {k.name: k for k in _rows(tensor=2, expert=8)}
    two = {k.name: k for k in _rows(tensor=2, expert=8, expert_tensor=2)}
    assert one["experts fc1 (grouped)"].shape.startswith("16 x 1024 x 3072 x 4096 bf16")
    assert two["experts fc1 (grouped)"].shape.startswith("16 x 2048 x 1536 x 4096 bf16")
    assert two["experts fc2 (grouped)"].shape.startswith("16 x 2048 x 4096 x 768 bf16")
    assert two["experts fc2 dgrad (grouped)"].shape.startswith("16 x 2048 x 768 x 4096 bf16")
    assert two["experts fc1 dgrad (grouped)"].shape.startswith("16 x 2048 x 4096 x 1536 bf16")
    assert two["experts fc1 wgrad (grouped)"].shape.startswith("16 x 4096 x 1536 x 2048 bf16")
    assert two["experts fc2 wgrad (grouped)"].shape.startswith("16 x 768 x 4096 x 2048 bf16")
    # twice the rows on half the columns: the same FLOPs a GPU
    for name in ("experts fc1 (grouped)", "experts fc2 (grouped)", "experts fc1 wgrad (grouped)"):
        assert two[name].flops == pytest.approx(one[name].flops)
    # the regroup by local expert moves the gathered rows: 2 x 32,768 x 4096 x 2 B
    assert two["sort by local expert"].bytes == 2 * 32_768 * H * 2 == 2 * one["sort by local expert"].bytes


def test_etp_gather_and_reduce_scatter_bytes():
    rows = _rows(tensor=2, expert=8, expert_tensor=2)
    gathered = 2_048 * K * 2  # 32,768 rows after the ETP 2 all-gather
    ag, rs = _by_name(rows, "etp all-gather"), _by_name(rows, "etp reduce-scatter")
    assert set(ag) == {"dispatch_forward", "combine_backward"}
    assert set(rs) == {"combine_forward", "dispatch_backward"}
    assert ag["dispatch_forward"].bytes == gathered * H * 2 == 268_435_456  # bf16 tokens
    assert rs["combine_forward"].bytes == gathered * H * 4 == 536_870_912  # reduced in the probs' fp32
    assert ag["combine_backward"].bytes == 536_870_912  # the reduce-scatter's mirror, fp32 gradients
    assert rs["dispatch_backward"].bytes == 268_435_456  # the gather's mirror, bf16 gradients
    assert _by_name(rows, "etp probs all-gather")["dispatch_forward"].bytes == gathered * 4
    # ETP 2 = 2 consecutive ranks: NVLink; a ring all-gather moves (2 - 1) / 2 of the tensor at the bus rate
    assert "over 2 (nvlink)" in ag["dispatch_forward"].shape
    assert ag["dispatch_forward"].seconds == pytest.approx(H800.latency + 268_435_456 / 2 / H800.nvlink_bus)
    # the fp32 casts around the reduce-scatter: 32,768 x 4096 values read 2 B, written 4 B; 16,384 back
    casts = {k.name: k.bytes for k in rows if k.name.startswith("etp reduce-scatter cast")}
    assert casts["etp reduce-scatter cast to fp32"] == gathered * H * 6
    assert casts["etp reduce-scatter cast back"] == 16_384 * H * 6
    # the token counts go round the ETP x EP = 16 ranks: 128 int64 from each
    counts = next(k for k in rows if k.name == "token counts all-gather")
    assert counts.bytes == E * 8 * 16 and "over 16 (nic)" in counts.shape  # 16 ranks, two H800 nodes


def test_nothing_of_it_at_etp_1():
    rows = _rows(tensor=2, expert=8)
    assert not [k for k in rows if k.name.startswith("etp ")]
    assert next(k for k in rows if k.name == "token counts all-gather").bytes == E * 8 * 8


def test_deepep_sends_each_row_to_the_experts_etp_ranks():
    # DeepEP over tp_ep (EP 4 x ETP 2 = 8 ranks, one node): each token once to every ETP rank of each EP rank its 8
    # experts fall on (is_token_in_rank), 7 / 8 of them away.  An EP rank holds 32 of the 128 experts, so it holds none
    # of a token's 8 with probability C(96, 8) / C(128, 8) = 0.092747: 4 x 0.907253 = 3.62901 EP ranks, 2 x 3.62901 x
    # 7/8 = 6.35077 rows a token, 2,048 x 6.35077 = 13,006.4 rows of 4096 x 2 B (16 per token, 28,672 rows, were each
    # (token, expert) pair sent); no gather, reduce-scatter or fp32 casts of its own
    rows = _rows(tensor=2, expert=4, expert_tensor=2, dispatcher="deepep")
    a2a = _by_name(rows, "all-to-all")
    none = comb(96, 8) / comb(128, 8)
    assert none == pytest.approx(0.092747, abs=1e-6)
    assert a2a["dispatch_forward"].bytes == pytest.approx(2_048 * 2 * 4 * (1 - none) * 7 / 8 * H * 2)
    assert a2a["dispatch_forward"].bytes == pytest.approx(13_006.4 * H * 2, rel=1e-5)
    assert not [k for k in rows if k.name.startswith("etp ")]


def test_ep_group_crosses_a_node_at_tp4_etp4_ep8():
    # ranks numbered ETP innermost: an EP group is 4 x 8 = 32 consecutive ranks, 2 of them on each 8-GPU node
    def ep(tensor, data, expert, etp):  # (EP ranks in one node, nodes), placement.group's answer (s17a2)
        where = placement.group("ep", placement.DEFAULT_ORDER, 8, tensor, 1, data, 1, expert, etp)
        return where.per_node, where.domains

    assert ep(4, 8, 8, 4) == (2, 4)
    assert ep(4, 2, 8, 1) == (8, 1)  # ETP 1: the node's 8 GPUs
    assert ep(2, 4, 4, 2) == (4, 1)  # 2 x 4 = 8 fits one node
    rows = _rows(tensor=4, expert=8, expert_tensor=4)
    a2a = _by_name(rows, "all-to-all")["dispatch_forward"]
    # NCCL's all-to-all over 4 nodes: 1,024 tokens x 8 copies, 3 / 4 of them bound for another node, 4096 x 2 B
    assert a2a.shape.endswith("(nic)")
    assert a2a.bytes == 1_024 * 8 * 3 / 4 * H * 2
    # the same layout at ETP 1 stays on NVLink: 7 / 8 of the copies leave the rank
    one = _by_name(_rows(tensor=4, expert=8), "all-to-all")["dispatch_forward"]
    assert one.shape.endswith("(nvlink)") and one.bytes == 1_024 * 8 * 7 / 8 * H * 2


def test_parameter_memory_per_gpu_at_etp_2():
    # stage 1 holds 12 MoE layers of 128 x 3 x 4096 x 1536 routed parameters (gated fc1 2 x 1536 wide, fc2 1536 deep)
    routed = 12 * E * 3 * H * FE
    one = derive.derive(derive.setup(scenario.load(XT))).stages[1].static
    sc = scenario.load(XT)
    two_setup = derive.setup(sc.model_copy(update={"parallel": sc.parallel.model_copy(update={"expert_tensor": 2})}))
    assert two_setup.sharding.routed_ranks == 16 and two_setup.sharding.expert_data == 2  # 2 x 16 / (8 x 2)
    two = derive.derive(two_setup).stages[1].static
    # bf16 parameters and fp32 gradients (ZeRO 1: whole) over EP x ETP = 16 ranks instead of 8
    assert one.parameters - two.parameters == pytest.approx(routed * (1 / 8 - 1 / 16) * 2)
    assert one.gradients - two.gradients == pytest.approx(routed * (1 / 8 - 1 / 16) * 4)
    # the distributed optimizer shards the experts' over expert-data: / (16 x 2) = / (8 x 4) either way
    assert one.optimizer == pytest.approx(two.optimizer)


@pytest.mark.parametrize("value, says", [
    ("0", "parallel.expert_tensor"),
    ("5", "parallel.expert_tensor: must divide the experts' FFN hidden size (moe_intermediate_size 1536)"),
    ("3", "parallel.expert_tensor: expert x expert_tensor (8 x 3) must divide tensor x data x context (32)"),
])  # fmt: skip
def test_bad_values_refused(tmp_path, value, says):
    line = cli_error(tmp_path, "run", str(XT), "--set", f"parallel.expert_tensor={value}")
    assert says in line


def test_refused_without_experts_and_on_the_efficiency_model(tmp_path, tmp_path_factory):
    dense = tiny_llama_toml(tmp_path_factory.mktemp("in"))  # outside tmp_path: nothing may be written there
    assert "the model has no experts, so it must be 1, got 2" in cli_error(
        tmp_path, "run", str(dense), "--set", "parallel.expert_tensor=2")
    line = cli_error(tmp_path, "run", str(XT), "--set", "parallel.expert_tensor=2", "--set", "hardware.efficiency=0.4")
    assert "parallel.expert_tensor: more than 1 is costed by the kernel model only" in line


def test_explain_names_the_default_and_the_new_rows(capsys):
    from dualpipe_sim.cli import main

    assert main(["model", str(XT), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "parallel.expert_tensor's default; Megatron-core's own default is ETP = TP" in out
    assert main(["model", str(XT), "--explain", "--set", "parallel.expert_tensor=2"]) == 0
    out = capsys.readouterr().out
    assert "ETP = TP" not in out
    for row in ("etp all-gather", "etp reduce-scatter", "etp probs all-gather", "x expert_tensor (2)"):
        assert row in out


def test_fc1_keeps_the_gathered_rows():
    # the routed experts' fc1 input a rank keeps: 4096 tokens / TP 2 x 8 copies x 4096 x 2 B = 134,217,728 B at
    # ETP 1; ETP 2 keeps its partner's rows too, twice that; the SwiGLU's input (2 x 2048 rows x 2 x 768) is unchanged
    from dualpipe_sim.model import activations

    cfg = _cfg()
    one = activations.layer(cfg, 0, 4096, 1, "none", 2.0, 2)
    two = activations.layer(cfg, 0, 4096, 1, "none", 2.0, 2, etp=2)
    assert one["routed expert inputs (k copies)"] == 4096 / 2 * 8 * H * 2 == 134_217_728
    assert two["routed expert inputs (k copies)"] == 2 * 134_217_728
    assert two["routed SwiGLU inputs"] == one["routed SwiGLU inputs"] == 4096 / 2 * 8 * 2 * FE * 2
