"""The ``dualpipe-sim model`` verb's answer: counts, FLOPs, activation bytes and the per-stage split.

:func:`summary` is the JSON document (keys ``parameters_total``,
``parameters_activated``, ``flops_per_token``, ``activation_bytes_per_layer``,
``stages`` and more; ``step_end`` with the scenario: model/step_end.py); :func:`text` prints it for
people, and with ``explain`` also how every derived number is obtained, the step's end item by item.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict

from .. import units
from ..schedules.components import Component
from . import activations, derive, flops, kernels, params, recompute, step_end, step_launches, validation_band
from .derive import Derived
from .sections import ParallelSection

COMPONENT_ORDER = tuple(c.name for c in Component)  # the [chunk] keys



# How each model.cross_entropy value runs the loss over the vocabulary (docs/model.md, "Kernel rates")
CROSS_ENTROPY_NOTES = {
    "megatron": "op by op on fp32 logits (Megatron's vocab_parallel_cross_entropy)",
    "megatron-fused": "Megatron's fused function (torch.compile)",
    "te": "Transformer Engine's Triton kernel on the 16-bit logits",
}

def band_of(scenario, cfg) -> validation_band.Band:
    """The validation band `run` reports beside this scenario's tokens/s (simulation.run): without a [step] table its
    throughput is the pipeline's alone, which no published run is, so none is given (validation_band.lookup)."""
    return validation_band.lookup(scenario.hardware, cfg.moe, scenario.step is not None)


def summary(d: Derived, scenario=None) -> dict:
    """The verb's JSON; with the ``scenario`` the figures derive from, ``step_end``: what `run` adds once per step
    (step_end.summary; null without a [step] table)."""
    st = d.setup
    cfg = st.cfg
    t = params.totals(cfg)
    f = flops.per_token(cfg, st.seq)
    args = (st.seq // st.context, st.mb, st.policy, st.act_bytes, st.sharding.tensor)
    per_layer = [activations.layer_total(cfg, i, *args, sp=st.sequence_parallel, modules=st.modules, legacy=st.legacy,
                                         etp=st.sharding.expert_tensor, fp4=st.fp4)
                 for i in range(cfg.num_layers)]
    stages = []
    for i, (stage, fig) in enumerate(zip(st.stages, d.stages)):
        row = {
            "stage": i,
            "layers": len(stage.layers),
            "first_layer": stage.layers[0] if stage.layers else None,
            "embedding": stage.embedding,
            "head": stage.head,
            "mtp": stage.mtp,
            # the model's count: a position table, norms and routers once, though every tensor rank holds them whole
            "parameters": derive.stage_dense_params(cfg, stage) + fig.routed_params,
            "parameters_routed": fig.routed_params,
            "parameter_bytes_per_rank": fig.static.parameters,
            "gradient_bytes_per_rank": fig.static.gradients,
            "optimizer_bytes_per_rank": fig.static.optimizer,
            "fp8_weight_bytes_per_rank": fig.static.fp8_weights,
            "sharding_buffer_bytes_per_rank": fig.sharding_buffers,
            "activation_bytes": fig.activation_bytes,
        }
        if fig.deepep_buffers:  # model.moe_dispatcher = "deepep" (or DeepSeek's runtime), a stage with MoE layers
            row["deepep_buffer_bytes_per_rank"] = fig.deepep_buffers
        if fig.forward is not None:
            row.update(forward_ms=fig.forward, backward_ms=fig.backward, weight_ms=fig.weight)
        if fig.fsdp_exposed is not None:  # ZeRO 3: part of forward_ms / backward_ms (model/fsdp.py)
            row["fsdp_exposed_ms"] = {"forward": fig.fsdp_exposed[0], "backward": fig.fsdp_exposed[1]}
        if fig.fsdp_slowed is not None:  # ZeRO 3 with step.dp_comm_sms: part of them too (derive._held)
            row["fsdp_slowed_ms"] = {"forward": fig.fsdp_slowed[0], "backward": fig.fsdp_slowed[1]}
        stages.append(row)
    out = {
        "model_type": cfg.model_type,
        "parameters_total": t.total,
        "parameters_activated": t.activated,
        "parameters_mtp": t.mtp,
        "parameters_by_kind": t.by_kind,
        "seq_length": st.seq,
        "micro_batch_size": st.mb,
        "recompute": st.policy,
        # the modules recomputed with "selective" (as given, or Megatron-core's default list); null with other policies
        "recompute_modules": list(recompute.DEFAULT if st.modules is None else st.modules)
        if st.policy == "selective" else None,
        "flops_per_token": {"forward": f.forward, "training": f.training, "six_n": f.six_n,
                            "attention": f.attention, "mtp_forward": f.mtp_forward},  # fmt: skip
        "activation_bytes_per_layer": per_layer,
        "stages": stages,
    }
    if scenario is not None:  # the layout and precision costed: parallel.*, and pipeline ranks beside the stages
        par = scenario.parallel or ParallelSection()
        out["parallel"] = {"tensor": par.tensor, "pipeline": st.pipeline, "stages": scenario.pipeline.stages,
                           "data": par.data, "context": par.context, "expert": par.expert,
                           "expert_tensor": par.expert_tensor, "rank_order": par.rank_order}  # fmt: skip
        out["precision"] = derive.precision(scenario.model, cfg)
    if st.hw is not None:
        out["hardware"] = {"name": st.hw.name, "efficiency": None if st.rates else st.efficiency,
                           "a2a_overhead_ms": st.a2a_overhead, "times": "kernels" if st.rates else "efficiency"}  # fmt: skip
        if st.gpu_spread is not None:  # hardware.gpu_variability: the slowest-of-N factor every kernel takes
            name, gpus, slow = st.gpu_spread
            out["hardware"]["gpu_variability"] = {"spread": name, "gpus": gpus, "factor": slow}
        out["p2p_ms"] = d.p2p
        out["p2p_nvlink_ms"] = d.p2p_nvlink  # a hand-off inside one NVLink domain (model/placement.py)
        if st.rates is not None:
            out["kernels"] = {name: [_kernel_row(k) for k in rows] for name, rows in kernel_tables(d).items()}
        if d.moe_layer is not None:
            out["chunk"] = {"layers": d.chunk_layers, **{k: getattr(d.moe_layer, k) for k in COMPONENT_ORDER}}
    if scenario is not None:
        out["step_end"] = step_end.summary(scenario, d)
        # how far off `run`'s tokens/s was on published runs of this class: reported, never applied
        out["validation_band"] = asdict(band_of(scenario, cfg))
    return out


def kernel_tables(d: Derived) -> dict[str, list[kernels.Kernel]]:
    """One micro-batch's kernels on one rank: a layer of each kind, and the extra modules the model has."""
    from .layout import Stage

    st = d.setup
    cfg = st.cfg
    out = {}
    for name, i in layer_kinds(cfg):
        out[name] = derive.layer_kernels(st, i)
    out["embedding"] = derive.extra_kernels(st, Stage((), embedding=True))
    out["head"] = derive.extra_kernels(st, Stage((), head=True))
    if cfg.mtp_layers:
        out["mtp module"] = derive.extra_kernels(st, Stage((), mtp=1))
    chunk = derive.chunk_kernels(st, st.stages[0])
    if chunk:
        out["per model chunk (stage 0)"] = chunk
    return out


def layer_kinds(cfg) -> list[tuple[str, int]]:
    """(name, the first such layer) per kind of layer (config.layer_kind), dense before MoE: "dense layer" or
    "moe layer", with its attention where the model has more than one kind (gpt-oss's sliding window or full
    attention; Llama 4's NoPE layers, full attention without rotary embedding)."""
    first: dict = {}
    for i in range(cfg.num_layers):
        first.setdefault(cfg.layer_kind(i), i)
    out = []
    for moe, nope, window in sorted(first, key=lambda k: (k[0], k[1], -k[2])):
        name = "moe layer" if moe else "dense layer"
        if nope:
            name += " (NoPE, full attention)"
        elif cfg.sliding_layers:
            name += f" (sliding window {window})" if window else " (full attention)"
        out.append((name, first[moe, nope, window]))
    return out


def _kernel_row(k: kernels.Kernel) -> dict:
    return {"kernel": k.name, "component": k.component, "kind": k.kind, "shape": k.shape, "flops": k.flops,
            "bytes": k.bytes, "ms": k.ms, "bound": k.bound}  # fmt: skip


def kernel_lines(name: str, rows: list[kernels.Kernel]) -> list[str]:
    """A block's kernel table for people: one line a kernel, then its passes and what bounds it."""
    # columns as wide as their longest entry, so long names and shapes do not push the numbers out of line
    wk = max([36] + [len(k.name) for k in rows])
    wc = max([21] + [len(k.component) for k in rows])
    ws = max([44] + [len(k.shape) for k in rows])
    lines = [f"  {name}: {len(rows)} kernels",
             f"    {'kernel':<{wk}} {'component':<{wc}} {'shape':<{ws}} {'GFLOP':>8} {'MB':>8} {'ms':>8}  bound"]
    for k in rows:
        lines.append(f"    {k.name:<{wk}} {k.component:<{wc}} {k.shape:<{ws}} {k.flops / 1e9:>8.4g} "
                     f"{k.bytes / 1e6:>8.4g} {k.ms:>8.4f}  {k.bound}")
    total = sum(k.ms for k in rows) or 1.0
    passes = ", ".join(f"{p.replace('_', ' ')} {ms:.4g} ms" for p, ms in kernels.passes(rows))
    share = {}
    for k in rows:
        share[k.bound] = share.get(k.bound, 0.0) + k.ms
    bounds = ", ".join(f"{b} {v / total:.0%}" for b, v in sorted(share.items(), key=lambda x: -x[1]))
    lines.append(f"    {passes}; time bound by {bounds}")
    return lines


def _b(n: float) -> str:
    return f"{n / 1e9:.2f} billion"  # not "B": it would read as bytes beside GB


def _gflop(n: float) -> str:
    return f"{units.number(n / 1e9)} GFLOP"


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def hand_typed(scenario) -> list[str]:
    """The scenario keys typed by hand that `run` uses instead of the derived figures."""
    out = [f"costs.{k}" for k, v in scenario.costs if v is not None and k != "jitter"]
    if scenario.chunk is not None:
        out.append("[chunk]")
    out += [f"comm.{k}" for k in ("p2p",) if k in scenario.comm.model_fields_set]
    out += [f"memory.{k}" for k in ("activation", "parameters") if k in scenario.memory.model_fields_set]
    return out


def text(d: Derived, explain: bool = False, typed: list[str] = (), scenario=None) -> str:
    s = summary(d)
    st = d.setup
    cfg = st.cfg
    kinds = ", ".join(f"{k} {_b(v)}" for k, v in s["parameters_by_kind"].items() if v)
    f = s["flops_per_token"]
    lines = [
        f"model {cfg.model_type}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads"
        + (f", {cfg.num_experts} experts (top-{cfg.experts_per_token})" if cfg.moe else "")
        + (f", {cfg.mtp_layers} MTP module(s)" if cfg.mtp_layers else "")
        + (f", attention: {len(cfg.sliding_layers)} sliding-window ({cfg.sliding_window} keys) and "
           f"{cfg.num_layers - len(cfg.sliding_layers)} full layers" if cfg.sliding_layers else "")
        + ((", NVFP4 linears" if st.fp4 else ", FP8 linears") if cfg.fp8 else ""),
        f"parameters: total {_b(s['parameters_total'])} (main model"
        + (", without MTP" if cfg.mtp_layers else "") + f"), activated per token {_b(s['parameters_activated'])}"
        # a lookup, not a matmul (docs/model.md); model cards' "activated" figures often count it
        + (f" (the embedding's {_b(emb)} not counted)" if (emb := s["parameters_by_kind"].get("embedding")) else "")
        + (f", MTP modules {_b(s['parameters_mtp'])}" if cfg.mtp_layers else ""),
        f"  by kind: {kinds}",
        f"FLOPs per token at seq_length {st.seq}: forward {_gflop(f['forward'])}, training {_gflop(f['training'])}"
        f" (6N {_gflop(f['six_n'])} + attention {_gflop(f['attention'])})",
    ]
    per_layer = s["activation_bytes_per_layer"]
    distinct = sorted(set(per_layer), key=per_layer.index)
    shown = ", ".join(f"layers {_ranges([i for i, v in enumerate(per_layer) if v == b])}: {_gb(b)}" for b in distinct)
    lines.append(
        f"activation bytes per layer (recompute {_policy_name(st)}, micro-batch {st.mb} x {st.seq} tokens, "
        f"tensor {st.sharding.tensor}): {shown}"
    )
    hw = st.hw is not None
    fp8 = any(row["fp8_weight_bytes_per_rank"] for row in s["stages"])  # run's "fp8 w" column, per stage here
    low = "fp4 w/rank" if st.fp4 else "fp8 w/rank"  # model.fp4: those copies are NVFP4 (docs/model.md)
    lines += ["", f"{'stage':>5} {'layers':>6} {'holds':<6} {'params':>9} {'param/rank':>10} {'grad/rank':>10} "
              f"{'optim/rank':>10}" + (f" {low:>10}" if fp8 else "") + f" {'act/micro-batch':>15}"
              + (f" {'F ms':>8} {'B ms':>8} {'W ms':>8}" if hw else "")]  # fmt: skip
    for row in s["stages"]:
        holds = ("E" if row["embedding"] else "") + ("m" * row["mtp"]) + ("L" if row["head"] else "")
        line = (f"{row['stage']:>5} {row['layers']:>6} {holds or '-':<6} {_b(row['parameters']):>9} "
                f"{_gb(row['parameter_bytes_per_rank']):>10} {_gb(row['gradient_bytes_per_rank']):>10} "
                f"{_gb(row['optimizer_bytes_per_rank']):>10}"
                + (f" {_gb(row['fp8_weight_bytes_per_rank']):>10}" if fp8 else "")
                + f" {_gb(row['activation_bytes']):>15}")  # fmt: skip
        if hw:
            line += f" {row['forward_ms']:>8.4g} {row['backward_ms']:>8.4g} {row['weight_ms']:>8.4g}"
        lines.append(line)
    # what the columns hold: a rank of a two-stage schedule (DualPipe, interleaved) adds its stages' figures
    lines.append("holds: E the embedding, m an MTP module, L the output head; /rank and act/micro-batch: one stage's "
                 "share on each of its GPUs (a rank holding several stages adds them up: `run`'s memory table)")
    if hw:
        how = "from kernels" if st.rates else f"efficiency {st.efficiency}"
        if st.gpu_spread is not None:
            how += f", x{st.gpu_spread[2]:.4f}: the slowest of {st.gpu_spread[1]} GPUs ({st.gpu_spread[0]} spread)"
        lines.append(f"\nP2P per activation: {d.p2p:.4g} ms on {st.hw.name}, {how}")
        lines.append(f"  across the NIC; {d.p2p_nvlink:.4g} ms between pipeline neighbours in one NVLink domain of "
                     f"{st.hw.domain} GPUs (parallel.rank_order places them)")
        if d.moe_layer is not None:
            comps = ", ".join(f"{k} {getattr(d.moe_layer, k):.3g}" for k in COMPONENT_ORDER)
            lines.append(f"[chunk] per MoE layer (ms), layers = {d.chunk_layers}: {comps}")
    notes = list(d.notes)
    if "[chunk]" in typed and hw and cfg.moe:  # inputs/scenario.py: the typed layer, each stage by its layout
        notes.append("`run` costs each stage as its layout holds it: its MoE layers with the typed [chunk] "
                     "(per layer), its dense layers, embedding, head and MTP modules derived (the F, B, W ms above derive "
                     "the MoE layers too)")
    if cfg.moe and st.sharding.tensor > 1 and st.sharding.expert_tensor == 1:  # docs/model.md, "Expert tensor parallelism"
        notes.append(f"tensor {st.sharding.tensor} with MoE: each expert is costed whole on its rank (expert tensor "
                     "parallelism 1, Megatron-core's --expert-tensor-parallel-size 1, parallel.expert_tensor's default; "
                     f"Megatron-core's own default is ETP = TP: set parallel.expert_tensor = {st.sharding.tensor} for it)")
    lines += [f"note: {n}" for n in notes]
    if typed:
        lines.append(f"note: `run` uses the scenario's hand-typed {', '.join(typed)} instead of the derived figures")
    if scenario is not None:  # `run`'s tokens/s against published runs of its class (not applied)
        lines.append(validation_band.describe(band_of(scenario, cfg)))
    if explain:
        lines += ["", *explain_lines(d)]
        if scenario is not None:
            lines += step_end_lines(step_end.summary(scenario, d))
    return "\n".join(lines)


def _by_stage(what: str, values: list[float], fmt) -> str:
    """``what`` per stage as runs of equal values: "ms by stage 0: 1.2, 1-6: 0.98, 7: 1.5" ("ms 1.2, every stage")."""
    shown = [fmt(v) for v in values]
    if len(set(shown)) == 1:
        return f"{what} {shown[0]}" + (", every stage" if len(shown) > 1 else "")
    out, start = [], 0
    for i in range(1, len(shown) + 1):
        if i == len(shown) or shown[i] != shown[start]:
            out.append(f"{_ranges(list(range(start, i)))}: {shown[start]}")
            start = i
    return f"{what} by stage " + ", ".join(out)


def _ms(v: float) -> str:
    return f"{v:.4g}"


def _size(n: float) -> str:
    return "0" if n == 0 else f"{n / 1e9:.4g} GB" if n >= 1e9 else f"{n / 1e6:.4g} MB"


def step_end_lines(end: dict | None) -> list[str]:
    """The step's end for people: each part of `run`'s [step] figures, per stage copy, then the figures."""
    if end is None:
        return ["", "  the step's end: no [step] table, so `run` adds nothing after the pipeline "
                '(step.grad_sync = "derived" costs it from the model)']
    if "error" in end:  # `run` refuses this [step] table; the model is still described
        return ["", f"  the step's end: not costed, `run` would refuse the scenario: {end['error']}"]
    sync = f"overlapped, launch {end['grad_sync_launch']}" if end["overlap_grad_sync"] else "after the pipeline"
    gather = "overlapped with the next forward" if end["overlap_param_gather"] else "not overlapped"
    settings = f"grad sync {sync}, parameter gather {gather}, step.dp_comm_sms {end['dp_comm_sms']}"
    lines = ["", "  the step's end, once per step, per stage copy (docs/step.md):", f"    {settings}"]
    for it in end["items"]:
        lines.append(f"    {it['name']} [{it['figure']}]: {it['group']}; {it['link']}; bound by {it['bound']}")
        size = f"{_by_stage('size', it['bytes'], _size)}; " if any(it["bytes"]) else ""
        lines.append(f"      {size}{_by_stage('ms', it['ms'], _ms)}")
        lines.append(f"      {it['rule']}")
    derived = set(end["derived"])
    for key, values in end["figures_ms"].items():
        how = "derived: the sum of its parts above" if key in derived else "as the scenario gives it"
        lines.append(f"    run's step.{key} ({how}): {_by_stage('ms', values, _ms)}")
    host = end.get("host_launches")
    if host:  # model/step_launches.py: counted from the code, no host time per launch behind them
        lines.append(f"    host launches after the loss's > 0 read: {host['after_loss_read']} (the GPU waits for each: "
                     f"{host['shard_pieces']} gradient copies, the norm's {host['norm_launches']} l2norm launches and "
                     f"{step_launches.NORM_FIXED} other calls); after the norm's .item(): {host['after_norm_read']} (Adam "
                     f"{host['adam_launches']}, {host['fp8_pieces']} FP8 pieces' casts, the 16-bit copies); "
                     "not costed: no measured host time per launch (docs/validation.md)")
    if end["dp_comm_slowdown"]:
        lines.append(f"    compute beside a data-parallel collective runs slower ({end['dp_comm_sms']} SMs taken, "
                     f"step.dp_comm_sms): {_by_stage('x', end['dp_comm_slowdown'], lambda v: f'{v:.4g}')}")
        if not (end["overlap_grad_sync"] or end["overlap_param_gather"]):  # the syncs start after the compute
            lines.append("      (nothing overlaps them here: the gradient reduction follows the pipeline)")
    return [_fit(line) for line in lines]


def _fit(line: str, width: int = 140) -> str:
    """A long line broken at spaces to ``width`` columns, its continuation indented two more than the line."""
    if len(line) <= width:
        return line
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _p2p_split(st) -> str:
    """How much of the boundary tensor each rank sends (derive.p2p_ms)."""
    if st.sharding.tensor == 1:
        return ""
    if st.sequence_parallel:
        return f"/ tensor {st.sharding.tensor} (sequence parallel) "
    if st.scatter_gather:
        return f"/ tensor {st.sharding.tensor} (scatter-gather) "
    return "(whole: no sequence parallelism) "


def _ranges(xs: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i == len(xs) - 1 or xs[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


def explain_lines(d: Derived) -> list[str]:
    """How each derived number is obtained (formulas with this model's figures)."""
    st = d.setup
    cfg, sh = st.cfg, st.sharding
    lines = ["how these are derived (docs/model.md has the sources):"]
    lines += [f"  config default taken: {text}" for text in cfg.defaults_taken]
    lines += [f"  read, not costed: {text}" for text in cfg.not_costed]
    sharded = "nothing" if sh.zero == 0 else ["", "optimizer", "optimizer, gradients",
                                              "optimizer, gradients, parameters"][sh.zero]  # fmt: skip
    if cfg.moe:
        etp = f" x expert_tensor ({sh.expert_tensor})" if sh.expert_tensor > 1 else ""
        lines.append(f"  parameters per rank: dense part / tensor ({sh.tensor}), routed experts / expert ({sh.expert})"
                     f"{etp}; ZeRO {sh.zero} shards {sharded} over data ({sh.data}) for the dense part and data x "
                     f"tensor / expert{' x expert_tensor' if etp else ''} ({sh.expert_data:g}) for experts")  # fmt: skip
    else:  # a dense model: no expert figures to explain
        lines.append(f"  parameters per rank: parameters / tensor ({sh.tensor}); ZeRO {sh.zero} shards {sharded} "
                     f"over data ({sh.data})")  # fmt: skip
    fp8_held = " (the FP8 linears' weights 1: model.fp8_params)" if sh.fp8 and sh.fp8_params else ""
    lines.append(f"  bytes per parameter: parameters {sh.params_bytes:g}{fp8_held}, gradients {sh.grads_bytes:g}, "
                 f"optimizer {sh.optimizer_bytes:g} (fp32 master if kept + two Adam moments)")
    kinds = sorted({cfg.is_moe_layer(i) for i in range(cfg.num_layers)})
    for moe in kinds:  # a sliding-window layer keeps what a full one does (activations.py)
        i = next(i for i in range(cfg.num_layers) if cfg.is_moe_layer(i) == moe)
        saved = activations.layer(cfg, i, st.seq, st.mb, st.policy, st.act_bytes, sh.tensor, st.sequence_parallel,
                                  st.modules, st.legacy, sh.expert_tensor, st.fp4)
        lines.append(f"  activations saved by one {'MoE' if moe else 'dense'} layer (layer {i}), "
                     f"recompute {_policy_name(st)}:")
        lines += [f"    {name:<40} {v / 1e6:>10.2f} MB" for name, v in saved.items()]
        lines.append(f"    {'total':<40} {sum(saved.values()) / 1e6:>10.2f} MB")
    if st.rates is not None:
        r = st.rates
        lines.append(
            f"  times from kernels on {r.name} (docs/model.md, 'Kernel-level costs'): GEMMs by tile/wave model "
            f"({r.sms} SMs, achievable {r.gemm_bf16.peak / 1e12:g} TFLOP/s BF16"
            + (f", {r.gemm_fp8.peak / 1e12:g} FP8" if r.gemm_fp8 else "")
            + (f", {r.gemm_fp4.peak / 1e12:g} NVFP4" if r.gemm_fp4 and st.fp4 else "")
            + f"), flash attention {r.attention_forward / 1e12:g} / {r.attention_backward / 1e12:g} TFLOP/s "
            f"forward / backward at long sequences, memory-bound kernels at {r.hbm / 1e12:.3g} TB/s"
            + (f" (FP8 cast-transposes at {r.hbm * st.cast_transpose_share / 1e12:.3g}: TE v0.7-v1.6's kernel, "
               "model.te_cast_transpose)" if st.cast_transpose_share != 1.0 else "") + ", "
            f"every kernel at least {r.floor * 1e6:g} us; collectives {r.latency * 1e6:g} us + bytes / "
            f"{r.nvlink_bus / 1e9:g} GB/s (NVLink) or {r.nic_bus / 1e9:g} GB/s (NIC)"
            + ("; NVLink all-reduce / all-gather / reduce-scatter at the bus bandwidth measured at their size"
               if r.nvlink_curve else "") + "; "
            f"tensor-parallel overlap {'on' if st.tp_overlap else 'off'}"
            + ("; Megatron-LM 2021's separate bias and gradient-accumulation kernels (model.runtime)"
               if st.legacy else "")
            + f"; vocabulary cross-entropy {CROSS_ENTROPY_NOTES[st.cross_entropy]} (model.cross_entropy)"
            + _runtime_notes(st)
        )
        for name, rows in kernel_tables(d).items():
            lines += kernel_lines(name, rows)
        gather = (f" + all-gather of the whole tensor over {sh.tensor} ranks (NVLink, pipeline scatter-gather)"
                  if st.scatter_gather and not st.sequence_parallel and sh.tensor > 1 else "")
        lines.append(f"  P2P = {r.latency * 1e6:g} us + {st.act_bytes:g} B x {st.tokens} tokens x {cfg.hidden_size} "
                     f"{_p2p_split(st)}/ {r.nic_bus / 1e9:g} GB/s{gather} = {d.p2p:.4g} ms")
    elif st.hw is not None:
        hw = st.hw
        lin = hw.peak(cfg.fp8) / 1e12
        lines.append(
            f"  time = FLOPs / (peak x efficiency): linears at {lin:g} TFLOP/s ({'FP8' if cfg.fp8 else 'BF16'}), "
            f"attention core and head at {hw.bf16_tflops:g} (BF16), efficiency {st.efficiency}; "
            f"causal flash attention does half the s x s work, its backward 2.5x its forward"
        )
        for name, i in layer_kinds(cfg):
            lf = flops.layer(cfg, i, st.seq)
            n = st.tokens / sh.tensor
            if cfg.window(i):
                extent = f"window of {flops.attended_keys(cfg, i, st.seq)} keys a query"
            else:
                extent = "chunks' squares" if flops.attention_keys(cfg, i, st.seq) < st.seq else "full square"
            lines.append(f"  {name.replace('moe', 'MoE', 1)} forward FLOPs per micro-batch: attention linears "
                         f"{_gflop(n * lf.attn_linear)}, attention core {_gflop(n * lf.attn_core)} ({extent}), "
                         f"MLP {_gflop(n * lf.mlp)}")
            t = derive.layer_times(st, i)
            lines.append("    times (ms): " + ", ".join(f"{k} {getattr(t, k):.3g}" for k in COMPONENT_ORDER
                                                       if getattr(t, k)))  # fmt: skip
        if d.moe_layer is not None:
            b = derive.a2a_bytes(st)
            lines.append(
                f"  all-to-all = overhead {st.a2a_overhead} ms + bytes / {hw.a2a_gbps:g} GB/s "
                f"(NIC: {'one copy per remote node a token reaches, DeepEP' if st.dispatcher == 'deepep' or st.deepseek_kernels else 'every (token, expert) copy bound for another node, NCCL'}): "
                + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in b.items())
            )
        lines.append(f"  P2P = {st.act_bytes:g} B x {st.tokens} tokens x {cfg.hidden_size} {_p2p_split(st)}"
                     f"/ {hw.p2p_gbps:g} GB/s = {d.p2p:.4g} ms")
    lines.append(f"  recompute {_policy_name(st)}: " + {
        "none": "nothing recomputed",
        "selective": _selective_note(st),
        "full": "each layer's forward rerun in its backward; only layer inputs kept",
        "deepseek": "RMSNorms and MLA up-projections rerun in the backward (DeepSeek-V3 Sec. 3.2.3)",
    }[st.policy])
    return lines


def _selective_note(st) -> str:
    """What "selective" reruns, as the runtime checkpoints it (model/recompute.py)."""
    if st.modules is not None:
        return ("Megatron-core's --recompute-modules rerun in the input gradient: each module's forward kernels "
                "again in its block's I component ('(recompute)' rows where part of a block reruns; model/recompute.py)")
    if st.cfg.eager_attention:
        return "attention core recomputed (Korthikanti et al.: the s x s scores not kept)"
    if st.legacy:
        return "nothing rerun: Megatron-LM's own flash-attention path is not checkpointed (model/recompute.py)"
    return ("attention core recomputed: Megatron-core checkpoints the flash core too, whose forward reruns in the "
            "input gradient to free only its log-sum-exp (model/recompute.py)")


def _policy_name(st) -> str:
    """memory.recompute, with Megatron-core's modules when the scenario names them."""
    return st.policy if st.modules is None else f"{st.policy} ({', '.join(st.modules) or 'no modules'})"


def _runtime_notes(st) -> str:
    """What the scenario says its runtime ran: the attention core and, for MoE, the experts' launch."""
    out = f"; attention {'eager (scores in memory)' if st.cfg.eager_attention else 'flash'} (model.attention)"
    if st.cfg.moe:
        launch = {0: "one grouped kernel", 1: "one expert at a time"}.get(
            st.expert_streams, f"one GEMM per expert on {st.expert_streams} streams")
        out += f"; expert GEMMs {launch} (model.expert_gemm)"
        out += ", aux loss on (model.moe_aux_loss)" if st.aux_loss else ""
        out += (f"; host {st.host_op * 1e6:.3g} us per PyTorch call, {st.dispatcher} dispatcher's syncs "
                "(model.host_overhead_us, model.moe_dispatcher)" if st.host_op > 0 else
                "; host launches not costed (model.host_overhead_us)")
    if st.layout.te_fp8:  # Transformer Engine's FP8 linears: whether its casts write the transposes too
        out += ("; FP8 transposes kept (TN-only FP8 GEMMs): written by the cast where TE's quantizer asks for them, "
                "else a transpose kernel of its own (model.fp8_transpose)" if st.fp8_transpose else
                "; no FP8 transposes: the backward GEMMs read the row-wise FP8 data (model.fp8_transpose)")
    return out
