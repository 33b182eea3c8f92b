"""Figures one scenario's step costs share, worked out once per caller's memo (per_call)."""

from __future__ import annotations


def per_call(memo: dict | None, name: str, work):
    """``work()``, worked out once per ``memo``: a dict that one caller keeps for one scenario and one derivation
    (Scenario.step_costs: its grad sync, optimizer and StepCosts read the buckets per stage and the compute's slowdown
    under a collective, each of which took as long as a figure); None: worked out every time."""
    if memo is None:
        return work()
    if name not in memo:
        memo[name] = work()
    return memo[name]
