"""Built-in schedule families: the table registry.py serves.

A new family: write its module (a generator marked with ``family.register``)
and add its generator to FAMILIES below; nothing else registers it.
"""

from . import chimera, chimera_doubling, dualpipe, gpipe, interleaved, one_f_one_b, overlap, zero_bubble
from .family import Family

FAMILIES: tuple[Family, ...] = tuple(
    generator.family
    for generator in (
        one_f_one_b.one_f_one_b,
        gpipe.gpipe,
        zero_bubble.zb_h1,
        zero_bubble.zb_h1_megatron,
        zero_bubble.zb_h2,
        zero_bubble.zbv,
        interleaved.interleaved_1f1b,
        dualpipe.dualpipe,
        dualpipe.dualpipev,
        chimera.chimera,
        chimera_doubling.chimera_doubling,
        overlap.one_f_one_b_overlap,
        overlap.interleaved_1f1b_overlap,
    )
)
