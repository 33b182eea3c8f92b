"""README's two reference tables against the code (s12c): every scenario key in README's key table is a key the
scenario schema takes, and every key the schema takes is in README's table or, for [model] / [parallel] /
[hardware] (README's row for them points there), in docs/model.md's; every CLI verb and flag in README's
"Command line" block is one argparse knows and the other way round, choices included.  s20i: every metrics.json key
is in README's metrics table (the `step` block's also in docs/step.md's), and every key that table names is one."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from dualpipe_sim.cli import _parser
from dualpipe_sim.inputs.scenario import Scenario
from dualpipe_sim.model.validation_band import Band
from dualpipe_sim.readers.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MODEL_MD = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
STEP_MD = (ROOT / "docs" / "step.md").read_text(encoding="utf-8")
# Read by scenario.include_chunk_file before validation (the included [chunk] table replaces it), so no schema field.
OUTSIDE_SCHEMA = {"chunk.file"}


def schema_keys(model: type[BaseModel] = Scenario, prefix: str = "") -> set[str]:
    """Every dotted key the schema takes: a field holding a section (``Chunk | None``) opens it."""
    keys = set()
    for name, field in model.model_fields.items():
        sections = [a for a in typing.get_args(field.annotation) or (field.annotation,)
                    if isinstance(a, type) and issubclass(a, BaseModel)]  # fmt: skip
        for section in sections:
            keys |= schema_keys(section, f"{prefix}{name}.")
        if not sections:
            keys.add(prefix + name)
    return keys


def table_keys(page: str) -> set[str]:
    """The keys in the first column of a page's ``| key | meaning |`` table.  A bare name after a dotted one in
    the same cell is in its section (``model.params_dtype` / `grads_dtype``); ``[model]`` is kept as written."""
    rows = page.split("| key | meaning |\n| --- | --- |\n", 1)[1].split("\n\n", 1)[0].splitlines()
    keys = set()
    for row in rows:
        prefix = ""
        for key in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            if "." in key:
                prefix = key.rsplit(".", 1)[0] + "."
            keys.add(key if "." in key or key.startswith("[") else prefix + key)
    return keys


def test_table_keys_reads_a_row_by_hand():
    page = ("| key | meaning |\n| --- | --- |\n| `a.b` / `c` | x |\n| `[m]`, `d.e` | y |\n\n"
            "| key | meaning |\n| --- | --- |\n| `z.z` | not the first table |\n")  # fmt: skip
    assert table_keys(page) == {"a.b", "a.c", "[m]", "d.e"}


def test_schema_keys_opens_sections():
    keys = schema_keys()
    assert {"pipeline.stages", "seed", "costs.jitter.cv", "chunk.order.a2a", "chunk.attn_forward",
            "step.grad_sync_held", "hardware.nccl_version"} <= keys  # fmt: skip
    assert "costs.jitter" not in keys and "chunk" not in keys


def test_every_readme_key_is_a_scenario_key():
    readme = table_keys(README)
    sections = {k for k in readme if k.startswith("[")}
    assert sections == {"[model]", "[parallel]", "[hardware]"}  # the row pointing to docs/model.md
    assert readme - sections - OUTSIDE_SCHEMA <= schema_keys(), sorted(readme - sections - OUTSIDE_SCHEMA - schema_keys())


def test_every_scenario_key_is_documented():
    documented = table_keys(README) | table_keys(MODEL_MD)
    missing = schema_keys() - documented
    assert not missing, f"scenario keys in neither README's key table nor docs/model.md's: {sorted(missing)}"
    model_md = {k for k in table_keys(MODEL_MD) if k != "model.<HF field>"}  # the inline config.json fields
    assert model_md <= schema_keys(), sorted(model_md - schema_keys())


def readme_cli() -> dict[str, str]:
    """Verb -> its lines in README's "Command line" block."""
    block = README.split("## Command line\n\n```\n", 1)[1].split("```", 1)[0]
    verbs, verb = {}, None
    for line in block.splitlines():
        m = re.match(r"dualpipe-sim (\w+)", line)
        verb = m.group(1) if m else verb
        verbs[verb] = verbs.get(verb, "") + line + "\n"
    return verbs


def test_readme_cli_block_is_argparse():
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    readme = readme_cli()
    assert set(readme) == set(sub.choices)
    # s20i: the flags before a verb (--version) are in README's prose below the block, as `dualpipe-sim --version`
    top = {o for a in _parser()._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    assert top and all(f"`dualpipe-sim {flag}`" in README for flag in top), sorted(top)
    for verb, parser in sub.choices.items():
        flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
        assert set(re.findall(r"--[a-z-]+", readme[verb])) == flags, verb
        for action in parser._actions:
            if action.choices and action.option_strings:  # --plots none|png|html|all as argparse has them
                written = re.search(re.escape(action.option_strings[0]) + r" ([a-z|]+)", readme[verb]).group(1)
                assert written.split("|") == list(action.choices), (verb, action.option_strings[0])


def metrics_keys(record: type = Metrics, prefix: str = "") -> set[str]:
    """Every key metrics.json can hold, dotted, a list of records as ``name[]`` (``per_rank[].busy``): a field
    holding a record (``RankMemory | None``, ``list[RankMetrics]``) opens it."""
    hints = typing.get_type_hints(record, localns={"Band": Band})  # Band: imported for type checking only
    keys = set()
    for f in dataclasses.fields(record):
        key = prefix + f.name
        hint = hints[f.name]
        for arg in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
            if typing.get_origin(arg) is list and dataclasses.is_dataclass(typing.get_args(arg)[0]):
                key += "[]"
                keys |= metrics_keys(typing.get_args(arg)[0], key + ".")
            elif dataclasses.is_dataclass(arg):
                keys |= metrics_keys(arg, key + ".")
        keys.add(key)
    return keys


def metric_rows(page: str, header: str) -> list[tuple[list[str], set[str]]]:
    """Per row of the page's first ``| <header> | meaning |`` table: the keys its first column names (a bare name
    after a dotted one is in its block: ``comm.exposed` / `hidden``; ``.exposed`` too) and every name in backticks
    in the row."""
    rows = page.split(f"| {header} | meaning |\n| --- | --- |\n", 1)[1].split("\n\n", 1)[0].splitlines()
    out = []
    for row in rows:
        keys, prefix = [], ""
        for key in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            key = key.lstrip(".")
            if "." in key:
                prefix = key.rsplit(".", 1)[0] + "."
            keys.append(key if "." in key else prefix + key)
        out.append((keys, set(re.findall(r"`([^`]+)`", row))))
    return out


def documented(key: str, rows: list[tuple[list[str], set[str]]]) -> bool:
    """A key is a row's key, or inside a row's key (a block) with each of its further names in that row."""
    for keys, names in rows:
        for block in keys:
            if key == block:
                return True
            if key.startswith(block + "."):
                rest = key[len(block) + 1:].split(".")
                if all(n in names or n.removesuffix("[]") in names for n in rest):
                    return True
    return False


def test_metric_rows_read_by_hand():
    page = ("| metric | meaning |\n| --- | --- |\n| `a` / `b.c` / `d` | x |\n| `e` | has `f[]` and `g`, `h` |\n\n"
            "| metric | meaning |\n| --- | --- |\n| `z` | not the first table |\n")  # fmt: skip
    rows = metric_rows(page, "metric")
    assert rows == [(["a", "b.c", "b.d"], {"a", "b.c", "d"}), (["e"], {"e", "f[]", "g", "h"})]
    assert documented("b.d", rows) and documented("e.f[].g", rows) and documented("e.h", rows)
    assert not documented("b.x", rows) and not documented("e.f[].x", rows) and not documented("z", rows)
    assert metric_rows("| key | meaning |\n| --- | --- |\n| `s.t.u` / `.v` | w |\n", "key")[0][0] == ["s.t.u", "s.t.v"]


def test_metrics_keys_opens_records():
    keys = metrics_keys()
    assert {"makespan", "per_rank[]", "per_rank[].busy", "per_rank[].memory.total", "comm.overlap_ratio",
            "step.grad_sync.exposed", "step.per_rank[].drain", "validation_band.sources"} <= keys  # fmt: skip
    assert "per_rank" not in keys and "per_rank[].stages[]" not in keys  # a list of numbers is one key


def test_every_metrics_key_is_documented():
    rows = metric_rows(README, "metric") + metric_rows(STEP_MD.split("### Metrics", 1)[1], "key")
    keys = metrics_keys()
    values = {k for k in keys if not any(other.startswith(k + ".") for other in keys)}  # a block: its keys' rows
    missing = sorted(k for k in values if not documented(k, rows))
    assert not missing, f"metrics.json keys in neither README's metrics table nor docs/step.md's: {missing}"


def test_every_readme_metric_is_a_metrics_key():
    named = {k for keys, _ in metric_rows(README, "metric") for k in keys}
    assert named <= metrics_keys(), sorted(named - metrics_keys())
