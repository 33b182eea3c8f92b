"""Sweep grids: axes (a scenario key and its values) and the points of their product.

A point is nothing more than a list of overrides ``key=value`` (scenario.py)
applied to the base scenario, so every value gets exactly the checks a
scenario file's value gets.  An :class:`Axis` keeps each value both as parsed
and as override text.  (The CLI's ``KEY=a,b,c`` / ``start:stop:step`` text
syntax is cli.py's; it builds the same axes.)
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from ..schedules import registry
from ..inputs.scenario import Scenario, ScenarioError, apply_overrides, from_dict, oddities
from ..errors import cut, shown

MAX_POINTS = 1_000_000  # a guard against a typo such as a range of 1e9 values


@dataclass(frozen=True)
class Axis:
    """One grid key and its values: ``texts`` as override text, ``values`` as parsed;
    ``source`` is where the axis was typed (``--grid pipeline.stages=4,8``), for error lines."""

    key: str
    texts: tuple[str, ...]
    values: tuple[object, ...]
    source: str = field(default="", compare=False)

    def where(self, text: str | None = None) -> str:
        """The end of an error line about the axis (or one of its values, ``text``): the field
        comes first, this names where it came from, e.g. `` (in --grid pipeline.stage=4,8)``."""
        if self.source:
            return f" (in {cut(self.source)})"
        return f" (grid value {cut(self.key)}={cut(text)})" if text is not None else f" (grid axis {cut(self.key)})"

    @classmethod
    def of(cls, key: str, values: Iterable) -> "Axis":
        """An axis from Python values (numbers, strings, booleans, lists, tables)."""
        values = tuple(values)
        return cls(key, tuple(toml_text(v) for v in values), values)

    def override(self, i: int) -> str:
        return f"{self.key}={self.texts[i]}"


@dataclass(frozen=True)
class Point:
    """One scenario of the sweep: its position in the product and the overrides that make it."""

    index: int
    overrides: tuple[str, ...]
    values: tuple[object, ...]  # one per axis, in axis order


def toml_text(value) -> str:
    """A value as the TOML an override reads back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_text(v)}" for k, v in value.items()) + "}"
    raise ScenarioError(f"grid: cannot use {shown(value)} ({type(value).__name__}) as a scenario value")


def make_axes(grid: Mapping[str, Iterable] | Iterable[Axis]) -> list[Axis]:
    """``{key: values}`` (or ready axes) -> checked axes: a key once, each value once,
    at least one value, at most MAX_POINTS points.  Raises ScenarioError naming the key."""
    axes = [Axis.of(k, v) for k, v in grid.items()] if isinstance(grid, Mapping) else list(grid)
    keys = [a.key for a in axes]
    for axis in axes:
        if not axis.key or any(not part.strip() for part in axis.key.split(".")):
            raise ScenarioError(f"grid: {shown(axis.key)} is not a dotted scenario key such as pipeline.stages")
        if keys.count(axis.key) > 1:
            raise ScenarioError(f"{cut(axis.key)}: the key is given twice in the grid; put all its values in one axis")
        if not axis.values:
            raise ScenarioError(f"{cut(axis.key)}: a grid axis needs at least one value")
        seen: set[str] = set()
        for text, value in zip(axis.texts, axis.values):
            if repr(value) in seen:
                raise ScenarioError(f"{cut(axis.key)}: value {cut(text)} appears twice in the grid{axis.where(text)}")
            seen.add(repr(value))
    total = 1
    for axis in axes:
        total *= len(axis.values)
    if total > MAX_POINTS:
        raise ScenarioError(f"grid: {total} points, more than the {MAX_POINTS} a sweep takes")
    return axes


def points(axes: list[Axis]) -> list[Point]:
    """The product of the axes, first axis slowest; ``index`` is the row order of results.csv."""
    result = []
    for index, combo in enumerate(itertools.product(*(range(len(a.texts)) for a in axes))):
        result.append(
            Point(
                index,
                tuple(a.override(i) for a, i in zip(axes, combo)),
                tuple(a.values[i] for a, i in zip(axes, combo)),
            )
        )
    return result


def check_against(base: dict, axes: list[Axis]) -> None:
    """Reject grid values that are wrong whatever the rest of the point is.

    ``base`` (scenario file plus overrides) must be a valid scenario on its own.
    Then each grid value is applied alone to it: a type or range error there
    (an unknown key, stages=a, forward=-1) or an unknown schedule name is the
    value's fault and stops the sweep before it starts.  Rules that depend on
    the combination (a schedule's shape constraints, a per-stage list whose
    length must match the stage count) are left to each point.
    """
    scenario = from_dict(base)
    known = registry.families()
    if base["pipeline"]["schedule"] not in known and "pipeline.schedule" not in {a.key for a in axes}:
        registry.get(base["pipeline"]["schedule"])  # raises the usual unknown-schedule error
    schedule_axis = next((a for a in axes if a.key == "pipeline.schedule"), None)
    names = [str(v) for v in schedule_axis.values] if schedule_axis else [scenario.pipeline.schedule]
    options = dict(scenario.options())
    for axis in axes:  # an option swept on its own axis counts as set
        option = axis.key.removeprefix("pipeline.")
        if axis.key.startswith("pipeline.") and option in options:
            options[option] = axis.values[0]
    problem = registry.unused_option(names, options)
    if problem is not None:
        # Named by the option's own axis if it is swept, else by the schedules' axis, if any.
        blamed = next((a for a in axes if a.key == problem.field), schedule_axis)
        raise ScenarioError(field=problem.field, rule=problem.rule + (blamed.where() if blamed else ""))
    for axis in axes:
        for text in axis.texts:
            data = apply_overrides(base, [f"{axis.key}={text}"])
            try:
                Scenario.model_validate(data)
            except ValidationError:
                try:
                    from_dict(data)
                except ScenarioError as exc:
                    raise ScenarioError(f"{exc}{axis.where(text)}") from None  # exc starts with its field
            if axis.key == "pipeline.schedule" and data["pipeline"]["schedule"] not in known:
                raise ScenarioError(
                    f"pipeline.schedule: unknown schedule {shown(data['pipeline']['schedule'])}; "
                    f"known: {', '.join(known)}{axis.where(text)}"
                )


@dataclass(frozen=True)
class Oddity:
    """A scenario.oddities() warning across a grid: its line at the first point it
    holds for (``example``) and every point it holds for (``points``, grid order)."""

    key: str  # the scenario key the line starts with, e.g. costs.overlapped
    text: str
    example: Point
    points: tuple[Point, ...]


def grid_oddities(base: dict, grid_points: list[Point]) -> list[Oddity]:
    """scenario.oddities() of every point, one Oddity per kind of warning (the same
    line but for its numbers, which differ from point to point), in order of first appearance.  A
    point that is not a valid scenario is passed over: its row says why."""
    found: dict[str, list] = {}
    for point in grid_points:
        try:
            lines = oddities(from_dict(apply_overrides(base, list(point.overrides))))
        except ScenarioError:
            continue
        for line in lines:
            found.setdefault(_shape(line), [line, point, []])[2].append(point)
    return [Oddity(text.partition(":")[0], text, example, tuple(pts)) for text, example, pts in found.values()]


def _shape(line: str) -> str:
    """A warning without its numbers: one warning however its figures vary over the grid,
    two for two kinds of warning about the same key."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line)
