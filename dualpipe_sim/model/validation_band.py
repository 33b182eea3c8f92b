"""How far to trust a throughput prediction: the validation band of the scenario's class of run.

docs/validation.md holds the model's tokens/s per GPU against published, measured runs. ``python
docs/make_validation.py --write`` reads its whole-run tables back as written and keeps, per class of run (the GPU's
family x dense or MoE), the runs, their mean signed error and its range in validation_band.json beside this module.
:func:`lookup` finds a scenario's class and hands those figures back, or why there are none. Reported only: every
output that shows a tokens/s prints :func:`describe`'s line (`run`, `model`, plan.md, `compare`, summary.md,
report.html) or holds :func:`cells`'s columns (results.csv, plan.csv and `plan --json`), and nothing here changes a
figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA = Path(__file__).with_name("validation_band.json")
# the tables' GPU families (docs/make_validation.py HOPPER, BLACKWELL): a preset's runs are held in its family's table
FAMILIES = {"A100": "A100", "H100": "Hopper", "H800": "Hopper", "H200": "Hopper",
            "B200": "Blackwell", "GB200": "Blackwell", "GB300": "Blackwell",
            "B300": "Blackwell"}  # fmt: skip
KINDS = ("dense", "MoE")
CLASSES = tuple(f"{family} {kind}" for family in dict.fromkeys(FAMILIES.values()) for kind in KINDS)
MIN_RUNS = 3  # fewer runs than this: their mean is given, no range


@dataclass(frozen=True)
class Band:
    """metrics.json ``validation_band``. An error is predicted / published tokens/s per GPU - 1: positive, the model
    was too fast on those runs."""

    validated: bool  # a range is given (the class has MIN_RUNS runs or more)
    run_class: str | None  # "Hopper dense"; None: the scenario is in no class (a custom GPU, hardware.efficiency)
    runs: int  # the class's published runs in docs/validation.md
    mean_error: float | None  # signed mean; None without runs
    min_error: float | None  # None unless validated
    max_error: float | None
    sources: tuple[str, ...]  # "docs/validation.md#anchor" of each table holding the class's runs
    reason: str | None  # why no range (None when validated)


def run_class(hardware, moe: bool) -> tuple[str | None, str | None]:
    """The class of a run on ``hardware`` (a HardwareSection or None) of a model with experts (``moe``) or without,
    or None and why it has none."""
    if hardware is None:
        return None, "no [hardware]: no GPU whose published runs to compare with"
    if hardware.preset is None:
        return None, "a custom GPU (no hardware.preset): the runs are held against the presets' kernel rates"
    if hardware.efficiency is not None:
        return None, "hardware.efficiency is set: the runs are held against the kernel model, which it replaces"
    family = FAMILIES.get(hardware.preset)
    if family is None:
        return None, f"no table holds {hardware.preset} runs"
    return f"{family} {'MoE' if moe else 'dense'}", None


@cache
def classes() -> dict:
    """validation_band.json's classes, read once."""
    return json.loads(DATA.read_text(encoding="utf-8"))["classes"]


def lookup(hardware, moe: bool, whole_step: bool = True) -> Band:
    """The band of the class a run on ``hardware`` with (``moe``) or without experts is in (run_class).  Without
    ``whole_step`` (no [step]: the throughput is the pipeline's alone) none: every published figure is a whole step."""
    name, reason = run_class(hardware, moe)
    if name is not None and not whole_step:
        return Band(False, name, 0, None, None, None, (),
                    "no [step]: the throughput is the pipeline alone, the published runs' a whole step")  # fmt: skip
    entry = classes().get(name, {}) if name else {}
    runs = entry.get("runs", 0)
    if name is None or not runs:
        return Band(False, name, 0, None, None, None, (), reason or f"no published {name} run in docs/validation.md")
    sources = tuple(t["anchor"] for t in entry["tables"])
    if runs < MIN_RUNS:
        return Band(False, name, runs, entry["mean_error"], None, None, sources,
                    f"{runs} published run{'s' if runs > 1 else ''}: too few for a range")  # fmt: skip
    return Band(True, name, runs, entry["mean_error"], entry["min_error"], entry["max_error"], sources, None)


def describe(band: Band) -> str:
    """The band in one line, as every output that shows a tokens/s prints it (see the module's docstring)."""
    head = "validation band" + (f" ({band.run_class})" if band.run_class else "")
    # one page: its name once, then each table's anchor
    where = "; " + ", ".join(s if i == 0 else s[s.index("#"):] for i, s in enumerate(band.sources)) if band.sources else ""
    if band.validated:
        return (f"{head}: over {band.runs} published runs, predicted tokens/s against measured {band.mean_error:+.1%} "
                f"on average, {band.min_error:+.1%} to {band.max_error:+.1%} (+: the prediction too high); reported, "
                f"not applied{where}")
    if band.runs:
        return (f"{head}: not validated, {band.reason} (mean {band.mean_error:+.1%}, +: the prediction too high); reported, not "
                f"applied{where}")
    return f"{head}: not validated, {band.reason}"


# the flat view (results.csv, plan.csv, plan --json): each of Band's fields as its metrics.json dotted name, in order
COLUMNS = tuple(f"validation_band.{name}" for name in Band.__dataclass_fields__)


def cells(band: Band | None) -> dict:
    """``band`` as COLUMNS' values (all None without a band); ``sources`` a list, as JSON has it."""
    if band is None:
        return dict.fromkeys(COLUMNS)
    return {column: list(v) if isinstance(v := getattr(band, column.split(".", 1)[1]), tuple) else v
            for column in COLUMNS}  # fmt: skip


def from_cells(row: dict[str, str]) -> Band | None:
    """The Band a CSV row's COLUMNS hold (format_value's text), or None when the row has none."""
    text = {column.split(".", 1)[1]: row.get(column, "") for column in COLUMNS}
    if text["validated"] not in ("true", "false"):
        return None
    number = lambda name: float(text[name]) if text[name] else None  # noqa: E731
    return Band(text["validated"] == "true", text["run_class"] or None, int(text["runs"]), number("mean_error"),
                number("min_error"), number("max_error"), tuple(json.loads(text["sources"] or "[]")),
                text["reason"] or None)  # fmt: skip


def lines(bands) -> list[str]:
    """describe() of each band in ``bands`` once, in order (None: no throughput, skipped): the lines under a table
    of several runs, one when they are all of one class."""
    return list(dict.fromkeys(describe(b) for b in bands if b is not None))
