"""Mutation check: plant each bug of mutations.toml, alone, in a copy of the project; its tests must fail.

    python tests/mutations/run.py                 # every mutation (about 70 minutes on 2 shared cores)
    python tests/mutations/run.py --only ID,ID    # some of them
    python tests/mutations/run.py --list          # the list, nothing run

What it does: copies the repository's files (not .git, caches or build output) into a temporary
folder; runs every listed test there unmutated (a test that fails unmutated is named and left
out of the mutations' runs: it cannot tell a mutation apart); then for each mutation replaces its
``old`` text (which must occur exactly once) by ``new`` in the copy, runs its tests with
``pytest -x``, and puts the file back.  A
mutation is *killed* when pytest fails, *survived* when it passes.  The copy is imported through
PYTHONPATH, so the working tree and the installed package are never touched; subprocesses the tests
start (``python -m dualpipe_sim``) inherit it.

Time (measured 2026-12-07 on a 2-core AMD EPYC VM shared with other jobs, load average 3-7): every 4th
entry, 118 of 469, took 950 s of pytest, 8.1 s a mutation (median 3.4 s, the slowest 119 s: plan and
step tests), after a 184 s baseline run of their listed tests: about 469 x 8.1 s = 63 minutes and the
baseline for the whole list.

Prints one line per mutation and a summary; exit status 0 when every mutation is killed, 1 when
any survives or cannot be applied, 2 on bad arguments.  Not part of the test suite (too slow);
tests/test_mutations_list.py checks, fast, that every entry still applies to the current code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).resolve().parent / "mutations.toml"
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "out", "build",
                                ".venv", "venv*")  # fmt: skip
FIELDS = ("id", "area", "file", "old", "new", "tests", "why")
TIMEOUT = 900  # seconds per pytest run


def load(path: Path = LIST) -> list[dict]:
    """The mutations, each checked to have every field."""
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("mutation", [])
    for i, m in enumerate(entries):
        missing = [f for f in FIELDS if f not in m]
        if missing:
            raise ValueError(f"{path.name}: mutation {i} ({m.get('id', '?')}) lacks {', '.join(missing)}")
    return entries


def problem(m: dict, root: Path = ROOT) -> str | None:
    """Why ``m`` cannot be applied to the files under ``root`` (None when it can)."""
    path = root / m["file"]
    if not path.is_file():
        return f"{m['file']}: no such file"
    count = path.read_text(encoding="utf-8").count(m["old"])
    if count != 1:
        return f"{m['file']}: the old text occurs {count} times (must be once)"
    if m["new"] == m["old"]:
        return "new is the same as old"
    return None


def pytest(copy: Path, tests: list[str], *options: str) -> tuple[int, float, str, list[str]]:
    """(exit status, seconds, pytest's last line, node ids of the failed tests) of one pytest run."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("DUALPIPE_SIM_STRICT_SKIPS", None)
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *options, *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, time.monotonic() - start, "timed out", []
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    return proc.returncode, time.monotonic() - start, lines[-1] if lines else proc.stderr.strip()[-200:], failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = ap.parse_args(argv)
    entries = load()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {m["id"] for m in entries})
        if unknown:
            print(f"error: --only: no mutation {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [m for m in entries if m["id"] in wanted]
    if args.list:
        for m in entries:
            print(f"{m['id']:34} {m['area']:9} {m['file']}: {m['why']}")
        return 0

    bad = [(m["id"], p) for m in entries for p in [problem(m)] if p]
    for ident, why in bad:
        print(f"cannot apply {ident}: {why}")
    with tempfile.TemporaryDirectory(prefix="dualpipe-mutations-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        where = subprocess.run([sys.executable, "-c", "import dualpipe_sim; print(dualpipe_sim.__file__)"],
                               cwd=copy, env=dict(os.environ, PYTHONPATH=str(copy)), capture_output=True, text=True)  # fmt: skip
        if not where.stdout.startswith(str(copy)):
            print(f"error: the copy is not what Python imports ({where.stdout.strip() or where.stderr.strip()})")
            return 1
        print(f"copy: {copy}  ({len(entries)} mutations)")
        # Unmutated, every listed test must pass: one pytest run over all of them (a file named
        # whole makes its node ids redundant).
        targets = {t for m in entries for t in m["tests"]}
        baseline = sorted(t for t in targets if "::" not in t or t.split("::")[0] not in targets)
        code, seconds, last, broken = pytest(copy, baseline)
        if code != 0 and not broken:
            print(f"baseline fails ({' '.join(baseline)}): {last}")
            return 1
        print(f"baseline: the {len(baseline)} listed test files and tests, unmutated: {last} ({seconds:.0f} s)")
        for nodeid in broken:  # a test that fails unmutated says nothing about a mutation
            print(f"baseline: {nodeid} fails unmutated; left out of every mutation's run")
        deselect = [f"--deselect={nodeid}" for nodeid in broken]
        killed, survived, total_time = [], [], 0.0
        for m in entries:
            if any(m["id"] == ident for ident, _ in bad):
                continue
            path = copy / m["file"]
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(m["old"], m["new"], 1), encoding="utf-8")
            try:
                code, seconds, last, _ = pytest(copy, m["tests"], "-x", *deselect)
            finally:
                path.write_text(original, encoding="utf-8")
            total_time += seconds
            verdict = "killed" if code != 0 else "SURVIVED"
            (killed if code != 0 else survived).append(m["id"])
            print(f"{verdict:8} {m['id']:34} {seconds:6.1f} s  {last}", flush=True)
    print(f"\n{len(killed)} killed, {len(survived)} survived, {len(bad)} could not be applied, "
          f"of {len(entries)} mutations ({total_time:.0f} s of pytest)")  # fmt: skip
    if survived:
        print("survived: " + ", ".join(survived))
    if broken:
        print(f"note: {len(broken)} listed tests fail without any mutation (see 'baseline:' above)")
    return 0 if not survived and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
