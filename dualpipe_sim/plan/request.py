"""A plan request checked and turned into the base scenario every candidate overrides.

The source is a scenario TOML (its [model], [hardware], [step], [comm] and
[memory] are kept; [pipeline] and [parallel]'s degrees are what ``plan`` chooses,
[parallel]'s runtime settings are kept and its expert_tensor pins, as
--set's) or an HF config.json.  Overrides apply to the base; one that sets a key
``plan`` enumerates pins that choice to its value.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import ScenarioError, shown
from ..model import derive
from ..model.config import ModelError
from ..model.hardware import PRESETS, unknown_preset_rule
from ..model.sections import ModelSection
from ..inputs.scenario import apply_overrides, load_raw, parse_override, unset_keys
from .space import Choices, ModelShape, Request

# [step] when the source gives none: the data-parallel sync, the DualPipe/Chimera copy sum and the
# optimizer all derived, the gradient sync started as each stage copy's weight gradients finish.
DERIVED_STEP = {"grad_sync": "derived", "cross_copy_sync": "derived", "optimizer": "derived",
                "overlap_grad_sync": True}  # fmt: skip

# --set keys that pin an enumerated choice: key -> Choices field
PINS = {"parallel.tensor": "tensor", "parallel.context": "context", "parallel.expert": "expert",
        "parallel.zero": "zero", "model.micro_batch_size": "micro_batch_size",
        "memory.recompute": "recompute", "pipeline.chunks_per_rank": "virtual",
        "parallel.expert_tensor": "expert_tensor"}  # fmt: skip
# keys plan sets itself: a --set of these is refused (say --schedules or a pin instead)
CHOSEN = ("pipeline.schedule", "pipeline.stages", "pipeline.microbatches", "parallel.data")
# [parallel] keys a source TOML keeps (docs/plan.md, "1. The base scenario"): how its runtime runs whatever the layout
# (the overlaps and their SMs, the NCCL CTA cap, the rank numbering), and expert_tensor, which plan does not search
# unless asked and so takes from the source as a pin (source_pins).  The others (tensor, pipeline, data, expert,
# context, zero, layout) are the layout, sized for the source's GPUs: plan chooses them.
KEPT_PARALLEL = ("tp_comm_overlap", "sequence_parallel", "pipeline_scatter_gather", "tp_overlap_sms",
                 "tp_overlap_atomic", "tp_overlap_ring_rs", "tp_overlap_not_told", "sync_tp_duplicated_parameters",
                 "tp_max_ctas", "rank_order", "expert_tensor")  # fmt: skip
LAYOUT_PARALLEL = ("tensor", "expert", "data", "context", "zero", "layout")  # a source's are dropped: plan's to choose


def source_pins(base: dict) -> list[str]:
    """What the source scenario states of an enumerated choice plan keeps, as the --set that pins it: a recompute
    policy (memory.recompute) and an expert tensor parallelism (parallel.expert_tensor)."""
    policy = base.get("memory", {}).get("recompute")
    etp = base.get("parallel", {}).get("expert_tensor")
    return [*([f'memory.recompute="{policy}"'] if isinstance(policy, str) else []),
            *([f"parallel.expert_tensor={etp}"] if etp is not None else [])]


def dropped_layout(source: str | Path, unset: list[str] = (), overrides: list[str] = ()) -> dict[str, object]:
    """The source TOML's [parallel] layout keys plan searches instead of keeping (LAYOUT_PARALLEL), in that order:
    those ``unset`` takes out and those an override sets are not dropped.  plan's header names them."""
    path = Path(source)
    if path.suffix == ".json":  # a model config states no layout
        return {}
    par = unset_keys(load_raw(path), unset).get("parallel", {})
    set_keys = {".".join(parse_override(o)[0]) for o in overrides}
    return {k: par[k] for k in LAYOUT_PARALLEL if k in par and f"parallel.{k}" not in set_keys}


class PlanError(ScenarioError):
    """A request no layout can serve; the message names the parameter.  Raised with ``field=`` one of
    plan()'s keywords (``gpus``, ``global_batch``, ``top``, ...) where the fault is that argument's, so
    that the CLI names the flag the user typed instead (cli.py, ``PLAN_FLAGS``)."""


def base_scenario(source: str | Path, hardware: str | None, seq: int, overrides: list[str],
                  unset: list[str] = ()) -> dict:
    """The scenario dict every candidate starts from: the source's keys less those ``unset`` names
    (unset_keys), plan's own, then ``overrides``."""
    path = Path(source)
    if path.suffix == ".json":
        if not path.is_file():
            raise PlanError(f"source: model config not found: {path}")
        unset_keys({}, unset)  # a config sets no scenario key, so each is already unset: its name is checked
        base: dict = {"model": {"config": str(path.resolve())}}
    else:
        base = unset_keys(load_raw(path), unset)
        if "model" not in base:
            raise PlanError(f"source: {path} has no [model] section (plan needs a model to lay out)")
        config = base["model"].get("config")
        if isinstance(config, str):
            base["model"]["config"] = str(Path(config).resolve())
    for key in ("pipeline", "chunk", "costs"):
        base.pop(key, None)
    # [parallel]: plan chooses the degrees and the stage split; switches such as tp_comm_overlap stay.
    kept = {k: v for k, v in base.pop("parallel", {}).items() if k in KEPT_PARALLEL}
    if kept:
        base["parallel"] = kept
    base["pipeline"] = {"schedule": "1f1b", "stages": 1, "microbatches": 1}  # every candidate sets these
    base["model"]["seq_length"] = seq
    if hardware is not None:
        if hardware not in PRESETS:
            raise PlanError(field="hardware", rule=unknown_preset_rule(hardware).replace(
                "preset", f"preset {shown(hardware)}", 1))
        base["hardware"] = {"preset": hardware}
    if "hardware" not in base:
        raise PlanError(field="hardware", rule="give a GPU preset or a [hardware] section in the scenario")
    base.setdefault("step", dict(DERIVED_STEP))
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in CHOSEN:
            raise PlanError(f"{key}: plan chooses it; narrow the schedules instead, or pin one of {', '.join(PINS)}")
    return apply_overrides(base, overrides)


def pinned_choices(overrides: list[str]) -> Choices:
    """The enumeration's choices, with every --set of an enumerated key pinned to its value."""
    choices = Choices()
    for text in overrides:
        parts, value = parse_override(text)
        name = PINS.get(".".join(parts))
        if name is not None:
            choices = replace(choices, **{name: (value,)})
        if name == "context":
            choices = replace(choices, min_context_tokens=1)
    return choices


def model_config(base: dict):
    """The base's model config; a ModelError (its line names the model.* field, as `run` says it) is a PlanError."""
    try:
        return derive.model_config(ModelSection.model_validate(base["model"]))
    except ModelError as exc:
        raise PlanError(str(exc)) from None


def model_shape(base: dict) -> ModelShape:
    cfg = model_config(base)
    return ModelShape(heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, layers=cfg.num_layers, experts=cfg.num_experts,
                      flash_attention=cfg.model_type != "gpt2",  # as model/activations.py counts
                      expert_ffn=cfg.moe_intermediate_size if cfg.moe else 0,
                      whole_experts=whole_experts(base, cfg))  # fmt: skip


def whole_experts(base: dict, cfg) -> str:
    """Why every candidate of this base must keep its experts whole (ETP 1), as model/derive.py's expert_tensor
    refuses more; '' when ETP > 1 is costed.  Judged once here, so that plan derives no row it would refuse."""
    hw = base["hardware"]
    if hw.get("efficiency") is not None or hw.get("preset") is None:
        return "more than 1 is costed by the kernel model only (a hardware.preset and no hardware.efficiency)"
    deepseek = base["model"].get("fp8_gemm") == "deepgemm" and base.get("memory", {}).get("recompute") == "deepseek"
    if cfg.fp8 and deepseek:  # model/derive.py's deepseek_runtime
        return "DeepSeek's runtime (model.fp8_gemm = \"deepgemm\", recompute \"deepseek\") keeps each expert whole"
    return ""


def check_sizes(gpus, global_batch, seq) -> None:
    """The request's three counts, each a whole number >= 1 (PlanError naming plan()'s keyword)."""
    for name, value in (("gpus", gpus), ("global_batch", global_batch), ("seq", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(field=name, rule=f"must be a whole number >= 1, got {shown(value)}")


def make_request(base: dict, gpus: int, global_batch: int, seq: int) -> Request:
    check_sizes(gpus, global_batch, seq)
    from ..model.sections import HardwareSection

    try:
        hw = derive.hardware(HardwareSection.model_validate(base["hardware"]))
    except (ModelError, ValueError) as exc:
        said = str(exc)  # a line that names its hardware.* key already needs no "hardware: " before it
        raise PlanError(said if said.startswith("hardware.") else f"hardware: {said}") from None
    return Request(gpus=gpus, global_batch=global_batch, seq=seq, gpus_per_node=hw.domain)


def device_memory(base: dict) -> float | None:
    from ..model.sections import HardwareSection

    section = HardwareSection.model_validate(base["hardware"])
    try:
        return derive.hardware(section).hbm_bytes or section.hbm
    except ModelError:
        return section.hbm
