"""The model's MoE layer and its parts beside published H100 timings of Megatron-core / Transformer Engine / DeepEP.

    python benchmarks/moe_layer_sources.py

Three sources, each timing an MoE layer or one of its kernels in isolation (no training run's tokens/s); their
figures are in tests/data/kernels/ with what each times:

1. A Megatron-core MoELayer on 8 H100 (``marin3666_h100_moe_layer.csv``): TP 1, EP 8, 4,096-16,384 tokens a rank,
   forward + backward, three dispatchers, Qwen3-shaped sweeps.  The model's figure is the same layer's rows of the
   kernel table (``derive.layer_kernels``: router to combine, forward and both backward passes, the forward's host
   replay; without the pre-MLP norm and the residual add, which MoELayer does not run), H100 preset, no fp32
   ``main_grad`` (the harness has no DDP wrapper: ``model.grads_dtype = "bf16"``).
2. Transformer Engine's grouped GEMM (``te2045_h100_grouped_gemm.csv``): one GEMM per expert on TE's 4 streams,
   TE 2.2 and 2.7, H100.  The model's figure is ``kernels.Table.experts`` of the same shape.
3. DeepEP's intranode dispatch and combine (``tilescale40_h100_deepep_intranode.csv``): 8 H100, 4,096 tokens of
   7,168, top-8 of 32 experts, BF16.  The model's figure is the layer table's all-to-all rows for that shape
   (inside a node the model takes Megatron's all-to-all for DeepEP too: every (token, expert) copy over NVLink).

Prints each published figure beside the model's; docs/searches.md ("MoE parts against published H100 timings") reads
them and tests/test_moe_layer_sources.py holds them.  Nothing here is fitted.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualpipe_sim.inputs.scenario import sections_only  # noqa: E402
from dualpipe_sim.model import derive, kernels  # noqa: E402
from dualpipe_sim.model.rates import H100_SHORT_RUNS, PRESETS  # noqa: E402

# The sources here time a few iterations: the model with XLA's short-run BF16 GEMM fit, like for like (the H100
# preset's BF16 peak is a sustained one; docs/model.md, the BF16 row; the tests do the same)
PRESETS["H100"] = H100_SHORT_RUNS

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "kernels"
EP = 8  # every source runs one node of 8 GPUs, one expert-parallel group
SEQ = 4096  # the layer harness's sequence; more tokens a rank are more sequences (micro_batch_size)
FORWARD = {"mlp_forward", "dispatch_forward", "combine_forward"}
BACKWARD = {"mlp_backward_input", "mlp_backward_weight", "dispatch_backward", "combine_backward"}
NOT_IN_MOE_LAYER = {"pre-mlp norm", "pre-mlp norm backward", "residual add"}  # TransformerLayer's, not MoELayer's


def rows(name: str) -> list[dict]:
    with open(DATA / name, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def moe_setup(hidden: int, ffn: int, experts: int, topk: int, tokens: int, dispatcher: str) -> derive.Setup:
    """One Qwen3-style MoE layer on 8 H100s, TP 1, EP 8: the harnesses' layout."""
    return derive.setup(sections_only({
        "pipeline": {"schedule": "1f1b", "stages": 1, "microbatches": 1},
        "model": {"model_type": "qwen3_moe", "hidden_size": hidden, "num_hidden_layers": 1,
                  "num_attention_heads": max(1, hidden // 128), "num_key_value_heads": 4, "head_dim": 128,
                  "intermediate_size": 4 * hidden, "moe_intermediate_size": ffn, "num_experts": experts,
                  "num_experts_per_tok": topk, "vocab_size": 151936, "tie_word_embeddings": False,
                  "seq_length": SEQ, "micro_batch_size": tokens // SEQ, "moe_aux_loss": True,
                  "moe_dispatcher": dispatcher, "grads_dtype": "bf16"},
        "parallel": {"tensor": 1, "data": EP, "expert": EP},
        "hardware": {"preset": "H100"},
    }))  # fmt: skip


def moe_layer_ms(hidden: int, ffn: int, experts: int, topk: int, tokens: int, dispatcher: str) -> dict[str, float]:
    """The model's MoELayer (router to combine): forward, backward (input and weight gradients), ms."""
    out = {"forward": 0.0, "backward": 0.0}
    for k in derive.layer_kernels(moe_setup(hidden, ffn, experts, topk, tokens, dispatcher), 0):
        if k.name in NOT_IN_MOE_LAYER:
            continue
        if k.component in FORWARD:
            out["forward"] += k.ms
        elif k.component in BACKWARD:
            out["backward"] += k.ms
    return out


def grouped_gemm_us(groups: int, m: int, n: int, k: int) -> float:
    """The model's Transformer Engine grouped GEMM (one GEMM per group on its streams), BF16, H100, us."""
    lay = kernels.Layout(seq=m, micro_batch=1)  # TE's 4 streams (kernels.TE_COMPUTE_STREAMS), BF16
    return kernels.Table(PRESETS["H100"], lay, None).experts("grouped GEMM", "mlp_forward", m, n, k, groups) * 1e6


def deepep_intranode_ms() -> dict[str, float]:
    """The model's dispatch and combine (forward) for the TileScale table's shape: 4,096 tokens of 7,168, top-8 of 32
    experts over 8 H100s, BF16, DeepEP as the dispatcher, ms."""
    a2a = [k for k in derive.layer_kernels(moe_setup(7168, 2048, 32, 8, 4096, "deepep"), 0) if k.name == "all-to-all"]
    return {k.component: k.ms for k in a2a}


def main() -> None:
    print("1. Megatron-core MoELayer, 8 H100, TP 1, EP 8, forward + backward ms (published: marin-community/marin#3666)")
    print(f"   {'case':24s} {'dispatcher':10s} {'published':>9s} {'model':>7s} {'model/pub':>9s}   model fwd / bwd")
    for row in rows("marin3666_h100_moe_layer.csv"):
        shape = (int(row["hidden"]), int(row["moe_ffn"]), int(row["experts"]), int(row["topk"]), int(row["tokens"]))
        for dispatcher in ("deepep", "alltoall"):
            model = moe_layer_ms(*shape, dispatcher)
            total, published = sum(model.values()), float(row[f"{dispatcher}_ms"])
            print(f"   {row['case']:24s} {dispatcher:10s} {published:9.2f} {total:7.2f} {total / published:9.2f}   "
                  f"{model['forward']:.2f} / {model['backward']:.2f}")  # fmt: skip
    print()
    print("2. Transformer Engine grouped GEMM (multi-stream cuBLAS), H100, BF16 (published: NVIDIA/TransformerEngine#2045)")
    print(f"   {'TE':4s} {'g x m x n x k':22s} {'TFLOP/s pub.':>12s} {'model':>7s} {'model/pub':>9s} "
          f"{'pub. us':>8s} {'model us':>8s} {'extra us per GEMM':>17s}")  # fmt: skip
    for row in rows("te2045_h100_grouped_gemm.csv"):
        g, m, n, k = (int(row[x]) for x in ("groups", "m", "n", "k"))
        flops = 2.0 * g * m * n * k
        published_us = flops / float(row["multistream_tflops"]) / 1e6
        model_us = grouped_gemm_us(g, m, n, k)
        print(f"   {row['te']:4s} {f'{g} x {m} x {n} x {k}':22s} {float(row['multistream_tflops']):12.1f} "
              f"{flops / model_us / 1e6:7.1f} {published_us / model_us:9.2f} {published_us:8.1f} {model_us:8.1f} "
              f"{(published_us - model_us) / g:17.2f}")  # fmt: skip
    print()
    print("3. DeepEP intranode normal kernels, 8 H100, 4,096 x 7,168 BF16, top-8 of 32 (published: tile-ai/tilescale#40)")
    model = deepep_intranode_ms()
    for row in rows("tilescale40_h100_deepep_intranode.csv"):
        if row["impl"] != "DeepEP":
            continue
        for what, comp in (("dispatch", "dispatch_forward"), ("combine", "combine_forward")):
            published = float(row[f"{what}_ms"])
            print(f"   {what:8s} published {published:7.4f} ms ({float(row[f'{what}_gbps']):.2f} GB/s received)  "
                  f"model {model[comp]:7.4f} ms  model/pub {model[comp] / published:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
