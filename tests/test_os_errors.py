"""Every operating-system failure while writing (no space, no permission, a read-only disk,
a file where a folder goes) ends in one line naming the path, exit 2, and the output folder
as it was (issue 25).  The failures are faked where the write happens (a full disk is not
needed, and the suite may run as root, which ignores permissions)."""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.sweep import results as sweep_results

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
SMALL = [QUICK, "--set", "pipeline.stages=2", "--set", "pipeline.microbatches=2", "--set", "pipeline.schedule=1f1b"]
FAILURES = [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"),
            (errno.EROFS, "Read-only file system")]  # fmt: skip


def fail_writes(monkeypatch, code: int, text: str, name: str) -> None:
    """Path.write_text raises OSError(code) for files called ``name``."""
    real = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == name:
            raise OSError(code, text, str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("code,text", FAILURES)
def test_run_out_write_failure_keeps_the_earlier_run(tmp_path, monkeypatch, capsys, code, text):
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "none"]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    fail_writes(monkeypatch, code, text, "metrics.json")
    assert main(["run", *SMALL, "--set", "pipeline.microbatches=4", "--out", str(out), "--plots", "none"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "metrics.json" in err and text in err and "left as it was" in err
    assert (out / "metrics.json").read_bytes() == before  # the earlier run's file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_a_failure_while_moving_into_place_puts_the_earlier_files_back(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "png"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    real, failed = os.replace, []

    def replace(src, dst):
        # The second file moved in fails, once (putting the earlier file back must still work).
        if Path(dst).name == "memory.png" and Path(dst).parent == out and not failed:
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["run", *SMALL, "--set", "pipeline.microbatches=4", "--out", str(out)]) == 2
    one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("code,text", FAILURES)
def test_sweep_results_failure_is_one_line_and_keeps_finished_rows(tmp_path, monkeypatch, capsys, code, text):
    real = sweep_results.ResultsFile.append
    calls = []

    def append(self, row):
        calls.append(row)
        if len(calls) == 2:  # the disk fills up at the second row
            raise OSError(code, text, str(self.path))
        return real(self, row)

    monkeypatch.setattr(sweep_results.ResultsFile, "append", append)
    out = tmp_path / "s"
    assert main(["sweep", *SMALL, "--grid", "pipeline.microbatches=2,4,6", "--out", str(out), "--jobs", "1",
                 "--plots", "none"]) == 2  # fmt: skip
    err = one_line(capsys.readouterr().err)
    assert str(out / "results.csv") in err and text in err and "1 finished rows are in it; resume the sweep" in err
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1f1b,2,2,")  # header + the one finished row


def test_sweep_summary_failure_is_one_line(tmp_path, monkeypatch, capsys):
    fail_writes(monkeypatch, errno.ENOSPC, "No space left on device", "summary.md")
    out = tmp_path / "s"
    assert main(["sweep", *SMALL, "--grid", "pipeline.microbatches=2,4", "--out", str(out), "--jobs", "1",
                 "--plots", "none"]) == 2  # fmt: skip
    err = one_line(capsys.readouterr().err)
    assert "summary.md" in err and "No space left on device" in err
    assert not (out / "summary.md").exists()


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    for verb in (["run", *SMALL], ["compare", *SMALL[:1]], ["sweep", *SMALL, "--grid", "pipeline.microbatches=2,4"]):
        assert main([*verb, "--out", str(target), "--plots", "none"]) == 2
        assert "is a file, not a folder" in one_line(capsys.readouterr().err)
    assert target.read_text() == "mine"
