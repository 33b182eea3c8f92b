"""In-flight communication buffers per rank, read off a finished trace, and their joint peak
with the activations.

* **P2P**: a boundary tensor (one micro-batch's activation or its gradient,
  ``act_bytes x tokens x hidden / tensor``) is held by its sender while the
  transfer runs, and by its receiver from the transfer's start (the receive
  buffer is posted) until the action that consumes it starts (the activation
  rows take it over there).
* **All-to-all**: each phase of an MoE layer holds a send and a receive buffer of
  the micro-batch's routed token copies (``2 x tokens / tensor x top-k x
  hidden``, FP8 where the phase carries FP8) while it runs.  At expert tensor
  parallelism ETP > 1 a phase also holds the rows gathered over the ETP group
  and the fp32 reduce-scatter's tensors (``etp_phase_bytes``).  Under DeepEP a phase holds the rank's own tokens
  and the rows it receives, one per token per rank it reaches (``deepep_rows``, as the kernel model moves them).

* **Deferred output-layer wgrad** (``model.defer_embedding_wgrad``, model/deferred_wgrad.py): each deferred
  micro-batch's buffered input and output gradient (``deferred_wgrad.held_bytes``), held on the rank running the
  head's stage from the end of its backward (B, or I when split: where its activation is freed) until its GEMM in
  the drain after the rank's last backward ends (``deferred_wgrad.gemm_ends``, placed in the trace's DRAIN row; s20d:
  before, never freed).

The activation rows (trace.memory) and these intervals are summed over time per
rank; ``joint`` is that sum's peak, which is what the rank's total adds (the
separate peaks need not coincide).  docs/model.md, "Memory per rank", says why.
"""

from __future__ import annotations

import numpy as np

from ..schedules.components import Component
from ..engine.trace import A2A, DRAIN, P2P, Trace
from .derive import FP8_SCALE_OVERHEAD, Setup
from .deferred_wgrad import gemm_ends, held_bytes
from .kernels import PROB_BYTES, ranks_reached
from ..schedules.rules import FREES, KIND_CODES

_FP8_PHASES = (Component.dispatch_forward, Component.combine_backward)  # FP8 in an FP8 model (DeepSeek-V3 Sec. 3.3.2)


def p2p_bytes(st: Setup) -> float:
    """One boundary tensor on one rank."""
    return st.act_bytes * st.tokens * st.cfg.hidden_size / st.sharding.tensor


def a2a_bytes(st: Setup) -> dict[int, float]:
    """Send + receive buffers of one all-to-all phase, by component index."""
    cfg = st.cfg
    tokens = st.tokens / st.sharding.tensor
    copies = tokens * cfg.experts_per_token * cfg.hidden_size
    fp8 = 1.0 + FP8_SCALE_OVERHEAD if cfg.fp8 else st.act_bytes
    phases = (Component.dispatch_forward, Component.combine_forward, Component.dispatch_backward, Component.combine_backward)
    if st.dispatcher == "deepep" or st.deepseek_kernels:  # DeepEP, as kernels._all_to_all counts its rows
        rows = deepep_rows(tokens, cfg.num_experts, st.sharding.expert, st.sharding.expert_tensor, cfg.experts_per_token)
        return {int(c): rows * cfg.hidden_size * (fp8 if c in _FP8_PHASES else st.act_bytes) for c in phases}
    etp = st.sharding.expert_tensor
    if etp > 1:
        held = etp_phase_bytes(copies, etp, fp8, st.act_bytes)
        return {int(c): held[c.name] for c in phases}
    return {int(c): 2 * copies * (fp8 if c in _FP8_PHASES else st.act_bytes) for c in phases}


def deepep_rows(n: float, experts: int, ep: int, etp: int, k: int) -> float:
    """Rows one rank holds in a DeepEP phase: its own ``n`` tokens (the dispatch's input, the combine's output) and
    the R = n x ETP x kernels.ranks_reached(E, EP, k) rows it receives (DeepEP's ``recv_x``, one row per token that
    has an expert on the rank, deepseek-ai/DeepEP @ 9fe9021 csrc/deep_ep.cpp line 438; the combine's input), each
    row sent once to each ETP rank of an EP rank it reaches (token_dispatcher.py @ 1e05700 lines 943-990); the
    backward the other way round.  DeepEP's own NVLink buffer is a fixed ring of chunks, not per row (config.hpp
    ``get_nvl_buffer_size_hint``), allocated once: not held per phase."""
    return n + n * etp * ranks_reached(experts, ep, k)


def etp_phase_bytes(r: float, etp: int, low: float, ab: float) -> dict[str, float]:
    """Bytes one rank holds at the peak of each all-to-all phase at ETP > 1, for ``r`` received row elements
    (tokens / tensor x top-k x hidden; ``low``: the FP8 phases' bytes an element, ``ab`` the others').  Each phase's
    tensors as NVIDIA/Megatron-LM @ 1e05700 token_dispatcher.py allocates them, largest step of the phase:

    * alltoall dispatcher, dispatch (lines 497-535): the send and the receive, then the receive all-gathered over
      the ETP group into ``etp`` x r while both are referenced: (2 + etp) r;
    * its combine (622-640): the experts' output (etp x r, the phase's input, as the send is at ETP 1), cast to the
      probabilities' fp32 (``kernels.PROB_BYTES``) for the reduce-scatter, whose r output is alive with it; then
      the cast back (the send) and the receive: etp r ab + max((etp + 1) r 4, 2 r ab); no cast where ab is 4 B;
    * their backwards, autograd's mirrors, each gradient freed once its node ran: the gathered rows' gradient
      reduce-scattered, (etp + 1) r ab, then the all-to-all's 2 r ab; the combine's all-to-all (2 r low), then its
      fp32 gradient all-gathered and cast down, etp r (4 + ab).

    DeepEP gathers nothing: deepep_rows.
    """
    q = PROB_BYTES
    cast = ab != q  # the reduce-scatter in fp32 copies the rows unless they are fp32 already
    return {
        "dispatch_forward": (2 + etp) * r * low,
        "combine_forward": etp * r * ab + max(((etp if cast else 0) + 1) * r * q, 2 * r * ab),
        "dispatch_backward": (etp + 1) * r * ab,  # the reduce-scatter's step; the all-to-all's 2 r ab is less
        "combine_backward": max(2 * r * low, (etp + 1) * r * q, etp * r * (q + ab) if cast else 0.0),
    }


def _peaks(ranks: int, rank: np.ndarray, time: np.ndarray, delta: np.ndarray) -> list[float]:
    """Per rank, the largest running sum of ``delta`` in time order (frees first at equal times)."""
    order = np.lexsort((delta > 0, time, rank))
    rank, delta = rank[order], delta[order]
    bounds = np.searchsorted(rank, np.arange(ranks + 1))
    return [float(max(0.0, np.cumsum(delta[a:b]).max())) if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])]


def _consumer_starts(trace: Trace, rank: np.ndarray, action: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """When action ``action`` of rank ``rank`` first computes (``fallback`` where it has no compute row)."""
    c = trace.compute
    if len(c) == 0 or len(rank) == 0:
        return fallback
    key = c["rank"].astype(np.int64) << 32 | (c["action"].astype(np.int64) & 0xFFFFFFFF)
    order = np.lexsort((c["start"], key))
    key, start = key[order], c["start"][order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, start = key[first], start[first]
    want = rank.astype(np.int64) << 32 | (action.astype(np.int64) & 0xFFFFFFFF)
    idx = np.minimum(np.searchsorted(key, want), len(key) - 1)
    return np.where(key[idx] == want, start[idx], fallback)


def deferred_events(trace: Trace, st: Setup, deferred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deferred micro-batches' buffers as (rank, time, bytes) events: an allocation at the end of each backward
    action that defers (``CostModel.deferred``'s stage and count; the action's end is where its activation row frees),
    and a free at the end of each of the drain's GEMMs (``gemm_ends``, scaled onto the trace's DRAIN row of that
    stage, which step.dp_comm_sms may have stretched), the first deferred first.  Without a DRAIN row (a trace with
    no step rows) the buffers stay held to the trace's end."""
    rank, time, size = _deferred(trace, st, deferred)
    drain = trace.step[(trace.step["kind"] == DRAIN) & (trace.step["stage"] == (deferred[0] if deferred else -1))]
    if len(rank) == 0 or len(drain) == 0:
        return rank, time, size
    ends = np.array(gemm_ends(st.cfg, st.rates, st.layout, len(rank)))
    row = drain[0]
    freed = row["start"] + (row["end"] - row["start"]) * ends / ends[-1]
    return (np.concatenate([rank, np.full(len(ends), row["rank"], dtype=np.int64)]), np.concatenate([time, freed]),
            np.concatenate([size, -size]))  # fmt: skip


def _deferred(trace: Trace, st: Setup, deferred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deferred micro-batches' buffers as (rank, time, bytes) allocations, at the end of each backward action that
    defers."""
    c = trace.compute
    if deferred is None or len(c) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
    stage, count = deferred[:2]
    key = c["rank"].astype(np.int64) << 32 | (c["action"].astype(np.int64) & 0xFFFFFFFF)
    # the backward that defers is the one whose end frees the activation (rules.FREES: B, or I)
    light = (c["stage"] == stage) & (c["microbatch"] < count) & np.isin(c["kind"], [KIND_CODES[k] for k in FREES])
    # one allocation per deferring action (a micro-batch's backward), at the action's end: its last compute row's
    order = np.argsort(key, kind="stable")
    actions, starts = np.unique(key[order], return_index=True)
    action_end = np.maximum.reduceat(c["end"][order], starts)
    keys = np.unique(key[light])
    ends = action_end[np.searchsorted(actions, keys)]
    return (keys >> 32).astype(np.int64), ends, np.full(len(keys), held_bytes(st))


def per_rank(trace: Trace, st: Setup, deferred=None) -> list[dict]:
    """Per rank: the peak of P2P buffers, of all-to-all buffers, and of both with the activations (and, with
    ``deferred``, CostModel.deferred, the deferred output-layer wgrad buffers)."""
    comm = trace.comm
    p2p, a2a = comm[comm["channel"] == P2P], comm[comm["channel"] == A2A]
    # P2P: the sender holds [start, end], the receiver [start, when the consuming action starts]
    size = p2p_bytes(st)
    used = np.maximum(p2p["end"], _consumer_starts(trace, p2p["peer"], p2p["action"], p2p["end"]))
    p2p_rank = np.concatenate([p2p["rank"], p2p["peer"]] * 2)
    p2p_time = np.concatenate([p2p["start"], p2p["start"], p2p["end"], used])
    p2p_delta = np.repeat([size, -size], 2 * len(p2p))
    sizes = a2a_bytes(st)
    a2a_size = np.array([sizes.get(int(part), 0.0) for part in range(len(Component))])[a2a["part"]] if len(a2a) else np.empty(0)
    a2a_rank = np.concatenate([a2a["rank"], a2a["rank"]])
    a2a_time = np.concatenate([a2a["start"], a2a["end"]])
    a2a_delta = np.concatenate([a2a_size, -a2a_size])
    mem = trace.memory
    ranks = trace.ranks
    held_rank, held_time, held_delta = deferred_events(trace, st, deferred)
    joint = _peaks(ranks, np.concatenate([mem["rank"], p2p_rank, a2a_rank, held_rank]),
                   np.concatenate([mem["time"], p2p_time, a2a_time, held_time]),
                   np.concatenate([mem["bytes"], p2p_delta, a2a_delta, held_delta]))  # fmt: skip
    p2p_peak = _peaks(ranks, p2p_rank, p2p_time, p2p_delta)
    a2a_peak = _peaks(ranks, a2a_rank, a2a_time, a2a_delta)
    return [{"p2p": p, "a2a": a, "joint": j} for p, a, j in zip(p2p_peak, a2a_peak, joint)]
