"""The rules of docs/architecture.md that a machine can check.

* every module imports on its own, and the package's import graph has no
  cycle (edges read with ast from every ``import``/``from ... import``,
  lazy ones inside functions included; a package's own ``__init__`` importing
  its submodules is the usual parent -> child edge, and a submodule's implicit
  import of its parent package is not counted);
* only cli.py speaks the command line: no other module prints, writes to
  stdout/stderr or draws a progress bar, and no string in another module (its
  docstrings aside) names one of the CLI's flags.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest

import dualpipe_sim
from dualpipe_sim import cli

PACKAGE = Path(dualpipe_sim.__file__).parent


def _modules() -> dict[str, tuple[Path, str]]:
    """module name -> (file, the package its relative imports start from)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["dualpipe_sim", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        mods[".".join(parts)] = (path, package)
    return mods


MODULES = _modules()


def _imports(name: str) -> set[str]:
    path, package = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from . import x` imports the submodule x when there is one
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    if name.startswith("dualpipe_sim.outputs.plots"):
        pytest.importorskip("matplotlib")
    importlib.import_module(name)


def test_no_import_cycles():
    graph = {name: _imports(name) for name in MODULES}
    assert graph["dualpipe_sim.schedules.registry"]  # the reader sees imports at all
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _cli_flags() -> set[str]:
    flags = set()
    parsers = [cli._parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return flags


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


# __main__ is the command's entry point: it only loads cli.py, saying "interrupted" if Ctrl-C comes first.
LIBRARY = sorted(name for name in MODULES if name not in ("dualpipe_sim.cli", "dualpipe_sim.__main__"))


def test_the_cli_has_flags_to_look_for():
    assert {"--set", "--out", "--grid", "--repeat", "--schedules", "--trace", "--jobs"} <= _cli_flags()


@pytest.mark.parametrize("name", LIBRARY)
def test_only_cli_names_flags(name):
    flag = re.compile("(?<![\\w-])(" + "|".join(re.escape(f) for f in sorted(_cli_flags())) + ")(?![\\w-])")
    tree = ast.parse(MODULES[name][0].read_text(encoding="utf-8"))
    named = [(line, text) for line, text in _strings(tree) if flag.search(text)]
    assert not named, f"{name} names a CLI flag: {named}"


@pytest.mark.parametrize("name", LIBRARY)
def test_only_cli_prints_or_draws_progress(name):
    tree = ast.parse(MODULES[name][0].read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    streams = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
        and isinstance(node.value, ast.Name) and node.value.id == "sys"
    ]
    progress = [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                and "tqdm" in ((node.module or "") if isinstance(node, ast.ImportFrom) else "")
                + " ".join(a.name for a in node.names)]  # fmt: skip
    assert not (calls or streams or progress), f"{name}: print {calls}, sys.stdout/err {streams}, tqdm {progress}"


def test_every_family_a_module_describes_is_in_the_table():
    from dualpipe_sim.schedules import registry
    from dualpipe_sim import schedules

    described = {
        value.family.name
        for name in MODULES
        if name.startswith("dualpipe_sim.schedules.")
        for value in vars(importlib.import_module(name)).values()
        if callable(value) and hasattr(value, "family")
    }
    assert described == {f.name for f in schedules.FAMILIES} == set(registry.families())
