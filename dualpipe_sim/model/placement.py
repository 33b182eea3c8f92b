"""Which link a pipeline hand-off takes: the global rank of each pipeline rank, and which pairs of pipeline ranks
sit in one NVLink domain (docs/model.md, "Which link a pipeline hand-off takes"); and where every other group sits
(``group``: "Which link each group takes").

Megatron-core numbers ranks in the order ``tp-cp-ep-dp-pp`` by default (``initialize_model_parallel(order=...)``,
``RankGenerator``): tensor innermost, the pipeline outermost, so pipeline neighbours are tensor x context x data
ranks apart.  NeMo's ``use_tp_pp_dp_mapping`` gives ``tp-cp-ep-pp-dp``: neighbours tensor x context apart, each
data-parallel replica's pipeline on consecutive ranks.  Expert parallelism is carved out of the data-parallel ranks
(no dimension of its own here).  A domain is ``domain`` consecutive global ranks (a node, or a GB200 NVL72 rack).

A hand-off between pipeline ranks a and b of one data-parallel replica is on NVLink when every one of the replica's
tensor x context ranks at a has its partner at b in the same domain; one pair across the NIC and the next layer's
tensor-parallel collective waits for it, so the boundary is the NIC's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

ORDERS = ("tp-cp-ep-dp-pp", "tp-cp-ep-pp-dp")
DEFAULT_ORDER = ORDERS[0]


def global_ranks(order: str, inner: int, data: int, pipeline: int, replica: int) -> np.ndarray:
    """[pipeline rank, inner offset] -> global rank of data-parallel ``replica``; ``inner`` = tensor x context."""
    pp, k = np.arange(pipeline)[:, None], np.arange(inner)[None, :]
    if order == "tp-cp-ep-dp-pp":
        return pp * (inner * data) + replica * inner + k
    if order == "tp-cp-ep-pp-dp":
        return replica * (inner * pipeline) + pp * inner + k
    raise ValueError(f"rank order must be one of {ORDERS}, got {order!r}")


@lru_cache(maxsize=1024)  # the planner asks again for every schedule of a layout
def nvlink_pairs(order: str, inner: int, data: int, pipeline: int, domain: int) -> tuple[frozenset, ...]:
    """Per distinct data-parallel replica (in replica order, duplicates dropped): the ordered pairs (a, b) of
    pipeline ranks whose hand-offs stay inside one NVLink domain."""
    patterns: dict[frozenset, None] = {}
    for d in range(data):
        dom = global_ranks(order, inner, data, pipeline, d) // domain
        same = (dom[:, None, :] == dom[None, :, :]).all(axis=2)
        np.fill_diagonal(same, False)
        patterns.setdefault(frozenset(zip(*(x.tolist() for x in np.nonzero(same)))), None)
    return tuple(patterns)


# -- which link each group takes (docs/model.md, "Which link each group takes") --------------------------------------
# A group kind is Megatron-core's RankGenerator token: the dimensions its ranks vary over, the rest held fixed
# (NVIDIA/Megatron-LM @ d98e8a6 megatron/core/parallel_state.py: generate_masked_orthogonal_rank_groups line 269,
# RankGenerator lines 465-560).  "etp", "ep" and "edp" (the expert-tensor, expert and expert-data groups) come from
# the expert generator, which numbers expert-tensor x expert x expert-data x pipeline ranks in the same order with no
# context dimension (lines 868-895: "tp-cp-ep-dp-pp" -> etp, ep, edp, pp; @ 1e05700 lines 721-739, ``RankGenerator(
# tp=expert_tensor_parallel_size, ep=..., dp=expert_data_parallel_size, cp=1, order=order)``): the ETP group is ETP
# consecutive ranks, an EP group's ranks ETP apart, expert-data = tensor x context x data / (ETP x EP).  The rest
# from the dense one.  "world": every rank.
KINDS = ("tp", "cp", "dp", "pp", "tp-cp", "dp-cp", "tp-pp", "tp-dp", "tp-dp-cp", "etp", "ep", "edp", "world")
EXPERT_KINDS = {"etp": ("tp",), "ep": ("ep",), "edp": ("dp",)}  # kind -> the expert generator's varying dims


class Group(NamedTuple):
    size: int  # ranks in one group
    per_node: int  # the most of its ranks in one NVLink domain
    domains: int  # NVLink domains it spans
    link: str  # "nvlink" inside one domain, else "nic"


def _ranks(sizes: dict[str, int], order: str, varying: tuple[str, ...]) -> np.ndarray:
    """[group, member] -> global rank: ``sizes`` numbered innermost first in ``order``, groups of the ``varying`` dims
    (generate_masked_orthogonal_rank_groups' groups; the order of members and of groups does not matter here)."""
    dims = order.split("-")
    grid = np.arange(int(np.prod([sizes[d] for d in dims]))).reshape([sizes[d] for d in reversed(dims)])
    axes = [dims[::-1].index(d) for d in dims[::-1] if d not in varying] + [dims[::-1].index(d) for d in varying]
    size = int(np.prod([sizes[d] for d in varying]))
    return grid.transpose(axes).reshape(-1, size)


@lru_cache(maxsize=4096)  # asked per stage, layer and micro-batch row with the same layout
def group(kind: str, order: str, domain: int, tensor: int = 1, context: int = 1, data: int = 1, pipeline: int = 1,
          expert: int = 1, expert_tensor: int = 1) -> Group:
    """Where the groups of ``kind`` sit: ``domain`` consecutive ranks share NVLink.  Groups of one kind can sit
    differently (a group of 16 from rank 64 straddles racks of 72 where the one from 48 does not): the slowest is
    taken, the one over the most domains, then with the fewest ranks in one, since a collective waits for it."""
    if order not in ORDERS:
        raise ValueError(f"rank order must be one of {ORDERS}, got {order!r}")
    if kind not in KINDS:
        raise ValueError(f"group kind must be one of {KINDS}, got {kind!r}")
    world = tensor * context * data * pipeline
    if kind in EXPERT_KINDS:
        if world % (expert_tensor * expert * pipeline):
            raise ValueError(f"expert-tensor x expert ({expert_tensor} x {expert}) must divide tensor x context x data "
                             f"({tensor * context * data})")
        sizes = dict(tp=expert_tensor, cp=1, ep=expert, dp=world // (expert_tensor * expert * pipeline), pp=pipeline)
        varying = EXPERT_KINDS[kind]
    else:
        sizes = dict(tp=tensor, cp=context, ep=1, dp=data, pp=pipeline)
        varying = ("tp", "cp", "ep", "dp", "pp") if kind == "world" else tuple(kind.split("-"))
    dom = _ranks(sizes, order, varying) // domain
    spans = [np.unique(row, return_counts=True)[1] for row in np.unique(dom, axis=0)]
    counts = max(spans, key=lambda c: (len(c), -int(c.max())))
    return Group(dom.shape[1], int(counts.max()), len(counts), "nvlink" if len(counts) == 1 else "nic")
