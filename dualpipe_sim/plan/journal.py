"""The finished candidates of a plan, kept on disk while it runs so that Ctrl-C loses none.

One JSON line per simulated candidate, appended and flushed the moment it
finishes: the plan's base scenario id and (since s20d) the base itself, so that a resume of another
plan's journal names the key that differs, the options that define its search
(``search``: the GPUs, the global batch, the schedules, the budget and
search_expert_tensor, which set the candidates and which of them are
simulated), the candidate's overrides, and the fields its simulation gave.
``--resume`` with other options is refused naming the first that differs (a
line without them, from before they were kept, is simulated again).  ``--resume`` reads them back and simulates only
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
from ..errors import shown
from .request import PlanError

NAME = "plan.partial.jsonl"


class Journal:
    """``out/plan.partial.jsonl``: with ``resume``, the lines it holds are read (and checked) at once;
    :meth:`start` then rewrites it with them and opens it for appending.  Nothing is written before
    ``start``, so a plan refused later leaves the folder as it was."""

    def __init__(self, out: Path, base: dict, resume: bool, search: dict | None = None) -> None:
        self.out, self.path = out, out / NAME
        if self.path.exists() and not resume:
            raise PlanError(field="resume", rule=f"{self.path} holds the finished candidates of an interrupted plan; "
                                                 f"resume it, or write to another folder")  # fmt: skip
        self.base, self.id, self.search = base, scenario_id(base), dict(search or {})
        self._kept = read(self.path, base, self.id, self.search) if resume and self.path.exists() else {}
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
        return json.dumps({"scenario_id": self.id, "search": self.search, "candidate": list(overrides),
                           "base": self.base, "fields": fields}) + "\n"  # fmt: skip

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
        return len(read(self.path, self.base, self.id, self.search))


def read(path: Path, base: dict, ours: str, search: dict | None = None) -> dict[str, tuple[list, dict]]:
    """{complete scenario: (overrides, fields)} of the lines in ``path``; a line cut short (or without the
    options of its search) is dropped.  Raises PlanError when the file is not a plan journal or holds another
    plan's candidates: another base scenario (field ``resume``) or another option of the search (that option's
    keyword as the field, so that the CLI names its flag)."""
    search = dict(search or {})
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
            overrides, fields, theirs, options = entry["candidate"], entry["fields"], entry["scenario_id"], entry["search"]
        except (ValueError, TypeError, KeyError):
            continue  # the last line of a killed plan (or one written before the options were kept)
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides) \
                or not isinstance(options, dict):
            continue
        if theirs != ours:
            raise PlanError(field="resume", rule=another_plan(path, entry.get("base"), base, theirs, ours))
        differ = [name for name in search if options.get(name) != search[name]]
        if differ:
            name = differ[0]
            raise PlanError(field=name, rule=f"differs from the interrupted plan's in {path} (it had "
                                             f"{shown(options.get(name))}, this one {shown(search[name])}); resume "
                                             f"with the same options, or write to another folder")  # fmt: skip
        key = point_key(base, overrides)
        if key is not None and isinstance(fields, dict):
            out[key] = (overrides, fields)
    return out


ABSENT = "absent"  # a key one base scenario has and the other not


def another_plan(path: Path, theirs: dict | None, base: dict, their_id: str, our_id: str) -> str:
    """The refusal of a journal another base scenario wrote, in one line: the first key (dotted, in sorted order)
    whose value differs, and what to do.  A journal from before s20d keeps no base: then only the ids, and the
    usual causes (s19n keeps more of a source's [parallel], so such a journal of the same command differs too)."""
    fix = f"delete {path} to start this plan afresh, or write to another folder"
    if not isinstance(theirs, dict):
        return (f"{path} holds candidates of another plan (scenario_id {their_id}, this one is {our_id}: the model, "
                f"hardware, sequence, overrides or the [parallel] keys kept from a source differ; a journal from before "
                f"s20d does not say which); {fix}")  # fmt: skip
    a, b = _flat(theirs), _flat(json.loads(json.dumps(base, default=str)))
    key = next((k for k in sorted(a.keys() | b.keys()) if a.get(k, ABSENT) != b.get(k, ABSENT)), None)
    if key is None:  # equal content, another id: a journal of another version's scenario_id
        return f"{path} holds candidates of another plan (scenario_id {their_id}, this one is {our_id}); {fix}"
    said = [ABSENT if k not in d else shown(d[k]) for d, k in ((a, key), (b, key))]
    return (f"{path} holds candidates of another plan: its base scenario's {key} is {said[0]}, this one's "
            f"{said[1]}; {fix}")


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dict's leaves by dotted key."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
