"""How long one GEMM (or one grouped GEMM) takes on a GPU, from its shape.

A tensor-core GEMM kernel cuts the (M x N) output into tiles, one thread block
each, and runs them in *waves* of one tile per SM.  Three things keep it below
the GPU's peak, and each is a term here:

* **tile and wave quantisation**: a wave that is not full, and the padding of a
  tile that hangs over the edge of M or N, compute nothing useful.  The useful
  fraction is ``M*N / (waves * SMs * tile_m * tile_n)``, the best over the tile
  shapes a library picks from;
* **a short K**: each tile streams K in steps, plus a fixed prologue and
  epilogue (load the first operands, write the tile) worth ``k_overhead`` of K;
  the mainloop's share is ``K / (K + k_overhead)``.  When there are fewer tiles
  than SMs, libraries split K across several thread blocks (split-K / stream-K):
  the best split of each tile shape is taken, each slice paying the overhead;
* **a floor per kernel**: launch and synchronisation latency, paid however small
  the GEMM, and the bytes of A, B and C over the achievable HBM bandwidth when
  that takes longer than the math.

**SMs held by a kernel the library was not told about** (an NCCL collective beside it,
``held``): the library still picks its tiles and grid for the whole GPU, and how its thread
blocks then land on the SMs left depends on how it schedules tiles (``SCHEDULES``, per GPU
in rates.py; docs/model.md, "GEMMs beside a kernel they were not told about").

**The backward's shapes** (``dgrad`` / ``wgrad``): a linear's input-gradient GEMM (K and N of its
forward swapped) and weight-gradient GEMM (the tokens as K) have the forward's FLOPs, but the
library picks other kernels for their shapes; what that costs beyond the tiles and waves counted
here is a measured factor per pass on the math (``GemmRates.dgrad`` / ``wgrad``, ``measured_passes``),
measured on compute-bound shapes all in one layout: a kernel bound by its bytes or its launch keeps
them, and the layouts themselves (TE's TN fprop, NN dgrad, NT wgrad) are in no measurement.

The rates (``GemmRates``: achievable peak, ``k_overhead``, floor, the two pass factors) are per GPU
architecture and dtype, each from a kernel-level measurement (docs/model.md,
"Kernel rates"); nothing here is fitted to a training run.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from functools import lru_cache

# Output tile shapes (rows x columns) that cuBLAS / CUTLASS heuristics choose among for large
# tensor-core GEMMs (CUTLASS's Hopper and Ampere default tile shapes; docs/model.md).
TILES = ((128, 256), (256, 128), (128, 128))


@dataclass(frozen=True)
class GemmRates:
    peak: float  # achievable FLOP/s of a large, well-shaped GEMM
    k_overhead: float  # prologue + epilogue of one tile, in elements of K
    floor: float  # seconds: the shortest a GEMM kernel takes (launch + sync)
    # A linear's input- and weight-gradient GEMMs' time against the tile model's at the same shape (measured_passes);
    # 1: none measured, or a library the measurement did not run (DeepGEMM's own table)
    dgrad: float = 1.0
    wgrad: float = 1.0

    def pass_factor(self, grad: str) -> float:
        """The factor of a GEMM in pass ``grad`` ("fprop", "dgrad" or "wgrad")."""
        return {"fprop": 1.0, "dgrad": self.dgrad, "wgrad": self.wgrad}[grad]


@dataclass(frozen=True)
class GemmTime:
    seconds: float
    flops: float
    bytes: float
    utilisation: float  # useful fraction of the tiles' waves
    bound: str  # "compute", "memory" or "latency"


SPLITS = (1, 2, 4, 8, 16)  # K split across this many thread blocks per tile (split-K)
MIN_SLICE = 256  # no slice of K shorter than this


def utilisation(m: int, n: int, sms: int, groups: int = 1) -> float:
    """Useful share of the tiles' waves for ``groups`` GEMMs of (m x n) outputs run as one kernel."""
    return efficiency(m, n, 1 << 30, sms, 0.0, groups)


# How a GEMM library's kernel hands its output tiles (work units: tiles x K splits) to SMs:
# "waves": one thread block per unit, launched in waves as SMs free up (sm_80: grid = units);
# "persistent": grid = min(units, SMs), block i owns units i, i + grid, ... (a static persistent
# scheduler, CUTLASS's sm_90 StaticPersistentTileScheduler); "dynamic": running blocks take the next
# unit when they finish one (sm_100 Cluster Launch Control).  Alone on the GPU all three take
# ceil(units / SMs) rounds; they differ only while another kernel holds SMs.
SCHEDULES = ("waves", "persistent", "dynamic")


# rounds() and efficiency() are pure functions of a few numbers that the plan asks about again and
# again (every layout's stages on fewer SMs, model/comm_slowdown.py): kept per typed arguments.
@lru_cache(maxsize=1 << 16, typed=True)
def rounds(units: int, sms: int, held: int = 0, schedule: str = "dynamic") -> int:
    """Unit times a kernel of ``units`` work units, launched for ``sms`` SMs, takes on the
    ``sms - held`` SMs another kernel leaves it."""
    left = sms - held
    if schedule != "persistent" or units <= left:
        return math.ceil(units / left)  # any unit may run on any free SM
    # persistent: the grid's blocks start on free SMs in block order (the hardware's launch order), each
    # running all its units before its SM takes the next block
    grid = min(units, sms)
    free = [0] * left
    for i in range(grid):
        heapq.heappush(free, heapq.heappop(free) + -(-(units - i) // grid))
    return max(free)


@lru_cache(maxsize=1 << 16, typed=True)
def efficiency(m: int, n: int, k: int, sms: int, k_overhead: float, groups: int = 1, held: int = 0,
               schedule: str = "dynamic") -> float:  # fmt: skip
    """Share of the achievable peak: the tile shape and K split the library picks for ``sms`` SMs
    (the best alone), its rounds' useful fraction times its mainloop's share of each K slice;
    ``held`` of the SMs taken by a kernel the library was not told about (rounds())."""
    best, pick = 0.0, None
    for tm, tn in TILES:
        tiles = groups * math.ceil(m / tm) * math.ceil(n / tn)
        for split in SPLITS:
            if split > 1 and (k / split < MIN_SLICE or tiles * split > 2 * sms):
                break
            waves = math.ceil(tiles * split / sms)
            useful = groups * m * n * split / (waves * sms * tm * tn)
            value = useful * (k / split) / (k / split + k_overhead)
            if value > best:
                best, pick = value, (tm, tn, tiles, split)
    if not held or pick is None:
        return best
    tm, tn, tiles, split = pick
    useful = groups * m * n * split / (rounds(tiles * split, sms, held, schedule) * sms * tm * tn)
    return useful * (k / split) / (k / split + k_overhead)


def time(m: int, n: int, k: int, rates: GemmRates, sms: int, hbm: float, dtype_bytes: float,
         groups: int = 1, out_bytes: float = 2.0, held: int = 0, schedule: str = "dynamic",
         grad: str = "fprop") -> GemmTime:  # fmt: skip
    """One kernel of ``groups`` GEMMs (m x k) @ (k x n); ``hbm`` the achievable bytes/s; ``rates.peak``
    that of ``sms`` SMs, ``held`` of which another kernel holds (efficiency()); ``grad``: the linear's pass
    whose measured factor it takes (GemmRates.pass_factor)."""
    if min(m, n, k, groups) <= 0:
        return GemmTime(0.0, 0.0, 0.0, 1.0, "latency")
    flops = 2.0 * m * n * k * groups
    nbytes = groups * ((m * k + k * n) * dtype_bytes + m * n * out_bytes)
    util = efficiency(m, n, k, sms, rates.k_overhead, groups, held, schedule)
    # the pass factor scales the math alone: the guide that measured it timed compute-bound shapes, and a kernel
    # bound by its bytes or its launch moves the same bytes and pays the same launch whichever layout it runs
    compute = flops / (rates.peak * util) * rates.pass_factor(grad)
    memory = nbytes / hbm
    body = max(compute, memory)
    bound = "compute" if compute >= memory else "memory"
    if rates.floor > body:
        bound = "latency"
    return GemmTime(rates.floor + body, flops, nbytes, util, bound)


def layer_passes(shapes: tuple[tuple[int, int, int], ...], rates: GemmRates, sms: int, hbm: float,
                 dtype_bytes: float) -> tuple[tuple[GemmTime, ...], ...]:
    """The tile model's kernels (no pass factor) for a layer's linears, each forward (M x K) @ (K x N) given as
    (M, K, N), per pass as Transformer Engine's GEMM profiling guide times them, every one a GEMM of its shape in one
    layout: fprop (M, K, N), dgrad (M, N, K): K and N swapped, wgrad (K, M, N): the tokens as K."""
    plain = replace(rates, dgrad=1.0, wgrad=1.0)
    one = lambda m, k, n: time(m, n, k, plain, sms, hbm, dtype_bytes)  # noqa: E731
    return (tuple(one(m, k, n) for m, k, n in shapes), tuple(one(m, n, k) for m, k, n in shapes),
            tuple(one(k, m, n) for m, k, n in shapes))


def measured_passes(rates: GemmRates, measured: tuple[float, float, float], shapes: tuple[tuple[int, int, int], ...],
                    sms: int, hbm: float, dtype_bytes: float) -> GemmRates:  # fmt: skip
    """``rates`` with the pass factors a measurement of a layer's (fprop, dgrad, wgrad) sums at ``shapes`` gives on
    the GPU ``rates``, ``sms`` and ``hbm`` describe, so that the model's passes stand to its forward as the measured
    ones did: the factor scales the math of each pass's kernels (time()), not their floors, so it is (the model's
    fprop sum x the measured pass / fprop - the pass's floors) / the pass's math. Every shape must be compute-bound
    at the factor (the math is what it scales)."""
    fprop, *backward = layer_passes(shapes, rates, sms, hbm, dtype_bytes)
    target = sum(t.seconds for t in fprop) / measured[0]
    factors = []
    for kernels, seconds in zip(backward, measured[1:]):
        maths = [t.flops / (rates.peak * t.utilisation) for t in kernels]
        factor = (target * seconds - rates.floor * len(kernels)) / sum(maths)
        if any(t.bytes / hbm > factor * math for t, math in zip(kernels, maths)):
            raise ValueError("measured_passes: every measured shape must be compute-bound at its pass factor")
        factors.append(factor)
    return replace(rates, dgrad=factors[0], wgrad=factors[1])
