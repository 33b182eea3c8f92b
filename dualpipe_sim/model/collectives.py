"""Collective and point-to-point times: latency + bytes on the bottleneck link / bus bandwidth.

nccl-tests' convention (NVIDIA/nccl-tests, doc/PERFORMANCE.md): for a tensor of S
bytes over n ranks, the bottleneck link carries ``S * factor`` with factor
2(n-1)/n for an all-reduce and (n-1)/n for an all-gather, a reduce-scatter or
an all-to-all; the *bus bandwidth* is what that link achieves, so
``time = latency + S * factor / bus``.  ``link`` is ``"nvlink"`` inside a node
or ``"nic"`` across nodes (one NIC per GPU); rates.KernelRates holds the
measured bus bandwidths and latency.  A GPU with a measured all-reduce curve
(``rates.nvlink_curve``: A100) takes, inside a node, the bus bandwidth measured
at the tensor's size instead (interpolated in log size; below the table's
smallest message, that message's time): an all-reduce of 100 MB on 8 A100s runs
at 170 GB/s, not at the 230 GB/s of gigabyte messages.
"""

from __future__ import annotations

import bisect
import math

from . import nccl_nvls

FACTORS = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
           "reduce_scatter": lambda n: (n - 1) / n}  # fmt: skip


def bus(rates, link: str) -> float:
    return rates.nvlink_bus if link == "nvlink" else rates.nic_bus


def across_nodes_bus(rates, per_node: int) -> float:
    """The bus bandwidth of a ring across nodes with ``per_node`` of its ranks on each node, each with its NIC.
    NCCL runs a ring per NIC (``time``), so a rank is the one that leaves its node in 1 of every ``per_node``
    rings and hands its share to a node neighbour over NVLink in the other per_node - 1: the NICs carry
    1 / per_node of the bytes and NVLink (per_node - 1) / per_node, and the slower of the two bounds the bus,
    min(per_node x NIC, per_node / (per_node - 1) x NVLink). The NICs bound it on every preset but the H800,
    whose NVLink (155 GB/s) is cut below what 8 NICs carry (8 x 47 GB/s)."""
    nics = rates.nic_bus * per_node
    return nics if per_node <= 1 else min(nics, rates.nvlink_bus * per_node / (per_node - 1))


def measured_bus(curve, nbytes: float) -> float:
    """Bus bandwidth of a measured (bytes, bytes/s) curve at ``nbytes``: linear in log2(bytes) between
    rows, the end rows' figures beyond them."""
    sizes = [size for size, _ in curve]
    i = bisect.bisect_left(sizes, nbytes)
    if i == 0:
        return curve[0][1]
    if i == len(curve):
        return curve[-1][1]
    (s0, b0), (s1, b1) = curve[i - 1], curve[i]
    return b0 + (b1 - b0) * math.log2(nbytes / s0) / math.log2(s1 / s0)


def time(op: str, nbytes: float, n: int, rates, link: str, nics: int = 1) -> float:
    """Seconds for ``op`` on a tensor of ``nbytes`` (the whole gathered or reduced tensor) over ``n`` ranks.

    ``nics``: across nodes, how many of the group's ranks share each node, each with its own NIC: NCCL
    runs a ring per NIC, so the bus bandwidth is that many NICs' (NVIDIA/nccl#812: a DGX A100's 8 HDR
    NICs give 192 GB/s all-reduce bus bandwidth across nodes, 8 x the 24 GB/s of one, NVIDIA/nccl#412)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    curve = rates.nvlink_curve if link == "nvlink" else ()
    if curve:  # the measured time includes NCCL's latency; a message below the table costs its first row
        size = max(nbytes, curve[0][0])
        return size * FACTORS[op](n) / measured_bus(curve, size)
    speed = across_nodes_bus(rates, nics) if link == "nic" else bus(rates, link)
    if link == "nvlink" and nccl_nvls.runs_nvls(rates, op, nbytes, n):  # NCCL's tuner picks NVLS over the ring
        speed *= nccl_nvls.bus_gain(op, n, rates.nccl)  # docs/model.md, "SMs on Hopper and Blackwell"
    return rates.latency + nbytes * FACTORS[op](n) / speed


# NCCL's tuning model of a ring reduce-scatter or all-gather (tuning.cc @ 4365458, as above), microseconds, for the
# two protocols a large message may take: a base, a latency per step inside a node (NVLink, or the per-step network
# launch overhead if larger: getNetOverhead's 1 us, x3 for Simple) and per step across the network (IB: no added
# plugin latency, net_ib.cc); LL128 carries 0.92 of the bus bandwidth with 2+ ranks per node, 0.7 with one.
NCCL_RING_BASE = {"simple": 8.4, "ll128": 14.0}
NCCL_RING_NVLINK = {"simple": 3.4, "ll128": 1.9}
NCCL_RING_NET = {"simple": 14.0, "ll128": 4.0}
NCCL_NET_OVERHEAD_FACTOR = {"simple": 3.0, "ll128": 1.0}

# From v2.23 (tuning.cc @ v2.23.4-1 and every release since, read at v2.25.1-1 lines 256, 261, 299-300, 322, 340-345
# and v2.28.3-1): a group of one rank a node gives LL128 0.92 of the bus like any other, its network steps take the
# tree's network latency ("with ppn=1 latencies are fully exposed": LL 5.0, LL128 8.5, Simple 14 us), an all-reduce
# ring crosses the network 2(nodes - 1) times (was 2 x nodes), and reduce-scatter / all-gather may take PAT
# (ncclPatEnable: one rank a node, Simple only) at 0.75 of the bus (0.85 in v2.23), no ring (n-1)/n, with a latency of
# 8 + log2(nodes) x 14 / 3.5 + 2.8 x ranks us paid once per batch of up to 10 coalesced calls
# (ncclTopoGetAlgoTime's DIVUP(numPipeOps, NCCL_MAX_DEV_WORK_BATCH_COLLS): 1,024 B / a 96 B ncclDevWorkColl,
# include/device.h @ v2.25.1-1).
NCCL_ONE_PER_NODE_RULES = (2, 23)
NCCL_TREE_NET = {"ll": 5.0, "ll128": 8.5, "simple": 14.0}
NCCL_PAT_BASE, NCCL_PAT_PER_RANK = 8.0, 2.8
NCCL_PAT_BUS = {(2, 23): 0.85}  # v2.23.4-1 line 193; 0.75 from v2.24 (v2.24.3-1 line 256, v2.25.1-1 line 261)
NCCL_PAT_BATCH = 10


def one_per_node_rules(nccl: tuple[int, ...] | None) -> bool:
    """Whether NCCL release ``nccl`` (hardware.nccl_version; None: the v2.18.5 rules) has v2.23's rules."""
    return nccl is not None and tuple(nccl[:2]) >= NCCL_ONE_PER_NODE_RULES


def ring_latency(protocol: str, ranks: int, per_node: int, nccl: tuple[int, ...] | None = None) -> float:
    """Seconds of NCCL's modelled latency for one ring reduce-scatter / all-gather over ``ranks`` ranks,
    ``per_node`` on each node: ranks - 1 steps, nodes - 1 of them across the network (from v2.23 at the tree's
    network latency with one rank a node)."""
    nodes = -(-ranks // per_node)
    overhead = NCCL_NET_OVERHEAD * NCCL_NET_OVERHEAD_FACTOR[protocol] if nodes > 1 else 0.0
    intra = max(NCCL_RING_NVLINK[protocol], overhead)
    inter_steps = nodes - 1
    net = NCCL_TREE_NET[protocol] if per_node == 1 and one_per_node_rules(nccl) else NCCL_RING_NET[protocol]
    return (NCCL_RING_BASE[protocol] + (ranks - 1 - inter_steps) * intra + inter_steps * net) * 1e-6


def pat_latency(ranks: int) -> float:
    """Seconds of NCCL's (v2.23+) modelled latency for one PAT reduce-scatter / all-gather over ``ranks`` ranks,
    one a node: a base, log2(nodes) network hops at the tree's Simple latency / 3.5, and a part linear in ranks."""
    return (NCCL_PAT_BASE + (ranks.bit_length() - 1) * NCCL_TREE_NET["simple"] / 3.5 + NCCL_PAT_PER_RANK * ranks) * 1e-6


# SMs a data-parallel ring reduce-scatter / all-gather occupies (step.dp_comm_sms' default): NCCL runs one CTA per
# channel, and its CTAs do not share an SM with compute kernels (NCCL's maintainer, NVIDIA/nccl#689). Across DGX
# nodes with 8 NICs the ring search finds 8 channels (one per NIC, NVIDIA/nccl#977's logs), which NCCL doubles
# (graph/connect.cc, ncclTopoPostset, v2.28.3): 16 CTAs, "on DGX with 8 NICs ... it would use 16 SMs" (#689). The
# MLPerf v5.1 B200 rows set NCCL_MIN_CTAS=16 / NCCL_MAX_CTAS=32 (config_common.sh), which override the per-group
# YAML (envConfigOverride, init.cc v2.28.3): 16 there too. docs/step.md, "Data-parallel collectives take SMs".
NCCL_DP_CTAS = 16

# NCCL v2.17-v2.19's aggregation of a group's collectives (enqueue.cc @ 4365458 scheduleCollTasksToPlan, lines
# 483-600; the same code in v2.17.1-1 and v2.19.3-1; rewritten in v2.20, and in v2.22 as ncclPrepareTasks: below):
# a channel's share of the group, 2 MiB x min(16, ranks) (NCCL_AGG_CHANNEL_SIZE, include/enqueue.h line 16),
# halved while the group's bytes are under it x channels and it is above 512 B (NCCL_MIN_CHANNEL_SIZE:
# NCCL_LL_THREAD_THRESHOLD 8 x 64).
NCCL_AGG_CHANNEL_BYTES = 2 * 2**20
NCCL_AGG_MIN_CHANNEL_BYTES = 8 * 64
NCCL_AGG_RULES_UNTIL = (2, 20)


def aggregates(nccl: tuple[int, ...] | None) -> bool:
    """Whether NCCL release ``nccl`` (None: v2.18.5) spreads a group's collectives over channels by v2.18's rules."""
    return nccl is None or tuple(nccl[:2]) < NCCL_AGG_RULES_UNTIL


def aggregated(nbytes: float, n: int, buckets: int, channels: int) -> tuple[int, float, int]:
    """How NCCL v2.18 runs ``buckets`` equal reduce-scatters / all-gathers of ``nbytes`` in all over ``n`` ranks, issued
    in one group on a communicator of ``channels`` channels: (the tuner's latency count, the tuner's share of the
    bus, the ring passes on the busiest channel).  The tuner (getAlgoInfo on the group, latency x opPerChannel)
    counts each op after the first at ceil(per-rank bytes / channel share) channels (its ``count`` is per rank);
    the launch gives each op ceil(its whole bytes / channel share) channels (``info.nBytes``, x ranks), at most
    ``channels``, the least loaded first (addCollToPlan), and a channel runs its ops one after another."""
    share = NCCL_AGG_CHANNEL_BYTES * min(16, n)
    while nbytes < share * channels and share > NCCL_AGG_MIN_CHANNEL_BYTES:
        share /= 2
    bucket = nbytes / buckets
    agg = (buckets - 1) * max(1, min(channels, math.ceil(bucket / n / share)))
    used = min(channels, agg)
    per_op = max(1, min(channels, math.ceil(bucket / share)))
    return -(-agg // used), used / channels, -(-(buckets * per_op) // channels)


# NCCL v2.20 and later's plan of a group (docs/model.md, "... on NCCL v2.20 and later"): the group's per-rank bytes laid
# end to end over the communicator's channels, an equal share each, each channel's pieces run one after another.
# v2.20-v2.21: scheduleCollTasksToPlan / addCBDCollToPlan (enqueue.cc @ v2.21.5-1 lines 743-870 and 431-509, v2.20.3-1
# the same), maxBytesPerChannel = the group's bytes / channels, the tuner asked once for the whole group (numPipeOps
# 1); from v2.22: ncclPrepareTasks and scheduleCollTasksToPlan (@ v2.22.3-1 lines 407-581 and 583-803, @ v2.28.3-1
# lines 331-500 and 502-760), trafficPerChannel = the group's traffic / channels, the tuner's count
# ceil(tasks / channels) (nTasksPerChannel).  Their cell rounding (16 B to 16 KiB of traffic) is left out.
NCCL_PREPARE_RULES = (2, 22)


def group_tuner_count(buckets: int, channels: int, nccl: tuple[int, ...]) -> int:
    """The latency count NCCL >= v2.20's tuner gives a group of ``buckets`` equal ring ops on ``channels`` channels:
    1 up to v2.21 (the aggregate asked as one op), ceil(buckets / channels) from v2.22 (ncclPrepareTasks)."""
    return 1 if tuple(nccl[:2]) < NCCL_PREPARE_RULES else -(-buckets // channels)


def group_passes(buckets: int, channels: int, equal: bool = True) -> int:
    """Ring passes on the busiest channel when NCCL >= v2.20 lays ``buckets`` equal ops end to end over ``channels``
    channels of buckets / channels ops each: channel c holds the ops from floor(c b / C) up to ceil((c + 1) b / C).
    Not ``equal`` (a Megatron-core bucket group: buffers of different sizes, taken as equal here): no op's end falls
    on a channel's edge, so a channel whose share starts or ends at one holds the next op's sliver too."""
    if equal:
        return max(-(-(c + 1) * buckets // channels) - c * buckets // channels for c in range(channels))
    return 1 + max(sum(c * buckets <= m * channels <= (c + 1) * buckets for m in range(1, buckets))
                   for c in range(channels))


def bucketed(op: str, nbytes: float, n: int, rates, per_node: int, buckets: int, averaged: bool = False,
             channels: int = 0, grouped: bool = False, equal: bool = True) -> float:
    """Seconds for a reduce-scatter or all-gather of ``nbytes`` over ``n`` ranks across nodes (``per_node`` of
    them, each with its NIC, on a node), sent as ``buckets`` equal NCCL collectives in one group (apex's
    coalesced bucket syncs).  As NCCL's tuner times it (tuning.cc ncclTopoGetAlgoTime) and picks the fastest
    protocol: latency x ring passes + bytes x factor / bus bandwidth, the bus the measured NIC one (x per_node
    NICs; LL128 a fraction of it).  Latency grows with the ring's length: at 160 nodes one 100 MB bucket's ring
    latency is ~1 ms.  ``channels`` (the communicator's, step.dp_comm_sms) and ``grouped`` (the buckets are one NCCL
    group: apex's equal buckets, or one Megatron-core bucket group, not ``equal``): with NCCL v2.17-v2.19
    (``rates.nccl`` None or below v2.20) the group spread over its channels as that NCCL does (aggregated): the tuner
    picks the protocol with its own latency count, and the time pays the busiest channel's ring passes; from v2.20
    by that release's plan (group_tuner_count, group_passes).  Not ``grouped`` (a bucketed Megatron-core chunk,
    launched one bucket group at a time), on any release: one ring pass per bucket, in sequence, as with
    ``channels`` 0.
    ``rates.nccl`` (hardware.nccl_version) from v2.23 with one rank a node: LL128 at 0.92, the tree's network
    latency, and PAT, unless ``averaged`` (a reduce-scatter with ncclAvg: NCCL runs bf16 / fp16 / fp32 averages as
    PreMulSum, which enqueue.cc keeps off PAT)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    nccl = rates.nccl
    bus = across_nodes_bus(rates, per_node)
    ll128 = 0.92 if per_node >= 2 or one_per_node_rules(nccl) else 0.7
    moved = nbytes * FACTORS[op](n)
    # in NCCL's protocol order (LL128 before Simple: the first of equal times wins, getAlgoInfo's strict <)
    protocols = {"ll128": (ring_latency("ll128", n, per_node, nccl), bus * ll128),
                 "simple": (ring_latency("simple", n, per_node, nccl), bus)}
    def tuned(count: int, share: float = 1.0) -> tuple[float, float]:
        """The protocol NCCL's tuner picks for a group it counts ``count`` latencies and ``share`` of the bus for."""
        return protocols[min(protocols, key=lambda p: count * protocols[p][0] + moved / (protocols[p][1] * share))]

    if channels and buckets > 1 and grouped and aggregates(nccl):
        count, share, passes = aggregated(nbytes, n, buckets, channels)
        lat, speed = tuned(count, share)
        return passes * lat + moved / speed
    if channels and buckets > 1 and grouped:  # the buckets one NCCL group: the caller decides (grad_sync.one_group)
        lat, speed = tuned(group_tuner_count(buckets, channels, nccl))
        best = group_passes(buckets, channels, equal) * lat + moved / speed
    else:
        best = min(buckets * lat + moved / speed for lat, speed in protocols.values())
    if per_node == 1 and one_per_node_rules(nccl) and not (op == "reduce_scatter" and averaged):
        pat_bus = bus * NCCL_PAT_BUS.get(tuple(nccl[:2]), 0.75)
        best = min(best, -(-buckets // NCCL_PAT_BATCH) * pat_latency(n) + nbytes / pat_bus)
    return best


def all_to_all(sent: float, rates, link: str) -> float:
    """Seconds for an all-to-all in which each rank sends ``sent`` bytes to the others (across nodes: the bytes
    bound for other nodes, each GPU on its own NIC; NCCL's all-to-all cannot use more than one NIC per rank)."""
    return rates.latency + sent / bus(rates, link) if sent > 0 else 0.0


def deepep(logical: float, ranks: int, rates, combine: bool) -> float:
    """Seconds for one DeepEP normal-kernel dispatch (or combine) across nodes over ``ranks`` EP ranks moving
    ``logical`` bytes, a token counted once per destination node, its own node included: DeepEP's measured
    logical bandwidth at that EP size (``rates.deepep_dispatch`` / ``deepep_combine``; linear in log2(ranks)
    between rows, the end rows' figures beyond them).  The measured time is the whole kernel's: no latency added."""
    curve = rates.deepep_combine if combine else rates.deepep_dispatch
    return logical / measured_bus(curve, ranks) if logical > 0 else 0.0


def p2p(nbytes: float, rates, link: str) -> float:
    """Seconds for one send of ``nbytes`` to one other rank."""
    return rates.latency + nbytes / bus(rates, link) if nbytes > 0 else 0.0


# NCCL's own latency model for choosing an algorithm (NVIDIA/nccl src/graph/tuning.cc @ 4365458, the v2.18.5 build
# the MLPerf v3.1 GPT-3 runs installed), microseconds, LL protocol (the lowest latency, which NCCL picks for a
# message of bytes): a base per algorithm, a latency per NVLink hop and per network hop, and for an inter-node
# ring a launch overhead per step (getNetOverhead: 1 us on Intel x86, as DGX H100's Xeons).  log2 is NCCL's log2i.
NCCL_LL_BASE = {"tree": 6.8, "ring": 6.6}
NCCL_LL_NVLINK = 0.6
NCCL_LL_NET = {"tree": 5.0, "ring": 2.7}
NCCL_NET_OVERHEAD = 1.0


def small_all_reduce(ranks: int, per_node: int, nccl: tuple[int, ...] | None = None) -> float:
    """Seconds NCCL's tuning model predicts for an all-reduce of a few bytes over ``ranks`` ranks, ``per_node``
    of them on each node: the lower of tree (up and down a tree of nodes, log2(nodes) network hops each way)
    and ring (2(n-1) steps, 2 x nodes of them across the network; from v2.23, ``nccl``, 2(nodes - 1), at the
    tree's network latency with one rank a node) with the LL protocol.  Used where a collective is all latency
    (FP8 amax reductions), over groups of up to thousands of GPUs; the bandwidth model above keeps its
    measured latency."""
    if ranks <= 1:
        return 0.0
    nodes = -(-ranks // per_node)
    ppn = ranks / nodes
    tree = NCCL_LL_BASE["tree"] + 2 * ((ppn - 1) * NCCL_LL_NVLINK + (nodes.bit_length() - 1) * NCCL_LL_NET["tree"])
    new_rules = one_per_node_rules(nccl)
    net_steps = (2 * (nodes - 1) if new_rules else 2 * nodes) if nodes > 1 else 0
    net = NCCL_TREE_NET["ll"] if new_rules and ppn == 1 else NCCL_LL_NET["ring"]
    intra = max(NCCL_LL_NVLINK, NCCL_NET_OVERHEAD) if nodes > 1 else NCCL_LL_NVLINK
    ring = NCCL_LL_BASE["ring"] + (2 * (ranks - 1) - net_steps) * intra + net_steps * net
    return min(tree, ring) * 1e-6
