"""Built-in schedule families; importing this package registers them all."""

from . import chimera, dualpipe, gpipe, interleaved, one_f_one_b, overlap, zero_bubble  # noqa: F401
