"""How much the pipeline's P2P kernels could slow the compute beside them (docs/validation.md, "Pipeline P2P kernels
beside compute"): an estimate, not part of the model.

    python docs/pp_p2p_estimate.py mlperf31-gpt3-512 mlperf50-llama405b-512 ...

Per scenario of scenarios/validation/, its busiest stage (forward + backward) derived as the model does, then again on
the rates while NCCL kernels hold ``CTAS`` SMs (KernelRates.held): with Megatron-core's overlap_p2p_comm a send and a
receive to two neighbours across nodes, 2 CTAs each, are in flight beside each pass.  The lower bound holds them for
one transfer (the model's P2P time) at the start of each pass, the upper bound for the whole pass.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.model import derive, kernels  # noqa: E402

CTAS = 4  # two P2P kernels (send to one neighbour, receive from the other), 2 channels per network peer each


def estimate(name: str) -> str:
    sc = scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml")
    d = sc.derived()
    slow = derive.derive(replace(d.setup, rates=d.setup.rates.held(CTAS)))
    i = max(range(len(d.stages)), key=lambda s: d.stages[s].forward + d.stages[s].backward)
    fwd, bwd = d.stages[i].forward, d.stages[i].backward
    held_fwd, held_bwd = slow.stages[i].forward, slow.stages[i].backward
    low = kernels.beside_transfer(fwd, held_fwd, d.p2p) + kernels.beside_transfer(bwd, held_bwd, d.p2p)
    return (f"| {name} | {fwd:.2f} + {bwd:.2f} | {d.p2p:.3f} | {low / (fwd + bwd) - 1:+.2%} "
            f"| {(held_fwd + held_bwd) / (fwd + bwd) - 1:+.2%} (forward {held_fwd / fwd - 1:+.1%}, "
            f"backward {held_bwd / bwd - 1:+.1%}) |")


if __name__ == "__main__":
    print("| run | busiest stage: forward + backward (ms) | one P2P (ms) | held for the transfer | held all pass |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for arg in sys.argv[1:]:
        print(estimate(arg))
