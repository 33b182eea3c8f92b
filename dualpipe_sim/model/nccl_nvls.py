"""Which algorithm NCCL's tuner runs a one-node tensor-parallel collective with on an 18-NVLink Hopper (H100 / H200):
the ring (its 24 CTAs) or NVLS (NVLS_NCHANNELS_SM90 = 16 CTAs).  docs/model.md, "SMs on Hopper and Blackwell".

NCCL times every (algorithm, protocol) as latency + bytes / bandwidth (tuning.cc ncclTopoTuneModel and
ncclTopoGetAlgoTime, numPipeOps 1) and runs the fastest, the ring on a tie (enqueue.cc topoGetAlgoInfo: strictly
smaller, the ring's index first).  The tree, which all-reduce may also take, runs on the ring's channels (the same
CTAs) and is not compared.  ``nccl``: hardware.nccl_version as (major, minor, ...); None, or a release before v2.18,
takes v2.18.5's rules (the key's default).  Microseconds and GB/s, as NCCL's tables.
"""

from __future__ import annotations

NVLINKS = 18
# The ring graph, every group size and release read (v2.18.5 .. v2.28.3): 6 channels at 60 GB/s, doubled to 12 at 30
# (search.cc ncclTopoDupChannels), so 360 GB/s of bus (tests/test_tp_nccl_ctas.py)
RING_CHANNELS, RING_CHANNEL_BW = 12, 30.0
# ring latency (us): baseLat and the NVLink hwLat per step, by protocol (tuning.cc, the same v2.18.5 .. v2.28.3)
RING_LAT = {"ll": (6.6, 0.6), "ll128": (14.0, 1.9), "simple": (8.4, 3.4)}
LL128_SHARE, LL128_PER_CHANNEL = 0.92, 36.7  # perChMaxRingLL128Bws, Hopper
PRESETS = ("H100", "H200")  # the 18-NVLink Hopper presets this module describes


def _release(nccl) -> tuple[int, int]:
    return max((2, 18), tuple(nccl[:2])) if nccl else (2, 18)


def _steps(op: str, group: int) -> int:
    return 2 * (group - 1) if op == "all_reduce" else group - 1


def nvls_speed(group: int, nccl=None) -> float:
    """GB/s a channel of the NVLS graph (search.cc ncclTopoSearchTryNvls): ``group`` channels, each GPU the head of
    one, pulling twice on its own NVSwitch link and once on each other's, so each link carries (group + 1) x speed;
    the fastest speed of sm90's intra-node array whose load fits the GPU's NVLinks."""
    rel = _release(nccl)
    width = NVLINKS * (20.6 if rel >= (2, 20) else 20.0)  # topo.h SM90_NVLINK_BW
    speeds = (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0)  # sm90SpeedArrayIntra; v2.18 has no 50
    speeds = speeds if rel >= (2, 19) else tuple(s for s in speeds if s != 50.0)
    return next((s for s in speeds if (group + 1) * s <= width), 0.0)


def ring_times(op: str, nbytes: float, group: int, nccl=None) -> dict[str, float]:
    """The tuner's ring time (us) by protocol for ``nbytes`` (the whole gathered or reduced tensor)."""
    rel = _release(nccl)
    steps = _steps(op, group)
    bus = RING_CHANNELS * RING_CHANNEL_BW
    if rel >= (2, 21):
        ll = min(141.0, bus * 0.5)
    else:  # llMaxBws Hopper-N1 87.7; 1/4 of the bus for all-reduce, 1/3 else
        ll = min(87.7, bus * (0.25 if op == "all_reduce" else 1 / 3))
    buses = {"ll": ll, "ll128": min(bus * LL128_SHARE, RING_CHANNELS * LL128_PER_CHANNEL), "simple": bus}
    return {p: RING_LAT[p][0] + steps * RING_LAT[p][1] + nbytes / (1000 * buses[p] * group / steps) for p in buses}


def nvls_bandwidth(op: str, group: int, nccl=None) -> float | None:
    """The tuner's NVLS algorithm bandwidth (GB/s), or None where the release does not serve ``op`` with NVLS (v2.18:
    all-reduce only; all three from v2.19) or the group cannot set it up (nvls.cc ncclNvlsInit: more than 2 GPUs)."""
    rel = _release(nccl)
    if group <= 2 or (op != "all_reduce" and rel < (2, 19)):
        return None
    s = nvls_speed(group, nccl)
    if rel >= (2, 28):  # v2.28: nvlsEfficiency 0.85 x (channels - 1) / channels; all-reduce x 2 then x ppn / steps
        eff = s * 0.85 * (group - 1) / group
        inter = 60.0  # pass 2 raises bwInter while under 2 x speed: to the array's top for every speed of 40 or more
        if op == "all_reduce":
            return group * min(2 * eff, inter) * group / (2 * (group - 1))
        return group * min(eff * (group - 1) / group, inter)
    if op == "all_reduce" or rel < (2, 23):  # busBw = channels x speed, x 5/6 to algorithm bandwidth
        return group * s * 5 / 6
    if rel < (2, 27):  # v2.23: all-gather / reduce-scatter no longer converted
        return group * s
    return group * s * (group - 1) / group  # v2.27: min(bwIntra (ppn - 1) / ppn, bwInter x 0.9), bwInter >= speed


def nvls_time(op: str, nbytes: float, group: int, nccl=None) -> float | None:
    """The tuner's NVLS time (us), or None where NVLS cannot run ``op`` (nvls_bandwidth)."""
    bw = nvls_bandwidth(op, group, nccl)
    if bw is None:
        return None
    latency = 25.0 if _release(nccl) >= (2, 21) else 23.0  # v2.18 baseLat, v2.19-v2.20 hwLat 23; 25 from v2.21
    return latency + nbytes / (1000 * bw)


def picks_nvls(op: str, nbytes: float, group: int, nccl=None) -> bool:
    """Whether NCCL's tuner runs ``op`` on ``nbytes`` over a one-node group of ``group`` Hopper GPUs with NVLS: its
    time strictly below every ring protocol's."""
    nvls = nvls_time(op, nbytes, group, nccl)
    return nvls is not None and nvls < min(ring_times(op, nbytes, group, nccl).values())


def runs_nvls(rates, op: str, nbytes: float, group: int) -> bool:
    """picks_nvls for a tensor group inside one node of an 18-NVLink Hopper preset (H100, H200; NVLS needs the
    NVSwitch's multicast, which the model takes as present there); False elsewhere."""
    return rates.name in PRESETS and 1 < group <= rates.nvlink_domain and picks_nvls(op, nbytes, group, rates.nccl)


def bus_gain(op: str, group: int, nccl=None) -> float:
    """How much faster than the ring NVLS moves ``op``'s bytes: the tuner's NVLS bandwidth over its ring Simple
    bandwidth (all-reduce over 8 GPUs: 266.7 / 205.7 = 1.30, as measured on 8 H100s: NVIDIA/nccl#1221 330 -> 430 GB/s
    of bus bandwidth at NCCL 2.19.3, #2140 370 -> 480 at 2.30.4; under 1 where NCCL picks NVLS for its latency alone,
    and for all-gather / reduce-scatter, which NVLS runs slower than the ring: NVIDIA/nccl#1047, #1083)."""
    return nvls_bandwidth(op, group, nccl) / (RING_CHANNELS * RING_CHANNEL_BW * group / _steps(op, group))
