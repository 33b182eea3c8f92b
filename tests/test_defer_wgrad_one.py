"""model.defer_embedding_wgrad = 1 is refused: Megatron-core's drain (core_r0.11.0 megatron/core/utils.py,
drain_embedding_wgrad_compute) pops the first buffered input, loops over the rest and runs the last GEMM on
``drain_idx``, which only the loop sets: with one deferred micro-batch the loop never runs and the drain fails."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = ROOT / "scenarios" / "validation" / "mlperf41-gpt3-256.toml"  # defers 65 of 128 micro-batches


def _run(tmp_path, *sets):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dualpipe_sim", "run", str(ROW), "--out", str(out), "--plots", "none"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT), out


def test_one_deferred_microbatch_is_refused(tmp_path):
    done, out = _run(tmp_path, "model.defer_embedding_wgrad=1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.defer_embedding_wgrad: one deferred micro-batch")
    assert "Traceback" not in done.stderr and not out.exists()


def test_two_deferred_microbatches_run(tmp_path):
    done, out = _run(tmp_path, "model.defer_embedding_wgrad=2")
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").exists()
