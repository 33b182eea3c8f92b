"""Collective and point-to-point times: latency + bytes on the bottleneck link / bus bandwidth.

nccl-tests' convention (NVIDIA/nccl-tests, doc/PERFORMANCE.md): for a tensor of S
bytes over n ranks, the bottleneck link carries ``S * factor`` with factor
2(n-1)/n for an all-reduce and (n-1)/n for an all-gather, a reduce-scatter or
an all-to-all; the *bus bandwidth* is what that link achieves, so
``time = latency + S * factor / bus``.  ``link`` is ``"nvlink"`` inside a node
or ``"nic"`` across nodes (one NIC per GPU); rates.KernelRates holds the
measured bus bandwidths and latency.
"""

from __future__ import annotations

FACTORS = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
           "reduce_scatter": lambda n: (n - 1) / n}  # fmt: skip


def bus(rates, link: str) -> float:
    return rates.nvlink_bus if link == "nvlink" else rates.nic_bus


def time(op: str, nbytes: float, n: int, rates, link: str) -> float:
    """Seconds for ``op`` on a tensor of ``nbytes`` (the whole gathered or reduced tensor) over ``n`` ranks."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return rates.latency + nbytes * FACTORS[op](n) / bus(rates, link)


def all_to_all(sent: float, rates, link: str) -> float:
    """Seconds for an all-to-all in which each rank sends ``sent`` bytes to the others."""
    return rates.latency + sent / bus(rates, link) if sent > 0 else 0.0


def p2p(nbytes: float, rates, link: str) -> float:
    """Seconds for one send of ``nbytes`` to one other rank."""
    return rates.latency + nbytes / bus(rates, link) if nbytes > 0 else 0.0
