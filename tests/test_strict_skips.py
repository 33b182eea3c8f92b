"""tests/conftest.py's strict skips: in CI an unlisted skip fails the run; elsewhere it only skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_pytest(tmp_path: Path, files: dict[str, str], strict: bool) -> subprocess.CompletedProcess:
    """pytest on a throw-away project holding this suite's conftest.py and ``files``."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    shutil.copy(HERE / "conftest.py", tmp_path / "tests" / "conftest.py")
    for name, text in files.items():
        (tmp_path / "tests" / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DUALPIPE_SIM_STRICT_SKIPS")}
    if strict:
        env["DUALPIPE_SIM_STRICT_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


SKIPS = """
import pytest

def test_runs():
    assert 1 + 1 == 2

@pytest.mark.skipif(True, reason="no browser here")
def test_needs_a_browser():
    pass
"""


@pytest.mark.parametrize("strict", [False, True])
def test_an_unlisted_skip_fails_only_in_strict_mode(tmp_path, strict):
    proc = run_pytest(tmp_path, {"test_x.py": SKIPS}, strict)
    assert "1 passed, 1 skipped" in proc.stdout, proc.stdout
    if strict:
        assert proc.returncode == 1, proc.stdout
        assert "skips not on the allow-list" in proc.stdout
        assert "tests/test_x.py::test_needs_a_browser: no browser here" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout
        assert "allow-list" not in proc.stdout


def test_a_module_skipped_at_import_counts_too(tmp_path):
    proc = run_pytest(tmp_path, {"test_y.py": "import pytest\npytest.importorskip('no_such_module_xyz')\n",
                                 "test_z.py": "def test_ok():\n    pass\n"}, strict=True)  # fmt: skip
    assert proc.returncode == 1 and "tests/test_y.py: could not import 'no_such_module_xyz'" in proc.stdout, proc.stdout


def test_a_listed_skip_passes_in_strict_mode(tmp_path):
    listed = "import pytest\n\ndef test_deepseek_profile_figures():\n    pytest.skip('no checkout')\n"
    proc = run_pytest(tmp_path, {"test_calibrate.py": listed}, strict=True)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout


def test_xfail_and_failures_keep_their_own_status(tmp_path):
    text = ("import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n\n"
            "def test_fails():\n    assert False\n")  # fmt: skip
    proc = run_pytest(tmp_path, {"test_w.py": text}, strict=True)
    assert proc.returncode == 1 and "1 failed, 1 xfailed" in proc.stdout and "allow-list" not in proc.stdout


def test_ci_fails_before_anything_else_when_no_chromium_can_be_had(tmp_path):
    # A PATH with bash and dirname but neither a browser nor apt-get: .ci/run must stop with exit 1.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run([str(HERE.parent / ".ci" / "run")], env={"PATH": str(bin_dir)}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: Chromium is not installed and could not be installed"), proc.stderr
    assert proc.stdout == ""  # no venv made, no README command run
