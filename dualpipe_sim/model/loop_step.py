"""What the A100-era training loops run once a step besides the micro-batches, per pipeline rank, in the optimizer
figure (docs/model.md, "Once a step: the loops' timers, host reads and loss reductions").

megatron_lm.py and deepspeed_pipe.py cost each micro-batch as the 1F1B steady state runs it; this module adds per
step what differs from that and what runs after the pipeline:

* Megatron-LM 2021/2022 (NVIDIA/Megatron-LM 6985e58, d898a89): the warm-up's and cool-down's P2P calls beyond the
  steady state's (``schedules.py``: each call timed, two ``torch.cuda.synchronize()``); ``train_step``'s timers
  ('backward-params-all-reduce' with local DDP, 'backward-embedding-all-reduce', 'optimizer') and the fp16
  optimizer's own ('optimizer-copy-to-main-grad', 'optimizer-unscale-and-check-inf' with a loss scaler,
  'optimizer-clip-main-grad', 'optimizer-copy-main-to-model-params'); with a loss scaler the found-inf flag
  all-reduced over the model-parallel group and read; the clip's norm all-reduced and read (``clip_grads.py``;
  already costed where the step's end is Megatron-core's: optimizer_step.grad_norm_all_reduce_ms); ``train``'s
  ``optimizer.get_loss_scale().item()``; on the last rank the micro-batches' losses summed and averaged
  (``train_step``) and added to the log's total (``training_log``).
* DeepSpeed v0.6.5's pipeline engine under Megatron-DeepSpeed (BLOOM, ``--log-interval 1``, a TensorBoard writer on
  the last rank): ``_aggregate_total_loss`` (the last stage's loss averaged over data parallelism, read twice into a
  CPU tensor, copied back and broadcast to the pipeline) and ``training_log`` every step ('interval-time' stopped
  and restarted, the loss's average read, a new zero total copied to the GPU; four TensorBoard scalars of the loss).

Each sync is costed by host.replay as the micro-batches' are; each small collective by NCCL's latency model.
"""

from __future__ import annotations

from . import collectives, host
from .megatron_lm import timer


def megatron_phase_calls(interleaved: bool, ranks: int, chunks: int, microbatches: int, rank: int) -> int:
    """Timed P2P calls a step on pipeline ``rank`` beyond megatron_lm.rows' (1F1B: one after each pass, none after
    the last stage's forward or the first stage's backward; interleaved: one after each backward), from
    ``schedules.py`` @ 6985e58 (the same at d898a89)."""
    if ranks <= 1:
        return 0  # forward_backward_no_pipelining: no P2P call
    first, last = rank == 0, rank == ranks - 1
    if interleaved:  # lines 237-364: recv_forward (chunk 0, not on rank 0), a call after each warm-up forward
        total = microbatches * chunks
        every = microbatches == ranks  # all warm-up: the cool-down starts with a recv_backward
        warmup = total if every else min((ranks - rank - 1) * 2 + (chunks - 1) * ranks, total)
        return (not first) + warmup + (every and not last)
    # lines 400-467: a warm-up forward has recv_forward and send_forward, one recv_forward before the steady state,
    # a cool-down backward recv_backward and send_backward
    warmup = min(ranks - rank - 1, microbatches)
    return warmup * (not first) + (microbatches > warmup and not first) + warmup * (not last)


def megatron_segments(scenario, st, rank: int, ranks: int, norm_costed: bool) -> list[list[host.Step]]:
    """Megatron-LM's once-a-step host stretches on ``rank`` after its pipeline (``train_step``, ``train``), each
    starting at a sync; a collective's seconds are its step's GPU time; ``norm_costed``: the clip norm's all-reduce
    is in the step's end already (Megatron-core's: optimizer_step.megatron_core_optimizer)."""
    m, step = scenario.model, scenario.step
    local = not step.overlap_grad_sync  # Megatron's local DDP (torch DDP overlaps, untimed)
    scaler = m.params_dtype == "fp16"  # --fp16: a loss scaler; bf16 none (optimizer.py: grad_scaler None)
    mp = st.sharding.tensor * ranks  # the model-parallel group: found-inf and the norm
    reduce = collectives.small_all_reduce(mp, st.group("tp-pp").per_node, st.rates.nccl)
    norm = [] if norm_costed else [host.Step("grad norm all-reduce, .item()", 2, reduce, True)]
    segs = [[timer("backward-params-all-reduce start")]] if local else []
    segs.append(([timer("backward-params-all-reduce stop")] if local else []) + [
        timer("backward-embedding-all-reduce start")])
    segs.append([timer("backward-embedding-all-reduce stop"), timer("optimizer start"),
                 timer("optimizer-copy-to-main-grad start")])  # fmt: skip
    if scaler:
        segs.append([timer("optimizer-copy-to-main-grad stop"), timer("optimizer-unscale-and-check-inf start")])
        segs.append([host.Step("found-inf all-reduce (max), .item()", 2, reduce, True),
                     timer("optimizer-unscale-and-check-inf stop"), timer("optimizer-clip-main-grad start")])
    else:
        segs.append([timer("optimizer-copy-to-main-grad stop"), timer("optimizer-clip-main-grad start")])
    segs.append(norm + [timer("optimizer-clip-main-grad stop"), timer("optimizer-copy-main-to-model-params start")])
    tail = [timer("optimizer-copy-main-to-model-params stop"), timer("optimizer stop")]
    if rank == ranks - 1:  # sum(losses) / len: an add a micro-batch (from int 0) and a divide; the log's add
        n = scenario.pipeline.microbatches + 2
        tail.append(host.Step("losses summed, averaged, added to the log's total", n, n * st.rates.floor))
    segs.append(tail + [host.Step("optimizer.get_loss_scale().item()", 1, 0.0, True)])
    return segs


def deepspeed_segments(scenario, st, rank: int, ranks: int) -> list[list[host.Step]]:
    """DeepSpeed's ``_aggregate_total_loss`` and Megatron-DeepSpeed's per-step ``training_log`` on ``rank``."""
    sh, r = st.sharding, st.rates
    # the pipeline group and the data-parallel one, placed by the rank order (placement.group)
    bcast = collectives.small_all_reduce(ranks, st.group("pp").per_node, r.nccl)
    if rank == ranks - 1:
        dp = collectives.small_all_reduce(sh.data, st.group("dp-cp").per_node, r.nccl)
        # _scale_loss_by_gas, two clones, the all-reduce, / dp; torch.Tensor([loss, agg]): two reads; .to(device)
        agg = [host.Step("loss / gas, clones, data-parallel all-reduce, / dp", 5, 4 * r.floor + dp),
               host.Step("torch.Tensor([loss, agg_loss]): first read", 1, 0.0, True),
               host.Step("second read", 1, 0.0, True),
               host.Step(".to(device): pageable copy, synchronised", 1, 0.0, True),
               host.Step("pipeline-group broadcast", 1, bcast)]  # fmt: skip
        board = [host.Step("TensorBoard add_scalar(loss): read", 1, 0.0, True)] * 4
    else:
        agg = [host.Step("torch.Tensor([0., 0.]).to(device): pageable copy, synchronised", 1, 0.0, True),
               host.Step("pipeline-group broadcast, two clones", 3, bcast + 2 * r.floor)]
        board = []
    log = [host.Step("loss added to the log's total", 1, r.floor), *board, timer("interval-time stop"),
           timer("interval-time start"), host.Step("average loss .item()", 1, 0.0, True),
           host.Step("torch.cuda.FloatTensor([0.0]): pageable copy, synchronised", 1, 0.0, True)]  # fmt: skip
    return [agg + log]


def seconds(segs: list[list[host.Step]], per_op: float) -> float:
    """The stretches' time: each replayed from an empty queue with the next launch after it, GPU time included."""
    return sum(host.replay(seg + [host.Step("next launch", 1, 0.0)], per_op) for seg in segs)


def per_rank_ms(scenario, st, ranks: int, norm_costed: bool) -> tuple[list[float], list[float]]:
    """Per pipeline rank, (the phases' extra timer syncs, the once-a-step stretches) in ms; zeros where neither
    loop runs or without kernel rates."""
    zero = [0.0] * ranks
    if st.rates is None or scenario.step is None or not (st.megatron_lm_loop or st.deepspeed_pipe):
        return zero, zero
    if st.deepspeed_pipe:
        return zero, [seconds(deepspeed_segments(scenario, st, k, ranks), st.host_op) * 1e3 for k in range(ranks)]
    p = scenario.pipeline
    chunks = p.stages // ranks
    phase = [megatron_phase_calls(st.interleaved, ranks, chunks, p.microbatches, k) * 2 * host.SYNC_WAIT * 1e3
             for k in range(ranks)]  # fmt: skip
    return phase, [seconds(megatron_segments(scenario, st, k, ranks, norm_costed), st.host_op) * 1e3
                   for k in range(ranks)]  # fmt: skip


def per_stage_ms(scenario, st, held: list[set[int]] | None,
                 norm_costed: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:  # fmt: skip
    """per_rank_ms spread over the stage copies each rank holds (``held``: derive.stage_ranks), so that a
    rank's optimizer figure, the sum over its copies, carries it once."""
    n = len(st.stages)
    if held is None or len(held) != n:
        return (0.0,) * n, (0.0,) * n
    ranks = len(set().union(*held))
    phase, once = per_rank_ms(scenario, st, ranks, norm_costed)
    copies: dict[int, int] = {}
    for h in held:
        for k in h:
            copies[k] = copies.get(k, 0) + 1
    owner = [min(h) for h in held]
    return (tuple(phase[k] / copies[k] for k in owner), tuple(once[k] / copies[k] for k in owner))
