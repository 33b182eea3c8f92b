"""The finished candidates of a plan, kept on disk while it runs so that Ctrl-C loses none.

One JSON line per simulated candidate, appended and flushed the moment it
finishes: the plan's base scenario id, the candidate's overrides, and the
fields its simulation gave.  ``--resume`` reads them back and simulates only
the others; a candidate is matched by the complete scenario it is (the base
plus its overrides, sweep/results.py's ``point_key``), so a resumed plan can
never give one candidate another's figures.  JSON keeps every float to the
last bit, so the outputs equal an uninterrupted run's byte for byte.  The file
is removed once the plan's outputs are written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..sweep.results import point_key, scenario_id
from .request import PlanError

NAME = "plan.partial.jsonl"


class Journal:
    """``out/plan.partial.jsonl``: with ``resume``, the lines it holds are read (and checked) at once;
    :meth:`start` then rewrites it with them and opens it for appending.  Nothing is written before
    ``start``, so a plan refused later leaves the folder as it was."""

    def __init__(self, out: Path, base: dict, resume: bool) -> None:
        self.out, self.path = out, out / NAME
        if self.path.exists() and not resume:
            raise PlanError(field="resume", rule=f"{self.path} holds the finished candidates of an interrupted plan; "
                                                 f"resume it, or write to another folder")  # fmt: skip
        self.base, self.id = base, scenario_id(base)
        self._kept = read(self.path, base, self.id) if resume and self.path.exists() else {}
        self.done = {key: fields for key, (_, fields) in self._kept.items()}
        self._file = None

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        # A clean file holding the kept lines (drops a half-written last line).
        tmp = self.path.with_name(f".{NAME}.tmp")
        try:
            tmp.write_text("".join(self._line(o, f) for o, f in self._kept.values()), encoding="utf-8")
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._file = self.path.open("a", encoding="utf-8")

    def _line(self, overrides, fields: dict) -> str:
        return json.dumps({"scenario_id": self.id, "candidate": list(overrides), "fields": fields}) + "\n"

    def finished(self, overrides) -> dict | None:
        """The fields of a candidate simulated before (None if it was not)."""
        return self.done.get(point_key(self.base, overrides))

    def append(self, overrides, fields: dict) -> None:
        self._file.write(self._line(overrides, fields))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def held(self) -> int:
        """How many finished candidates the file holds, read back from disk after closing it: an interrupt
        can land between a line's write and the caller's count, so only the file says what --resume finds."""
        self.close()
        return len(read(self.path, self.base, self.id))


def read(path: Path, base: dict, ours: str) -> dict[str, tuple[list, dict]]:
    """{complete scenario: (overrides, fields)} of the lines in ``path``; a line cut short is dropped.
    Raises PlanError when the file is not a plan journal or holds another plan's candidates."""
    if not path.is_file():
        raise PlanError(field="resume", rule=f"cannot resume {path}: not a regular file; write to another folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(field="resume", rule=f"cannot read {path}: {exc}") from None
    out = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            overrides, fields, theirs = entry["candidate"], entry["fields"], entry["scenario_id"]
        except (ValueError, TypeError, KeyError):
            continue  # the last line of a killed plan
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            continue
        if theirs != ours:
            raise PlanError(field="resume", rule=f"{path} holds candidates of another plan (scenario_id {theirs}, this "
                                                 f"one is {ours}: the model, hardware, sequence or overrides differ); "
                                                 f"resume with the same request, or write to another folder")  # fmt: skip
        key = point_key(base, overrides)
        if key is not None and isinstance(fields, dict):
            out[key] = (overrides, fields)
    return out
