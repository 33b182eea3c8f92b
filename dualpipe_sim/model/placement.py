"""Which link a pipeline hand-off takes: the global rank of each pipeline rank, and which pairs of pipeline ranks
sit in one NVLink domain (docs/model.md, "Which link a pipeline hand-off takes").

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
