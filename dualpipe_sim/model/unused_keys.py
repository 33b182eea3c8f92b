"""Keys whose value cannot apply to the scenario they are in: refused, one line naming the key and its rule.

A key left out or given its default is always accepted; a non-default value that nothing would read
(an FP8 setting on a model without FP8 linears, a userbuffers setting with the overlap off) is a
user's mistake the result would hide, so it is an error (docs/model.md, "Keys that need FP8").
"""

from __future__ import annotations

from .config import ModelError
from .sections import ModelSection, ParallelSection

# Read by the FP8 linears only (their GEMMs, casts, transposes and weight copies)
FP8_MODEL_KEYS = ("fp8_gemm", "fp8_recipe", "fp8_transpose")
# Transformer Engine's userbuffers overlaps (parallel.tp_comm_overlap), by their configuration's keys
UB_KEYS = ("tp_overlap_sms", "tp_overlap_atomic", "tp_overlap_ring_rs", "tp_overlap_not_told")
NO_FP8 = "the model has no FP8 linears (model.fp8, else its config's quantization_config)"


def _default(section, key: str):
    return type(section).model_fields[key].default


def refuse(m: ModelSection, par: ParallelSection, fp8_weight_cache: bool, fp8: bool) -> None:
    """Raise ModelError for the first key given a value that cannot apply; ``fp8``: the model's linears are FP8."""
    te_fp8 = fp8 and m.fp8_gemm == "cublas"  # Transformer Engine's per-tensor scaling (DeepGEMM scales per tile)
    if m.fp8_params and not te_fp8:  # Float8Tensor weights are Transformer Engine's
        raise ModelError("model.fp8_params: FP8 parameters need FP8 linears through Transformer Engine "
                         '(model.fp8 = true, model.fp8_gemm = "cublas")')  # fmt: skip
    if not fp8:
        for key in FP8_MODEL_KEYS:
            value, default = getattr(m, key), _default(m, key)
            if value != default:
                raise ModelError(f'model.{key}: "{value}" applies to FP8 linears only and {NO_FP8}; '
                                 f'leave it out (or "{default}")')  # fmt: skip
        if not fp8_weight_cache:  # memory.fp8_weight_cache's default is true
            raise ModelError(f"memory.fp8_weight_cache: false applies to FP8 linears' weight copies only and "
                             f"{NO_FP8}; leave it out (or true)")  # fmt: skip
    if m.fp8_amax_reduction != _default(m, "fp8_amax_reduction") and not te_fp8:
        raise ModelError(f'model.fp8_amax_reduction: "{m.fp8_amax_reduction}" is Transformer Engine\'s delayed '
                         'scaling (model.fp8 = true, model.fp8_gemm = "cublas"); leave it out')  # fmt: skip
    if m.fp8_amax_history != _default(m, "fp8_amax_history") and not te_fp8:
        raise ModelError(f"model.fp8_amax_history: {m.fp8_amax_history} is Transformer Engine's delayed scaling "
                         '(model.fp8 = true, model.fp8_gemm = "cublas"); leave it out')  # fmt: skip
    if m.te_cast_transpose != _default(m, "te_cast_transpose") and not te_fp8:
        raise ModelError(f'model.te_cast_transpose: "{m.te_cast_transpose}" is Transformer Engine\'s FP8 cast kernel '
                         '(model.fp8 = true, model.fp8_gemm = "cublas"); leave it out')  # fmt: skip
    for key in UB_KEYS:
        if getattr(par, key) and not par.tp_comm_overlap:
            raise ModelError(f"parallel.{key}: configures Transformer Engine's userbuffers overlaps, which run only "
                             "with parallel.tp_comm_overlap = true; leave it out")  # fmt: skip
    if par.tp_overlap_atomic and not fp8:  # TE initialize_ub: "Atomic GEMM overlap supported only for FP8 GEMM."
        raise ModelError(f"parallel.tp_overlap_atomic: Transformer Engine runs an atomic GEMM overlap for FP8 GEMMs "
                         f"only and {NO_FP8}; leave it out")  # fmt: skip
