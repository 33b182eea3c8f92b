"""GPU-to-GPU spread: how much slower than a typical GPU the slowest of a run's GPUs is.

GPUs of one SKU in one cluster do not all run at one rate (manufacturing spread, power and thermal
management).  A training step synchronises every GPU of the run (the data-parallel gradient sync,
the pipeline's P2P), so it runs at the pace of the slowest one.  ``hardware.gpu_variability`` (opt-in)
names a measured spread; every kernel of every rank then takes ``factor(N)`` times as long, where

    factor(N) = E[max of N per-GPU times] / E[one GPU's time] = 1 + cv x e_N,

N the GPUs of the run, cv the spread's coefficient of variation (standard deviation / mean of the
per-GPU times) and e_N the expected largest of N independent standard normal draws (a normal
with the measured mean and cv; no random draw).  N = 1 is factor 1 exactly: a lone GPU is the mean
GPU the preset's kernel rates describe.  Sources and arithmetic: docs/model.md, "GPU-to-GPU spread".
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    cv: float  # standard deviation / mean of the per-GPU time of one workload, across the GPUs measured
    gpus: int  # GPUs the figure is over
    what: str  # where it is from (one line; docs/model.md has the whole story)


# The PAL artifact (hal-uw/blox-pal @ da726ca, aggregated_data/ls6/resnet-ls6-agg.csv; Jain et al., "PAL: A
# Variability-Aware Policy for Scheduling ML Workloads in GPU Clusters", SC24): ResNet-50 training's iteration time
# on each of 219 A100s (73 three-GPU nodes) of TACC's Lonestar6, one GPU per run.  Two nodes whose three GPUs all ran
# at 2.14-2.20x the median (node faults a health check drains, not spread) are left out: 213 GPUs, cv 2.106%.
SPREADS: dict[str, Spread] = {
    "lonestar6-a100": Spread(0.02106, 213, "PAL (SC24) artifact: ResNet-50 iteration time on 213 Lonestar6 A100s"),
}


def expected_max_normal(n: int) -> float:
    """E[max of ``n`` independent standard normals] = integral of x n phi(x) Phi(x)^(n-1) dx.
    Closed forms check it: 0 (n = 1), 1/sqrt(pi) (n = 2), 3 / (2 sqrt(pi)) (n = 3)."""
    if n < 1:
        raise ValueError(f"needs at least one GPU, got {n}")
    if n == 1:
        return 0.0
    # The integrand is smooth and below 1e-12 of its peak outside [-9, 12] for any n up to 10^9;
    # Simpson's rule on 4,200 panels puts e_n within 1e-9 of the closed forms.
    lo, hi, panels = -9.0, 12.0, 4200
    h = (hi - lo) / panels
    total = 0.0
    for k in range(panels + 1):
        x = lo + k * h
        phi = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        cdf = 0.5 * math.erfc(-x / math.sqrt(2.0))
        weight = 1 if k in (0, panels) else (4 if k % 2 else 2)
        total += weight * x * n * phi * cdf ** (n - 1)
    return total * h / 3.0


def factor(name: str, gpus: int) -> float:
    """How many times as long every kernel takes when the step waits for the slowest of ``gpus``
    GPUs of the spread ``name`` (SPREADS)."""
    return 1.0 + SPREADS[name].cv * expected_max_normal(gpus)
