"""README's two reference tables against the code (s12c): every scenario key in README's key table is a key the
scenario schema takes, and every key the schema takes is in README's table or, for [model] / [parallel] /
[hardware] (README's row for them points there), in docs/model.md's; every CLI verb and flag in README's
"Command line" block is one argparse knows and the other way round, choices included."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from dualpipe_sim.cli import _parser
from dualpipe_sim.inputs.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MODEL_MD = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
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
    for verb, parser in sub.choices.items():
        flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
        assert set(re.findall(r"--[a-z-]+", readme[verb])) == flags, verb
        for action in parser._actions:
            if action.choices and action.option_strings:  # --plots none|png|html|all as argparse has them
                written = re.search(re.escape(action.option_strings[0]) + r" ([a-z|]+)", readme[verb]).group(1)
                assert written.split("|") == list(action.choices), (verb, action.option_strings[0])
