"""What deriving costs from a model config adds to a run: the kernel-level model at 128 stages.

    python benchmarks/derive.py [--repeat N]

Two 128-stage scenarios on H100 (TP 8, DP 8, interleaved-free 1F1B, 256 micro-batches' worth of
schedule not simulated): a dense Llama-style model of 256 layers and an MoE model of 256 layers
(64 experts, top-8, EP 8: the per-stage [chunk] path).  For each, the CPU time of
``scenario.cost_model()`` and ``scenario.step_costs()`` (the whole derivation a run does: per-layer
kernel tables, extra modules, per-stage chunks, the derived grad sync and optimizer), best of
--repeat, is printed beside the same calls with hand-typed costs.  Issue 21's target: under 50 ms
added.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualpipe_sim.inputs import scenario  # noqa: E402

DENSE = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 256, "vocab_size": 128256,
         "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672}  # fmt: skip
MOE = {"model_type": "qwen3_moe", "hidden_size": 4096, "num_hidden_layers": 256, "vocab_size": 151936,
       "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 12288,
       "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 1536}  # fmt: skip


def raw(model: dict, expert: int) -> dict:
    return {"pipeline": {"schedule": "1f1b", "stages": 128, "microbatches": 256},
            "model": {**model, "seq_length": 8192}, "parallel": {"tensor": 8, "data": 8, "expert": expert},
            "hardware": {"preset": "H100"},
            "step": {"grad_sync": "derived", "optimizer": "derived", "overlap_grad_sync": True}}  # fmt: skip


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out = min(out, time.process_time() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    typed = scenario.from_dict({"pipeline": {"schedule": "1f1b", "stages": 128, "microbatches": 256},
                                "costs": {"forward": 1.0, "backward": 2.0}, "step": {"grad_sync": 1.0}})  # fmt: skip
    base = best(lambda: (typed.cost_model(), typed.step_costs()), args.repeat)
    print(f"hand-typed costs, 128 stages: {base * 1e3:.2f} ms")
    for name, model, expert in (("dense 256 layers", DENSE, 1), ("MoE 256 layers, EP 8", MOE, 8)):
        sc = scenario.from_dict(raw(model, expert))
        t = best(lambda: (sc.cost_model(), sc.step_costs()), args.repeat)
        print(f"{name}, 128 stages, kernel model: {t * 1e3:.1f} ms (adds {(t - base) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
