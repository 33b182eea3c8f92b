"""What NeMo 1's MegatronGPTModel runs on the last pipeline stage after the head, each micro-batch: the loss
(``model.training_loop = "nemo-1"``; docs/model.md, "NeMo 1's loss, micro-batch by micro-batch").

Read in NVIDIA/NeMo ``nemo/collections/nlp/models/language_modeling/megatron_gpt_model.py`` at v1.17.0_pt_23.04 (MLPerf
v3.0), bd0b818 (v3.1) and 24.09-alpha.rc0 (v4.1), the same in what follows, and Megatron-core ``schedules.py`` @ df72712:

* ``loss_func``: the masked mean of the per-token losses (mul, sum, the mask's sum, divide; the ``.float()`` casts of
  fp32 tensors launch nothing); Megatron-core's ``forward_step`` then divides by the micro-batch count (line 233);
* training, and evaluations with ``validation_drop_last: True``: ``average_losses_across_data_parallel_group``
  (clone, cat, an all-reduce of 4 bytes over the data-parallel group, divide; bd0b818 ``modules/common/megatron/
  utils.py`` lines 171-179);
* evaluations with ``validation_drop_last: False`` (every MLPerf GPT-3 config: ``conf/custom.yaml``): the mask's sum
  again (v1.17 / bd0b818; 24.09 reuses the one its batch holds), ``loss_for_ub.isnan()`` read by an ``if`` (a host
  sync), the loss sum (mul, clone), ``torch.tensor([num_valid_tokens_in_ub])`` of a CUDA scalar (a host read: a sync),
  ``.cuda()`` of that CPU tensor (a blocking copy: a sync), clone, cat and an all-reduce of 8 bytes over the
  data-parallel group (v1.17 lines 610-633, bd0b818 lines 817-845, 24.09 lines 1330-1350).

Each sync empties the GPU's queue; the host's share after it is replayed at the per-call cost (host.py).
"""

from __future__ import annotations

from . import collectives, host
from .kernels import Kernel, Table

TRAIN_KERNELS = 4 + 3 + 1  # the masked mean; the average's clone, cat, divide; / micro-batches
EVAL_KERNELS = 4 + 1 + 1 + 2 + 2 + 1  # the masked mean; mask sum; isnan; mul, clone; clone, cat; / micro-batches


def rows(tb: Table, data: int, evaluation: bool) -> list[Kernel]:
    """The last stage's loss rows, per micro-batch, in ``mlp_forward``; ``data``: the data-parallel group (its ranks
    of one stage sit t apart, Megatron's rank order: gpus_per_node / t of them a node)."""
    fw, floor = "mlp_forward", tb.r.floor
    per_node = max(1, min(data, tb.r.gpus_per_node // tb.lay.tensor))
    reduce = collectives.small_all_reduce(data, per_node, tb.r.nccl)
    values = 2 if evaluation else 1
    tb.memory("loss: masked mean, data-parallel sum" + (" (validation)" if evaluation else ", / micro-batches"), fw,
              4 * 8.0, EVAL_KERNELS if evaluation else TRAIN_KERNELS)  # fmt: skip
    if data > 1:
        link = "nvlink" if data <= per_node else "nic"
        tb.rows.append(Kernel("loss all-reduce (data-parallel)", fw, "comm", f"all_reduce {values * 4} B over {data} "
                              f"({link})", 0.0, values * 4.0, reduce, "latency"))  # fmt: skip
    if evaluation:  # the three syncs, each on a queue the one before emptied; the next forward's launch after them
        seg = [host.Step("isnan read", 0, 0.0, sync=True), host.Step("loss sum: mul, clone", 2, 2 * floor),
               host.Step("torch.tensor of a CUDA scalar (read)", 1, 0.0, sync=True),
               host.Step(".cuda() (blocking copy)", 1, 0.0, sync=True),
               host.Step("clone, cat, all-reduce, / micro-batches", 4, 3 * floor + (reduce if data > 1 else 0.0))]
        tb.host_share("NeMo: validation loss reads", fw, [seg])
    return tb.rows
