"""The rules of docs/architecture.md that a machine can check.

* every module imports on its own, and the package's import graph has no
  cycle (edges read with ast from every ``import``/``from ... import``,
  lazy ones inside functions included; a package's own ``__init__`` importing
  its submodules is the usual parent -> child edge, and a submodule's implicit
  import of its parent package is not counted);
* each part of the package imports only the parts docs/architecture.md's table lets it
  ("Parts and what each may import", read from the doc, its exceptions too), and nothing in
  the readers or outputs reaches the cost model;
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


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only: never run)."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for stmt in node.body for inner in ast.walk(stmt)}  # fmt: skip


def _imports(name: str, source: str | None = None) -> set[str]:
    """The package's modules ``name`` imports (``source``: its text, else its file's)."""
    path, package = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    skip = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
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


GRAPH = {name: _imports(name) for name in MODULES}


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
    assert GRAPH["dualpipe_sim.schedules.registry"]  # the reader sees imports at all
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


# -- the parts and what each may import (docs/architecture.md) ------------------------------
DOC = PACKAGE.parent / "docs" / "architecture.md"


def _doc_table(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row is ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line == header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _names(cell: str) -> list[str]:
    return [n.rstrip("/") for n in re.findall(r"`([^`]+)`", cell)]


def _parts(text: str) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """(part -> its module names, part -> the parts it may import) from the doc's table."""
    members, allowed = {}, {}
    for part, modules, may in _doc_table(text, "| part | modules | may import |"):
        members[part] = _names(modules)
        allowed[part] = set() if may == "nothing" else {p.strip() for p in may.split(",")}
    return members, allowed


def _exceptions(text: str) -> set[tuple[str, str]]:
    return {(_names(mod)[0], _names(imp)[0]) for mod, imp, _ in _doc_table(text, "| module | imports | why |")}


def _short(module: str) -> str:
    """A module's name inside the package: `cli`, `plots.gantt`; the package itself is `__init__`."""
    return module.removeprefix("dualpipe_sim").removeprefix(".") or "__init__"


def _matches(module: str, name: str) -> bool:
    short = _short(module)
    return short == name or short.startswith(name + ".")


def _part_of(module: str, members: dict[str, list[str]]) -> str | None:
    """The part whose longest listed name covers ``module`` (None: in no part)."""
    hits = [(len(n), part) for part, names in members.items() for n in names if _matches(module, n)]
    return max(hits)[1] if hits else None


def _breaches(graph: dict[str, set[str]], text: str) -> list[str]:
    """Every import the doc's parts table does not allow, as 'a (part) -> b (part)'."""
    members, allowed = _parts(text)
    excepted = _exceptions(text)
    out = []
    for module, targets in sorted(graph.items()):
        mine = _part_of(module, members)
        for target in sorted(targets):
            theirs = _part_of(target, members)
            if theirs in (mine, "base") or theirs in allowed[mine]:
                continue
            if any(_matches(module, a) and _matches(target, b) for a, b in excepted):
                continue
            out.append(f"{_short(module)} ({mine}) -> {_short(target)} ({theirs})")
    return out


COST_MODEL = ("inputs.costs", "inputs.channels")  # the modules that time an action


def _reaches_cost_model(graph: dict[str, set[str]], text: str) -> list[str]:
    """Modules of the readers and outputs whose imports (followed through, the exceptions'
    edges left out) reach the cost model, each with the path."""
    members, _ = _parts(text)
    excepted = _exceptions(text)
    follow = {m: {t for t in ts if not any(_matches(m, a) and _matches(t, b) for a, b in excepted)}
              for m, ts in graph.items()}  # fmt: skip
    out = []
    for start in sorted(m for m in graph if _part_of(m, members) in ("readers", "outputs")):
        seen, stack = {start: [start]}, [start]
        while stack:
            node = stack.pop()
            for nxt in follow[node]:
                if nxt not in seen:
                    seen[nxt] = seen[node] + [nxt]
                    stack.append(nxt)
        hit = next((m for m in seen if _short(m) in COST_MODEL), None)
        if hit:
            out.append(" -> ".join(_short(m) for m in seen[hit]))
    return out


def test_every_module_is_in_a_part():
    members, allowed = _parts(DOC.read_text(encoding="utf-8"))
    assert {"base", "schedules", "inputs", "engine", "readers", "outputs", "face"} <= set(members)
    assert all(p in members for may in allowed.values() for p in may), "a part may import an unknown part"
    assert [_short(m) for m in MODULES if _part_of(m, members) is None] == []


def test_each_part_imports_only_what_the_table_allows():
    assert _breaches(GRAPH, DOC.read_text(encoding="utf-8")) == []


def test_readers_and_outputs_never_reach_the_cost_model():
    assert _reaches_cost_model(GRAPH, DOC.read_text(encoding="utf-8")) == []


def test_every_exception_is_still_needed():
    """An exception row whose import is gone must go too: the list only shrinks."""
    text = DOC.read_text(encoding="utf-8")
    stale = [(a, b) for a, b in sorted(_exceptions(text))
             if not any(_matches(m, a) and any(_matches(t, b) for t in ts) for m, ts in GRAPH.items())]
    assert stale == [], f"docs/architecture.md lists exceptions no module needs any more: {stale}"


def test_a_planted_bad_import_is_caught():
    """The checks see a bad import: metrics (a reader) importing the cost model, inside a function
    or at the top; and an import only an exception allows is allowed for that module alone."""
    text = DOC.read_text(encoding="utf-8")
    metrics = "dualpipe_sim.readers.metrics"
    source = MODULES[metrics][0].read_text(encoding="utf-8")
    for bad in ("from ..inputs.costs import CostModel\n", "def _f():\n    from ..inputs import costs\n"):
        graph = {**GRAPH, metrics: _imports(metrics, source + bad)}
        assert _breaches(graph, text) == ["readers.metrics (readers) -> inputs.costs (inputs)"]
        assert _reaches_cost_model(graph, text)[0].startswith("readers.metrics -> inputs.costs")
    gantt = "dualpipe_sim.outputs.plots.gantt"  # plots.report's exception is its own, not every plot's
    planted = MODULES[gantt][0].read_text(encoding="utf-8") + "from ...inputs.scenario import activation_bytes_given\n"
    assert _breaches({**GRAPH, gantt: _imports(gantt, planted)}, text) == ["outputs.plots.gantt (outputs) -> inputs.scenario (inputs)"]
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..inputs.costs import CostModel\n"
    assert _breaches({**GRAPH, metrics: _imports(metrics, source + guarded)}, text) == []


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


def test_every_module_is_named_in_the_docs():
    """docs/architecture.md names every module file (``plan/request.py``, or ``request.py`` in a row of its
    folder; model/'s as ``model/derive.py`` in "The model package"); a schedule family's module is a row of
    ``FAMILIES`` (the table's "one module per family")."""
    from dualpipe_sim import schedules

    arch = DOC.read_text(encoding="utf-8")
    families = {importlib.import_module(f.generate.__module__).__file__ for f in schedules.FAMILIES}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and rel != "__init__.py" or str(path) in families:
            continue  # a package's __init__ is its folder's row
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else None
        row = "".join(line for line in arch.splitlines() if folder and line.startswith(f"| `{folder}`"))
        named = f"`{rel}`" in arch or f"`{path.name}`" in row or (folder is None and f"`{path.name}`" in arch)
        if not named:
            missing.append(rel)
    assert not missing, f"modules docs/architecture.md does not name: {missing}"


def named_files(table: str) -> list[tuple[str, Path]]:
    """(name, where it should be) of every ``x.py`` or ``x/`` in backticks in the rows of a ``| module | ...``
    table: a name with a folder is under the package (``tests/...`` under the repository); a bare name in a
    row whose first cell is a folder (``| `sweep/` |``) is in that folder, elsewhere at the package's top."""
    out = []
    for row in table.splitlines():
        first = re.match(r"\| `([\w/]+/)` \|", row)
        for name in re.findall(r"`([\w./]+(?:\.py|/))`", row):
            if name.startswith("tests/"):
                out.append((name, PACKAGE.parent / name))
            elif "/" in name.rstrip("/") or not first or name == first.group(1):
                out.append((name, PACKAGE / name))
            else:
                out.append((name, PACKAGE / first.group(1) / name))
    return out


def test_named_files_reads_rows_by_hand():
    rows = "| `sweep/` | points (`grid.py`), charts in `outputs/plots/` |\n| `cli.py` (`__main__.py`) | x |\n"
    assert named_files(rows) == [("sweep/", PACKAGE / "sweep/"), ("grid.py", PACKAGE / "sweep/grid.py"),
                                 ("outputs/plots/", PACKAGE / "outputs/plots/"), ("cli.py", PACKAGE / "cli.py"),
                                 ("__main__.py", PACKAGE / "__main__.py")]  # fmt: skip


def test_every_module_the_docs_name_is_there():
    """s20i: the other way round from the test above: a module or folder the modules table names exists."""
    table = DOC.read_text(encoding="utf-8").split("\n## Modules, one job each\n", 1)[1].partition("\n#")[0]
    named = named_files(table)
    assert len(named) > 80  # the table names over eighty files and folders (a reader that finds none fails)
    gone = [name for name, path in named if not path.exists()]
    assert not gone, f"docs/architecture.md's modules table names files that are not there: {gone}"


def _model_package_lines(text: str) -> list[str]:
    """The module lines (``- `model/x.py`: its job``) of architecture.md's "The model package" subsection."""
    section = text.split("\n### The model package\n", 1)[1].split("\n#", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_the_model_package_lists_each_module_once_and_no_other():
    """One line per module of model/ (its one job): none left out, none listed twice, none that is not there."""
    lines = _model_package_lines(DOC.read_text(encoding="utf-8"))
    named = [m.group(1) for line in lines for m in [re.match(r"- `model/(\w+\.py)`: \S", line)] if m]
    assert len(named) == len(lines), "a line that is not '- `model/<module>.py`: <its job>'"
    on_disk = sorted(p.name for p in (PACKAGE / "model").glob("*.py"))
    assert sorted(named) == on_disk, (f"listed, not there: {sorted(set(named) - set(on_disk))}; "
                                      f"there, not listed: {sorted(set(on_disk) - set(named))}; "
                                      f"listed twice: {sorted({n for n in named if named.count(n) > 1})}")


def test_the_model_package_reader_by_hand():
    text = ("x\n### The model package\n\nIntro.\n\n- `model/a.py`: one job.\n- `model/b.py`: another.\n"
            "Not a module line.\n\n## Next\n- `model/c.py`: outside.\n")
    assert _model_package_lines(text) == ["- `model/a.py`: one job.", "- `model/b.py`: another."]
