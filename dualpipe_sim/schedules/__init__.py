"""Built-in schedule families; importing this package registers them all."""

from . import gpipe, one_f_one_b  # noqa: F401
