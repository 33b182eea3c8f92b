"""`dualpipe-sim model --explain` as a reader sees it (s14f): the kernel tables' columns line up whatever a name's
length, and the bytes-per-parameter line says when the FP8 linears' weights are held at 1 byte."""

from __future__ import annotations

from dualpipe_sim.cli import main
from dualpipe_sim.model import kernels, report
from helpers import tiny_llama_toml


def test_kernel_columns_line_up_past_the_default_widths():
    # A 50-character name and a 60-character shape (the defaults are 36 and 44): every row's numbers start at the
    # same column as the header's, so each line minus its last word ("bound" / the bound) has the same length.
    rows = [kernels.Kernel("qkv", "attn_forward", "gemm", "8 x 8 x 8", 1e9, 1e6, 1e-3, "compute"),
            kernels.Kernel("n" * 50, "attn_backward_weight", "memory", "s" * 60, 0.0, 2e6, 2e-3, "memory")]
    head, *body = report.kernel_lines("dense layer", rows)[1:4]
    widths = {len(line) - len(line.split()[-1]) for line in (head, *body)}
    assert len(widths) == 1, (head, body)
    assert body[1].startswith("    " + "n" * 50 + " attn_backward_weight ")
    # the GFLOP column's right edge: 4 + 50 + 1 + 21 + 1 + 60 + 1 + 8 characters in
    assert head.index("GFLOP") + len("GFLOP") == 4 + 50 + 1 + 21 + 1 + 60 + 1 + 8


def test_bytes_per_parameter_names_fp8_parameters(tmp_path, capsys):
    path = tiny_llama_toml(tmp_path, '\n[hardware]\npreset = "H100"\n')
    assert main(["model", str(path), "--set", "model.fp8=true", "--set", "model.fp8_params=true", "--explain"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "bytes per parameter" in x)
    assert "parameters 2 (the FP8 linears' weights 1: model.fp8_params)" in line
    assert main(["model", str(path), "--set", "model.fp8=true", "--explain"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "bytes per parameter" in x)
    assert "parameters 2, gradients" in line
