"""What Megatron-LM of 2021/2022 runs each micro-batch besides the layers (``model.training_loop`` resolved
"megatron-lm-2021", never under DeepSpeed's engine: deepspeed_pipe.py; docs/model.md, "Megatron-LM 2021/2022,
micro-batch by micro-batch").

Read from NVIDIA/Megatron-LM 6985e58 (the n21 runs) and d898a89 (May 2022; the same in what follows):

* ``schedules.forward_step`` calls ``pretrain_gpt.forward_step`` on every stage and every model chunk, whose
  ``get_batch`` loads the micro-batch on each (training.py builds a data iterator on every tensor rank 0 of every
  stage): get_batch.py's broadcasts, copies, masks and syncs;
* the last stage's ``loss_func``: the masked mean (mul, sum, loss-mask sum, div), then
  ``average_losses_across_data_parallel_group``: clone, cat, an fp32 all-reduce over the data-parallel group, a
  divide; then ``loss / num_microbatches``; before its backward ``optimizer.scale_loss`` (one mul);
* the timers: ``_Timer.start`` and ``stop`` call ``torch.cuda.synchronize()`` unconditionally (global_vars.py), around
  the forward ('forward-compute'), the load ('batch-generator'), the backward ('backward-compute') and each P2P call
  ('forward-send-backward-recv', ...), whatever ``--log-interval``: in the 1F1B schedule's steady state one P2P call
  follows each pass, in the interleaved schedule's one call follows each forward-backward pair (``schedules.py``
  lines 277-346), charged to the backward; the warm-up's and cool-down's further calls are per step (loop_step.py).
"""

from __future__ import annotations

from . import collectives, get_batch, host
from .kernels import Kernel, Table

LOSS_KERNELS = 4 + 2 + 1 + 1  # loss_func's mul, sum, sum, div; the average's clone, cat, divide; / num_microbatches


def timer(name: str) -> host.Step:
    """One ``_Timer.start`` or ``stop``: ``torch.cuda.synchronize()``, no launch."""
    return host.Step(f"{name} timer (synchronize)", 0, 0.0, sync=True)


def rows(tb: Table, first: bool, last: bool, data: int, interleaved: bool = False) -> list[Kernel]:
    """A stage's (a model chunk's) per-micro-batch rows: forward rows in ``mlp_forward``, backward rows in
    ``mlp_backward_input``, the host's share as kind ``host``; ``data``: the data-parallel group; ``interleaved``:
    the interleaved schedule's steady state, one P2P call a forward-backward pair, after the backward, on every chunk."""
    fw, bw = "mlp_forward", "mlp_backward_input"
    # the forward: timers on an empty queue (the P2P before it synchronised), then get_batch from an idle GPU, the
    # load's kernels drained by the batch-generator's stop; then the layers' launches
    load = [timer("forward-compute start"), timer("batch-generator start"), *get_batch.load(tb, fw, idle=True),
            timer("batch-generator stop")]  # fmt: skip
    if first:
        load += get_batch.vocab_masks(tb)
    fwd = [load]
    if last:
        tb.memory("loss: masked mean, data-parallel average, / micro-batches", fw, 4 * 8.0, LOSS_KERNELS)
        if data > 1:  # the data-parallel group (mpu/initialize.py; placement.group)
            dp = tb.group("dp-cp")
            secs = collectives.small_all_reduce(data, dp.per_node, tb.r.nccl)
            link = dp.link
            tb.rows.append(Kernel("loss all-reduce (data-parallel average)", fw, "comm",
                                  f"all_reduce 4 B over {data} ({link})", 0.0, 4.0, secs, "latency"))  # fmt: skip
        tb.memory("loss scaled (scale_loss)", bw, 2 * 4.0)
    # the forward's end: its stop, then in 1F1B the P2P call's two timers (none after the last stage's forward: it
    # sends nothing), each on the queue the one before emptied; the P2P's launch after them
    p2p = [timer("P2P start"), timer("P2P stop")]
    fwd.append([timer("forward-compute stop")] + ([] if last or interleaved else p2p))
    # the backward: its start timer, its first launch; its stop, then the P2P call's (none after the first stage's
    # in 1F1B; interleaved, send_forward_backward_recv_forward_backward is timed on every rank and chunk)
    back = [[timer("backward-compute start")],
            [timer("backward-compute stop")] + (p2p if interleaved or not first else [])]
    tb.host_share("Megatron-LM: host launches and syncs", fw, fwd)
    tb.host_share("Megatron-LM: host launches and syncs", bw, back)
    return tb.rows
