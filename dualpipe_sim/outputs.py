"""Writing result files all-or-nothing.

Every file of a run is first written into a hidden staging folder beside the
output folder, then moved into place; if anything fails on the way, the
staging folder is removed and the output folder is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def metrics_json(metrics) -> str:
    """Canonical text of metrics.json (a Metrics, or any JSON document such as repeat.json):
    same metrics, same bytes."""
    doc = metrics.to_dict() if hasattr(metrics, "to_dict") else metrics
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_all(out_dir: str | Path, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Call ``writers[name](path)`` for each file, then move them all into out_dir."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name, write in writers.items():
            target = stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in writers:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, out / name)
            written.append(out / name)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")
