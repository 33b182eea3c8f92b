"""Every per_rank[].memory term worked by hand on a small model (docs/model.md, "Memory per rank").

The model: Llama-type, h 256, 4 heads of 64 (4 KV heads), SwiGLU 512, 4 layers, vocab 1000,
128 tokens; two stages of two layers (embedding on stage 0, final norm + head on stage 1).
  layer parameters: q, k, v, o 4 x 256^2 = 262,144 + SwiGLU 3 x 256 x 512 = 393,216 + two
  RMSNorms 512 = 655,872, of which linear weights 655,360;
  embedding 1000 x 256 = 256,000; head 256,000 + final norm 256 = 256,256.
  activations per layer (bf16, flash attention): norm1, qkv, norm2 and mlp inputs 4 x 2 x 128 x
  256 = 262,144; q, k 2 x 128 x 8 x 64 = 131,072; v 65,536; log-sum-exp 4 x 128 x 4 = 2,048;
  o_proj input 65,536; SwiGLU input 2 x 128 x 1024 = 262,144; down input 131,072: 919,552.
  stage 0: 2 layers = 1,839,104; stage 1: + final norm in/out 131,072 + fp32 logits 4 x 128 x
  1000 = 512,000: 2,482,176.  A P2P boundary tensor: 2 x 128 x 256 = 65,536 bytes.
"""

import pytest

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation
from dualpipe_sim.model import memory
from helpers import TINY_LLAMA_MODEL

LAYER, LINEAR, EMB, HEAD = 655_872, 655_360, 256_000, 256_256
ACT0, ACT1, BOUNDARY = 1_839_104, 2_482_176, 65_536
MIB = 2**20


def tiny(tmp_path, extra: str = "", microbatches: int = 2):
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
[pipeline]
schedule = "1f1b"
stages = 2
microbatches = {microbatches}
[costs]
forward = 1.0
backward = 2.0
[comm]
p2p = 0.5
p2p_mode = "async"  # the times worked below (the default for 1F1B with a [model] is "blocking")
{TINY_LLAMA_MODEL}{extra}
""")
    return path


def memories(path, sets=()):
    return [r.memory for r in simulation.run(scenario.load(path, list(sets))).metrics.per_rank]


def test_ddp_every_term_by_hand(tmp_path):
    """1F1B, 2 micro-batches, F 1, B 2, P2P 0.5 ms.  Rank 0: F0 [0,1], F1 [1,2], sends [1,1.5]
    and [2,2.5], the gradients arrive [4.5,5] and [7.5,8] and are used at 5 and 8: never two
    boundary buffers at once, and the sends run while both activations are held: dynamic peak
    2 x 1,839,104 + 65,536.  Rank 1: F0 [1.5,2.5], B0 [2.5,4.5], F1 [4.5,5.5]; micro-batch 1's
    activation lands at 2.5 and waits until 4.5 beside micro-batch 0's activation: 2,482,176 +
    65,536.  Runtime: CUDA context 0.5 GB + one NCCL communicator of 2 ranks (the pipeline's,
    544 MiB) + 32 MiB of workspace."""
    m0, m1 = memories(tiny(tmp_path))
    stage0, stage1 = EMB + 2 * LAYER, HEAD + 2 * LAYER
    assert (m0.parameters, m0.gradients, m0.optimizer) == (2 * stage0, 4 * stage0, 12 * stage0)
    assert (m1.parameters, m1.gradients, m1.optimizer) == (2 * stage1, 4 * stage1, 12 * stage1)
    assert m0.fp8_weights == m0.sharding_buffers == m0.a2a_buffers == 0
    assert (m0.activations_peak, m1.activations_peak) == (2 * ACT0, ACT1)
    assert m0.p2p_buffers == m1.p2p_buffers == BOUNDARY
    assert m0.dynamic_peak == 2 * ACT0 + BOUNDARY
    assert m1.dynamic_peak == ACT1 + BOUNDARY
    runtime = 0.5e9 + 544 * MIB + 32 * MIB
    assert m0.runtime == m1.runtime == runtime
    assert m0.total == 18 * stage0 + 2 * ACT0 + BOUNDARY + runtime
    assert m1.total == 18 * stage1 + ACT1 + BOUNDARY + runtime


def test_zero_2_and_3_sharding_buffers(tmp_path):
    """DP 2.  ZeRO 2: gradients halve, and the largest FSDP unit's whole fp32 gradient is held for
    two units (the one computing, the one being reduce-scattered): 2 x 4 x 655,872.  ZeRO 3:
    parameters halve too, and the two units' gathered bf16 parameters join: 2 x (4 + 2) x 655,872.
    A 4th NCCL communicator, data-parallel of 2 ranks: 544 MiB more."""
    extra = "[parallel]\ndata = 2\nzero = {}"
    stage0 = EMB + 2 * LAYER
    z2, _ = memories(tiny(tmp_path, extra.format(2)))
    assert (z2.parameters, z2.gradients, z2.optimizer) == (2 * stage0, 4 * stage0 / 2, 12 * stage0 / 2)
    assert z2.sharding_buffers == 2 * 4 * LAYER
    assert z2.runtime == 0.5e9 + 2 * 544 * MIB + 32 * MIB
    z3, _ = memories(tiny(tmp_path, extra.format(3)))
    assert (z3.parameters, z3.gradients, z3.optimizer) == (2 * stage0 / 2, 4 * stage0 / 2, 12 * stage0 / 2)
    assert z3.sharding_buffers == 2 * (4 + 2) * LAYER
    assert z3.total == pytest.approx(18 * stage0 / 2 + z3.sharding_buffers + z3.dynamic_peak + z3.runtime)
    alone, _ = memories(tiny(tmp_path, "[parallel]\nzero = 3"))  # one data-parallel rank: nothing to gather
    assert alone.sharding_buffers == 0 and alone.parameters == 2 * stage0
    z1, _ = memories(tiny(tmp_path, extra.format(1)))
    assert z1.sharding_buffers == 0 and z1.gradients == 4 * stage0  # the distributed optimizer's buffer is whole


def test_fp8_weight_copies(tmp_path):
    """FP8 linears: a copy and its transpose, 2 bytes per linear weight element.  Cached (default,
    Transformer Engine): stage 0's two layers, 2 x 2 x 655,360; cast per use: one layer's, 2 x 655,360.
    Under ZeRO 3 only the gathered units have copies: 2 units x 2 x 655,360 more in the buffers."""
    m0, _ = memories(tiny(tmp_path, "fp8 = true"))
    assert m0.fp8_weights == 2 * 2 * LINEAR
    m0, _ = memories(tiny(tmp_path, "fp8 = true"), ["memory.fp8_weight_cache=false"])
    assert m0.fp8_weights == 2 * LINEAR
    m0, _ = memories(tiny(tmp_path, "fp8 = true\n[parallel]\ndata = 2\nzero = 3"))
    assert m0.fp8_weights == 0 and m0.sharding_buffers == 2 * ((4 + 2) * LAYER + 2 * LINEAR)



def test_fp8_parameters_are_the_fp8_copy(tmp_path):
    """model.fp8_params (Megatron-core's --fp8-param-gather: Transformer Engine Float8Tensor weights):
    each FP8 linear weight is held at 1 byte instead of the 2-byte parameter plus its 1-byte FP8
    copy, and only the transpose (1 byte) is kept beside it.  Stage 0 (embedding + 2 layers):
    parameters 2 x (256,000 + 2 x 655,872) - 1 x 2 x 655,360; copies 1 x 2 x 655,360; the 16-bit
    weights' 2 bytes per FP8 element are what it saves.  ZeRO 3 over 2 data ranks: the shard holds
    half of that, and each of the 2 gathered units is (4 + 2) x 655,872 - 1 x 655,360 of gradients
    and parameters plus its 1-byte transposes 655,360: 2 x 6 x 655,872."""
    base, _ = memories(tiny(tmp_path, "fp8 = true"))
    m0, _ = memories(tiny(tmp_path, "fp8 = true\nfp8_params = true"))
    assert m0.parameters == 2 * (EMB + 2 * LAYER) - 2 * LINEAR
    assert m0.fp8_weights == 2 * LINEAR
    assert base.parameters + base.fp8_weights - (m0.parameters + m0.fp8_weights) == 2 * 2 * LINEAR
    z3, _ = memories(tiny(tmp_path, "fp8 = true\nfp8_params = true\n[parallel]\ndata = 2\nzero = 3"))
    assert z3.parameters == (2 * (EMB + 2 * LAYER) - 2 * LINEAR) / 2
    assert z3.fp8_weights == 0 and z3.sharding_buffers == 2 * 6 * LAYER


def test_fp8_parameters_keep_every_transpose_without_the_cache(tmp_path):
    """FP8 parameters with memory.fp8_weight_cache = false: Transformer Engine (release_v2.8) hands a Float8Tensor
    weight back from get_weight_workspace before its cache, after update_usage(columnwise_usage=True) stored the
    transpose on the parameter, where it stays all step: stage 0 holds both layers' transposes, 1 byte x 2 x 655,360
    = 1,310,720 bytes, as with the cache (16-bit weights cast per use hold one layer's copy + transpose, 2 x 655,360,
    the same number by coincidence of 2 layers and 2 bytes: the 3-layer stage below tells them apart).  Without
    transposes (model.fp8_transpose = "none", Blackwell) nothing."""
    fp8 = "fp8 = true\nfp8_params = true"
    m0, m1 = memories(tiny(tmp_path, fp8), ["memory.fp8_weight_cache=false"])
    assert (m0.fp8_weights, m1.fp8_weights) == (1 * 2 * LINEAR, 1 * 2 * LINEAR)
    # layers 3 + 1: stage 0's three layers' transposes, 3 x 655,360 = 1,966,080 (one layer's would be 655,360);
    # 16-bit weights cast per use: the largest layer's copy and transpose, 2 x 655,360 = 1,310,720
    m0, _ = memories(tiny(tmp_path, fp8), ["memory.fp8_weight_cache=false", "parallel.layout=[3, 1]"])
    assert m0.fp8_weights == 3 * LINEAR == 1_966_080
    m0, _ = memories(tiny(tmp_path, "fp8 = true"), ["memory.fp8_weight_cache=false", "parallel.layout=[3, 1]"])
    assert m0.fp8_weights == 2 * LINEAR == 1_310_720
    m0, _ = memories(tiny(tmp_path, fp8), ["memory.fp8_weight_cache=false", "model.fp8_transpose=none"])
    assert m0.fp8_weights == 0

def test_runtime_allowance_and_its_override(tmp_path):
    assert memory.runtime_allowance([1, 1]) == 0.5e9 + 32 * MIB
    assert memory.runtime_allowance([8, 16, 2], hopper=False) == 0.5e9 + (688 + 688 + 544) * MIB + 4 * MIB
    m0, _ = memories(tiny(tmp_path), ["memory.runtime=0"])
    assert m0.runtime == 0 and m0.total == 18 * (EMB + 2 * LAYER) + m0.dynamic_peak


def test_without_transfer_time_the_trace_has_no_buffers(tmp_path):
    """comm.p2p = 0: the engines record no transfer, so no P2P buffer is counted, not even rank 1's
    micro-batch 1 waiting from 2 to 4 (a limitation docs/model.md names)."""
    m0, m1 = memories(tiny(tmp_path), ["comm.p2p=0"])
    assert m0.p2p_buffers == m1.p2p_buffers == 0
    assert (m0.dynamic_peak, m1.dynamic_peak) == (2 * ACT0, ACT1)


def test_llama3_405b_1f1b_fits_80_gb_with_every_term():
    """scenarios/llama3-405b-1f1b.toml, rank 1 (8 layers; TP 8, DP 64, ZeRO 2), by hand.
    A layer: q, o 2 x 16384^2 + k, v 2 x 16384 x 1024 + SwiGLU 3 x 16384 x 53,248 + norms 32,768
    = 3,187,703,808 parameters; per rank (/ 8) 398,462,976, and the two RMSNorms (2h = 32,768) whole on every tensor
    rank (Megatron-core @ 1e05700 transformer_layer.py 309-314, 356-361): 7 x 32,768 / 8 = 28,672 more, 398,491,648.
    Activations per layer at 8,192 tokens
    (bf16, flash attention), / 8: norm1/qkv/norm2/mlp inputs 4 x 268,435,456, q and k 2 x 8192 x 136
    x 128, v 2 x 8192 x 8 x 128, log-sum-exp 4 x 8192 x 128, o_proj input 2 x 8192 x 16384, SwiGLU
    input 2 x 8192 x 106,496, down input 2 x 8192 x 53,248: 4,265,607,168 / 8 = 533,200,896.  1F1B
    rank 1 of 16 holds 15 micro-batches.  Runtime: NCCL for TP 8, PP 16, DP 64 (688 MiB each)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scenarios" / "llama3-405b-1f1b.toml"
    m = simulation.run(scenario.load(path)).metrics
    mem = m.per_rank[1].memory
    layer_tp8 = 3_187_703_808 + 7 * 32_768  # the norms counted on each of the 8 tensor ranks
    per_rank = 8 * layer_tp8 / 8
    assert per_rank / 8 == 398_491_648
    assert (mem.parameters, mem.gradients, mem.optimizer) == (2 * per_rank, 4 * per_rank / 64, 12 * per_rank / 64)
    assert mem.sharding_buffers == 2 * 4 * layer_tp8 / 8  # two layers' fp32 gradients, whole
    assert mem.activations_peak == 15 * 8 * 533_200_896
    assert mem.runtime == 0.5e9 + 3 * 688 * MIB + 32 * MIB
    static = mem.parameters + mem.gradients + mem.optimizer + mem.sharding_buffers + mem.runtime
    assert mem.total == pytest.approx(static + mem.dynamic_peak)
    assert mem.activations_peak <= mem.dynamic_peak <= mem.activations_peak + mem.p2p_buffers
    assert m.device_memory == 81559 * MIB and max(r.memory.total for r in m.per_rank) < 81559 * MIB  # H100 reports 81559 MiB


def test_run_help_names_the_memory_keys(capsys):
    from dualpipe_sim.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "memory.runtime=0" in out and "memory.fp8_weight_cache=false" in out and "parallel.zero=3 (FSDP)" in out


def test_bad_memory_keys_are_refused_by_name(tmp_path, capsys):
    from dualpipe_sim.cli import main

    for key, words in (("memory.runtime=-1", "memory.runtime: input should be greater than or equal to 0"),
                       ("memory.fp8_weight_cache=1", "memory.fp8_weight_cache: must be true or false")):  # fmt: skip
        assert main(["run", str(tiny(tmp_path)), "--set", key, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_activations_without_sequence_parallelism_by_hand():
    """The small model's layer on 2 tensor-parallel ranks.  With sequence parallelism everything
    halves: 919,552 / 2.  Without, the norm inputs and the norm outputs feeding the linears (4 x
    65,536) are whole on each rank and the rest halves: 262,144 + 657,408 / 2 = 590,848.  The head:
    final-norm input and output whole (131,072), the fp32 logits split over the vocabulary (512,000 / 2)."""
    from dualpipe_sim.model import activations, config

    cfg = config.from_hf({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
                          "num_attention_heads": 4, "intermediate_size": 512}, "model.")  # fmt: skip
    assert activations.layer_total(cfg, 0, 128, 1, tp=2) == 919_552 / 2
    assert activations.layer_total(cfg, 0, 128, 1, tp=2, sp=False) == 262_144 + 657_408 / 2
    assert activations.head(cfg, 128, 1, tp=2, sp=False) == 131_072 + 512_000 / 2
    assert activations.layer_total(cfg, 0, 128, 1, "full", tp=2, sp=False) == 65_536  # the checkpoint, whole
