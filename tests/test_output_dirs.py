"""Output folders that cannot take the files (s10i: outputs/files.py's untested branches).
Each ends in one line naming the path and the reason, exit 2, and the output folder as it
was: no file half-written, no staging folder, no empty folder made on the way.  A read-only
folder is made with chmod where the mode holds; as root (which ignores a folder's mode) the
same refusal is faked where the OS call happens, as the other failures are."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from dualpipe_sim.cli import main
from dualpipe_sim.outputs import files

ROOT = Path(__file__).resolve().parent.parent
SMALL = [str(ROOT / "scenarios" / "quickstart.toml"), "--set", "pipeline.stages=2", "--set", "pipeline.microbatches=2",
         "--set", "pipeline.schedule=1f1b"]  # fmt: skip


def read_only_holds() -> bool:
    """Whether a folder of mode r-x stops this process writing in it (root, with its
    CAP_DAC_OVERRIDE, writes anyway; root without it, e.g. under setpriv, does not)."""
    if os.geteuid() != 0:
        return True
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, stat.S_IRUSR | stat.S_IXUSR)
        try:
            os.mkdir(os.path.join(tmp, "probe"))
        except PermissionError:
            return True
        finally:
            os.chmod(tmp, stat.S_IRWXU)
    return False


def make_read_only(folder: Path, monkeypatch) -> None:
    """Folder r-x: by its mode where that stops this process; else (root) every temporary folder
    asked for inside it refused with EACCES, which is what the mode gives a non-root user."""
    if read_only_holds():
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "none"]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    make_read_only(out, monkeypatch)
    try:
        assert main(["run", *SMALL, "--set", "pipeline.microbatches=4", "--out", str(out)]) == 2
        assert one_line(capsys) == f"error: --out: {out}: cannot write in {out}: Permission denied"
        assert (out / "metrics.json").read_bytes() == before and tree(tmp_path) == ["out", "out/metrics.json"]
    finally:
        out.chmod(stat.S_IRWXU)


def test_missing_output_folder_under_a_read_only_one(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    make_read_only(locked, monkeypatch)
    try:
        assert main(["run", *SMALL, "--out", str(locked / "a" / "out")]) == 2
        assert one_line(capsys) == f"error: --out: {locked / 'a' / 'out'}: cannot write in {locked}: Permission denied"
        assert tree(tmp_path) == ["locked"]
    finally:
        locked.chmod(stat.S_IRWXU)


def test_missing_output_folder_where_nothing_can_be_made(capsys):
    """Root or not: /proc takes no new folder, and the folder chain under it is not made."""
    assert main(["run", *SMALL, "--out", "/proc/dualpipe-sim-s10i/a/out"]) == 2
    line = one_line(capsys)
    assert line.startswith("error: --out: /proc/dualpipe-sim-s10i/a/out: cannot write in /proc: ")
    assert not os.path.exists("/proc/dualpipe-sim-s10i")


def test_a_file_where_a_sub_folder_of_the_outputs_goes(tmp_path, capsys):
    """--trace out/sub/trace.json puts the trace in a sub-folder; `sub` is a file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("keep me")
    assert main(["run", *SMALL, "--out", str(out), "--trace", str(out / "sub" / "trace.json"), "--plots", "none"]) == 2
    assert one_line(capsys) == f"error: --out: {out / 'sub'} is a file where the folder of sub/trace.json goes"
    assert (out / "sub").read_text() == "keep me" and tree(tmp_path) == ["out", "out/sub"]


def test_no_staging_folder_is_one_line_and_no_folder_is_left(tmp_path, monkeypatch, capsys):
    """The probe succeeds but the staging folder cannot be made (the disk filled in between):
    the folders made for it (tmp/a) are removed again."""
    real = tempfile.mkdtemp

    def mkdtemp(*args, prefix="", **kwargs):
        if "-probe-" not in prefix:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    out = tmp_path / "a" / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "none"]) == 2
    assert one_line(capsys) == f"error: --out: cannot write {out}: No space left on device"
    assert tree(tmp_path) == []


def fail_moves_to(monkeypatch, name: str) -> None:
    """os.replace into a file called ``name`` raises ENOSPC (moves out of the way still work)."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == name and not Path(src).name.isdigit():
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_move_into_a_new_folder_takes_the_moved_files_and_folders_back(tmp_path, monkeypatch, capsys):
    """metrics.json is moved into place first, then gantt.png fails: metrics.json is removed,
    and out and out's parent, made by this run, are removed too (the message says "left as it was")."""
    fail_moves_to(monkeypatch, "gantt.png")
    out = tmp_path / "new" / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "png"]) == 2
    line = one_line(capsys)
    assert line == f"error: --out: cannot write {out / 'gantt.png'}: No space left on device; {out} is left as it was"
    assert tree(tmp_path) == []


def test_a_failed_move_into_a_new_sub_folder_removes_it(tmp_path, monkeypatch, capsys):
    """An existing output folder keeps its earlier files; the trace's new sub-folder goes again."""
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "none"]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    fail_moves_to(monkeypatch, "trace.json")
    args = ["run", *SMALL, "--set", "pipeline.microbatches=4", "--out", str(out), "--plots", "none"]
    assert main([*args, "--trace", str(out / "sub" / "trace.json")]) == 2
    assert one_line(capsys).endswith(f"{out / 'sub' / 'trace.json'}: No space left on device; {out} is left as it was")
    assert (out / "metrics.json").read_bytes() == before and tree(tmp_path) == ["out", "out/metrics.json"]


def test_a_failed_put_back_names_where_the_earlier_file_is_kept(tmp_path, monkeypatch, capsys):
    """A second run over a first: metrics.json is swapped in (its earlier copy moved aside),
    then every os.replace fails, the put-back included.  One line still, exit 2, and the
    earlier metrics.json is not deleted with the staging folder: the line says where it is."""
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out), "--plots", "png"]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) > 2:  # 1: earlier metrics.json aside, 2: the new one in; then all fail
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["run", *SMALL, "--set", "pipeline.microbatches=4", "--out", str(out), "--plots", "png"]) == 2
    line = one_line(capsys)
    head = (f"error: --out: cannot write {out / 'gantt.png'}: Input/output error; {out / 'metrics.json'} "
            "could not be put back either: its earlier file is kept in ")
    assert line.startswith(head)
    kept = Path(line[len(head):])
    assert kept == calls[0][1] and kept.read_bytes() == before
    assert (out / "metrics.json").read_bytes() != before  # the new run's, as the line says


def test_missing_folders_lists_deepest_first(tmp_path):
    (tmp_path / "a").mkdir()
    got = files._missing_folders([tmp_path / "a" / "b" / "c", tmp_path / "a" / "b", tmp_path / "d"])
    assert got == [tmp_path / "a" / "b" / "c", tmp_path / "a" / "b", tmp_path / "d"]
