"""Which layers, embedding, head and MTP modules each pipeline stage holds.

Three ways to say it (``parallel.layout``):

* nothing: layers split as evenly as possible, the extra layers on stages
  1, 2, ... (stage 0 also holds the embedding, the last stage the head);
* a list of layer counts per stage, e.g. ``[3, 4, 4, 2]``; the embedding on
  the first stage, the head and any MTP modules on the last;
* Megatron-LM's ``--pipeline-model-parallel-layout`` string: stages separated
  by ``|``, ``E`` the embedding, ``t`` a transformer layer, ``m`` an MTP module,
  ``L`` the head and loss; ``x*n`` repeats a token and ``(...)*n`` a group,
  e.g. ``"Et*3|(t*4|)*14t*2mL"``.  Stages are listed in model order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ModelError
from ..errors import counted, shown


@dataclass(frozen=True)
class Stage:
    layers: tuple[int, ...]  # layer indices, in model order
    embedding: bool = False
    head: bool = False
    mtp: int = 0


_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_TOKEN = re.compile(r"([EtmL])\*(\d+)")
MAX_EXPANDED = 1_000_000


def _expand(text: str) -> str:
    """Expand ``(...)*n`` groups (innermost first) and ``x*n`` tokens, refusing, before building
    it, anything longer than MAX_EXPANDED characters."""

    def repeat(body: str, times: str) -> str:
        if len(times) > 7 or len(body) * int(times) > MAX_EXPANDED:
            raise ModelError("parallel.layout: expands to more than a million tokens")
        return body * int(times)

    for _ in range(64):  # nesting depth
        new = _GROUP.sub(lambda m: repeat(m.group(1), m.group(2)), text)
        if new == text:
            break
        text = new
        if len(text) > MAX_EXPANDED:
            raise ModelError("parallel.layout: expands to more than a million tokens")
    total = len(text) + sum(len(m.group(1)) * int(m.group(2)) for m in _TOKEN.finditer(text) if len(m.group(2)) <= 7)
    if total > MAX_EXPANDED or any(len(m.group(2)) > 7 for m in _TOKEN.finditer(text)):
        raise ModelError("parallel.layout: expands to more than a million tokens")
    return _TOKEN.sub(lambda m: repeat(m.group(1), m.group(2)), text)


def parse(spec, num_layers: int, stages: int, mtp_layers: int = 0) -> list[Stage]:
    """The stages for ``spec`` (None, a list of counts or a Megatron string); ModelError names what is
    wrong.  A stage with nothing to compute (no layer, head or MTP module) is refused: its forward
    and backward would take 0 ms, and durations are > 0."""
    out = _parse(spec, num_layers, stages, mtp_layers)
    empty = [s for s, st in enumerate(out) if not st.layers and not st.head and not st.mtp]
    if empty:
        which = f"stage {empty[0]}" if len(empty) == 1 else f"{len(empty)} stages ({', '.join(map(str, empty[:5]))}" + \
            (", ..." if len(empty) > 5 else "") + ")"
        how = (f"use at most {num_layers} stages (the model has {num_layers} layers, num_hidden_layers)"
               if spec is None else "give every stage at least one layer")
        raise ModelError(f"parallel.layout: {which} would hold no layer, head or MTP module (nothing to compute); {how}")
    return out


def _parse(spec, num_layers: int, stages: int, mtp_layers: int) -> list[Stage]:
    if spec is None:
        base, extra = divmod(num_layers, stages)
        counts = [base + (1 if 1 <= s <= extra else 0) for s in range(stages)]  # extra < stages
        return _from_counts(counts, mtp_layers)
    if isinstance(spec, list):
        if len(spec) != stages:
            raise ModelError(f"parallel.layout: needs one layer count per stage ({stages}), got {len(spec)}")
        for i, n in enumerate(spec):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ModelError(f"parallel.layout.{i}: must be a whole number of layers >= 0, got {shown(n)}")
        if sum(spec) != num_layers:
            raise ModelError(
                f"parallel.layout: the stages hold {sum(spec)} layers, the model has {num_layers} "
                f"(num_hidden_layers)"
            )
        return _from_counts(spec, mtp_layers)
    if isinstance(spec, str):
        return _from_string(spec, num_layers, stages, mtp_layers)
    raise ModelError(f"parallel.layout: must be a list of layer counts or a Megatron layout string, got {shown(spec)}")


def _from_counts(counts, mtp_layers: int) -> list[Stage]:
    out, first = [], 0
    for s, n in enumerate(counts):
        last = s == len(counts) - 1
        out.append(Stage(tuple(range(first, first + n)), s == 0, last, mtp_layers if last else 0))
        first += n
    return out


def _from_string(spec: str, num_layers: int, stages: int, mtp_layers: int) -> list[Stage]:
    text = _expand(spec.replace(" ", ""))
    bad = set(text) - set("EtmL|")
    if bad:
        raise ModelError(
            f"parallel.layout: unknown character {sorted(bad)[0]!r} in {shown(spec)} "
            "(E embedding, t layer, m MTP, L head, | between stages, x*n repeats)"
        )
    parts = text.split("|")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]  # a trailing | from a repeated group "(t|)*n"
    if len(parts) != stages:
        raise ModelError(f"parallel.layout: {shown(spec)} has {counted(len(parts), 'stage')}, "
                         f"pipeline.stages is {stages}")  # fmt: skip
    n_t = text.count("t")
    if n_t != num_layers:
        raise ModelError(f"parallel.layout: {shown(spec)} places {counted(n_t, 'layer')}, the model has {num_layers} "
                         "(num_hidden_layers)")  # fmt: skip
    if text.count("E") != 1 or "E" not in parts[0]:
        raise ModelError(f"parallel.layout: {shown(spec)} must place the embedding E once, on the first stage")
    if text.count("L") != 1 or "L" not in parts[-1]:
        raise ModelError(f"parallel.layout: {shown(spec)} must place the head L once, on the last stage")
    if text.count("m") != mtp_layers:  # an MTP module left out would still be in the model, costed nowhere
        raise ModelError(f"parallel.layout: {shown(spec)} places {counted(text.count('m'), 'MTP module')} (m), "
                         f"the model has {mtp_layers} (num_nextn_predict_layers)")  # fmt: skip
    out, first = [], 0
    for p in parts:
        n = p.count("t")
        out.append(Stage(tuple(range(first, first + n)), "E" in p, "L" in p, p.count("m")))
        first += n
    return out


def to_string(stages: list[Stage]) -> str:
    """The Megatron string of a layout (for the explanation table)."""
    parts = []
    for st in stages:
        n = len(st.layers)
        parts.append(("E" if st.embedding else "") + (f"t*{n}" if n > 1 else "t" * n) + "m" * st.mtp + ("L" if st.head else ""))
    return "|".join(parts)
