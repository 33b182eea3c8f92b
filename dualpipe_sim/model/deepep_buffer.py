"""DeepEP's persistent buffers: the bytes one ``deep_ep.Buffer`` holds on each rank of its group.

Megatron-core's flex dispatcher (``model.moe_dispatcher = "deepep"``) creates one buffer per process, on the
tensor x expert group (NVIDIA/Megatron-LM @ 1e05700 ``moe/token_dispatcher.py`` line 951, ``group=self.tp_ep_group``),
the first time it dispatches, and keeps it (``moe/fused_a2a.py`` ``get_buffer``, lines 18-63, copied from DeepEP's
README usage example, which DeepSeek's runtime is taken to follow).  Its sizes are the larger of the dispatch and
combine configs' ``get_nvl_buffer_size_hint`` / ``get_rdma_buffer_size_hint`` (deepseek-ai/DeepEP @ 9fe9021
``csrc/config.hpp`` lines 45-91), for ``hidden x max(element size, 2)`` bytes a token (``get_hidden_bytes``: BF16
and FP8 rows both count 2 B) and ``Buffer.num_sms`` = 20 (never set by Megatron-core there).  The C++ ``Buffer``
(``csrc/deep_ep.cpp`` lines 16-59) allocates the NVLink bytes with a task FIFO and peer pointers after them, and a
32 MiB workspace; the RDMA bytes come from NVSHMEM's symmetric heap (line 204) when the group spans more than 8 ranks.
None of it depends on the batch: the per-call rows are buffers.deepep_rows.  docs/model.md, "DeepEP's buffers".
"""

from __future__ import annotations

NUM_SMS = 20  # deep_ep.Buffer.num_sms (buffer.py line 30); a channel is 2 SMs (config.hpp: num_sms / 2)
NVL_PEERS = 8  # NUM_MAX_NVL_PEERS (kernels/configs.cuh): ranks up to 8 are one NVLink group, above it nodes of 8
MAX_TOP_K = MAX_SCALES = 128  # kNumMaxTopK, kNumMaxScales: slots a received token reserves
SOURCE_META = 8  # internode.cu SourceMeta: two ints
INT, INT64, FLOAT, INT4 = 4, 8, 4, 16
FIFO = INT * 32768 + 2 * 8 * NVL_PEERS  # NUM_MAX_FIFO_SLOTS ints, then the buffer and task pointers of 8 peers
WORKSPACE = 32 * 2**20  # NUM_WORKSPACE_BYTES
ALIGN = 128  # both hints round up to 128 B

# Buffer.get_dispatch_config / get_combine_config (deep_ep/buffer.py @ 9fe9021 lines 153-204): per group size,
# Config(num_sms, nvl send, nvl receive, rdma send, rdma receive) chunk tokens, the SM count left out
DISPATCH = {2: (16, 256, 6, 128), 4: (16, 256, 6, 128), 8: (6, 256, 6, 128), 16: (16, 288, 20, 128),
            24: (8, 288, 32, 128), 32: (8, 288, 32, 128), 64: (20, 288, 28, 128), 128: (20, 560, 32, 128),
            144: (32, 720, 12, 128), 160: (28, 720, 12, 128)}  # fmt: skip
COMBINE = {2: (6, 256, 6, 128), 4: (6, 256, 6, 128), 8: (6, 256, 6, 128), 16: (2, 288, 28, 128),
           24: (1, 288, 20, 128), 32: (1, 288, 20, 128), 64: (1, 288, 20, 128), 128: (1, 560, 12, 128),
           144: (2, 720, 8, 128), 160: (2, 720, 8, 128)}  # fmt: skip


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def nvl_bytes(hidden_bytes: int, ranks: int, config: tuple[int, int, int, int], sms: int = NUM_SMS) -> int:
    """``Config::get_nvl_buffer_size_hint``: per channel and NVLink peer, a ring of ``nvl receive`` tokens, each its
    row, source meta, 128 top-k indices, weights and scales; and the channel's head/tail counters."""
    rdma, nvl, channels = max(ranks // NVL_PEERS, 1), min(ranks, NVL_PEERS), sms // 2
    token = hidden_bytes + SOURCE_META + MAX_TOP_K * (INT64 + FLOAT) + MAX_SCALES * FLOAT
    return _align(channels * nvl * ((2 * rdma + 3) * INT + config[1] * token), ALIGN)


def rdma_bytes(hidden_bytes: int, ranks: int, config: tuple[int, int, int, int], sms: int = NUM_SMS) -> int:
    """``Config::get_rdma_buffer_size_hint``: 0 within 8 ranks; else per channel and node, a send and a receive ring
    of ``rdma receive`` tokens (aligned up to the send chunk, as Config's constructor does), each its row, meta, top-k
    indices, weights, scales and an int4, and their counters."""
    if ranks <= NVL_PEERS:
        return 0
    rdma, channels = ranks // NVL_PEERS, sms // 2
    recv = _align(config[3], config[2])
    token = hidden_bytes + SOURCE_META + MAX_TOP_K * (INT64 + FLOAT) + MAX_SCALES * FLOAT + INT4
    return _align(channels * rdma * 2 * ((NVL_PEERS * 2 + 2) * INT + recv * token), ALIGN)


def group_size(ranks: int) -> int:
    """The group size whose configs are read: ``ranks`` where DeepEP lists it; else (DeepEP would refuse the group,
    ``Unsupported number of EP ranks``) the next size it lists, or its largest: an estimate, not DeepEP's figure."""
    return min((n for n in DISPATCH if n >= ranks), default=max(DISPATCH))


def persistent_bytes(hidden: int, ranks: int, sms: int = NUM_SMS) -> float:
    """Bytes one rank's ``deep_ep.Buffer`` holds for a model of width ``hidden`` over a group of ``ranks`` (tensor x
    expert): the NVLink buffer with its FIFO, the workspace and the RDMA buffer; 0 for a group of one (no dispatch)."""
    if ranks <= 1:
        return 0.0
    n, hb = group_size(ranks), hidden * 2
    configs = (DISPATCH[n], COMBINE[n])
    nvl = max(nvl_bytes(hb, n, c, sms) for c in configs)
    return float(nvl + FIFO + WORKSPACE + max(rdma_bytes(hb, n, c, sms) for c in configs))
