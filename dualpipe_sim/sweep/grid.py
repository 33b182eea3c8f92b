"""Sweep grids: ``--grid KEY=VALUES`` axes and the points of their product.

An axis is one scenario key and its values, written either as a list
(``pipeline.schedule=1f1b,dualpipe``) or as a numeric range
``start:stop:step`` whose stop is inclusive when the steps land on it
(``8:64:8`` is 8, 16, ..., 64; ``8:60:8`` ends at 56).  Each value is read
exactly like a ``--set`` value (TOML, else a bare string), so a point is
nothing more than a list of ``--set`` overrides applied to the base scenario.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pydantic import ValidationError

from .. import registry
from ..scenario import Scenario, ScenarioError, apply_overrides, from_dict, parse_override

MAX_POINTS = 1_000_000  # a guard against a typo such as 1:1e9:1
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*$")
_EXAMPLE = "e.g. pipeline.stages=4,8,16 or pipeline.microbatches=8:64:8"


@dataclass(frozen=True)
class Axis:
    """One grid key and its values: ``texts`` as written (for --set), ``values`` as parsed."""

    key: str
    texts: tuple[str, ...]
    values: tuple[object, ...]

    def override(self, i: int) -> str:
        return f"{self.key}={self.texts[i]}"


@dataclass(frozen=True)
class Point:
    """One scenario of the sweep: its position in the product and the overrides that make it."""

    index: int
    overrides: tuple[str, ...]
    values: tuple[object, ...]  # one per axis, in axis order


def parse_axis(spec: str) -> Axis:
    """``KEY=v1,v2,...`` or ``KEY=start:stop:step`` -> Axis.  Raises ScenarioError naming the rule."""
    key, sep, body = spec.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise ScenarioError(f"--grid {spec!r}: expected KEY=VALUES with a dotted scenario key, {_EXAMPLE}")
    match = _RANGE.match(body)
    texts = _range_texts(spec, *match.groups()) if match else _split_list(spec, body)
    values = tuple(parse_override(f"{key}={t}")[1] for t in texts)
    seen: set[str] = set()
    for text, value in zip(texts, values):
        canon = repr(value)
        if canon in seen:
            raise ScenarioError(f"--grid {key}: value {text} appears twice")
        seen.add(canon)
    return Axis(key, texts, values)


def _range_texts(spec: str, start: str, stop: str, step: str) -> tuple[str, ...]:
    try:
        a, b, s = Decimal(start), Decimal(stop), Decimal(step)
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise ScenarioError(f"--grid {spec!r}: start:stop:step must be numbers") from None
    if s <= 0:
        raise ScenarioError(f"--grid {spec!r}: the step of start:stop:step must be > 0, got {step}")
    if b < a:
        raise ScenarioError(f"--grid {spec!r}: start must be <= stop in start:stop:step")
    count = int((b - a) / s) + 1  # exact decimal arithmetic: 0.1:0.5:0.1 has 5 values
    if count > MAX_POINTS:
        raise ScenarioError(f"--grid {spec!r}: {count} values, more than the {MAX_POINTS} a sweep takes")
    integral = all(re.fullmatch(r"[+-]?\d+", t) for t in (start, stop, step))
    values = [a + i * s for i in range(count)]
    # Integers stay integers (pipeline.stages must be whole); anything else becomes a float.
    return tuple(str(int(v)) if integral else repr(float(v)) for v in values)


def _split_list(spec: str, body: str) -> tuple[str, ...]:
    """Split on commas that are not inside brackets, braces or quotes (TOML lists keep theirs)."""
    items, depth, quote, current = [], 0, None, []
    for ch in body:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    if depth != 0 or quote:
        raise ScenarioError(f"--grid {spec!r}: unbalanced brackets or quotes in the value list")
    if any(not item for item in items):
        raise ScenarioError(f"--grid {spec!r}: empty value in the list, {_EXAMPLE}")
    if ":" in body and len(items) == 1 and not body.strip().startswith(("[", "\"", "'")):
        raise ScenarioError(f"--grid {spec!r}: a range is start:stop:step with three numbers, {_EXAMPLE}")
    return tuple(items)


def parse_grid(specs: list[str]) -> list[Axis]:
    axes = [parse_axis(s) for s in specs]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ScenarioError(f"--grid {key}: the key is given twice; put all its values in one --grid")
    total = 1
    for axis in axes:
        total *= len(axis.texts)
    if total > MAX_POINTS:
        raise ScenarioError(f"--grid: {total} points, more than the {MAX_POINTS} a sweep takes")
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

    ``base`` (scenario file plus --set) must be a valid scenario on its own.
    Then each grid value is applied alone to it: a type or range error there
    (an unknown key, stages=a, forward=-1) or an unknown schedule name is the
    value's fault and stops the sweep before it starts.  Rules that depend on
    the combination (a schedule's shape constraints, a per-stage list whose
    length must match the stage count) are left to each point.
    """
    from_dict(base)
    known = registry.families()
    if base["pipeline"]["schedule"] not in known and "pipeline.schedule" not in {a.key for a in axes}:
        registry.get(base["pipeline"]["schedule"])  # raises the usual unknown-schedule error
    for axis in axes:
        for text in axis.texts:
            data = apply_overrides(base, [f"{axis.key}={text}"])
            try:
                Scenario.model_validate(data)
            except ValidationError:
                try:
                    from_dict(data)
                except ScenarioError as exc:
                    raise ScenarioError(f"--grid {axis.key}={text}: {exc}") from None
            if axis.key == "pipeline.schedule" and data["pipeline"]["schedule"] not in known:
                raise ScenarioError(
                    f"--grid pipeline.schedule: unknown schedule {text!r}; known: {', '.join(known)}"
                )
