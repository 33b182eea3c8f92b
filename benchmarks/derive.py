"""What deriving costs from a model config adds to a run: the kernel-level model at 128 stages.

    python benchmarks/derive.py [--repeat N]

128-stage scenarios on H100 (TP 8, DP 8, interleaved-free 1F1B, 256 micro-batches' worth of
schedule not simulated): a dense Llama-style model of 256 layers, an MoE model of 256 layers
(64 experts, top-8, EP 8: the per-stage [chunk] path), and Llama 4, GLM-4.5 and Nemotron models
stretched to 256 layers (their layer kinds: MoE / dense x NoPE / chunked, an MTP module, squared ReLU).  For each, the CPU time of
``resolve(scenario)`` (the whole derivation a run does, once: per-layer kernel tables, extra
modules, per-stage chunks, the derived grad sync and optimizer), best of --repeat, is printed beside
the same call with hand-typed costs, and how many times model/derive.py's derive() ran in it.
Issue 21's target: under 50 ms added.  Last, a whole read-and-run of
scenarios/deepseek-v3-predicted.toml (``ds.run(path)``), the first in this process, with its
derive() count (issue 23: once per run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dualpipe_sim as ds  # noqa: E402
from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.inputs.resolve import resolve  # noqa: E402
from dualpipe_sim.model import derive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DENSE = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 256, "vocab_size": 128256,
         "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672}  # fmt: skip
# 8 key-value heads (4 until s16i): TP 8 must divide them (Megatron-core splits the query groups)
MOE = {"model_type": "qwen3_moe", "hidden_size": 4096, "num_hidden_layers": 256, "vocab_size": 151936,
       "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
       "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 1536}  # fmt: skip

# The families that derive layer kinds beyond dense / MoE, at their published widths stretched to 256 layers
# (no published one has 128): Llama 4 Maverick's (MoE every 2nd layer, NoPE every 4th, attention chunked at 4,096
# tokens so its chunked kernels run: four layer kinds), GLM-4.5-Air's (first layer dense, an MTP module on the
# last stage) and Nemotron-4 340B's (squared-ReLU MLP, partial RoPE).
LLAMA4 = {"model_type": "llama4_text", "hidden_size": 5120, "num_hidden_layers": 256, "vocab_size": 202048,
          "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192,
          "intermediate_size_mlp": 16384, "num_local_experts": 128, "num_experts_per_tok": 1,
          "interleave_moe_layer_step": 2, "attention_chunk_size": 4096}  # fmt: skip
GLM = {"model_type": "glm4_moe", "hidden_size": 4096, "num_hidden_layers": 256, "vocab_size": 151552,
       "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 10944,
       "attention_bias": True, "n_routed_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 1408,
       "num_nextn_predict_layers": 1}  # fmt: skip
NEMOTRON = {"model_type": "nemotron", "hidden_size": 18432, "num_hidden_layers": 256, "vocab_size": 256000,
            "num_attention_heads": 96, "num_key_value_heads": 8, "intermediate_size": 73728,
            "tie_word_embeddings": False}  # fmt: skip


# Only the inputs are resolved here, nothing is simulated or charted: the run-size guard
# (limits.max_memory, sized for simulating and charting 98,304 ops) does not apply.
LIMITS = {"max_memory": 1e12}


def raw(model: dict, expert: int) -> dict:
    return {"pipeline": {"schedule": "1f1b", "stages": 128, "microbatches": 256},
            "model": {**model, "seq_length": 8192}, "parallel": {"tensor": 8, "data": 8, "expert": expert},
            "hardware": {"preset": "H100"}, "limits": LIMITS,
            "step": {"grad_sync": "derived", "optimizer": "derived", "overlap_grad_sync": True}}  # fmt: skip


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out = min(out, time.process_time() - t)
    return out


def counting_derivations() -> list[int]:
    """Count model/derive.py's derive() calls from now on: a one-item list."""
    count = [0]
    real = derive.derive

    def counted(setup):
        count[0] += 1
        return real(setup)

    derive.derive = counted
    return count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    count = counting_derivations()
    first = ROOT / "scenarios" / "deepseek-v3-predicted.toml"
    t = time.process_time()
    ds.run(first)  # first: before the model's caches are warm, as a command-line run is
    run_ms, run_count = (time.process_time() - t) * 1e3, count[0]
    typed = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 128, "microbatches": 256},
                                "costs": {"forward": 1.0, "backward": 2.0}, "step": {"grad_sync": 1.0},
                                "limits": LIMITS})  # fmt: skip
    base = best(lambda: resolve(typed), args.repeat)
    print(f"hand-typed costs, 128 stages: {base * 1e3:.2f} ms")
    cases = (("dense 256 layers", DENSE, 1), ("MoE 256 layers, EP 8", MOE, 8), ("llama4 256 layers, EP 8", LLAMA4, 8),
             ("glm4_moe 256 layers + MTP, EP 8", GLM, 8), ("nemotron 256 layers", NEMOTRON, 1))  # fmt: skip
    for name, model, expert in cases:
        sc = scenario.from_dict(raw(model, expert))
        count[0] = 0
        t = best(lambda: resolve(sc), args.repeat)
        print(f"{name}, 128 stages, kernel model: {t * 1e3:.1f} ms (adds {(t - base) * 1e3:.1f} ms; "
              f"derive() {count[0] // args.repeat} time(s) per resolve)")
    print(f"scenarios/deepseek-v3-predicted.toml, read and run: {run_ms:.0f} ms, derive() {run_count} time(s)")


if __name__ == "__main__":
    main()
