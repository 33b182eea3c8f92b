"""What the last pipeline stage runs after the head each micro-batch: the loss, as the training loop that owns it
writes it (``model.training_loop``: "nemo-1", "nemo-2", "nemo-25.04", "nemo-2.4", "megatron-pretrain-gpt", "pai-megatron-patch";
docs/model.md, "NeMo 1's loss, micro-batch by micro-batch" and "The loss under NeMo 2, pretrain_gpt.py and
Pai-Megatron-Patch").

NeMo 1, ``"nemo-1"``: NVIDIA/NeMo ``nemo/collections/nlp/models/language_modeling/megatron_gpt_model.py`` at
v1.17.0_pt_23.04 (MLPerf v3.0), bd0b818 (v3.1) and 24.09-alpha.rc0 (v4.1), the same in what follows, and Megatron-core
``schedules.py`` @ df72712:

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

NeMo 2 to v2.3, ``"nemo-2"`` (MLPerf v5.0 Llama 3.1 405B: NeMo v2.2.0 7192a2c on Megatron-core core_r0.11.0),
``nemo/lightning/megatron_parallel.py`` ``MaskedTokenLossReduction.forward`` (lines 1713-1751), training and
evaluation alike (``llm/gpt/model/base.py`` line 454: ``val_drop_last`` at its default True):

* CP 1, ``masked_token_loss`` (lines 1791-1802): the mask's sum, ``if num_valid_tokens < 0.5`` (a compare and its read
  by the ``if``: a sync), mul, sum, divide; CP > 1, ``masked_token_loss_context_parallel`` (lines 1805-1819): the
  batch's token count (summed in ``get_batch``) compared and read, mul, sum, divide, an all-reduce of 4 bytes over the
  context-parallel group (line 1818);
* ``average_losses_across_data_parallel_group`` (line 1750; ``nlp/modules/common/megatron/utils.py`` lines 195-203):
  clone, cat, an all-reduce of 4 bytes over the data-parallel group, divide; ``loss_for_ub * cp_size`` (line 1751);
  Megatron-core's ``/ num_microbatches`` (core_r0.11.0 ``schedules.py`` line 294).

NeMo 25.04-alpha.rc2, ``"nemo-25.04"`` (MLPerf v5.0 Llama 3.1 405B on GB200: 5596af3 on Megatron-core 25.04-alpha.rc2;
s18g): v2.2.0's per-micro-batch all-reduces without its host read. ``masked_token_loss`` (lines 1913-1923): mul, sum, the
context-parallel all-reduce; ``forward`` (lines 1851-1873): the mask's sum at CP 1, the count's ``< 0.5``, ``+=``, clone,
int cast, the divide, ``average_losses_across_data_parallel_group`` (clone, cat, the data-parallel all-reduce, divide);
Megatron-core's ``/ num_tokens``, ``* cp``, ``/ num_microbatches`` (``schedules.py`` @ 53596ec lines 290-292).  No ``if`` on a
CUDA value, so no host read: under the rows' whole-iteration CUDA graph nothing here costs host time.

NeMo 2 from v2.4, ``"nemo-2.4"`` (MLPerf v5.1 rows: NeMo 25.09-alpha.rc1; eddf23f, Sep 2025, read):
``masked_token_loss`` returns the loss sum and the mask's sum (mul, sum, sum; lines 1840-1849), ``forward`` clones
the count to int and cats the report (clone, cast, clone, cat; lines 1786-1794) and returns three values, so
Megatron-core divides by the tokens and by the micro-batches (4cd81e8-era ``schedules.py``, as 1e05700 line 307): no
collective and no host read per micro-batch (``reduce``'s all-reduce and reads are once a step, not costed here).

Megatron-LM's ``pretrain_gpt.py``, ``"megatron-pretrain-gpt"`` (the ModelZoo rows: 1e05700 lines 198-257; 6a6cd478
lines 202-261 the same): mul, sum; with ``check_for_nan_in_loss_and_grad`` (default on: ``--no-check-for-nan-...``
turns it off, and no ModelZoo yaml does) ``validate_result`` evaluates ``torch.isnan`` and ``torch.isinf`` of the
loss under ``if result_rejected`` (``rerun_state_machine.py`` @ 1e05700 line 492, ``--rerun-mode`` default
``disabled``): two syncs; then the mask's sum, clone, int cast, clone, cat; Megatron-core divides by the tokens and the
micro-batches (``schedules.py`` @ 1e05700 line 307). No collective per micro-batch (the report is reduced once a step).

Pai-Megatron-Patch, ``"pai-megatron-patch"`` (the Pai and xtuner rows: 2b201af ``megatron_patch/template/helper.py``
lines 131-166 on Megatron-LM 6a6cd478): mul, sum, the mask's sum, stack; ``assert not loss.isnan().any()`` (isnan,
any, a read: a sync); ``average_losses_across_data_parallel_group`` of the two values (``megatron/training/utils.py``
@ 6a6cd478 lines 211-217: two clones, cat, an all-reduce of 8 bytes over the data-parallel group, divide), the
average's ratio, the loss's ratio, ``* context_parallel_size``; Megatron-core's ``*= cp`` and ``/ num_microbatches``
(6a6cd478 ``schedules.py`` lines 313-314).

Each sync empties the GPU's queue; the host's share after it is replayed at the per-call cost (host.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import collectives, host
from .kernels import Kernel, Table

TRAIN_KERNELS = 4 + 3 + 1  # the masked mean; the average's clone, cat, divide; / micro-batches
EVAL_KERNELS = 4 + 1 + 1 + 2 + 2 + 1  # the masked mean; mask sum; isnan; mul, clone; clone, cat; / micro-batches


@dataclass(frozen=True)
class Loss:
    """A loop's loss after NeMo 1's: ``before`` kernels queued before the first read, ``reads`` host reads (each an
    ``if`` on a CUDA scalar, the later ones one kernel each on the queue the one before emptied), ``after`` kernels
    launched on an idle GPU after the last; ``dp_bytes`` all-reduced over the data-parallel group (0: none),
    ``cp_reduce``: a 4-byte all-reduce over the context-parallel group; ``mask_sum``: one kernel more at CP 1."""

    label: str
    before: int
    reads: int
    after: int
    dp_bytes: int = 0
    cp_reduce: bool = False
    mask_sum: bool = False


LOSSES = {
    # compare (the mask's sum at CP 1 before it) | mul, sum, div, clone, cat, divide, * cp, / micro-batches
    "nemo-2": Loss("NeMo 2: masked mean, data-parallel average", 1, 1, 8, dp_bytes=4, cp_reduce=True, mask_sum=True),
    # mul, sum, < 0.5, +=, clone, int, divide, clone, cat, divide, / tokens, * cp, / micro-batches (mask sum at CP 1)
    "nemo-25.04": Loss("NeMo 25.04: masked sum, token count, data-parallel average", 13, 0, 0, dp_bytes=4,
                       cp_reduce=True, mask_sum=True),
    # mul, sum, sum, clone, int, clone, cat, / tokens, / micro-batches
    "nemo-2.4": Loss("NeMo 2: loss sum and tokens, / tokens, / micro-batches", 9, 0, 0),
    # mul, sum, isnan | isinf | mask sum, clone, int, clone, cat, / tokens, / micro-batches
    "megatron-pretrain-gpt": Loss("pretrain_gpt: loss sum, NaN / Inf checks, / tokens", 3, 2, 7),
    # mul, sum, sum, stack, isnan, any | clone, clone, cat, divide, ratio, ratio, * cp, *= cp, / micro-batches
    "pai-megatron-patch": Loss("Pai: loss and tokens, NaN check, data-parallel average", 6, 1, 9, dp_bytes=8),
}


LOOPS = ("nemo-1", *LOSSES)  # the model.training_loop values whose loss this module costs


def _group(tb: Table, ranks: int, kind: str) -> tuple[float, str]:
    """A few bytes all-reduced over the ``ranks`` of the layout's group ``kind``, placed by placement.group."""
    where = tb.group(kind)
    return collectives.small_all_reduce(ranks, where.per_node, tb.r.nccl), where.link


def rows(tb: Table, data: int, evaluation: bool, loop: str = "nemo-1") -> list[Kernel]:
    """The last stage's loss rows, per micro-batch, in ``mlp_forward``; ``data``: the data-parallel group (its ranks
    of one stage sit t x cp apart, Megatron's rank order)."""
    if loop != "nemo-1":
        return _rows(tb, data, LOSSES[loop])
    fw, floor = "mlp_forward", tb.r.floor
    reduce, link = _group(tb, data, "dp-cp")
    values = 2 if evaluation else 1
    tb.memory("loss: masked mean, data-parallel sum" + (" (validation)" if evaluation else ", / micro-batches"), fw,
              4 * 8.0, EVAL_KERNELS if evaluation else TRAIN_KERNELS)  # fmt: skip
    if data > 1:
        tb.rows.append(Kernel("loss all-reduce (data-parallel)", fw, "comm", f"all_reduce {values * 4} B over {data} "
                              f"({link})", 0.0, values * 4.0, reduce, "latency"))  # fmt: skip
    if evaluation:  # the three syncs, each on a queue the one before emptied; the next forward's launch after them
        seg = [host.Step("isnan read", 0, 0.0, sync=True), host.Step("loss sum: mul, clone", 2, 2 * floor),
               host.Step("torch.tensor of a CUDA scalar (read)", 1, 0.0, sync=True),
               host.Step(".cuda() (blocking copy)", 1, 0.0, sync=True),
               host.Step("clone, cat, all-reduce, / micro-batches", 4, 3 * floor + (reduce if data > 1 else 0.0))]
        tb.host_share("NeMo: validation loss reads", fw, [seg])
    return tb.rows


def _rows(tb: Table, data: int, loss: Loss) -> list[Kernel]:
    """A later loop's loss (``LOSSES``): its kernels at the floor, its all-reduces, its reads replayed; ``data``:
    data x context ranks (as the optimizer shards); the loss's group is Megatron's data-parallel one, without them."""
    fw, floor, cp = "mlp_forward", tb.r.floor, tb.lay.context
    before = loss.before + (loss.mask_sum and cp == 1)
    tb.memory(f"loss: {loss.label}", fw, 4 * 8.0, before + max(0, loss.reads - 1) + loss.after)
    comm, calls = 0.0, loss.after
    for name, ranks, kind, nbytes in (("context-parallel", cp if loss.cp_reduce else 1, "cp", 4),
                                      ("data-parallel", data // cp if loss.dp_bytes else 1, "dp", loss.dp_bytes)):
        if ranks > 1:
            secs, link = _group(tb, ranks, kind)
            tb.rows.append(Kernel(f"loss all-reduce ({name})", fw, "comm", f"all_reduce {nbytes} B over {ranks} "
                                  f"({link})", 0.0, float(nbytes), secs, "latency"))  # fmt: skip
            comm, calls = comm + secs, calls + 1
    if loss.reads:  # the first read drains the queue; each later one a kernel and a read; then the rest's launches
        seg = [host.Step("loss read", 0, 0.0, sync=True)]
        seg += [host.Step("loss read", 1, floor, sync=True) for _ in range(loss.reads - 1)]
        seg.append(host.Step("the rest of the loss, its all-reduces", calls, loss.after * floor + comm))
        tb.host_share("loss: host reads", fw, [seg])
    return tb.rows
