"""Small builders shared by the tests."""

import csv
import subprocess
import sys

from dualpipe_sim.inputs import scenario
from dualpipe_sim import simulation


def run_uniform(schedule, stages, microbatches, forward=1.0, backward=2.0, weight=None, p2p=0.0, **extra):
    data = {
        "pipeline": {"schedule": schedule, "stages": stages, "microbatches": microbatches},
        "costs": {"forward": forward, "backward": backward},
        "comm": {"p2p": p2p},
    }
    if weight is not None:
        data["costs"]["weight"] = weight
    for key, value in extra.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return simulation.run(scenario.from_dict(data))


# DeepSeek's training profile (deepseek-ai/profile-data train.json: one overlapped pair of
# 4-MoE-layer chunks, 4K tokens, EP64, TP1, H800), per layer in ms, as read off the trace
# independently in issue 11. calibrate must reproduce it; the H800 model preset is held to it.
DEEPSEEK_PROFILE_MS = {
    "attn_forward": 4.37, "mlp_forward": 4.60, "dispatch_forward": 6.69, "combine_forward": 8.68,
    "combine_backward": 5.77, "mlp_backward_input": 5.31, "mlp_backward_weight": 5.06,
    "dispatch_backward": 7.49, "attn_backward_input": 9.34, "attn_backward_weight": 2.39,
}  # fmt: skip


# A 4-layer Llama-style [model] table (seq 128): the small model whose derived times and bytes
# tests/test_fsdp.py, test_memory_terms.py and test_model.py work out by hand.
TINY_LLAMA_MODEL = """[model]
model_type = "llama"
hidden_size = 256
num_hidden_layers = 4
vocab_size = 1000
num_attention_heads = 4
intermediate_size = 512
seq_length = 128
"""


def tiny_llama_toml(tmp_path, tail: str = ""):
    """tiny.toml: TINY_LLAMA_MODEL on 2 stages of 1F1B with 4 micro-batches, then ``tail`` (more tables)."""
    path = tmp_path / "tiny.toml"
    path.write_text(f'[pipeline]\nschedule = "1f1b"\nstages = 2\nmicrobatches = 4\n{TINY_LLAMA_MODEL}{tail}')
    return path


def kernel_table(path) -> list[dict]:
    """A measured table under tests/data/kernels/: CSV rows after the '#' lines that name its source."""
    with open(path) as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def sdpa_flops(r: dict) -> float:
    """A cudnn-frontend SDPA row's FLOPs as flash-attention counts them: causal forward 4 b s^2 heads d / 2, backward
    2.5x."""
    s = float(r["seq"])
    forward = 4 * int(r["batch"]) * s * s * int(r["q_heads"]) * int(r["head_dim"]) / 2
    return forward * (2.5 if r["pass"] == "backward" else 1)


def attention_pair(path, flops: float):
    """The flash attention forward and backward kernel rows of a scenario's first layer (CP 1), each checked to carry
    ``flops`` forward and 2.5x that backward (flash-attention's count)."""
    from dualpipe_sim.model import derive

    rows = {(k.name, k.component): k for k in derive.layer_kernels(derive.setup(scenario.load(path)), 0)}
    fwd = rows[("flash attention", "attn_forward")]
    bwd = rows[("flash attention backward", "attn_backward_input")]
    assert fwd.flops == flops and bwd.flops == 2.5 * flops
    return fwd, bwd


def hardware_source(path) -> dict[tuple[str, str], float]:
    """A preset's transcribed sources under tests/data/hardware/: {(source, field): value} of the rows after the '#'
    lines."""
    return {(r["source"], r["field"]): float(r["value"]) for r in kernel_table(path)}


def short_run_h100(monkeypatch):
    """H100's preset with XLA's short-run BF16 GEMM fit in place of its sustained peak (docs/model.md, the BF16 row),
    for checks against benchmarks that time a few iterations (a layer, a grouped GEMM), like for like."""
    from dualpipe_sim.model import rates

    monkeypatch.setitem(rates.PRESETS, "H100", rates.H100_SHORT_RUNS)
    return rates.H100_SHORT_RUNS


def cli_error(tmp_path, *args: str) -> str:
    """Run the CLI in ``tmp_path`` writing to tmp_path/out; assert exit 2, one stderr line, no traceback and
    nothing written; return the line."""
    proc = subprocess.run([sys.executable, "-m", "dualpipe_sim", *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"
    return proc.stderr.rstrip("\n")


def run_refused(capsys, tmp_path, path, sets) -> str:
    """``run PATH --set S ...`` in process, refused: exit 2 and nothing written under tmp_path/out; returns stderr."""
    from dualpipe_sim.cli import main

    out = tmp_path / "out"
    args = ["run", str(path), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert not out.exists()
    return capsys.readouterr().err


def bucket_fill(reversed_sizes, size: int) -> list[int]:
    """Megatron-core's DDP bucket fill by hand: parameters taken in reverse, a bucket closed at the one that takes it to
    ``size`` elements, the rest one last bucket (param_and_grad_buffer.py @ d339190 lines 636-664)."""
    out, bucket = [], 0
    for n in reversed_sizes:
        bucket += n
        if bucket >= size:
            out, bucket = out + [bucket], 0
    return out + ([bucket] if bucket else [])


def step_kind_path(trace, kind: str, xmax: float):
    """The one path gantt._draw_step draws for the step rows of ``kind`` (its colour, style.STEP_COLOURS) on an axis
    [0, xmax], and that axis' module (gantt) for its lane constants and legend."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    from dualpipe_sim.outputs.plots import gantt
    from dualpipe_sim.outputs.plots.style import STEP_COLOURS

    ax = Figure().add_subplot()
    gantt._draw_step(ax, trace.step, xmax, xmax)
    drawn = [c for c in ax.collections if np.allclose(c.get_facecolor()[0], to_rgba(STEP_COLOURS[kind]))]
    assert len(drawn) == 1
    (path,) = drawn[0].get_paths()
    return path, gantt
