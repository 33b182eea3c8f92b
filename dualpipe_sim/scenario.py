"""Scenario files: TOML in, a validated Scenario out, with one-line errors.

pydantic does the type and range checks so that every error names its field
(``costs.forward: must be > 0``); the few cross-field rules are checked here.
``--set a.b=value`` overrides are applied to the raw TOML before validation,
so they get exactly the same checks.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from . import limits, variability
from .costs import Component, CostModel
from .costs import Chunk as ChunkCosts


class ScenarioError(ValueError):
    """A scenario file or override breaks a rule; the message names the field."""


PositiveTime = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegTime = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PerStage = Union[PositiveTime, list[PositiveTime]]
PerStageNonNeg = Union[NonNegTime, list[NonNegTime]]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Pipeline(_Section):
    schedule: str
    stages: Annotated[int, Field(ge=1, le=4096)]
    microbatches: Annotated[int, Field(ge=1, le=1_000_000)]
    chunks_per_rank: Annotated[int, Field(ge=1, le=64)] | None = None

    @field_validator("stages", "microbatches", "chunks_per_rank", mode="before")
    @classmethod
    def _whole(cls, v):
        # TOML 8.0 must not silently become 8; "8" (a string) is not a number.
        if isinstance(v, bool) or isinstance(v, str) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("must be a whole number")
        return v


class Jitter(_Section):
    """Random per-op duration factors with mean 1 (variability.py)."""

    distribution: Literal[variability.DISTRIBUTIONS]
    cv: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @field_validator("cv")
    @classmethod
    def _cv_fits(cls, v, info):
        problem = variability.cv_problem(info.data.get("distribution", "lognormal"), v)
        if problem:
            raise ValueError(problem)
        return v


class Costs(_Section):
    forward: PerStage | None = None  # required unless [chunk] is given
    backward: PerStage | None = None
    weight: PerStageNonNeg | None = None
    overlapped: PerStage | None = None
    jitter: Jitter | None = None


class Comm(_Section):
    p2p: NonNegTime = 0.0
    p2p_mode: Literal["async", "blocking"] = "async"


class _ChunkShape(_Section):
    layers: Annotated[int, Field(ge=1, le=1000)]
    comm_compute_slowdown: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1.0

    @field_validator("layers", mode="before")
    @classmethod
    def _whole(cls, v):
        return Pipeline._whole(v)


# Component model: one stage = ``layers`` MoE layers; one key per costs.Component, its
# time per layer (all-to-all and weight-gradient parts may be 0, the others must be > 0).
Chunk = create_model(
    "Chunk",
    __base__=_ChunkShape,
    **{c.name: (NonNegTime if c.may_be_zero else PositiveTime, ...) for c in Component},
)


class Memory(_Section):
    activation: PerStageNonNeg = 1.0
    parameters: PerStageNonNeg = 1.0


class Limits(_Section):
    max_memory: Annotated[float, Field(gt=0, allow_inf_nan=False)] = limits.DEFAULT_MAX_MEMORY  # bytes


class Ranks(_Section):
    # rank -> factor its compute takes longer by; TOML: slowdown = { 3 = 1.2 }
    slowdown: dict[Annotated[int, Field(ge=0)], Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]] = {}


class Scenario(_Section):
    pipeline: Pipeline
    costs: Costs = Costs()
    chunk: Chunk | None = None
    comm: Comm = Comm()
    memory: Memory = Memory()
    limits: Limits = Limits()
    ranks: Ranks = Ranks()
    seed: Annotated[int, Field(ge=0, lt=2**64)] = 0

    @field_validator("seed", mode="before")
    @classmethod
    def _whole_seed(cls, v):
        return Pipeline._whole(v)

    def options(self) -> dict:
        """Schedule options taken from [pipeline] (each family uses the ones it declares)."""
        return {"chunks_per_rank": self.pipeline.chunks_per_rank}

    def cost_model(self) -> CostModel:
        S = self.pipeline.stages
        c = self.costs
        if self.chunk is not None:
            return self._chunk_cost_model()
        for name in ("forward", "backward"):
            if getattr(c, name) is None:
                raise ScenarioError(f"costs.{name}: required key is missing (or give a [chunk] table)")
        forward = _per_stage(c.forward, S, "costs.forward")
        backward = _per_stage(c.backward, S, "costs.backward")
        weight = (
            tuple(b / 2 for b in backward) if c.weight is None else _per_stage(c.weight, S, "costs.weight")
        )
        for s, (b, w) in enumerate(zip(backward, weight)):
            if w > b:
                raise ScenarioError(
                    f"costs.weight: must be <= costs.backward (B - W is the input-gradient part), "
                    f"got W={w} > B={b} at stage {s}"
                )
        return CostModel(
            forward=forward,
            backward=backward,
            weight=weight,
            overlapped=None if c.overlapped is None else _per_stage(c.overlapped, S, "costs.overlapped"),
            **self._shared_cost_fields(),
        )

    def _shared_cost_fields(self) -> dict:
        """Cost-model fields that do not depend on how compute is costed."""
        S = self.pipeline.stages
        return dict(
            p2p=self.comm.p2p,
            p2p_mode=self.comm.p2p_mode,
            variability=variability.from_scenario(self),
            activation_bytes=_per_stage(self.memory.activation, S, "memory.activation"),
            parameter_bytes=_per_stage(self.memory.parameters, S, "memory.parameters"),
        )

    def _chunk_cost_model(self) -> CostModel:
        # With [chunk], F, B, W and F&B come from the components; stating them
        # again in [costs] could only contradict them, so it is an error.
        for name, value in self.costs:
            if value is not None and name != "jitter":  # jitter scales whatever the durations are
                raise ScenarioError(
                    f"costs.{name}: must be left out when [chunk] is given (it is derived from the components)"
                )
        ch = self.chunk
        chunk = ChunkCosts(ch.layers, tuple(getattr(ch, c.name) for c in Component), ch.comm_compute_slowdown)
        return CostModel.from_chunk(self.pipeline.stages, chunk, **self._shared_cost_fields())


def _per_stage(value, stages: int, name: str) -> tuple[float, ...]:
    if isinstance(value, list):
        if len(value) != stages:
            raise ScenarioError(f"{name}: a per-stage list needs one value per stage ({stages}), got {len(value)}")
        return tuple(float(v) for v in value)
    return (float(value),) * stages


# -- loading ---------------------------------------------------------------------
def load_raw(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer over Python's 4300-digit limit
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not a scenario: arrays or tables nested too deeply to read") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. pipeline.stages=8")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except ValueError:  # TOMLDecodeError (or an integer too long to convert)
        value = raw  # bare words such as 1f1b or dualpipe
    except RecursionError:
        raise ScenarioError(f"--set {key}: value nested too deeply to read") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    data = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {text!r}: {part} is a value, not a table")
            node = child
        node[path[-1]] = value
    return data


def _deep_copy(d):
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def from_dict(data: dict) -> Scenario:
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_first_error(exc)) from None
    scenario.cost_model()  # cross-field rules raise here, before anything runs
    p = scenario.pipeline
    too_big = limits.size_problem(p.stages, p.microbatches, scenario.limits.max_memory)
    if too_big:  # refused before any schedule is built
        raise ScenarioError(too_big)
    return scenario


def load(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    return from_dict(apply_overrides(load_raw(path), overrides or []))


def _is_union_label(part) -> bool:
    return isinstance(part, str) and ("[" in part or "constrained" in part or part in ("float", "int", "list"))


def _first_error(exc: ValidationError) -> str:
    # For "number or per-stage list" fields pydantic reports both branches; the
    # deepest location is the branch that matched the input's shape.
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e["loc"]))  # max keeps the first among equals
    # Drop pydantic's union-branch labels ("float", "list[...]") from the path.
    loc = [str(p) for p in err["loc"] if not _is_union_label(p)]
    field = ".".join(loc) or "scenario"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return f"{field}: unknown key"
    if kind == "missing":
        return f"{field}: required key is missing"
    if kind in ("finite_number",):
        return f"{field}: must be a finite number, got {err.get('input')!r}"
    value = err.get("input")
    if isinstance(value, float) and math.isnan(value):
        return f"{field}: must be a number, got NaN"
    msg = msg.removeprefix("Value error, ")
    shown = repr(value)
    if len(shown) > 80:  # a hostile value must not turn the one error line into a page
        shown = shown[:60] + f"... ({len(shown)} characters)"
    return f"{field}: {msg[0].lower() + msg[1:]}, got {shown}"
