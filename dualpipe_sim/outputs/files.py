"""Writing result files all-or-nothing.

Every file of a run is first written into a hidden staging folder beside the
output folder, then moved into place; if anything fails on the way, the
staging folder is removed, any file already replaced is put back, any folder
made on the way is removed again, and the output folder is left as it was.
(Should putting a file back fail too, the error says so and names where the
earlier file is kept: the staging folder then stays.)

:func:`check_targets` is the same rules asked before any work starts (a
verb calls it right after reading its input), so an output folder that is a
file, lies under a file, cannot be written, or has a folder where one of the
files goes costs a one-line error, not a finished simulation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable


class OutputError(ValueError):
    """The output folder cannot take the files; one line naming the path and the rule."""


def os_problem(path, exc: OSError, after: str = "") -> OutputError:
    """An operating-system failure while writing ``path`` (no space, no permission, a
    read-only disk, a file where a folder goes) as one line naming the path, then ``after``
    (what became of the earlier files)."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}" + (f"; {after}" if after else ""))


def metrics_json(metrics) -> str:
    """Canonical text of metrics.json (a Metrics, or any JSON document such as repeat.json):
    same metrics, same bytes."""
    doc = metrics.to_dict() if hasattr(metrics, "to_dict") else metrics
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def check_targets(out_dir: str | Path, names: Iterable[str]) -> None:
    """Raise OutputError unless ``out_dir`` can receive the files ``names``.

    Nothing is created: the folder (or its nearest existing ancestor, where it
    will be made) is probed with a temporary folder that is removed at once.
    """
    if not str(out_dir).strip():  # Path("") is ".": an empty --out would write into the working folder
        raise OutputError("an empty path; give a folder, e.g. out")
    out = Path(out_dir)
    existing = out
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out else f"{out}: "
        raise OutputError(f"{where}{existing} is a file, not a folder")
    for name in names:
        target = out / name
        if target.is_dir():
            raise OutputError(f"{target} is a folder where the file {name} goes; move it away")
        for parent in list(Path(name).parents)[:-1]:  # e.g. sub/ of sub/trace.json
            if (out / parent).exists() and not (out / parent).is_dir():
                raise OutputError(f"{out / parent} is a file where the folder of {name} goes")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name or 'out'}-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in {existing}: {exc.strerror or exc}") from None
    os.rmdir(probe)


def write_all(out_dir: str | Path, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Call ``writers[name](path)`` for each file, then move them all into out_dir.
    An OSError on the way (a full disk, say) is an OutputError naming the file, with out_dir
    left as it was."""
    out = Path(out_dir)
    check_targets(out, writers)
    made = _missing_folders([out.parent, *((out / name).parent for name in writers)])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as exc:
        _remove_empty(made)
        raise os_problem(out, exc) from None
    moved: list[tuple[Path, Path | None]] = []  # (target, its earlier file kept in stage/.old, or None)
    lost: list[tuple[Path, Path]] = []  # (target, its earlier file) that could not be put back
    done = False
    name = None
    try:
        for name, write in writers.items():
            target = stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        name = None
        out.mkdir(parents=True, exist_ok=True)
        old = stage / ".old"
        for i, name in enumerate(writers):
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            backup = None
            if dest.exists():
                backup = old / str(i)
                backup.parent.mkdir(exist_ok=True)
                os.replace(dest, backup)
            moved.append((dest, backup))
            os.replace(stage / name, dest)
        done = True
        return [out / name for name in writers]
    except OSError as exc:  # put back the files already there; one line, no traceback
        lost = _put_back(moved)
        moved = []
        after = f"{out} is left as it was" if not lost else (
            f"{lost[0][0]} could not be put back either: its earlier file is kept in {lost[0][1]}")
        raise os_problem(out / name if name else out, exc, after) from None
    finally:
        if not done:  # put back what was there: all or nothing
            lost += _put_back(moved)
        if not lost:  # else the staging folder keeps the earlier file the message names
            shutil.rmtree(stage, ignore_errors=True)
        if not done:  # "left as it was": no empty folder this call made stays behind
            _remove_empty(made)


def _put_back(moved: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path]]:
    """Undo the moves into place, last first: earlier files back, new ones removed.
    Returns the (target, earlier file) pairs that could not be put back."""
    lost = []
    for dest, backup in reversed(moved):
        try:
            if backup is not None:
                os.replace(backup, dest)
            elif dest.exists():
                dest.unlink()
        except OSError:
            if backup is not None:
                lost.append((dest, backup))
    return lost


def _missing_folders(folders: Iterable[Path]) -> list[Path]:
    """The folders, and their ancestors, that do not exist yet: deepest first."""
    missing = set()
    for folder in folders:
        while not folder.exists() and not folder.is_symlink() and folder.parent != folder:
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda f: len(f.parts), reverse=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else's files by now) or already gone: leave it
            pass


def write_text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")
