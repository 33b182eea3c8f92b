"""How much the pipeline's P2P kernels could slow the compute beside them (docs/validation.md, "Pipeline P2P kernels
beside compute"): an estimate, not part of the model.

    python docs/pp_p2p_estimate.py mlperf31-gpt3-512 mlperf50-llama405b-512 ...

Per scenario of scenarios/validation/, its busiest stage (forward + backward) derived as the model does, then again on
the rates while NCCL kernels hold ``CTAS`` SMs (KernelRates.held): with Megatron-core's overlap_p2p_comm a send and a
receive to two neighbours across nodes, 2 CTAs each, are in flight beside each pass.  The lower bound holds them for
one transfer (the model's P2P time) at the start of each pass, the upper bound for the whole pass.

The last two columns time the kernels on the model's own replay instead: each P2P kernel holds ``CTAS_PER_KERNEL``
SMs while it is resident.  A receive is posted when the rank's previous action of the same direction ends
(Megatron-core's overlap_p2p_comm: the receive for forward k+1 after forward k, for backward k+1 after backward k, for
the first backward with the last warm-up forward's send) and spins until its data has arrived (the replay's
arrival); a send is resident for its transfer, or (last column) until the matching receive is posted if that is
later (NCCL's sender waits for a posted receive once the message outgrows its buffers).  Each compute action
loses, for the time t that n kernels are resident beside it, t x (1 - alone / held(2n)) (the work done is what
counts, as kernels.beside_transfer): first order, on the replay's times without the slowdown.  Shown: the rank
whose compute comes out largest, its compute over the busiest rank's compute alone, and the share of its compute time
with a kernel resident.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpipe_sim import simulation  # noqa: E402
from dualpipe_sim.engine.trace import P2P  # noqa: E402
from dualpipe_sim.inputs import scenario  # noqa: E402
from dualpipe_sim.model import derive, kernels  # noqa: E402

CTAS = 4  # two P2P kernels (send to one neighbour, receive from the other), 2 channels per network peer each
CTAS_PER_KERNEL = 2  # the pp communicators' max_ctas 2 (MEGATRON_CORE_P2P_MAX_CTAS / the per-communicator file)
MAX_KERNELS = 4  # a rank's receive and send in each direction


def _bounds(d, slow) -> str:
    i = max(range(len(d.stages)), key=lambda s: d.stages[s].forward + d.stages[s].backward)
    fwd, bwd = d.stages[i].forward, d.stages[i].backward
    held_fwd, held_bwd = slow.stages[i].forward, slow.stages[i].backward
    low = kernels.beside_transfer(fwd, held_fwd, d.p2p) + kernels.beside_transfer(bwd, held_bwd, d.p2p)
    return (f"{fwd:.2f} + {bwd:.2f} | {d.p2p:.3f} | {low / (fwd + bwd) - 1:+.2%} "
            f"| {(held_fwd + held_bwd) / (fwd + bwd) - 1:+.2%} (forward {held_fwd / fwd - 1:+.1%}, "
            f"backward {held_bwd / bwd - 1:+.1%})")


def _posts(trace) -> dict[int, np.ndarray]:
    """Per rank, per action index: when the receive feeding that action is posted."""
    posts = {}
    for r in range(trace.ranks):
        rows = np.sort(trace.compute_of(r), order="action")
        assert (rows["action"] == np.arange(len(rows))).all(), "one compute row per action"
        last = {}  # kind -> end of the rank's latest action of that kind
        post = np.zeros(len(rows))
        for j, row in enumerate(rows):
            # the first backward's receive: posted with the last warm-up forward's send, two actions before it
            first = float(rows[j - 2]["end"]) if j >= 2 else 0.0
            post[j] = last.get(int(row["kind"]), first)
            last[int(row["kind"])] = float(row["end"])
        posts[r] = post
    return posts


def _resident(trace, rank: int, posts, sends_wait: bool) -> list[tuple[float, float]]:
    """The rank's P2P kernels as (from, to) intervals."""
    c = trace.comm
    p2p = c[(c["channel"] == P2P) & (c["action"] >= 0)]
    out = [(posts[rank][row["action"]], row["end"]) for row in p2p[p2p["peer"] == rank]]
    for row in p2p[p2p["rank"] == rank]:
        end = max(row["end"], posts[int(row["peer"])][row["action"]]) if sends_wait else row["end"]
        out.append((row["start"], end))
    return [(float(a), float(b)) for a, b in out if b > a]


def _replay_slowdown(trace, rank: int, intervals, ratio) -> tuple[float, float]:
    """(extra compute time / compute time, share of compute time with a kernel resident) on ``rank``."""
    if not intervals:
        return 0.0, 0.0
    edges = np.array([t for iv in intervals for t in iv])
    steps = np.array([s for _ in intervals for s in (1, -1)])
    order = np.argsort(edges, kind="stable")
    edges, count = edges[order], np.cumsum(steps[order])  # count holds on [edges[i], edges[i + 1])
    rows = trace.compute_of(rank)
    extra = beside = 0.0
    for row in rows:
        a, b = float(row["start"]), float(row["end"])
        lo, hi = np.searchsorted(edges, a, "right"), np.searchsorted(edges, b, "left")
        cuts = np.concatenate(([a], edges[lo:hi], [b]))
        levels = np.concatenate(([count[lo - 1] if lo > 0 else 0], count[lo:hi]))
        for t, n in zip(np.diff(cuts), levels):
            if n > 0 and t > 0:
                beside += t
                extra += t * (1.0 - 1.0 / ratio[min(int(n), MAX_KERNELS)][int(row["stage"])][int(row["kind"])])
    busy = float((rows["end"] - rows["start"]).sum())
    return extra / busy, beside / busy


def estimate(name: str) -> str:
    sc = scenario.load(ROOT / "scenarios" / "validation" / f"{name}.toml")
    d = sc.derived()
    held = {n: derive.derive(replace(d.setup, rates=d.setup.rates.held(n * CTAS_PER_KERNEL)))
            for n in range(1, MAX_KERNELS + 1)}
    ratio = {n: [(h.forward / s.forward, h.backward / s.backward) for s, h in zip(d.stages, held[n].stages)]
             for n in held}  # per kernels resident, per stage: (forward, backward) held / alone; kind 0 F, 1 B
    trace = simulation.run(sc).trace
    busy = [float(np.sum(trace.compute_of(r)["end"] - trace.compute_of(r)["start"])) for r in range(trace.ranks)]
    posts = _posts(trace)
    cols = []
    for sends_wait in (False, True):
        per_rank = [_replay_slowdown(trace, r, _resident(trace, r, posts, sends_wait), ratio)
                    for r in range(trace.ranks)]
        r = max(range(trace.ranks), key=lambda q: busy[q] * (1.0 + per_rank[q][0]))
        cols.append(f"rank {r}: {busy[r] * (1.0 + per_rank[r][0]) / max(busy) - 1:+.1%} ({per_rank[r][1]:.0%} beside)")
    slow = held[CTAS // CTAS_PER_KERNEL]
    return f"| {name} | {_bounds(d, slow)} | {cols[0]} | {cols[1]} |"


if __name__ == "__main__":
    print("| run | busiest stage: forward + backward (ms) | one P2P (ms) | held for the transfer | held all pass "
          "| replay: receives post to arrival, sends for the transfer | sends until their receive is posted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arg in sys.argv[1:]:
        print(estimate(arg))
